"""`npas-host tune`: tune a model's layers on a device and fill the tuning database.

Prints, per layer signature, the default's and the tuned point's median (from the final
side-by-side re-measurement) and, at the end, the whole model with and without the database,
measured in interleaved rounds on the same runner.
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..commands.args import add_db_args, add_device_args, add_model_args, device_spec
from ..console import err, out
from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``tune`` to the subcommands in ``sub``."""
    p = sub.add_parser("tune", help="auto-tune a model's kernels on a device (genetic "
                       "algorithm over each layer's tuning) into the tuning database")
    p.add_argument("model", help="torchvision name, module:factory, or a .pt2 export")
    p.add_argument("--device", default="local",
                   help="'local' (the host runner; default), 'qemu-arm64' (meaningless "
                        "timings) or a phone serial")
    p.add_argument("--threads", type=int, default=1,
                   help="runner threads to tune for; 0: one per big core (default 1)")
    p.add_argument("--generations", type=int, default=4, help="GA generations (default 4)")
    p.add_argument("--population", type=int, default=6,
                   help="individuals per generation = candidate bundles measured per "
                        "generation (default 6)")
    p.add_argument("--runs", type=int, default=10,
                   help="timed runs per candidate benchmark (default 10; the finals use 2x)")
    p.add_argument("--warmup", type=int, default=2, help="discarded warm-up runs (default 2)")
    p.add_argument("--time-budget-s", type=float,
                   help="stop the search after this many seconds (the final re-measurement "
                        "and the comparison come after)")
    p.add_argument("--seed", type=int, default=0,
                   help="GA seed: the same seed proposes the same candidates for the same "
                        "measurements (default 0)")
    p.add_argument("--finalists", type=int, default=3,
                   help="best points per signature re-measured against the default (default 3)")
    p.add_argument("--margin", type=float, default=0.03,
                   help="keep a tuned point only if its median beats the default's by this "
                        "fraction (default 0.03)")
    p.add_argument("--retune", action="store_true",
                   help="tune signatures the database already has")
    p.add_argument("--no-compare", action="store_true",
                   help="skip the whole-model default vs tuned measurement at the end")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_device_args(p)
    add_db_args(p, use=False)
    add_model_args(p)


class _RichProgress:
    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = progress.add_task("tuning", total=None)

    def stage(self, text: str, done: int, total: int) -> None:
        self.progress.update(self.task, description=text, completed=done, total=total)

    def generation(self, gen: int, generations: int, sigs) -> None:
        t = Table(title=f"generation {gen}/{generations}: best so far per signature "
                        f"(median ms; noisy, re-measured at the end)", title_justify="left")
        for col in ("signature", "n", "points", "default", "best", "best tuning"):
            t.add_column(col, justify="right" if col in ("n", "points", "default", "best")
                         else "left")
        for s in sigs:
            t.add_row(escape(s.description), str(len(s.layers)), str(s.measured),
                      _time(s.default_ms), _time(s.best_ms), _tuning_str(s.best))
        self.progress.console.print(t)

    def note(self, text: str) -> None:
        self.progress.console.print(f"[dim]{escape(text)}[/dim]")


SHORT = {"oc_tile": "oc", "w_tile": "w"}


def _tuning_str(t: dict) -> str:
    """``direct oc2 w14``: the algorithm, then the other parameters, abbreviated."""
    parts = [str(t["algo"])] if "algo" in t else []
    parts += [f"{SHORT[k]}{v}" if k in SHORT else f"{k}={v}"
              for k, v in sorted(t.items()) if k != "algo"]
    return " ".join(parts)


def _time(ms: float) -> str:
    if ms == float("inf"):
        return "-"
    return f"{ms * 1000:.1f} µs" if ms < 1 else f"{ms:.3f} ms"


# Candidate bundles differ in their weight blobs (Winograd packs transformed weights), and the
# runner's store keeps every artifact it was sent (there is no eviction): a resnet18 search
# uploads ~150 MB per candidate. The local runner gets a private store (DeviceSpec's
# private_store_bytes), removed afterwards, so the search neither fills nor pollutes the
# shared one.
TUNE_STORE_BYTES = 32 << 30


