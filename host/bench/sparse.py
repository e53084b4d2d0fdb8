"""Sparse latency: pruned models compiled with our sparse kernels, against our dense code and
the fastest dense engine (ONNX Runtime, MNN, ncnn), interleaved, in one run.

For every model the mappings below (per-layer pruning schemes, as data) are solved for each
target weights compression (the NPAS rates: VGG-16 8.2x, ResNet-18 5.3x, MobileNet-V2 1.8x,
and ``--rates``), compiled with ``compile_model(schemes=...)``, checked against PyTorch's
pruned model, and sampled round-robin with our dense bundle and the other engines on the dense
model (they run zeros as slowly as any weight; ``--engines-on-pruned`` shows it). Printed per
thread count: compression, FLOP reduction, medians, speed-ups, GFLOP/s on the non-zero work.
With resnet18 it also times ResNet-18's 3x3 convs at 80 % unstructured sparsity against the
dense ones, step by step, both bundles in the same run.

    python -m host.bench.sparse --models resnet18 --threads 1,2 --runs 15
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from host.console import err, out

from .dense import (
    BenchArgError,
    EngineRun,
    _close,
    _progress,
    announce_machine,
    attach_samples,
    bench_cache_dir,
    check_sampling,
    engine_names,
    gflops,
    load_checked,
    load_workload,
    local_session,
    measure,
    parse_models,
    parse_threads,
    rotated,
)

DEFAULT_MODELS = ("resnet18", "mobilenet_v2", "vgg16")
DENSE_ENGINES = ("ONNX Runtime", "MNN", "ncnn")  # "the fastest dense engine" is one of these
# Issue 4's bar at the NPAS rates, 1 thread: our sparse bundle over the fastest dense engine.
NEEDED_SPEEDUP = {"vgg16": 2.0, "resnet18": 1.8, "mobilenet_v2": 1.3}


# ---------------------------------------------------------------- mappings (data)

@dataclass(frozen=True)
class Rule:
    """One line of a mapping: ``layers`` (a glob over module paths) pruned with ``scheme`` at
    ``rate``, a fixed rate ("2x") or "R", the rate solved for the target compression."""

    layers: str
    scheme: str
    rate: str
    params: str = ""  # "filters=16,channels=4"
    only_1x1: bool = False  # of the layers the glob hits, only 1x1 convs without groups

    def texts(self, rate: float, kinds: Mapping[str, str]) -> list[str]:
        """``npas-host plan`` rule strings at the solved ``rate``; ``kinds``: every Conv2d and
        Linear of the model → "1x1", "kxk", "grouped" or "linear" (see ``layer_kinds``)."""
        r = f"{rate:.6f}" if self.rate == "R" else self.rate
        tail = f":{self.params}" if self.params else ""
        if not self.only_1x1:
            return [f"{self.layers}={self.scheme}:{r}{tail}"]
        names = [n for n in fnmatch.filter(kinds, self.layers) if kinds[n] == "1x1"]
        return [f"{n}={self.scheme}:{r}{tail}" for n in names]

    def __str__(self) -> str:
        p = f":{self.params}" if self.params else ""
        return f"{self.layers}={self.scheme}:{self.rate}{p}" + (" (1x1 only)" if self.only_1x1
                                                                 else "")


@dataclass(frozen=True)
class PruneMapping:
    """Per-layer schemes for one model; ``npas`` is the weights compression NPAS reported
    for it. Later rules win (as in ``npas-host plan``)."""

    model: str
    name: str
    npas: float
    rules: tuple[Rule, ...]
    why: str

    def texts(self, rate: float, kinds: Mapping[str, str]) -> list[str]:
        return [t for r in self.rules for t in r.texts(rate, kinds)]


BP = "filters=16,channels=4"  # block-punched blocks: 16 filters × 4 channels share positions
MAPPINGS: dict[str, tuple[PruneMapping, ...]] = {
    "resnet18": (
        PruneMapping("resnet18", "block-punched", 5.3, (
            Rule("conv1", "block_punched", "2x"),
            Rule("layer*", "block_punched", "R", BP),
            Rule("layer*.downsample.0", "block", "2x", "rows=16"),
        ), "3x3 convs block-punched at R, the 7x7 stem and the 1x1 shortcuts at 2x, fc dense"),
    ),
    "vgg16": (
        PruneMapping("vgg16", "block-punched + block fc", 8.2, (
            Rule("features.*", "block_punched", "R", BP),
            Rule("features.0", "block_punched", "2x"),
            Rule("classifier.*", "block", "R", "rows=16"),
        ), "3x3 convs block-punched at R (the 3-channel first one at 2x); the Linear layers, "
           "which hold 90 % of the weights, block-pruned at the same R"),
    ),
    "mobilenet_v2": (
        PruneMapping("mobilenet_v2", "filter (structured)", 1.8, (
            Rule("features.*.conv.0.0", "filter", "R", only_1x1=True),
            Rule("features.18.0", "filter", "R"),
        ), "filter pruning of the expansion 1x1 convs (narrows the depthwise conv and the "
           "projection's input) and of the last 1x1 conv (narrows the classifier's input): "
           "dense kernels on narrower layers. Expansions alone reach 1.8x only by keeping "
           "~14 % of their filters, since the classifier and features.18 hold half the "
           "weights"),
        PruneMapping("mobilenet_v2", "block 1x1", 1.8, (
            Rule("features.*.conv.*", "block", "R", "rows=16", only_1x1=True),
            Rule("features.18.0", "block", "R", "rows=16"),
        ), "block pruning (16 rows) of every 1x1 conv: sparse kernels on blocked activations "
           "(bcsr_blocked: no layout change around the depthwise convs); depthwise convs, the "
           "stem and the classifier dense"),
    ),
}


def layer_kinds(model) -> dict[str, str]:
    """Every Conv2d and Linear of ``model`` → "1x1" (1x1 conv without groups), "kxk"
    (k×k conv without groups), "grouped" or "linear"."""
    from torch import nn

    kinds = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            kinds[name] = "linear"
        elif isinstance(m, nn.Conv2d):
            kinds[name] = ("grouped" if m.groups != 1 else
                           "1x1" if tuple(m.kernel_size) == (1, 1) else "kxk")
    return kinds


# ---------------------------------------------------------------- arguments

def parse_rates(text: str) -> tuple[float | str, ...]:
    """'npas,3x,10' → ('npas', 3.0, 10.0): "npas" is each model's NPAS compression, the
    rest weights compression ratios (×, ≥ 1.1)."""
    rates: list[float | str] = []
    for t in (t.strip().lower() for t in text.split(",")):
        if not t:
            continue
        if t == "npas":
            rates.append("npas")
            continue
        try:
            v = float(t.rstrip("x×"))
        except ValueError:
            raise BenchArgError(f"--rates {text!r}: {t!r} is neither 'npas' nor a compression "
                                f"ratio like 3x") from None
        if not 1.1 <= v <= 100:
            raise BenchArgError(f"--rates {text!r}: a compression ratio must be within "
                                f"1.1x..100x, got {t}")
        rates.append(v)
    if not rates:
        raise BenchArgError(f"--rates {text!r}: give at least one, e.g. npas,3x")
    return tuple(dict.fromkeys(rates))


def targets_for(npas: float, rates: Sequence[float | str]) -> list[tuple[float, bool]]:
    """(compression, is the NPAS rate) per target, ascending; a ratio equal to the NPAS one is
    the NPAS target."""
    got: dict[float, bool] = {}
    for r in rates:
        v = npas if r == "npas" else float(r)
        got[v] = got.get(v, False) or r == "npas" or v == npas
    return sorted(got.items())


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="npas-host bench sparse", description=(
        "Pruned models on our sparse kernels against our dense code and the fastest dense "
        "engine among ONNX Runtime, MNN and ncnn (batch 1, interleaved samples, outputs "
        "checked against PyTorch)."))
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help=f"comma-separated, of {', '.join(MAPPINGS)} (default: all)")
    ap.add_argument("--threads", default="1,2", help="thread counts (default: 1,2)")
    ap.add_argument("--rates", default="npas,2x,3x,10x",
                    help="weights compression targets: 'npas' (VGG-16 8.2x, ResNet-18 5.3x, "
                         "MobileNet-V2 1.8x) and ratios (default: npas,2x,3x,10x); a mapping "
                         "that cannot reach one says so")
    ap.add_argument("--runs", type=int, default=15, help="timed samples per engine (default 15)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed inferences per engine before sampling (default 3)")
    ap.add_argument("--input-size", type=int, default=224,
                    help="input height and width (default 224)")
    ap.add_argument("--engines", default=",".join(DENSE_ENGINES),
                    help="dense engines to compare with (default: all of "
                         f"{', '.join(DENSE_ENGINES)}; 'none' for ours only)")
    ap.add_argument("--engines-on-pruned", action="store_true",
                    help="also run those engines on the pruned models at the NPAS rate "
                         "(converted once, cached): they run the zeros")
    ap.add_argument("--unstructured", type=float, default=0.8, metavar="RATE",
                    help="with resnet18: time its 3x3 convs pruned unstructured at RATE "
                         "(default 0.8) against the dense ones, step by step; 0 skips it")
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="largest accepted max|out - ref| / max|ref| (default 1e-3)")
    ap.add_argument("--time-wrong", action="store_true",
                    help="time our sparse bundles even when their output fails the check "
                         "(marked wrong; for kernels being worked on)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="write every sample here")
    ap.add_argument("--cache", type=Path,
                    help="converted-model cache (default: ~/.cache/npas/bench)")
    ap.add_argument("--runner", type=Path, help="the npas-runner binary")
    return ap


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.models = parse_models(args.models)
    unknown = [m for m in args.models if m not in MAPPINGS]
    if unknown:
        raise BenchArgError(f"--models: no pruning mapping for {', '.join(unknown)}; choose "
                            f"from {', '.join(MAPPINGS)} (mappings live in host/bench/sparse.py)")
    args.threads = parse_threads(args.threads)
    args.rates = parse_rates(args.rates)
    check_sampling(args)
    if not 0 <= args.unstructured < 1:
        raise BenchArgError(f"--unstructured is the fraction of weights removed, in [0, 1); "
                            f"got {args.unstructured}")
    names = engine_names(args.engines)
    if names == ("none",):
        names = ()
    bad = [e for e in names if e not in DENSE_ENGINES]
    if bad:
        raise BenchArgError(f"--engines: unknown {', '.join(bad)}; choose from "
                            f"{', '.join(DENSE_ENGINES)} or 'none'")
    args.engines = names
    return args


# ---------------------------------------------------------------- pure arithmetic

@dataclass
class Solved:
    """The rate R that gives a mapping its target compression (or the closest it got)."""

    rate: float
    compression: float
    evaluations: int
    reachable: bool

    def note(self, target: float) -> str:
        if self.reachable:
            return ""
        how = "at most" if self.compression < target else "at least"
        return f"unreachable: this mapping gives {how} {self.compression:.2f}x"


def solve_rate(compression_of: Callable[[float], float], target: float, tol: float = 0.02,
               hi: float = 0.995, max_evals: int = 14) -> Solved:
    """The rate R in [0, hi] whose ``compression_of(R)`` is within ``tol`` (relative) of
    ``target``. The kept fraction 1/compression is close to linear in R for mask schemes and
    a staircase for filter pruning (widths in steps of the vector width), so this is regula
    falsi on it with the Illinois rule (converges on both); it stops at tol/4. Not reachable:
    the closest end, ``reachable`` False."""
    seen: list[tuple[float, float]] = []

    def g(r: float) -> float:
        c = compression_of(r)
        seen.append((r, c))
        return 1.0 / c - 1.0 / target

    def best() -> Solved:
        r, c = min(seen, key=lambda rc: abs(rc[1] / target - 1))
        return Solved(r, c, len(seen), abs(c / target - 1) <= tol)

    lo, glo = 0.0, g(0.0)
    if glo <= 0:  # the fixed rules alone compress enough
        return best()
    up, gup = hi, g(hi)
    if gup > 0:
        return best()
    side = 0
    while len(seen) < max_evals and up - lo > 1e-7:
        r = up - gup * (up - lo) / (gup - glo)
        gr = g(r)
        if abs(seen[-1][1] / target - 1) <= tol / 4:
            break
        if gr > 0:
            lo, glo = r, gr
            if side == 1:
                gup /= 2
            side = 1
        else:
            up, gup = r, gr
            if side == -1:
                glo /= 2
            side = -1
    return best()


@dataclass(frozen=True)
class LayerWork:
    """One Conv2d/Linear at the benchmark input: output positions per filter (× batch), its
    weights and how many of them are non-zero."""

    kind: str  # "conv" or "linear"
    positions: int
    weights: int
    nonzero: int

    @property
    def flops(self) -> int:
        """2 × non-zero multiply-adds."""
        return 2 * self.positions * self.nonzero

    @property
    def dense_flops(self) -> int:
        return 2 * self.positions * self.weights


def work_flops(works: Mapping[str, LayerWork]) -> int:
    return sum(w.flops for w in works.values())


def compression(before: Mapping[str, LayerWork], after: Mapping[str, LayerWork],
                kind: str | None = None) -> float:
    """Weights of the unpruned layers / non-zero weights of the pruned ones (all Conv2d and
    Linear layers, or those of ``kind``)."""
    b = sum(w.weights for w in before.values() if kind in (None, w.kind))
    a = sum(w.nonzero for w in after.values() if kind in (None, w.kind))
    return b / a if a else float("inf")


def sparse_kernel_layers(steps: Iterable, works: Mapping[str, LayerWork]) -> tuple[int, int]:
    """(layers with zeros that got a sparse kernel, layers with zeros): a sparse step counts
    only the non-zero multiply-adds in its ``flops``, a dense one all of them."""
    masked = {n for n, w in works.items() if w.nonzero < w.weights}
    sparse = {s.name for s in steps
              if s.name in masked and s.flops < 0.9 * works[s.name].dense_flops}
    return len(sparse), len(masked)


def speedup(slow_ms: float | None, fast_ms: float | None) -> float | None:
    return slow_ms / fast_ms if slow_ms and fast_ms else None


def fastest(runs: Iterable[EngineRun]) -> EngineRun | None:
    ok = [r for r in runs if r.status == "ok" and r.median_ms is not None]
    return min(ok, key=lambda r: r.median_ms) if ok else None


def step_times(layers: Sequence, names: set[str] | None = None,
               ops: tuple[str, ...] = ()) -> int:
    """Sum of the first sample of the per-layer timings named in ``names`` or whose op is in
    ``ops`` (one run)."""
    return sum(la.samples_ns[0] for la in layers
               if (names is not None and la.name in names) or la.op in ops)


# Steps a bundle has only around sparse layers: zero-padded input planes, and layout changes
# between the dense kernels' blocked NCHW16c and the sparse kernels' plain NCHW.
GLUE_OPS = ("sparse_pad", "to_nchw", "to_nchwxc")


# ---------------------------------------------------------------- records

@dataclass
class Variant:
    """One mapping at one target compression, as pruned and compiled."""

    model: str
    mapping: str
    target: float
    npas: bool
    rate: float | None = None
    rules: list[str] = field(default_factory=list)
    compression: float | None = None  # all Conv2d + Linear weights
    conv_compression: float | None = None
    linear_compression: float | None = None
    flop_reduction: float | None = None
    work_flops: int | None = None  # non-zero conv/linear work, 2 × multiply-adds
    manifest_flops: int | None = None  # sum of the bundle's Step.flops (counts the zeros of
    # masked layers the code generator kept dense, and pooling/epilogue work)
    sparse_layers: int = 0  # masked layers that got a sparse kernel
    masked_layers: int = 0
    compile_s: float | None = None
    solve_evaluations: int = 0
    note: str = ""

    @property
    def label(self) -> str:
        return f"ours {self.mapping} {self.target:g}x"

    @property
    def rate_text(self) -> str:
        return f"NPAS {self.target:g}x" if self.npas else f"{self.target:g}x"


@dataclass
class Contestant:
    """An engine with the workload it runs and the output it must give."""

    label: str
    engine: object
    workload: object
    ref: object


# ---------------------------------------------------------------- pruning and compiling

def forward_work(model, x) -> tuple:
    """PyTorch's output on ``x`` and every Conv2d/Linear's LayerWork (forward hooks)."""
    import torch
    from torch import nn

    works: dict[str, LayerWork] = {}
    hooks = []

    def hook(name):
        def fn(m, _inp, y):
            per = y.numel() // y.shape[1] if isinstance(m, nn.Conv2d) else y.numel() // y.shape[-1]
            works[name] = LayerWork("linear" if isinstance(m, nn.Linear) else "conv", per,
                                    m.weight.numel(), int(torch.count_nonzero(m.weight)))
        return fn

    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(m.register_forward_hook(hook(name)))
    try:
        with torch.inference_mode():
            y = model(x).numpy()
    finally:
        for h in hooks:
            h.remove()
    return y, works


def prune(model, mapping: PruneMapping, target: float, dense: Mapping[str, LayerWork]):
    """Solve the mapping's rate for ``target``: (Solved, its PrunedModel, its rule strings)."""
    from torch import nn

    from host.pruning.command import build_plan
    from host.pruning.config import PruningConfig

    kinds = layer_kinds(model)
    cfg = PruningConfig(vector_width=16, pattern_count=8)
    kept: dict = {}

    def compression_of(rate: float) -> float:
        rules = mapping.texts(rate, kinds)
        pruned = build_plan(model, rules, cfg).apply(model)
        after = sum(int((m.weight != 0).sum()) for m in pruned.model.modules()
                    if isinstance(m, (nn.Conv2d, nn.Linear)))
        c = sum(w.weights for w in dense.values()) / after
        if not kept or abs(c / target - 1) < abs(kept["c"] / target - 1):
            kept.update(c=c, pruned=pruned, rules=rules)  # only the best: VGG-16 is 553 MB
        return c

    solved = solve_rate(compression_of, target)
    return solved, kept["pruned"], kept["rules"]


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def pruned_cache(w, rules: Sequence[str]) -> Path:
    """A folder for the other engines' conversions of a pruned model: keyed by the rules and
    the cached base weights they were applied to."""
    st = (w.cache / "weights.pt").stat()
    key = hashlib.sha256(json.dumps([list(rules), st.st_size, st.st_mtime_ns]).encode())
    d = w.cache / f"pruned-{key.hexdigest()[:16]}"
    d.mkdir(exist_ok=True)
    return d


