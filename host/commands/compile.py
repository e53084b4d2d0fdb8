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
    args.precision = plan_precision(args)
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
    plan_keep = _plan_fp32(args.plan, model, getattr(toolchain, "precision", "fp32"))
    if getattr(args, "precision", "fp32") == "int8":
        calibration = calibration_batches(getattr(args, "calibration", None), shape)
        keep = tuple(n for n in getattr(args, "keep_fp32", "").split(",") if n)
        keep = (*keep, *(n for n in plan_keep if n not in keep))
    bundle = compile_model(model, example_inputs(shape), out_dir, name=name,
                           toolchain=toolchain, progress=stage, tuning=lookup,
                           schemes=schemes, sparse=args.sparse, calibration=calibration,
                           keep_fp32=keep, calibration_method=getattr(
                               args, "calibration_method", "minmax"))
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


def plan_precision(args: argparse.Namespace) -> str:
    """--precision, or int8 where --plan runs layers in int8 (the plan's per-layer precision,
    e.g. a search's exported plan.json): those compile int8, the plan's fp32 layers float32."""
    from ..pruning import PruningPlan

    if args.plan is None or args.precision == "int8":
        return args.precision
    plan = PruningPlan.load(args.plan)
    asks = [r for r in plan.precision if r.endswith("=int8")] + [
        n for n, r in plan.layers.items() if r.precision == "int8"]
    if not asks:
        return args.precision
    if (args.backend or "cpu") != "cpu" or args.precision != "fp32":
        raise UserError(f"--plan {args.plan} runs layers in int8 ({', '.join(asks[:4])}); int8 "
                        f"kernels are CPU ones (x86-64 VNNI/AVX2, arm64 SDOT), not "
                        f"--backend {args.backend or 'cpu'} --precision {args.precision}: "
                        f"compile it for the CPU, or set those layers to fp32 in the plan")
    return "int8"


def _plan_fp32(path: Path | None, model, precision: str) -> tuple[str, ...]:
    """The conv/linear layers a plan with precisions keeps in float32 (() without any)."""
    from ..pruning import PruningPlan

    if path is None:
        return ()
    plan = PruningPlan.load(path)
    if not plan.has_precision:
        return ()
    int8 = plan.int8_layers(model)
    if int8 and precision != "int8":
        raise UserError(f"--plan {path} runs {', '.join(int8[:4])} in int8: add --precision "
                        f"int8 (a CPU target with int8 kernels), or set them to fp32 in the plan")
    return tuple(n for n, p in plan.precisions(model).items() if p == "fp32")


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
