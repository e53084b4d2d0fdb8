"""Running the sparse benchmark on one model: prune and compile every mapping at every target,
load and check every contestant, sample them round-robin per thread count; and, for
ResNet-18, its 3x3 convs at unstructured sparsity against the dense ones, step by step.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import Progress

from host.console import err

from ..common import (
    EngineRun,
    bench_cache_dir,
    load_and_sample,
    load_workload,
    max_rel_error,
    rotated,
)
from .mappings import MAPPINGS
from .tables import print_plans
from .work import (
    GLUE_OPS,
    Contestant,
    LayerWork,
    ModelResult,
    Variant,
    compression,
    forward_work,
    prune,
    pruned_cache,
    slug,
    sparse_kernel_layers,
    step_times,
    targets_for,
    work_flops,
)

if TYPE_CHECKING:
    from torch import nn

    from codegen import Bundle
    from host.devices.session import Session

    from ..engines import Workload

# ---------------------------------------------------------------- one model

def bench_model(name: str, args: argparse.Namespace, session: Session,
                progress: Progress) -> ModelResult:
    # bundles live only for this model's measurements (VGG-16's weights are 553 MB)
    with tempfile.TemporaryDirectory(prefix="npas-bench-sparse-") as tmp:
        return _bench_model(name, args, session, progress, Path(tmp))


def _bench_model(name: str, args: argparse.Namespace, session: Session, progress: Progress,
                 tmp: Path) -> ModelResult:
    from codegen import compile_model

    from ..engines import OTHER_ENGINES, EngineUnavailable, OursEngine, Workload

    task = progress.add_task(f"{name}: loading the model", total=None)
    w = load_workload(name, args.input_size, bench_cache_dir(args.cache))
    ref, dense_works = forward_work(w.model, w.example)
    contestants: list[Contestant] = []
    unavailable: dict[str, str] = {}
    info: dict = {}

    progress.update(task, description=f"{name}: compiling ours dense")
    t0 = time.perf_counter()
    dense_bundle = compile_model(w.model, (w.example,), tmp / "dense", name=f"{w.cache.name}")
    dense_compile_s = round(time.perf_counter() - t0, 1)
    contestants.append(Contestant("ours dense", OursEngine(session, dense_bundle, "ours dense"),
                                  w, ref))

    def add_engines(workload, label_of: Callable[[str], str], ref_out) -> None:
        for eng_name in args.engines:
            label = label_of(eng_name)
            progress.update(task, description=f"{name}: converting for {label} (cached after "
                                              f"the first run)")
            eng = OTHER_ENGINES[eng_name]()
            try:
                info[label] = eng.prepare(workload)
            except EngineUnavailable as e:
                unavailable[label] = str(e)
                continue
            except Exception as e:
                unavailable[label] = f"conversion failed: {type(e).__name__}: {e}"
                continue
            contestants.append(Contestant(label, eng, workload, ref_out))

    add_engines(w, lambda e: e, ref)

    variants: list[Variant] = []
    for mapping in MAPPINGS[name]:
        for target, is_npas in targets_for(mapping.npas, args.rates):
            v = Variant(name, mapping.name, target, is_npas)
            variants.append(v)
            progress.update(task, description=f"{name}: solving {mapping.name} for "
                                              f"{target:g}x")
            solved, pruned, rules = prune(w.model, mapping, target, dense_works)
            v.rate, v.rules, v.solve_evaluations = solved.rate, rules, solved.evaluations
            if not solved.reachable:
                v.compression, v.note = solved.compression, solved.note(target)
                continue
            pref, works = forward_work(pruned.model, w.example)
            v.compression = compression(dense_works, works)
            v.conv_compression = compression(dense_works, works, "conv")
            v.linear_compression = compression(dense_works, works, "linear")
            v.work_flops = work_flops(works)
            v.flop_reduction = work_flops(dense_works) / v.work_flops
            progress.update(task, description=f"{name}: compiling {v.label}")
            try:
                t0 = time.perf_counter()
                bundle = compile_model(pruned.model, (w.example,),
                                       tmp / slug(v.label), name=slug(f"{name}-{v.label}"),
                                       schemes=pruned.schemes)
                v.compile_s = round(time.perf_counter() - t0, 1)
            except Exception as e:  # codegen errors of every kind: a result, not the end
                v.note = f"compile failed: {type(e).__name__}: {e}"
                continue
            v.manifest_flops = sum(s.flops for s in bundle.manifest.steps)
            v.sparse_layers, v.masked_layers = sparse_kernel_layers(bundle.manifest.steps,
                                                                    works)
            contestants.append(Contestant(v.label, OursEngine(session, bundle, v.label), w,
                                          pref))
            if args.engines_on_pruned and is_npas:
                pw = Workload(name, w.input_size, pruned.model, w.example,
                              pruned_cache(w, rules))
                add_engines(pw, lambda e, v=v: f"{e} on {v.mapping} {v.target:g}x", pref)
            del pruned
    progress.remove_task(task)
    print_plans(name, variants, dense_compile_s)

    unstr = None
    if name == "resnet18" and args.unstructured > 0:
        unstr = prepare_unstructured(w, args.unstructured, dense_works, tmp, progress)

    runs: list[EngineRun] = []
    for threads in args.threads:
        runs += bench_threads(name, threads, contestants, unavailable, args, progress)
        if unstr is not None:
            unstr.setdefault("threads", {})[threads] = measure_unstructured(
                session, dense_bundle, unstr, threads, args, progress)
    if unstr is not None:
        for k in ("bundles", "ref", "example"):
            unstr.pop(k, None)
    return ModelResult(name, work_flops(dense_works), variants, runs, info, unstr,
                       dense_compile_s)


def bench_threads(model: str, threads: int, contestants: Sequence[Contestant],
                  unavailable: Mapping[str, str], args: argparse.Namespace,
                  progress: Progress) -> list[EngineRun]:
    """Load and check every contestant, then sample them round-robin (common.measure)."""
    runs = {label: EngineRun(model, threads, label, "unavailable", why)
            for label, why in unavailable.items()}
    load_and_sample(model, threads, [
        (c.label, c.engine, c.workload, c.ref, args.time_wrong and c.label.startswith("ours "))
        for c in contestants], runs, args, progress)
    return list(runs.values())


# ---------------------------------------------------------------- 3x3 convs, unstructured

def conv3x3_names(model: nn.Module) -> set[str]:
    """ResNet-18's 3x3 convs: the layer* ones (the stem is 7x7, the shortcuts 1x1)."""
    from torch import nn

    return {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
            and tuple(m.kernel_size) == (3, 3) and m.groups == 1 and n.startswith("layer")}