# ---------------------------------------------------------------- one model

@dataclass
class ModelResult:
    model: str
    dense_flops: int
    variants: list[Variant]
    runs: list[EngineRun]  # every contestant at every thread count
    engines_info: dict
    unstructured: dict | None = None
    dense_compile_s: float | None = None


def bench_model(name: str, args, session, progress) -> ModelResult:
    # bundles live only for this model's measurements (VGG-16's weights are 553 MB)
    with tempfile.TemporaryDirectory(prefix="npas-bench-sparse-") as tmp:
        return _bench_model(name, args, session, progress, Path(tmp))


def _bench_model(name: str, args, session, progress, tmp: Path) -> ModelResult:
    from codegen import compile_model

    from .engines import OTHER_ENGINES, EngineUnavailable, OursEngine, Workload

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
                  unavailable: Mapping[str, str], args, progress) -> list[EngineRun]:
    """Load and check every contestant, then sample them round-robin (dense.measure)."""
    runs = {label: EngineRun(model, threads, label, "unavailable", why)
            for label, why in unavailable.items()}
    loaded: dict = {}
    task = progress.add_task(f"{model}, {threads} thread(s): loading", total=None)
    try:
        for c in contestants:
            progress.update(task, description=f"{model}, {threads} thread(s): loading and "
                                              f"checking {c.label}")
            runs[c.label], lo = load_checked(c.label, c.engine, c.workload, c.ref, threads,
                                             args, args.time_wrong and c.label.startswith("ours "))
            if lo is not None:
                loaded[c.label] = lo
        progress.remove_task(task)
        task = progress.add_task(f"{model}, {threads} thread(s): sampling {len(loaded)} "
                                 f"engines round-robin", total=args.runs * len(loaded))
        samples = measure(loaded, args.runs, lambda: progress.advance(task))
    finally:
        for lo in loaded.values():
            _close(lo)
        progress.remove_task(task)
    attach_samples(runs, samples)
    return list(runs.values())


