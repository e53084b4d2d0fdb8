"""`npas-host map MODEL --device D [--rate R]`: the rule-based pruning-scheme mapper.

Compiles the model dense and once per rung of the regularity ladders (``mapping.LADDERS``: all
layers of a kind at the same rung in one bundle), times every bundle per layer on the device,
picks each layer's knee (``mapping.decide``), then compiles and times the mapped plan. Writes
the plan (``-o``, replayable with ``compile/profile --plan``) and, beside it, the profile that
chose it (``PLAN.profile.json``); prints a table per layer (scheme, block size, why) and one
per bundle (compression, end-to-end median), so the mapped plan is seen next to every uniform
rung at the same rate.

With ``--dataset``, the model is trained first (``--pretrain-epochs``) and every bundle's plan
gets an accuracy (the same short masked fine-tune for each); ``--search N`` then runs the
search-based mapper (``map_search.py``: the block size of every layer searched inside its
family with N accuracy evaluations, latency from the measured profile, under the knee's) and
adds its plan, measured end to end beside the others, to both tables. The plan written is the
searched one when there is one.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from rich.table import Table

from ..console import err, out
from ..errors import UserError
from ..measure import MeasureConfig
from .config import PruningConfig, PruningError, parse_rate
from .map_search import DEFAULT_SLACK, MapSearchConfig, MapSpace, plan_accuracy, search
from .mapping import (
    DEFAULT_TOLERANCE,
    LADDERS,
    MapResult,
    decide,
    mapped_plan,
    prunable_layers,
    rung_plan,
)
from .timing import BundleTimer, for_layer

MAP_RUNS = 30
# A local runner's private store (unless --store names one): the ladder's bundles differ in
# weights, and VGG-16's eight are ~2.5 GB; removed when the command ends
MAP_STORE_BYTES = 8 << 30
MAP_WARMUP = 5
MAP_SECONDS = 2.0
MIN_RUNS = 8


def runs_for(ms: float, seconds: float, most: int) -> int:
    """Timed runs of a bundle whose inference takes about ``ms``: ``seconds`` worth, between
    MIN_RUNS (or ``most`` if lower) and ``most``."""
    want = int(seconds * 1000.0 / ms) if ms > 0 else most
    return max(min(MIN_RUNS, most), min(most, want))


def register(sub: argparse._SubParsersAction) -> None:
    from ..commands.args import add_device_args

    p = sub.add_parser("map", help="map a pruning scheme and block size to every layer from "
                                   "latencies measured on a device (writes a plan)")
    p.add_argument("model", help="torchvision name, module:factory, or a .pt2 export")
    p.add_argument("--device", default="local",
                   help="'local' (the host runner; default), 'qemu-arm64', or a phone serial")
    p.add_argument("--rate", default="5x",
                   help="pruning rate of every mapped layer: a fraction removed (0.8) or a "
                        "compression (5x; default)")
    p.add_argument("--input-shape",
                   help="the input the bundles are compiled and timed for (default "
                        "1,3,224,224, or the dataset's images with --dataset)")
    p.add_argument("--dataset",
                   help="train and validate on this (digits, digits-hard, cifar10:PATH, "
                        "imagefolder:PATH): every bundle's plan gets an accuracy; needed by "
                        "--search")
    p.add_argument("--pretrain-epochs", type=float, default=3.0,
                   help="with --dataset: epochs the model trains before mapping (default 3; "
                        "0 for a trained .pt2)")
    p.add_argument("--finetune-epochs", type=float, default=0.5,
                   help="with --dataset: the masked fine-tune each plan gets before it is "
                        "validated (default 0.5)")
    p.add_argument("--search", type=int, default=0, metavar="N",
                   help="search-based mapping: N plans evaluated for accuracy (the knee's "
                        "included), block sizes searched under the knee's latency (default 0: "
                        "rule-based only)")
    p.add_argument("--slack", type=float, default=DEFAULT_SLACK,
                   help="the search's latency limit: the knee's predicted × (1 + slack)")
    p.add_argument("--seed", type=int, default=0, help="the search's and fine-tunes' seed")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="a layer takes the finest block whose time is within this fraction of "
                        f"what regularity can buy (default {DEFAULT_TOLERANCE:g})")
    p.add_argument("--runs", type=int, default=MAP_RUNS,
                   help=f"timed runs per bundle (default {MAP_RUNS})")
    p.add_argument("--seconds", type=float, default=MAP_SECONDS,
                   help="timed seconds per rung's bundle: a slow model gets fewer runs (at "
                        f"least {MIN_RUNS}, at most --runs; default {MAP_SECONDS:g})")
    p.add_argument("--warmup", type=int, default=MAP_WARMUP,
                   help=f"discarded warm-up runs per bundle (default {MAP_WARMUP})")
    p.add_argument("--rounds", type=int, default=3,
                   help="the end-to-end comparison times every bundle in this many rotated "
                        "rounds of RUNS/ROUNDS runs each (default 3)")
    p.add_argument("--threads", type=int, default=1,
                   help="runner threads; 0: one per big core (default 1)")
    p.add_argument("-o", "--output", type=Path,
                   help="the plan JSON to write (default: MODEL.map.json here)")
    p.add_argument("--vector-width", type=int, default=16,
                   help="filter/channel widths stay multiples of this (default 16)")
    p.add_argument("--patterns", type=int, default=8,
                   help="pattern set size per layer for pattern pruning (default 8)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_device_args(p)


def _check(args: argparse.Namespace) -> float:
    try:
        rate = parse_rate(args.rate)
    except PruningError as e:
        raise UserError(f"--rate: {e}") from None
    if not 0 < rate < 1:
        raise UserError(f"--rate must remove a fraction in (0, 1) (or be a compression > 1x); "
                        f"got {args.rate}")
    if args.seconds <= 0:
        raise UserError(f"--seconds must be positive; got {args.seconds}")
    if args.runs < 1 or args.warmup < 1 or args.threads < 0 or not 1 <= args.rounds <= 100:
        raise UserError(f"--runs and --warmup must be ≥ 1, --rounds 1..100 and --threads ≥ 0; "
                        f"got {args.runs}, {args.warmup}, {args.rounds}, {args.threads}")
    if not 0 <= args.tolerance <= 1:
        raise UserError(f"--tolerance must be in [0, 1]; got {args.tolerance}")
    if args.search < 0 or (args.search and not args.dataset):
        raise UserError("--search N needs N ≥ 0 and --dataset (accuracy is its feedback)")
    if args.pretrain_epochs < 0 or args.finetune_epochs < 0 or not 0 <= args.slack <= 1:
        raise UserError("--pretrain-epochs and --finetune-epochs must be ≥ 0 and --slack in "
                        "[0, 1]")
    return rate


def _data(args: argparse.Namespace):
    if not args.dataset:
        return None
    from ..models import parse_shape
    from ..models.data import load_dataset

    if args.input_shape:
        shape = parse_shape(args.input_shape)
        if len(shape) != 4:
            raise UserError(f"--input-shape {args.input_shape}: with --dataset, an image "
                            f"batch N,C,H,W (H = W)")
        return load_dataset(args.dataset, image_size=shape[-1], channels=shape[1])
    return load_dataset(args.dataset)


def _search(args, model, data, rate, cfg, res: MapResult, progress, task):
    """The search-based mapper over the measured profile; its plan (the knee's record kept as
    "mapped" beside it)."""
    space = MapSpace(model, rate, res.choices)
    scfg = MapSearchConfig(args.search, args.slack, args.finetune_epochs, args.seed)

    def plan_acc(plan) -> float:
        return plan_accuracy(model, plan, data, args.finetune_epochs, args.seed)

    def on_eval(i: int, e) -> None:
        progress.update(task, description=f"map search: plan {i}/{args.search}, "
                                          f"{e.accuracy:.4f} at {e.predicted_ms:.3f} ms "
                                          f"(predicted){'' if e.feasible else ', over'}")
    r = search(space, plan_acc, scfg, cfg, on_eval)
    res.accuracy["searched"] = r.best.accuracy
    res.search = r.to_dict(space)
    res.choices = r.choices
    return mapped_plan(r.choices, rate, cfg)


def weights_compression(model, pruned_model) -> float:
    """Conv/Linear weights of ``model`` over the non-zero ones left in ``pruned_model``."""
    from torch import nn

    def count(m, nonzero: bool) -> int:
        return sum(int((x.weight != 0).sum()) if nonzero else x.weight.numel()
                   for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear)))
    return count(model, False) / max(1, count(pruned_model, True))


def run(args: argparse.Namespace) -> int:
    """`npas-host map`. User errors raise UserError/PruningError (the CLI prints them)."""
    from ..commands.args import device_spec
    from ..commands.compile import progress_bar
    from ..devices import open_device
    from ..devices.session import Session
    from ..targets import toolchain_for_device

    rate = _check(args)
    from ..models import example_inputs, load_model, parse_shape

    model = load_model(args.model)
    data = _data(args)
    shape = (parse_shape(args.input_shape) if args.input_shape
             else (1, *data.input_shape) if data is not None else (1, 3, 224, 224))
    example = example_inputs(shape)
    cfg = PruningConfig(args.vector_width, args.patterns)
    if data is not None:
        from ..models import adapt_head

        note = adapt_head(model, data.num_classes)
        if note:
            err.print(note)
    if data is not None and args.pretrain_epochs > 0:
        from ..models.train import TrainConfig, evaluate, train

        err.print(f"training {args.model} on {data.describe()} for {args.pretrain_epochs:g} "
                  f"epochs")
        train(model, data, args.pretrain_epochs, TrainConfig(), seed=0)
        err.print(f"trained: {evaluate(model, data):.4f} on validation")

    def accuracy(label: str, plan) -> None:
        if data is not None and label not in res.accuracy:
            res.accuracy[label] = plan_accuracy(model, plan, data, args.finetune_epochs,
                                                args.seed)
    output = args.output or Path(f"{Path(args.model).stem.replace(':', '_')}.map.json")
    try:  # before minutes of measuring, not after
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"-o {output}: cannot create its folder ({e.strerror})") from None
    names = list(prunable_layers(model))
    if not any(k in LADDERS for k in prunable_layers(model).values()):
        raise UserError(f"{args.model}: no layer the mapper prunes (k×k or 1x1 convs without "
                        f"groups, Linear); kinds found: "
                        f"{sorted(set(prunable_layers(model).values())) or 'none'}")
    with ExitStack() as stack, progress_bar() as progress:
        task = progress.add_task(f"starting the runner on {args.device}", total=None)
        device = open_device(device_spec(args, private_store_bytes=MAP_STORE_BYTES), stack)
        session = stack.enter_context(Session(device, on_event=lambda m: err.print(m)))
        info = session.client.device_info()
        toolchain = toolchain_for_device(info, "cpu")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="npas-map-")))
        res = MapResult(args.model, rate, args.tolerance, [], mapped_plan([], rate, cfg),
                        device={"name": args.device, "abi": info.abi,
                                "cpu": getattr(info, "cpu_model", ""),
                                "features": list(getattr(info, "cpu_features", ()))})
        res.compression["dense"] = 1.0
        m = BundleTimer(session, toolchain, example, tmp, progress, task,
                        MeasureConfig(runs=args.runs, warmup=args.warmup, threads=args.threads,
                                      pin_big_cores=device.traits.pin_big_cores,
                                      per_layer=True))
        n = 2 + len(next(iter(LADDERS.values())))
        m.compile("dense", model, {}, f"[1/{n}]")
        dense_layers = m.per_layer("dense", f"[1/{n}]")
        dense = for_layer(dense_layers, names)
        # a slow model needs fewer runs for stable medians: the rungs get about --seconds of
        # timed runs each (at most --runs, at least MIN_RUNS)
        m.cfg = replace(m.cfg, runs=runs_for(sum(dense_layers.values()), args.seconds,
                                             args.runs))
        rung_ms = []
        for i in range(n - 2):
            label = " / ".join(dict.fromkeys(L[i].label for L in LADDERS.values()))
            plan = rung_plan(model, i, rate, cfg)
            pruned = plan.apply(model)
            accuracy(label, plan)
            res.compression[label] = round(weights_compression(model, pruned.model), 3)
            m.compile(label, pruned.model, pruned.schemes, f"[{i + 2}/{n}]")
            rung_ms.append(for_layer(m.per_layer(label, f"[{i + 2}/{n}]"), names))
        res.choices = decide(model, rate, rung_ms, dense, args.tolerance)
        res.plan = mapped_plan(res.choices, rate, cfg)
        pruned = res.plan.apply(model)
        accuracy("mapped", res.plan)
        res.compression["mapped"] = round(weights_compression(model, pruned.model), 3)
        m.compile("mapped", pruned.model, pruned.schemes, f"[{n}/{n}]")
        if args.search:
            res.plan = _search(args, model, data, rate, cfg, res, progress, task)
            pruned = res.plan.apply(model)
            res.compression["searched"] = round(weights_compression(model, pruned.model), 3)
            m.compile("searched", pruned.model, pruned.schemes, "[searched]")
        res.device_s = m.device_s  # what the plan cost; the comparison's is apart
        res.end_to_end_ms = m.side_by_side(args.rounds)
        res.compare_device_s, res.compile_s = m.device_s - res.device_s, m.compile_s
        progress.remove_task(task)
    res.plan.save(output)
    profile = output.with_name(output.stem + ".profile.json")
    profile.write_text(json.dumps(res.to_dict(), indent=1))
    if args.json:
        print(json.dumps({"plan": res.plan.to_dict(), "plan_path": str(output),
                          "profile_path": str(profile), **res.to_dict()}))
        return 0
    _print(res, output, profile)
    return 0


def _print(res: MapResult, plan_path: Path, profile_path: Path) -> None:
    t = Table(title=f"{res.model}: schemes mapped at rate {res.rate:.3f} (the knee: the finest "
                    f"block within {res.tolerance:.0%} of what regularity buys)")
    for col in ("layer", "kind", "scheme / block", "dense ms", "why"):
        t.add_column(col, justify="right" if col == "dense ms" else "left")
    for c in res.choices:
        t.add_row(c.layer, c.kind, c.rung, "" if c.dense_ms is None else f"{c.dense_ms:.3f}",
                  c.why)
    out.print(t)
    e = Table(title="end to end, side by side (medians over rotated rounds): every uniform "
                    "rung and the mapped plan, same layers, same rate")
    cols = ("bundle", "weights ×", "median ms", "vs dense") + (
        ("accuracy",) if res.accuracy else ())
    for col in cols:
        e.add_column(col, justify="left" if col == "bundle" else "right")
    dense = res.end_to_end_ms.get("dense")
    for label, ms in res.end_to_end_ms.items():
        acc = res.accuracy.get(label)
        e.add_row(label, f"{res.compression.get(label, 1.0):.2f}", f"{ms:.3f}",
                  f"{dense / ms:.2f}x" if dense else "",
                  *(() if not res.accuracy else ("" if acc is None else f"{acc:.4f}",)))
    out.print(e)
    if res.search:
        s = res.search
        out.print(f"search-based mapping: {len(s['history'])} plans evaluated in "
                  f"{s['seconds']:.0f} s under {s['limit_ms']:.3f} ms (the knee's predicted "
                  f"latency of the mapped layers); knee {s['knee']['accuracy']:.4f} at "
                  f"{s['knee']['predicted_ms']:.3f} ms, searched {s['best']['accuracy']:.4f} at "
                  f"{s['best']['predicted_ms']:.3f} ms")
    out.print(f"{res.device_s:.1f} s on the device for the plan (uploads, loads and runs; "
              f"{res.compare_device_s:.1f} s more for the side-by-side comparison), "
              f"{res.compile_s:.1f} s compiling; plan → {plan_path} (use it with "
              f"`compile/profile --plan`), profile → {profile_path}")
