"""npas-host: the command line.

Commands: devices, compile, profile, tune (host/tune/command.py), search
(host/search/command.py), install, bench. Human output
is a rich table on stdout (progress on stderr); ``--json`` prints machine-readable records
instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path

from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from . import __version__
from .commands.args import add_compile_args, add_db_args, add_device_args, add_model_args
from .console import err, out
from .errors import UserError

# The old private names, for code not yet moved to host/commands/args.py and host/errors.py.
CliError = UserError
_add_model_args, _add_device_args, _add_db_args = add_model_args, add_device_args, add_db_args


def build_parser() -> argparse.ArgumentParser:
    from .pruning.command import add_plan_parser

    ap = argparse.ArgumentParser(prog="npas-host", description=(
        "Compiler-aware pruning and architecture search for phones: compile PyTorch CNNs "
        "into native kernels and measure them on a device's runner."))
    ap.add_argument("--version", action="version", version=f"npas-host {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("devices", help="list the local runner and phones seen through adb")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("compile", help="compile a model into a bundle")
    p.add_argument("model", help="torchvision name, module:factory, or a .pt2 export")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--abi", choices=("host", "arm64-v8a"), default="host",
                   help="CPU kernels for this machine (host, default) or for arm64 phones")
    p.add_argument("--threads", type=int, default=1,
                   help="the runner threads to take tuning for from the database (default 1)")
    _add_db_args(p)
    _add_model_args(p)
    add_compile_args(p)

    p = sub.add_parser("bench", help="benchmarks (not tests): `bench dense --help`, "
                       "`bench sparse --help`")
    p.add_argument("which", choices=("dense", "sparse"), help="dense: our code vs PyTorch, "
                   "ONNX Runtime, MNN and ncnn on resnet18, mobilenet_v2, vgg16; sparse: "
                   "pruned models on our sparse kernels vs our dense code and those engines")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark")

    p = sub.add_parser("install", help="install the runner on a phone and check it answers")
    p.add_argument("--device", required=True, help="the phone's adb serial")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--apk", type=Path, help="the runner app (android_app, built by Gradle)")
    what.add_argument("--binary", type=Path,
                      help="the standalone arm64 runner, pushed to /data/local/tmp/npas")

    p = sub.add_parser("profile", help="measure a model or bundle on a device")
    p.add_argument("model", help="a bundle folder, or a model as for compile")
    p.add_argument("--device", default="local",
                   help="'local' (the host runner; default), 'qemu-arm64' (the arm64 runner "
                        "under qemu: real arm64 kernels, meaningless timings) or a phone serial")
    p.add_argument("--runs", type=int, default=100, help="timed runs (default 100)")
    p.add_argument("--warmup", type=int,
                   help="discarded warm-up runs, ≥ 1 (default 10; 1 under qemu-arm64)")
    p.add_argument("--threads", type=int, default=1,
                   help="runner threads; 0: one per big core (default 1)")
    p.add_argument("--per-layer", action="store_true", help="also time every layer")
    p.add_argument("--json", action="store_true", help="print every sample as JSON")
    _add_device_args(p)
    _add_db_args(p)
    _add_model_args(p)
    add_compile_args(p)

    from .tune.command import add_tune_parser

    add_tune_parser(sub, _add_model_args, _add_db_args, _add_device_args)
    add_plan_parser(sub)
    from .search.command import add_search_parser

    add_search_parser(sub, _add_device_args)
    return ap


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    DownloadColumn(), TimeElapsedColumn(), console=err, transient=True)


def _toolchain(args, device_info=None):
    """The toolchain for --backend/--precision and, when known, the device's ABI."""
    from codegen import toolchain_for

    backend = args.backend or "cpu"
    if backend == "gpu":
        return toolchain_for("gpu", args.precision)
    if device_info is None:
        abi = getattr(args, "abi", "host")
        return toolchain_for("cpu", args.precision, abi=None if abi == "host" else abi)
    if device_info.abi not in ("x86_64", "arm64-v8a"):
        raise CliError(f"the device's ABI {device_info.abi!r} has no CPU code generator; "
                       f"use --backend gpu")
    abi = None if device_info.abi == "x86_64" else device_info.abi
    return toolchain_for("cpu", args.precision, abi=abi,
                         features=tuple(device_info.cpu_features))


def _tuning_lookup(args, threads: int):
    """The tuning database's lookup for compile_model, or None with --no-tuning-db."""
    if getattr(args, "no_tuning_db", True):
        return None
    from .tune.db import TuningDB, TuningDbError

    try:
        return TuningDB(args.db).lookup(threads)
    except TuningDbError as e:
        raise CliError(str(e)) from None