# ---------------------------------------------------------------- 3x3 convs, unstructured

def conv3x3_names(model) -> set[str]:
    """ResNet-18's 3x3 convs: the layer* ones (the stem is 7x7, the shortcuts 1x1)."""
    from torch import nn

    return {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)
            and tuple(m.kernel_size) == (3, 3) and m.groups == 1 and n.startswith("layer")}


# The sparse pass's policies compared on the unstructured 3x3 convs: "auto" keeps a conv dense
# where the cost model says dense is faster (Winograd layers at 20 % density), "always" runs
# every one sparse.
UNSTRUCTURED_POLICIES = ("auto", "always")


def prepare_unstructured(w, rate: float, dense_works, tmp: Path, progress) -> dict:
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


def measure_unstructured(session, dense_bundle, u: dict, threads: int, args,
                         progress) -> dict:
    """The dense bundle and the sparse ones (one per policy) with per-layer times, interleaved
    (one run each per repetition, after one untimed run); per run: the whole run, the sum of
    the 3x3 conv steps and of the glue steps (GLUE_OPS). The sparse outputs are checked
    first."""
    from host.session import LoadOptions

    from .dense import max_rel_error

    convs = set(u["convs"])
    keys: dict[str, str] = {}
    res: dict = {"rel_err": None, "runs": {"dense": [], **{p: [] for p in u["bundles"]}}}
    task = progress.add_task(f"resnet18, {threads} thread(s): 3x3 convs, per layer",
                             total=args.runs * (1 + len(u["bundles"])))
    try:
        keys["dense"] = session.load(dense_bundle, LoadOptions(threads=threads))
        errs = []
        for policy, bundle in u["bundles"].items():
            keys[policy] = session.load(bundle, LoadOptions(threads=threads))
            errs.append(max_rel_error(session.run(keys[policy], [u["example"]])[0], u["ref"]))
        res["rel_err"] = max(errs)
        for rep in range(args.runs):
            for k in rotated(list(keys), rep):
                r = session.benchmark(keys[k], runs=1, warmup=1, per_layer=True)
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


