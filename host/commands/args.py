"""Argument groups several subcommands share (model, device, tuning database, compile and
measurement options) and their translation into records (DeviceSpec).

Defaults come from the records they fill (``default=MeasureConfig.runs``), so each is written
once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..devices import DeviceSpec
from ..errors import UserError
from ..measure import MeasureConfig


def add_model_args(p: argparse.ArgumentParser) -> None:
    """How to load and compile a model: --input-shape, --name, --backend, --precision."""
    p.add_argument("--input-shape", default="1,3,224,224",
                   help="example input shape, NCHW (default: 1,3,224,224)")
    p.add_argument("--name", help="bundle name (default: from the model)")
    p.add_argument("--backend", choices=("cpu", "gpu"),
                   help="cpu: C kernels for the CPU (default); gpu: OpenCL kernels. For a "
                        "bundle, taken from the bundle")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="fp16 on the GPU: half storage, needs cl_khr_fp16 (Adreno has it); "
                        "on an arm64 CPU: FP16 arithmetic (NEON FP16, 8 lanes; needs "
                        "fphp/asimdhp, ARMv8.2 cores such as Cortex-A76), dense layers only. "
                        "int8 on an x86-64 CPU (AVX-512 VNNI, else AVX2) or an arm64 one "
                        "with the dot product (SDOT, asimddp): convs, depthwise "
                        "convs, Linear, pools, add, concat and activations (tables) in int8, "
                        "scales calibrated on --calibration; layers without an int8 kernel "
                        "stay float32 (compile lists them). Model inputs and outputs stay "
                        "float32")
    p.add_argument("--calibration", type=Path, metavar="FILE.npy",
                   help="--precision int8: calibration inputs, a .npy array of whole input "
                        "batches (the --input-shape, or a stack of them along a new first "
                        "axis); default: 4 seeded random batches of --input-shape")
    p.add_argument("--calibration-method", default="minmax", metavar="minmax|percentile[:P]",
                   help="--precision int8: how activation ranges come from the calibration "
                        "batches: minmax (default: each tensor's min and max) or percentile[:P] "
                        "(its (100-P)th and Pth percentiles, P default 99.99: outliers clipped)")
    p.add_argument("--keep-fp32", default="", metavar="LAYER[,LAYER...]",
                   help="--precision int8: layers (module paths, e.g. layer1.0.conv1) that "
                        "stay float32, with conversions around them (mixed precision)")


def add_compile_args(p: argparse.ArgumentParser) -> None:
    """What to do to the model before and while compiling: --plan, --sparse."""
    from ..pruning.command import add_plan_option

    add_plan_option(p)
    p.add_argument("--sparse", choices=("auto", "always"), default="auto",
                   help="with --plan: 'auto' (default) gives a pruned layer its sparse kernel "
                        "only where that beats the dense one at its density; 'always' "
                        "wherever one exists")


DEFAULT_SPEC = DeviceSpec()


def add_device_args(p: argparse.ArgumentParser) -> None:
    """How to reach the device's runner: --address, --token-file, --runner, --max-temp,
    --no-pin, --store (--device is each command's own: its help and default differ)."""
    p.add_argument("--address", help="use a runner already listening at HOST:PORT")
    p.add_argument("--token-file", type=Path, help="the token of the runner at --address")
    p.add_argument("--runner", type=Path, help="the npas-runner binary for --device local")
    p.add_argument("--max-temp", type=float, default=DEFAULT_SPEC.max_temp_c,
                   help=f"phones: wait until the battery is at most this many °C (default "
                        f"{DEFAULT_SPEC.max_temp_c:g})")
    p.add_argument("--no-pin", action="store_true",
                   help="phones: do not pin the runner's threads to the big cores")
    p.add_argument("--store", type=Path, help="artifact store for the local runner")


def add_db_args(p: argparse.ArgumentParser, use: bool = True) -> None:
    """The tuning database: --db, and with ``use`` --no-tuning-db."""
    p.add_argument("--db", type=Path,
                   help="tuning database (default: ~/.cache/npas/tuning.json)")
    if use:
        p.add_argument("--no-tuning-db", action="store_true",
                       help="ignore the tuning database: the cost model's defaults everywhere")


def add_measure_args(p: argparse.ArgumentParser, threads: int = 1) -> None:
    """--runs, --warmup (default: the device's), --threads (default ``threads``), --per-layer."""
    p.add_argument("--runs", type=int, default=MeasureConfig.runs,
                   help=f"timed runs (default {MeasureConfig.runs})")
    p.add_argument("--warmup", type=int,
                   help=f"discarded warm-up runs, ≥ 1 (default {MeasureConfig.warmup}; 1 under "
                        f"qemu-arm64)")
    p.add_argument("--threads", type=int, default=threads,
                   help=f"runner threads; 0: one per big core (default {threads})")
    p.add_argument("--per-layer", action="store_true", help="also time every layer")


def device_spec(args: argparse.Namespace, device: str | None = None,
                private_store_bytes: int | None = None) -> DeviceSpec:
    """The DeviceSpec for the parsed device arguments (add_device_args, plus --device);
    ``device`` overrides --device. Reads --token-file; what is wrong raises UserError."""
    token = None
    if args.address:
        if not args.token_file:
            raise UserError("--address needs --token-file (the runner's session token)")
        try:
            token = args.token_file.read_text().strip()
        except OSError as e:
            raise UserError(f"--token-file {args.token_file}: {e.strerror}") from None
    return DeviceSpec(name=device or args.device or DEFAULT_SPEC.name,
                      address=args.address or None, token=token, runner=args.runner,
                      store=args.store, max_temp_c=args.max_temp,
                      pin_big_cores=not args.no_pin, private_store_bytes=private_store_bytes)
