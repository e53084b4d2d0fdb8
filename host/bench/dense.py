"""Dense latency: ours against PyTorch, ONNX Runtime, MNN, ncnn and ExecuTorch (its XNNPACK
delegate), interleaved, in one run.

For every model and thread count, every engine is loaded, its output checked against PyTorch
on the same input, then sampled round-robin (the order rotates every repetition), so machine
drift lands on all engines alike. Printed: median/p10/p90 per engine, ours relative to the
fastest of {ONNX Runtime, PyTorch} and of {MNN, ncnn, ExecuTorch}, and achieved GFLOP/s, also as a
fraction of a measured SGEMM peak (torch.mm) at the same thread count.

    python -m host.bench.dense --models resnet18 --threads 1,2 --runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

if TYPE_CHECKING:
    import numpy as np

    from codegen import Bundle
    from host.devices.session import Session

    from .engines import Workload

from host.console import err, out
from host.errors import UserError

from . import common
from .common import (
    BenchArgError,
    EngineRun,
    announce_machine,
    bench_cache_dir,
    check_sampling,
    engine_names,
    gflops,
    load_and_sample,
    load_workload,
    local_session,
    parse_models,
    parse_threads,
)

DEFAULT_MODELS = ("resnet18", "mobilenet_v2", "vgg16")
FRAMEWORKS = ("ONNX Runtime", "PyTorch")  # "ours vs the frameworks people deploy on servers"
# "ours vs the engines people deploy on phones" (ExecuTorch: its XNNPACK delegate, peers.py)
MOBILE = ("MNN", "ncnn", "ExecuTorch")


# ---------------------------------------------------------------- arguments

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="npas-host bench dense", description=(
        "Dense latency of our compiled bundle against PyTorch, ONNX Runtime, MNN, ncnn and "
        "ExecuTorch (XNNPACK) "
        "(batch 1, interleaved samples, outputs checked against PyTorch)."))
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help=f"comma-separated torchvision names (default: "
                         f"{','.join(DEFAULT_MODELS)})")
    ap.add_argument("--threads", default="1,2", help="thread counts (default: 1,2)")
    ap.add_argument("--runs", type=int, default=30,
                    help="timed samples per engine (default 30)")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed inferences per engine before sampling (default 3)")
    ap.add_argument("--input-size", type=int, default=224,
                    help="input height and width (default 224)")
    ap.add_argument("--engines", default="ours," + ",".join(
        ("PyTorch", "ONNX Runtime", "MNN", "ncnn", "ExecuTorch")),
                    help="subset of engines to run (default: all)")
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="largest accepted max|out - ref| / max|ref| (default 1e-3)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="write every sample here")
    ap.add_argument("--cache", type=Path,
                    help="converted-model cache (default: ~/.cache/npas/bench)")
    ap.add_argument("--runner", type=Path, help="the npas-runner binary")
    ap.add_argument("--db", type=Path, help="tuning database for the \"ours (tuned)\" column "
                    "(default: ~/.cache/npas/tuning.json; see `npas-host tune`)")
    return ap


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.models = parse_models(args.models)
    args.threads = parse_threads(args.threads)
    check_sampling(args)
    known = ("ours", *FRAMEWORKS, *MOBILE)
    engines = engine_names(args.engines)
    unknown = [e for e in engines if e not in known]
    if unknown or not engines:
        raise BenchArgError(f"--engines: unknown {', '.join(unknown) or '(none given)'}; "
                            f"choose from {', '.join(known)}")
    args.engines = engines
    return args


# ---------------------------------------------------------------- pure arithmetic

def ratio_to_fastest(ours_ms: float | None,
                     others_ms: dict[str, float | None]) -> tuple[str, float] | None:
    """(fastest engine's name, ours_ms / its ms): above 1 means ours is slower. None when
    ours or every other engine has no time."""
    timed = {k: v for k, v in others_ms.items() if v is not None and v > 0}
    if ours_ms is None or not timed:
        return None
    name = min(timed, key=timed.__getitem__)
    return name, ours_ms / timed[name]


# ---------------------------------------------------------------- records

@dataclass
class Row:
    engine: str
    status: str
    median_ms: float | None
    p10_ms: float | None
    p90_ms: float | None
    gflops: float | None
    peak_fraction: float | None
    rel_err: float | None
    detail: str


def table_rows(runs: Sequence[EngineRun], flops: int | None,
               peak_gflops: float | None) -> list[Row]:
    rows = []
    for r in runs:
        s = r.stats
        g = gflops(flops, s.median_ms if s else None)
        rows.append(Row(r.engine, r.status, s and s.median_ms, s and s.p10_ms, s and s.p90_ms,
                        g, g / peak_gflops if g is not None and peak_gflops else None,
                        r.rel_err, r.detail))
    return rows


def ratios(runs: Sequence[EngineRun]) -> dict[str, dict[str, tuple[str, float] | None]]:
    """For every ours-variant: its ratio to the fastest framework and mobile engine."""
    med = {r.engine: r.median_ms for r in runs if r.status == "ok"}
    result = {}
    for r in runs:
        if r.engine.startswith("ours"):
            result[r.engine] = {
                "frameworks": ratio_to_fastest(med.get(r.engine),
                                               {k: med.get(k) for k in FRAMEWORKS}),
                "mobile": ratio_to_fastest(med.get(r.engine), {k: med.get(k) for k in MOBILE}),
            }
    return result


# ---------------------------------------------------------------- measuring

def sgemm_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` torch.mm on n×n float32 at ``threads``: what this machine's BLAS
    reaches, the roofline for a compute-bound CNN."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    torch.mm(a, b)  # warm-up: thread pool, packing buffers
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def tuned_bundle(w: Workload, threads: int, db_path: Path | None,
                 out_dir: Path) -> Bundle | None:
    """The bundle compiled with the tuning database's entries for ``threads`` threads (see
    `npas-host tune`), or None when the database has none for this model's layers: the
    "ours (tuned)" column appears only then."""
    from codegen import TuningDB, compile_model

    if db_path is not None and not Path(db_path).is_file():
        return None
    db = TuningDB(db_path)
    if not db.path.is_file():
        return None
    lookup = db.lookup(threads)
    bundle = compile_model(w.model, (w.example,), out_dir, name=w.cache.name, tuning=lookup)
    return bundle if lookup.hits else None


def bench_model(name: str, args: argparse.Namespace, session: Session | None, progress: Progress,
                peaks: dict[int, float]) -> tuple[list[EngineRun], dict]:
    # our bundles live only for this model's measurements (VGG16's weights are 553 MB)
    with tempfile.TemporaryDirectory(prefix="npas-bench-") as tmp:
        return _bench_model(name, args, session, progress, peaks, Path(tmp))


def _bench_model(name: str, args, session, progress: Progress, peaks: dict[int, float],
                 tmp: Path) -> tuple[list[EngineRun], dict]:
    from codegen import compile_model

    from .engines import OTHER_ENGINES, EngineUnavailable, OursEngine
    from .peers import ExecuTorchEngine

    others = {**OTHER_ENGINES, ExecuTorchEngine.name: ExecuTorchEngine}

    task = progress.add_task(f"{name}: loading the model", total=None)
    w = load_workload(name, args.input_size, bench_cache_dir(args.cache))
    import torch
    with torch.inference_mode():
        ref = w.model(w.example).numpy()
    info: dict = {"model": name, "input_size": args.input_size, "flops": None, "engines": {}}
    engines: dict = {}
    unavailable: dict[str, str] = {}

    if "ours" in args.engines:
        progress.update(task, description=f"{name}: compiling ours")
        try:
            t0 = time.perf_counter()
            bundle = compile_model(w.model, (w.example,), tmp / "ours", name=w.cache.name,
                                   progress=lambda s: progress.update(
                                       task, description=f"{name}: compiling ours ({s})"))
            info["compile_s"] = round(time.perf_counter() - t0, 1)
            info["flops"] = sum(s.flops for s in bundle.manifest.steps)
            engines["ours"] = OursEngine(session, bundle)
            tuned = {t: b for t in args.threads
                     if (b := tuned_bundle(w, t, args.db, tmp / f"tuned{t}")) is not None}
            if tuned:
                # thread counts without entries run the defaults, which is what tuned means
                engines["ours (tuned)"] = OursEngine(session, bundle, "ours (tuned)",
                                                     per_threads=tuned)
        except Exception as e:  # codegen errors of every kind: ours is then "unavailable"
            unavailable["ours"] = f"compile failed: {e}"
    for label in args.engines:
        if label != "ours":
            engines[label] = others[label]()
    for label, eng in list(engines.items()):
        progress.update(task, description=f"{name}: converting for {label} (cached after the "
                                          f"first run)")
        try:
            info["engines"][label] = eng.prepare(w)
        except EngineUnavailable as e:
            unavailable[label] = str(e)
            del engines[label]
        except Exception as e:
            unavailable[label] = f"conversion failed: {type(e).__name__}: {e}"
            del engines[label]
    progress.remove_task(task)

    results: list[EngineRun] = []
    for threads in args.threads:
        runs = bench_threads(w, ref, threads, engines, unavailable, args, progress)
        print_table(name, args.input_size, threads, runs, info["flops"], peaks.get(threads),
                    args.runs)
        results += runs
    return results, info


def bench_threads(w: Workload, ref: np.ndarray, threads: int, engines: dict,
                  unavailable: dict[str, str], args: argparse.Namespace,
                  progress: Progress) -> list[EngineRun]:
    runs = {label: EngineRun(w.name, threads, label, "unavailable", why)
            for label, why in unavailable.items()}
    load_and_sample(w.name, threads, [(label, eng, w, ref, False)
                                      for label, eng in engines.items()], runs, args, progress)
    order = [e for e in ("ours", "ours (tuned)", *FRAMEWORKS[::-1], *MOBILE) if e in runs]
    return [runs[e] for e in order]


# ---------------------------------------------------------------- printing

def _f(v: float | None, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


def print_table(model: str, size: int, threads: int, runs: Sequence[EngineRun],
                flops: int | None, peak: float | None, n_runs: int) -> None:
    title = (f"{model}, 1×3×{size}×{size}, {threads} thread(s): median of {n_runs} "
             f"interleaved samples; SGEMM peak {_f(peak, '.1f')} GFLOP/s; load average "
             f"{os.getloadavg()[0]:.2f} at the end")
    t = Table(title=title, caption=(
        "GFLOP/s: model FLOPs (sum of our manifest's Step.flops) / median. Engines using "
        "Winograd or other fast convolutions do fewer real FLOPs, so they can exceed the "
        "SGEMM peak."))
    t.add_column("engine", no_wrap=True)
    for col in ("median ms", "p10 ms", "p90 ms", "GFLOP/s", "of peak", "max rel err"):
        t.add_column(col, justify="right")
    rows = table_rows(runs, flops, peak)
    notes = any(r.detail for r in rows)
    if notes:
        t.add_column("note")
    for r in rows:
        if r.status in ("ok", "failed") and r.median_ms is not None:
            t.add_row(r.engine, _f(r.median_ms, ".2f"), _f(r.p10_ms, ".2f"),
                      _f(r.p90_ms, ".2f"), _f(r.gflops, ".1f"),
                      "–" if r.peak_fraction is None else f"{100 * r.peak_fraction:.0f}%",
                      _f(r.rel_err, ".1e"), *([escape(r.detail)] if notes else []))
        else:
            t.add_row(r.engine, "–", "–", "–", "–", "–", _f(r.rel_err, ".1e"),
                      f"[red]{escape(r.status)}: {escape(r.detail)}[/red]")
    out.print(t)
    for ours, rs in ratios(runs).items():
        for what, group in (("frameworks", FRAMEWORKS), ("mobile", MOBILE)):
            rt = rs[what]
            label = f"{ours} / fastest of {{{', '.join(group)}}}"
            out.print(f"  {label}: " + (f"[bold]{rt[1]:.2f}×[/bold] ({rt[0]}; >1 means ours "
                                        f"is slower)" if rt else "– (nothing to compare)"))


def print_summary(results: Sequence[EngineRun], args: argparse.Namespace) -> None:
    t = Table(title="Summary: ours / fastest (>1: ours slower)")
    for col in ("model", "threads", "ours ms", "vs ORT/PyTorch", "vs MNN/ncnn/ExecuTorch"):
        t.add_column(col, justify="right" if col != "model" else "left")
    for model in args.models:
        for threads in args.threads:
            runs = [r for r in results if r.model == model and r.threads == threads]
            ours = next((r for r in runs if r.engine == "ours"), None)
            rs = ratios(runs).get("ours", {})
            fw, mb = rs.get("frameworks"), rs.get("mobile")
            t.add_row(model, str(threads),
                      _f(ours.median_ms if ours and ours.status == "ok" else None, ".2f"),
                      f"{fw[1]:.2f}× ({fw[0]})" if fw else "–",
                      f"{mb[1]:.2f}× ({mb[0]})" if mb else "–")
    out.print(t)


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except BenchArgError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        return 2
    from host.models import ModelSpecError

    load = announce_machine(120)
    results: list[EngineRun] = []
    infos: list[dict] = []
    peaks: dict[int, float] = {}
    try:
        with ExitStack() as stack, common.progress() as progress:
            for threads in args.threads:
                task = progress.add_task(f"SGEMM peak at {threads} thread(s)", total=None)
                peaks[threads] = sgemm_peak_gflops(threads)
                progress.remove_task(task)
            session = None
            if "ours" in args.engines:
                try:
                    session = local_session(args.runner, stack, progress)
                except UserError as e:
                    err.print(f"[yellow]ours unavailable:[/yellow] {escape(str(e))}")
                    args.engines = tuple(e for e in args.engines if e != "ours")
            for name in args.models:
                try:
                    res, info = bench_model(name, args, session, progress, peaks)
                except ModelSpecError as e:
                    err.print(f"[red]error:[/red] {escape(str(e))}")
                    return 2
                results += res
                infos.append(info)
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    print_summary(results, args)
    if args.json:
        record = {"argv": sys.argv[1:] if argv is None else list(argv),
                  "machine": {"cpu": platform.processor() or platform.machine(),
                              "cpus": os.cpu_count(), "loadavg_at_start": load},
                  "sgemm_peak_gflops": peaks, "models": infos,
                  "results": [{**asdict(r), "stats": asdict(r.stats) if r.stats else None}
                              for r in results]}
        args.json.write_text(json.dumps(record, indent=1))
        err.print(f"wrote every sample to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