def unstructured_summary(res: dict, policy: str = "auto") -> dict:
    """Medians over runs (ms) of the whole run, the 3x3 conv steps, and those plus the glue
    steps, for the dense bundle and the sparse one of ``policy``; ratios sparse / dense."""
    def med(k: str, *what: str) -> float | None:
        v = [sum(r[w] for w in what) for r in res["runs"].get(k, [])]
        return statistics.median(v) / 1e6 if v else None

    d = {f"{key}_{name}_ms": med(k, *what) for key, k in (("dense", "dense"),
                                                          ("unstructured", policy))
         for name, what in (("conv", ("conv3x3_ns",)), ("conv_glue", ("conv3x3_ns", "glue_ns")),
                            ("total", ("total_ns",)))}
    for name in ("conv", "conv_glue", "total"):
        d[f"{name}_ratio"] = speedup(d[f"unstructured_{name}_ms"], d[f"dense_{name}_ms"])
    return d


# ---------------------------------------------------------------- printing

def _f(v: float | None, fmt: str, suffix: str = "") -> str:
    return "–" if v is None else format(v, fmt) + suffix


def print_plans(model: str, variants: Sequence[Variant], dense_compile_s: float | None) -> None:
    t = Table(title=f"{model}: mappings, rates solved for the weights compression over all "
                    f"Conv2d + Linear layers (dense bundle compiled in {dense_compile_s} s)")
    for col in ("mapping", "target", "rate R", "weights ×", "conv ×", "linear ×", "FLOPs ×",
                "sparse kernels", "compile s"):
        t.add_column(col, justify="left" if col == "mapping" else "right", no_wrap=True)
    t.add_column("note")
    for v in variants:
        t.add_row(v.mapping, v.rate_text, _f(v.rate, ".4f"), _f(v.compression, ".2f"),
                  _f(v.conv_compression, ".2f"), _f(v.linear_compression, ".2f"),
                  _f(v.flop_reduction, ".2f"),
                  f"{v.sparse_layers}/{v.masked_layers}" if v.masked_layers else "–",
                  _f(v.compile_s, ".1f"), escape(v.note))
    out.print(t)
    for m in MAPPINGS[model]:
        out.print(f"  [bold]{escape(m.name)}[/bold]: {escape(', '.join(map(str, m.rules)))} — "
                  f"{escape(m.why)}")


