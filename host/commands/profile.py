"""`npas-host profile`: measure a model or a bundle on a device and print its timings.

A model is compiled for what the device's runner reports (its ABI and CPU features, and the
tuning database's entries for the threads the runner will use); a bundle must fit the device.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import ExitStack
from pathlib import Path

from rich.table import Table

from ..console import err, out
from ..errors import UserError
from ..measure import MeasureConfig, Stats, with_kernel_variants
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
    p.add_argument("--warmup-min-s", type=float, default=MeasureConfig.warmup_min_s,
                   help="warm up for at least this many seconds as well as --warmup runs "
                        "(default 0: the count alone)")
    p.add_argument("--pause-ms", type=float, default=MeasureConfig.pause_s * 1e3,
                   help="sleep this long between two timed runs, outside their timing "
                        "(default 0)")
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
    from ..measure import runner_threads, throttled_cores
    from ..targets import toolchain_for_device
    from .compile import compile_bundle, progress_bar

    if args.runs < 1 or (args.warmup is not None and args.warmup < 1) or args.threads < 0:
        raise UserError(f"--runs and --warmup must be ≥ 1 and --threads ≥ 0 (0: one per big "
                        f"core); got {args.runs}, {args.warmup}, {args.threads}")
    if not 0 <= args.warmup_min_s <= 600 or not 0 <= args.pause_ms <= 10000:
        raise UserError(f"--warmup-min-s must be 0..600 and --pause-ms 0..10000; got "
                        f"{args.warmup_min_s}, {args.pause_ms}")
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
            warmup_min_s=args.warmup_min_s, pause_s=args.pause_ms / 1e3, threads=args.threads,
            pin_big_cores=device.traits.pin_big_cores,
            per_layer=args.per_layer, backend=_bundle_backend(bundle))
        up = progress.add_task("uploading", total=sum(a.size for a in bundle.manifest.artifacts))
        key = session.load(bundle, measure, progress=lambda n, _total: progress.advance(up, n))
        upload = session.upload(key)
        progress.remove_task(up)
        progress.add_task(f"measuring: {measure.warmup} warm-up + {measure.runs} timed runs",
                          total=None)
        result = session.benchmark(key)
        source = bundle.path / "kernels.c"  # for people to read; a copied bundle may lack it
        if result.layers and source.is_file():
            result = with_kernel_variants(result, source.read_text(encoding="utf-8",
                                                                    errors="replace"))
    record = {"model": args.model, "bundle": bundle.manifest.name, "backend": measure.backend,
              "content_hash": bundle.manifest.content_hash, "device": args.device,
              "abi": info.abi, "threads": result.threads, "runs": measure.runs,
              "warmup": measure.warmup, "warmup_min_s": measure.warmup_min_s,
              "pause_s": measure.pause_s,
              "gflop": sum(s.flops for s in bundle.manifest.steps) / 1e9,
              "throttled_cores": throttled_cores(result, info),
              "device_missing": list(info.missing),
              "note": device.traits.timing_note,
              # what this candidate cost the link: bytes sent (0: the runner had them all),
              # the uploads' wall time, and the weights as shipped vs as the kernels read them
              "upload_bytes": upload.bytes, "upload_s": round(upload.seconds, 6),
              "artifact_bytes": upload.artifact_bytes,
              "weights_shipped_bytes": bundle.manifest.shipped_weights_bytes,
              "weights_loaded_bytes": bundle.manifest.weights_bytes}
    if args.json:
        print(json.dumps({**record, **result.to_dict()}))
        return 0
    _print_profile(record, result, measure.per_layer)
    return 0


def _print_profile(info: dict, result, per_layer: bool) -> None:
    s = result.stats
    how = "GPU" if info["backend"] == "gpu" else f"CPU, {result.threads} thread(s)"
    t = Table(title=f"{info['bundle']} on {info['device']} ({how}, {s.n} runs after "
                    f"{len(result.warmup_ns)} warm-up)")
    for col in ("min", "median", "mean", "p90", "std", "max"):
        t.add_column(f"{col} ms", justify="right")
    t.add_column("n", justify="right")
    t.add_row(*(f"{v:.3f}" for v in (s.min_ms, s.median_ms, s.mean_ms, s.p90_ms, s.std_ms,
                                      s.max_ms)), str(s.n))
    out.print(t)
    if info["throttled_cores"]:
        out.print(f"[yellow]warning:[/yellow] cores {info['throttled_cores']} ran below 90% of "
                  f"their maximum frequency after the runs: the device was throttling")
    if info["note"]:
        out.print(f"[yellow]note:[/yellow] {info['note']}")
    out.print(f"init {result.init_ns / 1e6:.1f} ms; {info['gflop']:.2f} GFLOP per run → "
              f"{info['gflop'] / (s.median_ms / 1e3):.1f} GFLOP/s at the median")
    out.print(_upload_line(info))
    for line in _protocol_lines(info, result):
        out.print(line)
    if per_layer and result.layers:
        if (share := result.layer_share()) is not None:
            out.print(f"per-layer times add up to {share:.1%} of each run (median over runs)")
        lt = Table(title="per layer (module → kernel variant)")
        lt.add_column("layer → kernel")
        lt.add_column("op")
        for col in ("median", "mean", "p90"):
            lt.add_column(f"{col} ms", justify="right")
        lt.add_column("of run", justify="right")
        for layer in result.layers:
            ls = Stats.of(layer.samples_ns)
            lt.add_row(layer.label, layer.op, f"{ls.median_ms:.3f}", f"{ls.mean_ms:.3f}",
                       f"{ls.p90_ms:.3f}", f"{ls.median_ms / s.median_ms:.1%}")
        out.print(lt)


def _upload_line(info: dict) -> str:
    mib = 2 ** 20
    sent = (f"upload {info['upload_bytes'] / mib:.2f} MiB in {info['upload_s']:.2f} s"
            if info["upload_bytes"] else "upload: none (the runner had every artifact)")
    return (f"{sent}; bundle {info['artifact_bytes'] / mib:.2f} MiB, weights "
            f"{info['weights_shipped_bytes'] / mib:.2f} MiB shipped, "
            f"{info['weights_loaded_bytes'] / mib:.2f} MiB once prepared on the device")


def _protocol_lines(info: dict, result) -> list[str]:
    """The first run, the warm-up and the memory, as the runner reported them (runners before
    protocol 1.3 report none of them, and the lines say nothing rather than zeros)."""
    lines = []
    if result.first_run_ns:
        cold = "the model's first since its load" if result.first_run_cold else "warm"
        lines.append(f"first run {result.first_run_ns / 1e6:.3f} ms ({cold})")
    if result.warmup_ns:
        w = Stats.of(result.warmup_ns)
        lines.append(f"warm-up {w.n} runs in {result.warmup_elapsed_ns / 1e9:.2f} s (median "
                     f"{w.median_ms:.3f} ms; asked: {info['warmup']} runs, "
                     f"{info['warmup_min_s']:g} s)" + (f"; {info['pause_s'] * 1e3:g} ms pause "
                                                        f"between timed runs"
                                                        if info["pause_s"] else ""))
    if result.peak_rss_bytes:
        lines.append(f"runner peak resident memory {result.peak_rss_bytes / 2**20:.1f} MiB "
                     f"({result.rss_before_bytes / 2**20:.1f} MiB before the runs)"
                     + (f"; {result.memory_note}" if result.memory_note else ""))
    elif result.memory_note:
        lines.append(result.memory_note)
    missing = [*info["device_missing"], *(m for t in (result.telemetry_before,
                                                      result.telemetry_after) if t
                                           for m in t.missing)]
    if missing:
        lines.append(f"not readable on the device (measured without it): "
                     f"{'; '.join(dict.fromkeys(missing))}")
    return lines