def run(args: argparse.Namespace) -> int:
    from codegen import GaConfig, TuneConfig, TuningDB, TuningDbError

    from ..devices import open_device
    from ..devices.session import Session
    from ..measure import runner_threads
    from ..models import example_inputs, load_model, parse_shape
    from ..targets import toolchain_for_device
    from .measurer import tune_on_session

    if (args.backend or "cpu") != "cpu":
        raise UserError("tune: only CPU kernels have a tuning space so far; drop --backend gpu")
    if args.precision == "int8":
        raise UserError("tune: the int8 kernels have no tuning space yet; tune at "
                        "--precision fp32 (int8 bundles use the cost model's tiles)")
    if min(args.generations, args.population, args.runs, args.warmup) < 1 or args.threads < 0:
        raise UserError(f"--generations, --population, --runs and --warmup must be ≥ 1 and "
                        f"--threads ≥ 0; got {args.generations}, {args.population}, "
                        f"{args.runs}, {args.warmup}, {args.threads}")
    try:
        db = TuningDB(args.db)
    except TuningDbError as e:
        raise UserError(str(e)) from None
    shape = parse_shape(args.input_shape)
    model = load_model(args.model)
    name = args.name or Path(args.model).stem.replace(":", "_").replace(".", "_")
    with ExitStack() as stack:
        progress = stack.enter_context(Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=err, transient=True))
        rp = _RichProgress(progress)
        rp.stage(f"starting the runner on {args.device}", 0, 1)
        device = open_device(device_spec(args, private_store_bytes=TUNE_STORE_BYTES), stack)
        session = stack.enter_context(Session(device, on_event=lambda m: err.print(m)))
        info = session.client.device_info()
        threads = runner_threads(args.threads, info)
        cfg = TuneConfig(threads=threads, runs=args.runs, warmup=args.warmup,
                         ga=GaConfig(population=args.population, generations=args.generations),
                         seed=args.seed, time_budget_s=args.time_budget_s,
                         finalists=args.finalists, margin=args.margin,
                         compare=not args.no_compare, retune=args.retune, model_name=name,
                         device=info.cpu_model)
        toolchain = toolchain_for_device(info, "cpu", args.precision)
        report = tune_on_session(model, example_inputs(shape), session, toolchain, db, cfg, rp)
    note = device.traits.timing_note
    if args.json:
        print(json.dumps({"model": args.model, "device": args.device, "threads": threads,
                          "db": str(db.path), "note": note, **asdict(report)},
                         default=str))
        return 0
    _print_report(report, args, threads, str(db.path), note)
    return 0


def _print_report(report, args, threads: int, db_path: str, note: str) -> None:
    t = Table(title=f"{args.model} on {args.device}, {threads} thread(s): per layer signature "
                    f"(medians of the final side-by-side runs)")
    for col in ("signature", "n", "default", "time", "tuned", "time ", "speedup", ""):
        t.add_column(col, justify="left" if col in ("signature", "default", "tuned", "")
                     else "right")
    for s in report.signatures:
        status = "db" if s.from_db else "tuned" if s.kept else "default"
        t.add_row(escape(s.description), str(len(s.layers)), _tuning_str(s.default),
                  _time(s.default_ms), _tuning_str(s.best) if s.kept else "=",
                  _time(s.best_ms), f"{s.speedup:.2f}×", status)
    out.print(t)
    out.print(f"n: layers with that signature. tuned: the best point beat the default by "
              f"≥ {args.margin:.0%} (else the default is kept and recorded); db: already in the "
              f"database, not measured again (its recorded times)")
    out.print(f"{report.candidates_measured} candidate bundles measured over "
              f"{report.generations} generation(s) in {report.seconds:.0f} s; database "
              f"{db_path}")
    if report.model_default_ms is not None:
        d, tu = report.model_default_ms, report.model_tuned_ms
        out.print(f"whole model (median of 3 interleaved rounds): defaults {d:.3f} ms, tuned "
                  f"{tu:.3f} ms ({d / tu:.2f}×)")
    for f in report.failures:
        out.print(f"[yellow]failed:[/yellow] {escape(f)}")
    if note:
        out.print(f"[yellow]note:[/yellow] {escape(note)}")