def headline(variants: Sequence[Variant], by_label: Mapping[str, EngineRun]) -> Variant | None:
    """The NPAS-rate variant with the fastest sparse bundle (MobileNet-V2 has two); one with a
    wrong output (timed with --time-wrong) only when none is right."""
    timed = [(by_label[v.label].status != "ok", by_label[v.label].median_ms, v)
             for v in variants if v.npas and v.label in by_label
             and by_label[v.label].median_ms is not None]
    return min(timed, key=lambda t: t[:2])[2] if timed else None


@dataclass
class ResultRow:
    variant: Variant
    dense_ms: float | None
    sparse_ms: float | None
    engine: str | None
    engine_ms: float | None
    rel_err: float | None
    status: str
    detail: str

    @property
    def vs_dense(self) -> float | None:
        return speedup(self.dense_ms, self.sparse_ms)

    @property
    def vs_engine(self) -> float | None:
        return speedup(self.engine_ms, self.sparse_ms)

    @property
    def gflops(self) -> float | None:
        return gflops(self.variant.work_flops, self.sparse_ms)


def result_rows(res: ModelResult, threads: int, engines: Sequence[str]) -> list[ResultRow]:
    by = {r.engine: r for r in res.runs if r.threads == threads}
    dense = by.get("ours dense")
    dense_ms = dense.median_ms if dense and dense.status == "ok" else None
    rows = []
    for v in res.variants:
        cands = [by[e] for e in engines if e in by]
        cands += [by[k] for e in engines
                  if (k := f"{e} on {v.mapping} {v.target:g}x") in by]
        best = fastest(cands)
        name = None
        if best is not None:
            name = best.engine.split(" on ")[0] + (" (pruned)" if " on " in best.engine else "")
        s = by.get(v.label)
        ok = s is not None and s.status == "ok"
        rows.append(ResultRow(v, dense_ms, s.median_ms if s else None, name,
                              best.median_ms if best else None, s.rel_err if s else None,
                              s.status if s else v.note.split(":")[0] or "skipped",
                              v.note or (s.detail if s and not ok else "")))
    return rows


