"""`npas-host compile`: a model into a bundle; and compile_bundle, the compile step profile
shares (load the model, apply --plan, compile with the tuning database's tuning)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ..console import err, out
from ..errors import UserError
from .args import add_compile_args, add_db_args, add_model_args

if TYPE_CHECKING:
    from codegen import Bundle, CToolchain, DbLookup, OpenClToolchain


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compile", help="compile a model into a bundle")
    p.add_argument("model", help="torchvision name, module:factory, or a .pt2 export")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--abi", choices=("host", "arm64-v8a"), default="host",
                   help="CPU kernels for this machine (host, default) or for arm64 phones")
    p.add_argument("--threads", type=int, default=1,
                   help="the runner threads to take tuning for from the database (default 1)")
    add_db_args(p)
    add_model_args(p)
    add_compile_args(p)


def run(args: argparse.Namespace) -> int:
    from codegen import read_report

    from ..targets import toolchain_for_abi

    out_dir = Path(args.output)
    toolchain = toolchain_for_abi(args.abi, args.backend or "cpu", args.precision)
    with progress_bar() as progress:
        bundle = compile_bundle(args.model, out_dir, args, progress, toolchain, args.threads)
    m = bundle.manifest
    r = read_report(out_dir)
    out.print(f"bundle {out_dir}: {len(m.steps)} steps for {m.target.abi}, "
              f"{sum(s.flops for s in m.steps) / 1e6:,.1f} MFLOP, weights "
              f"{_size(m.artifact('weights').size)}, activation arena {_size(m.arena_bytes)} "
              f"(largest live set {_size(r.peak_bytes)}), compiled in {r.seconds:.1f} s")
    for layer, what in r.sparse.items():
        out.print(f"  {escape(layer)}: {escape(what)}")
    if args.precision == "int8":
        out.print(f"  int8: {len(m.steps) - len(r.fp32_layers)} steps (conversions included), "
                  f"{len(r.fp32_layers)} in float32" + (":" if r.fp32_layers else ""))
        for layer, why in r.fp32_layers.items():
            out.print(f"    {escape(layer)}: {escape(why)}")
    return 0


def progress_bar() -> Progress:
    """The transient progress display of compile and profile (on stderr)."""
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    DownloadColumn(), TimeElapsedColumn(), console=err, transient=True)


def tuning_lookup(db: Path | None, threads: int) -> DbLookup:
    """The tuning database's lookup for compile_model (tuning for ``threads`` threads)."""
    from codegen import TuningDB, TuningDbError

    try:
        return TuningDB(db).lookup(threads)
    except TuningDbError as e:
        raise UserError(str(e)) from None


def compile_bundle(model_spec: str, out_dir: Path, args: argparse.Namespace,
                   progress: Progress, toolchain: CToolchain | OpenClToolchain,
                   threads: int) -> Bundle:
    """Load ``model_spec``, prune it with --plan, compile it with ``toolchain`` and the
    tuning database's tuning for ``threads`` (unless --no-tuning-db) into ``out_dir``."""
    from codegen import compile_model

    from ..models import example_inputs, load_model, parse_shape
    from ..pruning.command import apply_plan_file

    shape = parse_shape(args.input_shape)
    task = progress.add_task(f"loading {model_spec}", total=None)
    model, schemes = apply_plan_file(load_model(model_spec), args.plan)
    name = args.name or Path(model_spec).stem.replace(":", "_").replace(".", "_")

    def stage(what: str) -> None:
        progress.update(task, description=f"compiling {name}: {what}")

    t0 = time.perf_counter()
    lookup = None if args.no_tuning_db else tuning_lookup(args.db, threads)
    calibration, keep = None, ()
    if getattr(args, "precision", "fp32") == "int8":
        calibration = calibration_batches(getattr(args, "calibration", None), shape)
        keep = tuple(n for n in getattr(args, "keep_fp32", "").split(",") if n)
    bundle = compile_model(model, example_inputs(shape), out_dir, name=name,
                           toolchain=toolchain, progress=stage, tuning=lookup,
                           schemes=schemes, sparse=args.sparse, calibration=calibration,
                           keep_fp32=keep)
    progress.remove_task(task)
    err.print(f"compiled {name} in {time.perf_counter() - t0:.1f} s → {out_dir}")
    isa = toolchain.isa()
    if lookup is not None and isa is not None and isa.elem_bytes == 2:
        err.print(f"tuning database {lookup.db.path}: not used for fp16 CPU kernels (its "
                  "entries are fp32 timings); the cost model's defaults apply")
    elif lookup is not None and (lookup.hits or lookup.misses):
        err.print(f"tuning database {lookup.db.path}: {len(lookup.hits)} of "
                  f"{len(lookup.hits) + len(lookup.misses)} tunable layers tuned for "
                  f"{threads} thread(s); the rest keep the cost model's defaults"
                  + ("" if lookup.hits else " (run `npas-host tune` to fill it)"))
    return bundle


CALIBRATION_BATCHES = 4  # seeded random batches when the user gives no calibration data


def calibration_batches(path: Path | None, shape: tuple[int, ...]) -> list[list]:
    """--precision int8's calibration batches: the .npy at ``path`` (one input batch of
    ``shape``, or several stacked), else CALIBRATION_BATCHES seeded example inputs."""
    import numpy as np

    from ..models import example_inputs

    if path is None:
        return [list(example_inputs(shape, seed=s)) for s in range(CALIBRATION_BATCHES)]
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(f"--calibration {path}: not a readable .npy array ({e})") from None
    if a.shape == shape:
        a = a[None]
    if a.ndim != len(shape) + 1 or tuple(a.shape[1:]) != shape or not len(a):
        raise UserError(f"--calibration {path}: shape {list(a.shape)}; want the input shape "
                        f"{list(shape)} or a stack of them [k, {', '.join(map(str, shape))}] "
                        "(set --input-shape to match the data's batch)")
    if not np.isfinite(a).all():
        raise UserError(f"--calibration {path}: holds non-finite values")
    return [[np.ascontiguousarray(b, np.float32)] for b in a]


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