# The sparse pass's policies compared on the unstructured 3x3 convs: "auto" keeps a conv dense
# where the cost model says dense is faster (Winograd layers at 20 % density), "always" runs
# every one sparse.
UNSTRUCTURED_POLICIES = ("auto", "always")


def prepare_unstructured(w: Workload, rate: float, dense_works: Mapping[str, LayerWork],
                         tmp: Path, progress: Progress) -> dict:
    from codegen import compile_model
    from host.pruning.command import build_plan
    from host.pruning.config import PruningConfig

    task = progress.add_task(f"resnet18: compiling its 3x3 convs at {rate:.0%} unstructured",
                             total=None)
    try:
        rules = [f"layer*.conv*=unstructured:{rate}"]
        pruned = build_plan(w.model, rules, PruningConfig(16, 8)).apply(w.model)
        ref, works = forward_work(pruned.model, w.example)
        bundles = {policy: compile_model(pruned.model, (w.example,), tmp / f"unstr-{policy}",
                                         name=f"resnet18-unstructured-{rate:g}-{policy}",
                                         schemes=pruned.schemes, sparse=policy)
                   for policy in UNSTRUCTURED_POLICIES}
    finally:
        progress.remove_task(task)
    convs = conv3x3_names(w.model)
    return {"rate": rate, "rules": rules, "convs": sorted(convs), "bundles": bundles,
            "ref": ref, "example": w.example.numpy(),
            "sparse_layers": {p: sparse_kernel_layers(b.manifest.steps, works)[0]
                              for p, b in bundles.items()},
            "conv_flops_dense": sum(dense_works[n].flops for n in convs),
            "conv_flops_sparse": sum(works[n].flops for n in convs)}


def measure_unstructured(session: Session, dense_bundle: Bundle, u: dict, threads: int,
                         args: argparse.Namespace, progress: Progress) -> dict:
    """The dense bundle and the sparse ones (one per policy) with per-layer times, interleaved
    (one run each per repetition, after one untimed run); per run: the whole run, the sum of
    the 3x3 conv steps and of the glue steps (GLUE_OPS). The sparse outputs are checked
    first."""
    from host.measure import MeasureConfig

    convs = set(u["convs"])
    keys: dict[str, str] = {}
    res: dict = {"rel_err": None, "runs": {"dense": [], **{p: [] for p in u["bundles"]}}}
    task = progress.add_task(f"resnet18, {threads} thread(s): 3x3 convs, per layer",
                             total=args.runs * (1 + len(u["bundles"])))
    try:
        one_run = MeasureConfig(threads=threads, runs=1, warmup=1, per_layer=True)
        keys["dense"] = session.load(dense_bundle, MeasureConfig(threads=threads))
        errs = []
        for policy, bundle in u["bundles"].items():
            keys[policy] = session.load(bundle, MeasureConfig(threads=threads))
            errs.append(max_rel_error(session.run(keys[policy], [u["example"]])[0], u["ref"]))
        res["rel_err"] = max(errs)
        for rep in range(args.runs):
            for k in rotated(list(keys), rep):
                r = session.benchmark(keys[k], one_run)
                res["runs"][k].append({
                    "total_ns": int(r.samples_ns[0]),
                    "conv3x3_ns": step_times(r.layers, convs),
                    "glue_ns": step_times(r.layers, ops=GLUE_OPS),
                    "layers": {la.name: int(la.samples_ns[0]) for la in r.layers}})
                progress.advance(task)
    except Exception as e:  # a failure is a result: the table says what happened
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        progress.remove_task(task)
        for k in keys.values():
            try:
                session.unload(k)
            except Exception as e:
                err.print(f"[yellow]warning:[/yellow] unloading: {escape(str(e))}")
    return res