def print_results(results: Sequence[ModelResult], threads: int, args) -> None:
    t = Table(title=f"Sparse vs dense, {threads} thread(s), 1×3×{args.input_size}×"
                    f"{args.input_size}: medians of {args.runs} interleaved samples; load "
                    f"average {os.getloadavg()[0]:.2f} at the end", caption=(
        "weights ×: all Conv2d + Linear weights / non-zero ones. FLOPs ×: conv + linear "
        "multiply-adds, dense / non-zero. dense, sparse: our bundles. "
        + ("Fastest engine: of " + ", ".join(args.engines) + " on the dense model"
           + (" and on the pruned one (\"(pruned)\"), NPAS rows" if args.engines_on_pruned
              else "") + ". " if args.engines else "")
        + "× dense, × engine: speed-up of our sparse bundle over them. GFLOP/s: "
        "non-zero work / sparse median. rel err: sparse vs PyTorch's pruned model. ★: the "
        "model's headline mapping at the NPAS rate."))
    for col in ("model", "mapping", "rate", "weights ×", "FLOPs ×", "dense ms", "sparse ms",
                "fastest engine", "engine ms", "× dense", "× engine", "GFLOP/s", "rel err"):
        t.add_column(col, justify="left" if col in ("model", "mapping", "fastest engine")
                     else "right", no_wrap=True)
    t.add_column("note")
    for res in results:
        by = {r.engine: r for r in res.runs if r.threads == threads}
        head = headline(res.variants, by)
        for r in result_rows(res, threads, args.engines):
            v = r.variant
            star = " ★" if v is head else ""
            text = r.detail if r.detail.startswith(r.status) else f"{r.status}: {r.detail}"
            if r.status == "wrong" and r.sparse_ms is not None:
                text = "WRONG output (see rel err), timed all the same (--time-wrong)"
            note = escape(r.detail) if r.status in ("ok", "unreachable") else \
                f"[red]{escape(text)}[/red]"
            t.add_row(res.model, escape(v.mapping) + star, v.rate_text,
                      _f(v.compression, ".2f"), _f(v.flop_reduction, ".2f"),
                      _f(r.dense_ms, ".2f"), _f(r.sparse_ms, ".2f"), r.engine or "–",
                      _f(r.engine_ms, ".2f"), _f(r.vs_dense, ".2f", "×"),
                      _f(r.vs_engine, ".2f", "×"), _f(r.gflops, ".1f"),
                      _f(r.rel_err, ".1e"), note)
    out.print(t)
    for res in results:
        for r in res.runs:
            if r.threads == threads and r.status != "ok" and not r.engine.startswith("ours "):
                out.print(f"  [yellow]{escape(res.model)}, {escape(r.engine)}:[/yellow] "
                          f"{escape(r.status)}: {escape(r.detail)}")


