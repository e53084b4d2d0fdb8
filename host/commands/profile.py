"""`npas-host profile`: measure a model or a bundle on a device and print its timings.

A model is compiled for what the device's runner reports (its ABI and CPU features, and the
tuning database's entries for the threads the runner will use); a bundle must fit the device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from rich.table import Table

from ..console import err, out
from ..errors import UserError
from .args import (
    add_compile_args,
    add_db_args,
    add_device_args,
    add_measure_args,
    add_model_args,
    device_spec,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("profile", help="measure a model or bundle on a device")
    p.add_argument("model", help="a bundle folder, or a model as for compile")
    p.add_argument("--device", default="local",
                   help="'local' (the host runner; default), 'qemu-arm64' (the arm64 runner "
                        "under qemu: real arm64 kernels, meaningless timings), "
                        "'qemu-arm64-static' (the static one phones get, no sysroot) or a "
                        "phone serial")
    add_measure_args(p)
    p.add_argument("--json", action="store_true", help="print every sample as JSON")
    add_device_args(p)
    add_db_args(p)
    add_model_args(p)
    add_compile_args(p)


def _bundle_backend(bundle) -> str:
    return "gpu" if bundle.manifest.target.arch == "opencl" else "cpu"


def _check_bundle_fits(bundle, info, src: str) -> None:
    target = bundle.manifest.target
    if target.arch != "opencl" and target.abi != info.abi:
        raise UserError(f"{src} holds kernels for {target.abi}; the device is {info.abi}. "
                        f"Give the model instead of the bundle, or compile it for {info.abi}")


def _load_bundle(args: argparse.Namespace):
    """The bundle args.model names (a folder, or the manifest.json in one), or None when it
    names a model. The bundle is checked as the runner would check it before anything is read
    from it or uploaded; a bad one is a UserError naming the field."""
    from codegen import BundleError, load_bundle

    src = Path(args.model)
    if src.name == "manifest.json" and src.is_file():
        src = src.parent
    elif not src.is_dir():
        return None
    try:
        bundle = load_bundle(src)
    except BundleError as e:
        raise UserError(str(e)) from None
    if args.backend and args.backend != _bundle_backend(bundle):
        raise UserError(f"{args.model} is a {_bundle_backend(bundle).upper()} bundle; "
                        f"--backend {args.backend} needs a bundle compiled with --backend "
                        f"{args.backend}")
    return bundle


def run(args: argparse.Namespace) -> int:
    from ..devices import open_device
    from ..devices.session import Session
    from ..measure import MeasureConfig, runner_threads, throttled_cores
    from ..targets import toolchain_for_device
    from .compile import compile_bundle, progress_bar

    if args.runs < 1 or (args.warmup is not None and args.warmup < 1) or args.threads < 0:
        raise UserError(f"--runs and --warmup must be ≥ 1 and --threads ≥ 0 (0: one per big "
                        f"core); got {args.runs}, {args.warmup}, {args.threads}")
    bundle = _load_bundle(args)
    with ExitStack() as stack, progress_bar() as progress:
        task = progress.add_task(f"starting the runner on {args.device}", total=None)
        device = open_device(device_spec(args), stack)
        session = stack.enter_context(Session(device, on_event=lambda m: err.print(m)))
        info = session.client.device_info()
        progress.remove_task(task)
        if bundle is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="npas-bundle-")))
            toolchain = toolchain_for_device(info, args.backend or "cpu", args.precision)
            bundle = compile_bundle(args.model, tmp, args, progress, toolchain,
                                    runner_threads(args.threads, info))
        _check_bundle_fits(bundle, info, args.model)
        measure = MeasureConfig(
            runs=args.runs,
            warmup=device.traits.default_warmup if args.warmup is None else args.warmup,
            threads=args.threads, pin_big_cores=device.traits.pin_big_cores,
            per_layer=args.per_layer, backend=_bundle_backend(bundle))
        up = progress.add_task("uploading", total=sum(a.size for a in bundle.manifest.artifacts))
        key = session.load(bundle, measure, progress=lambda n, _total: progress.advance(up, n))
        progress.remove_task(up)
        progress.add_task(f"measuring: {measure.warmup} warm-up + {measure.runs} timed runs",
                          total=None)
        result = session.benchmark(key)
    record = {"model": args.model, "bundle": bundle.manifest.name, "backend": measure.backend,
              "content_hash": bundle.manifest.content_hash, "device": args.device,
              "abi": info.abi, "threads": result.threads, "runs": measure.runs,
              "warmup": measure.warmup,
              "gflop": sum(s.flops for s in bundle.manifest.steps) / 1e9,
              "throttled_cores": throttled_cores(result, info),
              "note": device.traits.timing_note}
    if args.json:
        print(json.dumps({**record, **result.to_dict()}))
        return 0
    _print_profile(record, result, measure.per_layer)
    return 0


def _print_profile(info: dict, result, per_layer: bool) -> None:
    s = result.stats
    how = "GPU" if info["backend"] == "gpu" else f"CPU, {result.threads} thread(s)"
    t = Table(title=f"{info['bundle']} on {info['device']} ({how}, {s.n} runs after "
                    f"{info['warmup']} warm-up)")
    for col in ("mean", "median", "p10", "p90", "std", "min", "max"):
        t.add_column(f"{col} ms", justify="right")
    t.add_row(*(f"{v:.3f}" for v in (s.mean_ms, s.median_ms, s.p10_ms, s.p90_ms, s.std_ms,
                                      s.min_ms, s.max_ms)))
    out.print(t)
    if info["throttled_cores"]:
        out.print(f"[yellow]warning:[/yellow] cores {info['throttled_cores']} ran below 90% of "
                  f"their maximum frequency after the runs: the device was throttling")
    if info["note"]:
        out.print(f"[yellow]note:[/yellow] {info['note']}")
    out.print(f"init {result.init_ns / 1e6:.1f} ms; {info['gflop']:.2f} GFLOP per run → "
              f"{info['gflop'] / (s.median_ms / 1e3):.1f} GFLOP/s at the median")
    if per_layer and result.layers:
        per_run = [sum(v) for v in zip(*(la.samples_ns for la in result.layers), strict=True)]
        share = statistics.median(p / t for p, t in zip(per_run, result.samples_ns,
                                                         strict=True))
        out.print(f"per-layer times add up to {share:.1%} of each run (median over runs)")
        lt = Table(title="per layer (median)")
        lt.add_column("layer")
        lt.add_column("op")
        lt.add_column("ms", justify="right")
        for layer in result.layers:
            lt.add_row(layer.name, layer.op, f"{layer.median_ms:.3f}")
        out.print(lt)
