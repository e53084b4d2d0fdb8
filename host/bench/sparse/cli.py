"""The sparse benchmark's command line: its arguments and ``main`` (``npas-host bench sparse``,
``python -m host.bench.sparse``), which runs every model and prints and writes the results.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from rich.markup import escape

from host.console import err
from host.errors import UserError

from .. import common
from ..common import (
    BenchArgError,
    announce_machine,
    check_sampling,
    engine_names,
    local_session,
    parse_models,
    parse_threads,
)
from .mappings import MAPPINGS
from .run import bench_model
from .tables import print_engines_on_pruned, print_headlines, print_results, print_unstructured
from .work import ModelResult, unstructured_summary

DEFAULT_MODELS = ("resnet18", "mobilenet_v2", "vgg16")
DENSE_ENGINES = ("ONNX Runtime", "MNN", "ncnn")  # "the fastest dense engine" is one of these


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
                            f"from {', '.join(MAPPINGS)} (mappings live in "
                            f"host/bench/sparse/mappings.py)")
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
        with ExitStack() as stack, common.progress() as progress:
            try:
                session = local_session(args.runner, stack, progress)
            except UserError as e:
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