def print_engines_on_pruned(results: Sequence[ModelResult], threads: int, args) -> None:
    """The other engines on the dense model and on the pruned ones: zeros cost them the same."""
    t = Table(title=f"The other engines on the dense and the pruned models, {threads} "
                    f"thread(s) (pruned / dense ≈ 1: they run the zeros)")
    for col in ("model", "engine", "pruned with", "dense ms", "pruned ms", "pruned / dense"):
        t.add_column(col, justify="left" if col in ("model", "engine", "pruned with")
                     else "right")
    for res in results:
        by = {r.engine: r for r in res.runs if r.threads == threads}
        for v in res.variants:
            for e in args.engines:
                p = by.get(f"{e} on {v.mapping} {v.target:g}x")
                if p is None:
                    continue
                d = by.get(e)
                dm = d.median_ms if d and d.status == "ok" else None
                pm = p.median_ms if p.status == "ok" else None
                t.add_row(res.model, e, f"{escape(v.mapping)} {v.target:g}x", _f(dm, ".2f"),
                          _f(pm, ".2f") if pm is not None else f"{p.status}",
                          _f(speedup(pm, dm), ".2f"))
    if t.row_count:
        out.print(t)


def print_headlines(results: Sequence[ModelResult], args) -> None:
    t = Table(title="At the NPAS rates: our sparse bundle's speed-up (issue 4 asks, at 1 "
                    "thread, for at least the 'needed' ratio over the fastest dense engine "
                    "and as much over ours dense)")
    for col in ("model", "threads", "mapping", "weights ×", "ours sparse ms", "× ours dense",
                "× fastest engine", "needed"):
        t.add_column(col, justify="left" if col in ("model", "mapping") else "right")
    for res in results:
        for threads in args.threads:
            by = {r.engine: r for r in res.runs if r.threads == threads}
            head = headline(res.variants, by)
            if head is None:
                t.add_row(res.model, str(threads), "–", "–", "–", "–", "–", "–")
                continue
            r = next(x for x in result_rows(res, threads, args.engines) if x.variant is head)
            need = NEEDED_SPEEDUP.get(res.model) if threads == 1 else None
            wrong = " [red](WRONG output)[/red]" if r.status != "ok" else ""
            t.add_row(res.model, str(threads), escape(head.mapping) + wrong,
                      _f(head.compression, ".2f"), _f(r.sparse_ms, ".2f"),
                      _f(r.vs_dense, ".2f", "×"),
                      f"{_f(r.vs_engine, '.2f', '×')} ({r.engine or '–'})",
                      _f(need, ".1f", "×"))
    out.print(t)


