"""Precision as a per-layer search choice (--precisions fp32,int8): the choice's encodings and old
journal rows, int8 offered only where codegen's quantization pass runs a layer in int8, every
strategy proposing it, plans carrying it (and compile --plan replaying it), and on the host
runner: a short search whose report shows per-layer precisions and whose int8 layers run int8
in the compiled bundles, and the quantized accuracy's executor equal to the int8 bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from host.models.zoo import digits_tiny
from host.pruning import LayerRule, PruningError, PruningPlan
from host.search.ops import replace_ops
from host.search.precision import (
    calibration_images,
    int8_spec,
    offer_int8,
    parse_precisions,
    quantized,
    quantized_accuracy,
)
from host.search.space import Candidate, LayerChoice, SearchSpace

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE = torch.zeros(1, 1, 8, 8)
SCHEMES = ("unstructured", "block", "filter", "channel")


def relu_digits_tiny() -> torch.nn.Module:
    """digits_tiny as phase 1 leaves it with int8 in the search (ReLU: int8 kernels fuse it)."""
    torch.manual_seed(0)
    return replace_ops(digits_tiny(), int8=True)[0]


def _space(int8: bool = True, model=None) -> tuple[SearchSpace, torch.nn.Module]:
    torch.manual_seed(0)
    base = model if model is not None else digits_tiny()
    fast, _ = replace_ops(base, int8=int8)
    space = SearchSpace.build(fast, EXAMPLE, schemes=SCHEMES, ftypes=("keep", "dwpw"),
                              vector_width=16)
    if int8:
        offer_int8(space, fast, EXAMPLE, 16)
    return space, fast


# --- encodings -------------------------------------------------------------------------------


def test_choice_keys_and_json_round_trip_and_old_rows_are_fp32():
    q = LayerChoice("keep", "block", 2.0, precision="int8")
    f = LayerChoice("keep", "block", 2.0)
    cand = Candidate((q, f, LayerChoice(), LayerChoice("keep", "filter", 2.0, "unstructured",
                                                       0.5, "int8")))
    back = Candidate.from_json(json.loads(json.dumps(cand.to_json())))
    assert back == cand and back.key() == cand.key()
    # fp32 keys and rows are exactly the ones before precisions (journals, latency caches)
    assert f._key() == "keep/block/2" and f._json() == ["keep", "block", 2.0]
    assert q._key() == "keep/block/2@int8" and str(q) == "block 2x int8"
    assert cand.int8 and not Candidate((f,)).int8
    old = Candidate.from_json([["keep", "none", 1.0], ["dwpw", "filter", 2.0, "unstructured",
                                                       0.5]])
    assert [c.precision for c in old.choices] == ["fp32", "fp32"]
    assert old.to_json() == [["keep", "none", 1.0], ["dwpw", "filter", 2.0, "unstructured",
                                                     0.5]]


def test_journal_reads_precision_rows_and_refuses_unknown_ones(tmp_path):
    from host.search.journal import Journal, JournalError

    rows = Candidate((LayerChoice(), LayerChoice("keep", "none", 1.0, precision="int8"))
                     ).to_json()
    j = Journal(tmp_path)
    j.append({"type": "candidate", "id": 0, "status": "started", "key": "k", "encoding": rows,
              "strategy": "random", "summary": ""})
    assert Candidate.from_json(j.records()[0]["encoding"]).choices[1].precision == "int8"
    (tmp_path / "journal.jsonl").write_text(json.dumps(
        {"type": "candidate", "id": 0, "status": "started", "key": "k", "encoding":
         [["keep", "none", 1.0, "none", 1.0, "int4"]], "strategy": "random", "summary": ""})
        + "\n")
    with pytest.raises(JournalError, match="precision"):
        Journal(tmp_path).records()


def test_parse_precisions():
    assert parse_precisions("fp32,int8") == ("fp32", "int8")
    assert parse_precisions("int8") == ("fp32", "int8")  # fp32 is always the fallback
    with pytest.raises(ValueError, match="int4"):
        parse_precisions("fp32,int4")


# --- what is offered ----------------------------------------------------------------------------


def test_int8_offered_exactly_where_the_quantization_pass_runs_int8():
    from codegen import int8_offers

    space, fast = _space()
    offers = int8_offers(fast.eval(), (EXAMPLE,), 16, ("dense", "unstructured", "block"))
    assert space.int8 and space.size() > _space(int8=False)[0].size()
    for ls in space.layers:
        for s in {s for ss in ls.options["keep"].values() for s in ss}:
            cg = "dense" if s in ("none", "filter", "channel") else s
            assert ("int8" in ls.precisions("keep", s)) == (offers[ls.name][cg] is None), \
                (ls.name, s)
        # unstructured sparse kernels are float32: never offered int8 while the pass says so
        assert ("unstructured" in ls.int8.get("keep", ())) == (
            offers[ls.name]["unstructured"] is None)
    # phase 1's usual Hardswish runs as an int8 lookup table after its conv: offered too
    torch.manual_seed(0)
    hs, _ = replace_ops(digits_tiny())
    sp2 = SearchSpace.build(hs, EXAMPLE, schemes=SCHEMES, ftypes=("keep",))
    why = offer_int8(sp2, hs, EXAMPLE, 16)
    assert sp2.int8 and not any("hardswish" in w for w in why.values())


def test_a_layer_not_offered_int8_refuses_it_and_falls_back_to_fp32():
    space, _ = _space()
    ls = next(ls for ls in space.layers if "unstructured" not in ls.int8.get("keep", ()))
    c = LayerChoice("keep", "unstructured", 2.0, precision="int8")
    assert not ls.offered(c) and not ls.valid(c)
    # homogeneous int8: each layer int8 where its choice offers it, else fp32
    h = space.homogeneous("keep", "unstructured", 2.0, "int8")
    for ls, ch in zip(space.layers, h.choices, strict=True):
        assert ch.precision == ("int8" if "int8" in ls.precisions(ch.ftype, ch.scheme)
                                else "fp32")


# --- strategies ----------------------------------------------------------------------------------


def test_every_strategy_proposes_precision_where_offered():
    from host.search.strategies.jcw import JcwEncoding
    from host.search.strategies.npas.controller import Controller
    from host.search.strategies.uniform import UniformStrategy

    space, _ = _space()
    plain, _ = _space(int8=False)
    # npas: a 4th decision per layer, masked to what the layer offers
    ctl = Controller(space, seed=0)
    assert ctl.kinds == 4 and Controller(plain, seed=0).kinds == 3
    cands = [space.repair(c) for c in ctl.sample(64, torch.Generator().manual_seed(0))]
    assert any(c.int8 for c in cands)
    for c in cands:
        for ls, ch in zip(space.layers, c.choices, strict=True):
            assert ch.precision in ls.precisions(ch.ftype, ch.scheme)
    assert torch.isfinite(ctl.log_prob(cands[:8])).all()
    ctl.update(cands[:4], [0.1, 0.4, 0.2, 0.3])
    # the BO filter's features: per layer int8 or not and the int8 MAC share, only then
    assert len(space.features(cands[0])) == len(plain.features(plain.dense())) \
        + len(space.layers) + 1
    # random and uniform
    rng = np.random.default_rng(0)
    assert any(space.random(rng).int8 for _ in range(20))
    assert not any(plain.random(np.random.default_rng(0)).int8 for _ in range(20))
    assert any(c.int8 for c in UniformStrategy(space, seed=0).ask(50))
    # jcw: a precision gene per layer offered int8, applied only where the choice runs int8
    enc = JcwEncoding(space)
    genes = [g for g in enc.genes if g.kind == "precision"]
    assert genes and all(g.lo == 0 and g.hi == 1 for g in genes)
    top = enc.decode(enc.xu)  # unpruned, every precision gene int8
    assert top.int8 and all(c.scheme == "none" for c in top.choices)
    low = enc.decode(np.where([g.kind == "precision" for g in enc.genes], 1, enc.xl))
    for ls, ch in zip(space.layers, low.choices, strict=True):
        assert ls.valid(ch)
        if ch.joint:  # filter + unstructured mask: the mask's float32 kernel
            assert ch.precision == "fp32"
    assert not any(g.kind == "precision" for g in JcwEncoding(plain).genes)


# --- plans ----------------------------------------------------------------------------------------


def test_plan_precision_round_trip_and_refusals():
    plan = PruningPlan({"b1.0": LayerRule("block", 0.5, {}, "int8"),
                        "b2.0": LayerRule("unstructured", 0.5)}, precision=["b*=int8",
                                                                          "b3.0=fp32"])
    back = PruningPlan.from_json(plan.to_json())
    assert back == plan
    m = digits_tiny()
    got = back.precisions(m)
    assert got["b1.0"] == "int8" and got["b2.0"] == "int8" and got["b3.0"] == "fp32"
    assert got["stem.0"] == "fp32" and set(back.int8_layers(m)) == {"b1.0", "b2.0", "b4.0"}
    # a plan without precisions writes as before: no precision keys
    d = PruningPlan({"b1.0": LayerRule("block", 0.5)}).to_dict()
    assert "precision" not in d and "precision" not in d["layers"]["b1.0"]
    assert PruningPlan.from_dict(d).int8_layers(m) == ()
    bad_rule = {**d, "layers": {"b1.0": {"scheme": "block", "rate": 0.5, "precision": "int4"}}}
    with pytest.raises(PruningError, match="int4.*known precisions are fp32, int8"):
        PruningPlan.from_dict(bad_rule)
    with pytest.raises(PruningError, match="fp16"):
        PruningPlan.from_dict({**d, "precision": ["*=fp16"]})
    with pytest.raises(PruningError, match="LAYERS=PRECISION"):
        PruningPlan.from_dict({**d, "precision": ["int8"]})


def test_plan_command_writes_precision_rules(tmp_path, capsys):
    from host.cli import main

    out = tmp_path / "p.json"
    rc = main(["plan", "host.models.zoo:digits_tiny", "--rule", "b1.0=filter:0.5",
               "--precision", "*=int8", "--precision", "stem.0=fp32", "-o", str(out)])
    assert rc == 0
    plan = PruningPlan.load(out)
    assert plan.precision == ["*=int8", "stem.0=fp32"]
    assert "stem.0" not in plan.int8_layers(digits_tiny())
    rc = main(["plan", "host.models.zoo:digits_tiny", "--rule", "b1.0=filter:0.5",
               "--precision", "*=int4"])
    _o, e = capsys.readouterr()
    assert rc != 0 and "int4" in e and "fp32, int8" in e


def test_search_plan_holds_the_candidates_int8_layers():
    space, fast = _space()
    cand = space.homogeneous("dwpw", "none", 1.0, "int8")
    plan = space.plan(cand)
    pruned = space.realize(fast, cand)
    assert set(plan.int8_layers(pruned.model)) == set(
        int8_spec(space, cand, pruned.model, []).int8)


def test_compile_plan_replays_per_layer_precision(tmp_path, capsys, cc):
    from codegen import read_report
    from host.cli import main

    plan = tmp_path / "plan.json"
    PruningPlan({"b1.0": LayerRule("filter", 0.5)}, precision=["*=int8", "stem.0=fp32"]
                ).save(plan)
    out = tmp_path / "bundle"
    spec = "test_search_precision:relu_digits_tiny"
    rc = main(["compile", spec, "--plan", str(plan), "-o", str(out),
               "--input-shape", "1,1,8,8", "--no-tuning-db"])
    assert rc == 0
    fp32 = read_report(out).fp32_layers
    assert fp32["stem.0"] == "kept in float32 (asked)"
    assert "b1.0" not in fp32 and "b3.0" not in fp32  # int8 as the plan says
    rc = main(["compile", spec, "--plan", str(plan), "-o", str(tmp_path / "gpu"),
               "--input-shape", "1,1,8,8", "--backend", "gpu", "--no-tuning-db"])
    _o, e = capsys.readouterr()
    assert rc != 0 and "int8" in e and "CPU" in e


# --- on the host runner ---------------------------------------------------------------------------


def test_quantized_accuracy_is_what_the_int8_bundle_computes(tmp_path, local_runner):
    from codegen import HostToolchain, compile_model, read_report, run_quantized
    from host.devices.session import Session
    from host.measure import MeasureConfig
    from host.models.data import batches, load_dataset

    space, fast = _space()
    data = load_dataset("digits", 8, 1)
    cand = space.homogeneous("keep", "filter", 2.0, "int8")
    assert cand.int8
    pruned = space.realize(fast, cand)
    cal = calibration_images(data, EXAMPLE)
    spec = int8_spec(space, cand, pruned.model, cal)
    acc, ran = quantized_accuracy(pruned.model, data, EXAMPLE, spec, 16, pruned.schemes)
    assert set(ran) == set(spec.int8)  # every layer chosen int8 runs int8
    out = tmp_path / "b"
    bundle = compile_model(pruned.model.eval(), (EXAMPLE,), out,
                           toolchain=HostToolchain(precision="int8"), schemes=pruned.schemes,
                           calibration=cal, keep_fp32=spec.keep_fp32)
    fp32 = read_report(out).fp32_layers
    in_bundle = {s.name for s in bundle.manifest.steps if s.op in ("conv2d", "linear")}
    assert in_bundle - set(fp32) == set(ran)  # the compiled bundle's int8 layers: the same
    graph = quantized(pruned.model, EXAMPLE, spec, 16, pruned.schemes)
    correct = seen = worst = 0
    with Session(local_runner) as s:
        key = s.load(bundle, MeasureConfig(threads=1))
        for x, y in batches(data.val, 1, shuffle=False):
            (got,) = s.run(key, [x.numpy()])
            (ref,) = run_quantized(graph, [x.numpy()])
            worst = max(worst, float(np.abs(got - ref).max() / (np.abs(ref).max() + 1e-9)))
            correct += int(got.argmax() == int(y[0]))
            seen += 1
    assert worst < 1e-3, worst  # float32 layers round differently in C; int8 ones do not
    assert correct / seen == acc  # the search's quantized accuracy is the bundle's


SEED = 0


def test_search_with_precisions_end_to_end(tmp_path, fresh_runner):
    from codegen import read_report
    from host.search import Search, SearchConfig
    from host.search.journal import Journal

    cfg = SearchConfig(model="host.models.zoo:digits_tiny", image_size=8, pretrain_epochs=1.0,
                       phase1_epochs=0.2, finetune_epochs=0.2, phase3_epochs=0.2,
                       final_epochs=0.2, runs=20, warmup=2, schemes=("unstructured", "filter"),
                       filter_types=("keep",), latency_ms=1.0, budget=4, batch=2,
                       strategy="random", precisions=("fp32", "int8"), seed=SEED)
    run = tmp_path / "run"
    s = Search(cfg, run, fresh_runner).run()
    names = [la["name"] for la in Journal(run).header()["space"]["layers"]]
    recs = [r for r in Journal(run).records() if r.get("type") == "candidate"
            and r.get("status") == "done"]
    q = [r for r in recs if r.get("int8_layers") is not None]
    assert q, "no candidate with int8 layers was evaluated"
    for r in q:  # int8 layers in the compiled bundle = the accuracy graph's = the choice's
        cand = Candidate.from_json(r["encoding"])
        want = {n for n, c in zip(names, cand.choices, strict=True) if c.precision == "int8"}
        assert set(r["int8_layers"]) == set(r["latency"]["int8_layers"]) == want
        assert 0.0 <= r["accuracy"] <= 1.0 and "accuracy_fp32" in r
    # the report and the summary show per-layer precision; the chosen one has int8 layers
    report = (run / "report.md").read_text()
    assert "| layer | choice | precision | weights kept |" in report
    assert "Precision searched per layer (fp32, int8)" in report
    chosen = Candidate.from_json(s["chosen"]["encoding"])
    assert [la["precision"] for la in s["layers"]] == [c.precision for c in chosen.choices]
    assert chosen.int8, "seeded: the chosen candidate has int8 layers"
    # the final bundle is compiled with those precisions, and its plan replays them
    p3 = s["phase3"]
    fp32 = read_report(run / "final" / "bundle").fp32_layers
    steps = json.loads((run / "final" / "bundle" / "manifest.json").read_text())["steps"]
    int8_steps = {st["name"] for st in steps if st["op"] in ("conv2d", "linear")} - set(fp32)
    assert int8_steps == set(p3["int8_layers"]) == set(p3["int8_layers_reference"])
    model = torch.load(run / "final" / "model.pt", weights_only=False)
    plan = PruningPlan.load(run / "final" / "plan.json")
    assert set(plan.int8_layers(model)) == int8_steps
    assert p3["final_acc_fp32"] is not None