def _compile(model_spec: str, out_dir: Path, args, progress: Progress, device_info=None,
             threads: int = 1):
    from codegen import compile_model

    from .models import example_inputs, load_model, parse_shape

    shape = parse_shape(args.input_shape)
    task = progress.add_task(f"loading {model_spec}", total=None)
    model = load_model(model_spec)
    schemes: dict[str, str] = {}
    if getattr(args, "plan", None):
        from .pruning.command import apply_plan_file

        model, schemes = apply_plan_file(model, args.plan)
    name = args.name or Path(model_spec).stem.replace(":", "_").replace(".", "_")

    def stage(what: str) -> None:
        progress.update(task, description=f"compiling {name}: {what}")

    t0 = time.perf_counter()
    toolchain = _toolchain(args, device_info)
    lookup = _tuning_lookup(args, threads)
    bundle = compile_model(model, example_inputs(shape), out_dir, name=name,
                           toolchain=toolchain, progress=stage, tuning=lookup,
                           schemes=schemes, sparse=getattr(args, "sparse", "auto"))
    progress.remove_task(task)
    err.print(f"compiled {name} in {time.perf_counter() - t0:.1f} s → {out_dir}")
    if lookup is not None and (lookup.hits or lookup.misses):
        err.print(f"tuning database {lookup.db.path}: {len(lookup.hits)} of "
                  f"{len(lookup.hits) + len(lookup.misses)} tunable layers tuned for "
                  f"{threads} thread(s); the rest keep the cost model's defaults"
                  + ("" if lookup.hits else " (run `npas-host tune` to fill it)"))
    return bundle


def _local_info(binary: Path) -> dict:
    """Start the host runner briefly and ask it what this machine is."""
    from google.protobuf.json_format import MessageToDict

    from .devices.local import LocalRunner, LocalRunnerConfig
    from .rpc.client import RunnerError

    try:
        with LocalRunner(LocalRunnerConfig(binary=binary)) as runner:
            info = runner.client().device_info()
    except RunnerError as e:
        return {"detail": f"{binary}: does not start: {e}"}
    gpus = [f"{d.name} ({d.version.strip()})" for p in info.opencl_platforms
            for d in p.devices]
    feats = " ".join(f for f in info.cpu_features if f in ("avx2", "fma", "avx512f", "asimd",
                                                           "asimddp", "fphp"))
    detail = (f"{info.abi}, {info.cpu_model}, {len(info.cores)} cores ({feats}), runner "
              f"{info.runner_version}; OpenCL: "
              + ("; ".join(gpus) if gpus else info.opencl_status or "none"))
    return {"model": info.cpu_model, "abi": info.abi, "detail": detail,
            "info": MessageToDict(info, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True)}


def cmd_devices(args) -> int:
    from .devices.adb import list_phones
    from .devices.local import find_runner_binary

    rows = []
    try:
        binary = find_runner_binary()
        rows.append({"device": "local", "kind": "host runner", **_local_info(binary)})
    except FileNotFoundError as e:
        rows.append({"device": "local", "kind": "host runner", "detail": f"unavailable: {e}"})
    phones, note = list_phones()
    for ph in phones:
        rows.append({"device": ph.serial, "kind": "phone", **asdict(ph)})
    if args.json:
        print(json.dumps({"devices": rows, "note": note}, indent=1))
        return 0
    for r in rows:
        if r["kind"] != "phone":
            out.print(f"[bold]{r['device']}[/bold] ({r['kind']}): {escape(r['detail'])}")
    if phones:
        t = Table(title="Phones")
        for col in ("serial", "state", "model", "abi", "android", "soc", "battery °C"):
            t.add_column(col)
        for ph in phones:
            temp = "" if ph.battery_temp_c is None else f"{ph.battery_temp_c:.1f}"
            t.add_row(ph.serial, ph.state, ph.model, ph.abi, ph.android, ph.soc, temp)
        out.print(t)
    if note:
        out.print(f"[dim]{note}[/dim]")
    return 0


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def cmd_compile(args) -> int:
    out_dir = Path(args.output)
    with _progress() as progress:
        bundle = _compile(args.model, out_dir, args, progress, threads=args.threads)
    from codegen import read_report

    m = bundle.manifest
    r = read_report(out_dir)
    out.print(f"bundle {out_dir}: {len(m.steps)} steps for {m.target.abi}, "
              f"{sum(s.flops for s in m.steps) / 1e6:,.1f} MFLOP, weights "
              f"{_size(m.artifact('weights').size)}, activation arena {_size(m.arena_bytes)} "
              f"(largest live set {_size(r.peak_bytes)}), compiled in {r.seconds:.1f} s")
    for layer, what in r.sparse.items():
        out.print(f"  {escape(layer)}: {escape(what)}")
    return 0


def _device(args, stack: ExitStack):
    from .commands.args import device_spec
    from .devices import open_device

    return open_device(device_spec(args), stack)


def _resolve_threads(threads: int, info) -> int:
    """--threads 0 means one per big core (what the runner does with 0)."""
    if threads > 0:
        return threads
    big = sum(1 for c in info.cores if c.is_big)
    return big or len(info.cores) or 1