def print_unstructured(u: dict) -> None:
    got = ", ".join(f"{p}: {n}" for p, n in u["sparse_layers"].items())
    t = Table(title=f"ResNet-18's 16 3x3 convs at {u['rate']:.0%} unstructured sparsity vs "
                    f"dense (sparse kernels, by policy: {got}): per-layer times, all bundles "
                    f"interleaved, medians over runs", caption=(
        "policy: the sparse pass's; auto keeps a conv dense where its cost model says the "
        "dense kernel (Winograd) is faster, always runs every conv sparse. 3x3: sum of the "
        "3x3 conv steps in one run; + glue: with the padding and layout-change steps ("
        + ", ".join(GLUE_OPS) + ") of each bundle, which sparse layers bring. ratio: "
        "sparse / dense, below 1 is faster. Multiply-adds of these convs ×2: "
        f"{u['conv_flops_dense'] / 1e9:.2f} → {u['conv_flops_sparse'] / 1e9:.2f} G."))
    for col in ("threads", "policy", "dense 3x3 ms", "sparse 3x3 ms", "ratio", "dense + glue",
                "sparse + glue", "ratio", "model dense", "model sparse", "ratio", "rel err"):
        t.add_column(col, justify="right")
    t.add_column("note")
    for threads, res in u.get("threads", {}).items():
        for policy in u["sparse_layers"]:
            s = unstructured_summary(res, policy)
            t.add_row(str(threads), policy, *(_f(s[k], ".2f") for k in (
                "dense_conv_ms", "unstructured_conv_ms", "conv_ratio", "dense_conv_glue_ms",
                "unstructured_conv_glue_ms", "conv_glue_ratio", "dense_total_ms",
                "unstructured_total_ms", "total_ratio")), _f(res.get("rel_err"), ".1e"),
                escape(res.get("error", "")))
    out.print(t)


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except BenchArgError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        return 2
    load = announce_machine(200)
    results: list[ModelResult] = []
    failed: dict[str, str] = {}
    t_start = time.perf_counter()
    try:
        with ExitStack() as stack, _progress() as progress:
            try:
                session = local_session(args.runner, stack, progress)
            except FileNotFoundError as e:
                err.print(f"[red]error:[/red] {escape(str(e))}")
                return 2
            for name in args.models:
                try:
                    results.append(bench_model(name, args, session, progress))
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # one model failing is a result; the others still run
                    failed[name] = f"{type(e).__name__}: {e}"
                    err.print(f"[red]{escape(name)} failed:[/red] {escape(failed[name])}")
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    for threads in args.threads:
        print_results(results, threads, args)
        if args.engines_on_pruned:
            print_engines_on_pruned(results, threads, args)
    print_headlines(results, args)
    for res in results:
        if res.unstructured is not None:
            print_unstructured(res.unstructured)
    wall = time.perf_counter() - t_start
    err.print(f"wall time {wall / 60:.1f} min")
    if args.json:
        record = {"argv": sys.argv[1:] if argv is None else list(argv),
                  "machine": {"cpu": platform.processor() or platform.machine(),
                              "cpus": os.cpu_count(), "loadavg_at_start": load,
                              "loadavg_at_end": os.getloadavg()},
                  "wall_s": round(wall, 1), "failed": failed,
                  "mappings": {m: [{**asdict(x), "rules": [str(r) for r in x.rules]}
                                   for x in ms] for m, ms in MAPPINGS.items()
                               if m in args.models},
                  "models": [{"model": r.model, "dense_flops": r.dense_flops,
                              "dense_compile_s": r.dense_compile_s, "engines": r.engines_info,
                              "variants": [{**asdict(v), "label": v.label} for v in r.variants],
                              "unstructured": r.unstructured and {
                                  **r.unstructured,
                                  "summary": {t: {p: unstructured_summary(x, p)
                                                  for p in r.unstructured["sparse_layers"]}
                                              for t, x in
                                              r.unstructured.get("threads", {}).items()}},
                              "results": [{**asdict(x),
                                           "stats": asdict(x.stats) if x.stats else None}
                                          for x in r.runs]}
                             for r in results]}
        args.json.write_text(json.dumps(record, indent=1))
        err.print(f"wrote every sample to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