def _bundle_backend(bundle) -> str:
    return "gpu" if bundle.manifest.target.arch == "opencl" else "cpu"


def _check_bundle_fits(bundle, info, src: str) -> None:
    target = bundle.manifest.target
    if target.arch != "opencl" and target.abi != info.abi:
        raise CliError(f"{src} holds kernels for {target.abi}; the device is {info.abi}. "
                       f"Give the model instead of the bundle, or compile it for {info.abi}")


def cmd_profile(args) -> int:
    from codegen.bundle import BundleError, load_bundle

    from .devices.session import LoadOptions, Session
    from .measure import throttled_cores

    if args.runs < 1 or (args.warmup is not None and args.warmup < 1) or args.threads < 0:
        raise CliError(f"--runs and --warmup must be ≥ 1 and --threads ≥ 0 (0: one per big "
                       f"core); got {args.runs}, {args.warmup}, {args.threads}")
    src = Path(args.model)
    bundle = None
    if (src / "manifest.json").is_file():
        try:
            bundle = load_bundle(src)
        except BundleError as e:
            raise CliError(str(e)) from None
        if args.backend and args.backend != _bundle_backend(bundle):
            raise CliError(f"{args.model} is a {_bundle_backend(bundle).upper()} bundle; "
                           f"--backend {args.backend} needs a bundle compiled with --backend "
                           f"{args.backend}")
    with ExitStack() as stack, _progress() as progress:
        task = progress.add_task(f"starting the runner on {args.device}", total=None)
        device = _device(args, stack)
        session = stack.enter_context(Session(device, on_event=lambda m: err.print(m)))
        if args.warmup is None:
            args.warmup = device.traits.default_warmup
        info = session.client.device_info()
        progress.remove_task(task)
        if bundle is None:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="npas-bundle-")))
            bundle = _compile(args.model, tmp, args, progress, device_info=info,
                              threads=_resolve_threads(args.threads, info))
        _check_bundle_fits(bundle, info, args.model)
        backend = _bundle_backend(bundle)
        up = progress.add_task("uploading", total=sum(a.size for a in bundle.manifest.artifacts))
        opts = LoadOptions(threads=args.threads, backend=backend,
                           pin_big_cores=device.traits.pin_big_cores)
        key = session.load(bundle, opts, progress=lambda n, _total: progress.advance(up, n))
        progress.remove_task(up)
        progress.add_task(f"measuring: {args.warmup} warm-up + {args.runs} timed runs",
                          total=None)
        result = session.benchmark(key, replace(opts, runs=args.runs, warmup=args.warmup,
                                                per_layer=args.per_layer))
    record = {"model": args.model, "bundle": bundle.manifest.name, "backend": backend,
              "content_hash": bundle.manifest.content_hash, "device": args.device,
              "abi": info.abi, "threads": result.threads, "runs": args.runs,
              "warmup": args.warmup, "gflop": sum(s.flops for s in bundle.manifest.steps) / 1e9,
              "throttled_cores": throttled_cores(result, info),
              "note": device.traits.timing_note}
    if args.json:
        print(json.dumps({**record, **result.to_dict()}))
        return 0
    _print_profile(record, result, args.per_layer)
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
        import statistics
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


def cmd_bench(args) -> int:
    from .bench import dense, sparse

    return {"dense": dense, "sparse": sparse}[args.which].main(args.rest)


def cmd_install(args) -> int:
    from .devices.phone import PhoneConfig, install

    runner = install(PhoneConfig(serial=args.device), apk=args.apk, binary=args.binary)
    try:
        info = runner.client().device_info()
    finally:
        runner.stop()
    out.print(f"runner {info.runner_version} ({runner.mode}) on {args.device} answers: "
              f"{info.abi}, {info.cpu_model}, {len(info.cores)} cores")
    return 0


def cmd_tune(args) -> int:
    from .tune.command import cmd_tune as run

    return run(args)


def cmd_search(args) -> int:
    from .search.command import cmd_search as run

    return run(args)


def cmd_plan(args) -> int:
    from .pruning.command import cmd_plan as run

    return run(args)


COMMANDS = {"bench": cmd_bench, "devices": cmd_devices, "compile": cmd_compile,
            "install": cmd_install,
            "plan": cmd_plan, "profile": cmd_profile, "search": cmd_search, "tune": cmd_tune}


def main(argv: list[str] | None = None) -> int:
    from codegen import CodegenError, CompileError
    from codegen.bundle import BundleError

    from .devices.phone import PhoneError
    from .models import ModelSpecError
    from .pruning import PruningError
    from .rpc.client import RunnerError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (CliError, ModelSpecError, BundleError, CodegenError, CompileError,
            RunnerError, PhoneError, PruningError) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        return 2
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
