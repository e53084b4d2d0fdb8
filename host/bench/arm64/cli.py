"""``npas-host bench arm64``: our arm64 code against ncnn and MNN on one emulated Cortex-A76,
in instructions per inference (counted by a qemu plugin), not seconds.

Per model: our dense fp32 bundle, our dense fp16 bundle (NEON FP16 arithmetic; ``--no-fp16``
skips it), our dense int8 bundle (SDOT; ``--no-int8``), our sparse bundles at the NPAS rates
(the sparse benchmark's mappings) in fp32, unless ``--no-fp16`` fp16, and unless ``--no-int8``
int8 (the block-sparse SDOT kernels, same calibration as ours int8), ncnn fp32
and fp16 (its default on ARMv8.2), ncnn int8 (our converter, host/bench/ncnn_int8.py,
calibrated on ours' batches; ``--no-int8`` skips the int8 rows) and MNN fp32 and low precision
(fp16),
all on one thread, on the same input, each output checked against PyTorch first. Ours is
counted per layer too. Counts are work, not time: see the README's "The phone's CPU, counted".
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from host.console import err, out

from ..common import BenchArgError, bench_cache_dir, load_workload, parse_models, progress
from .run import (
    GUEST_ENGINES,
    CountingRunner,
    Record,
    arm64_toolchain,
    count_guest,
    pair_layers,
    save_input,
)

DEFAULT_MODELS = ("resnet18", "mobilenet_v2", "vgg16")
ENGINES = ("ours", "ncnn", "mnn")
GUEST_PRECISIONS = ("fp32", "fp16")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="npas-host bench arm64", description=(
        "Instructions per inference of our arm64 code, ncnn and MNN under qemu-aarch64 "
        "(-cpu cortex-a76, one thread), counted by a TCG plugin; outputs checked against "
        "PyTorch. Work, not time."))
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS),
                    help=f"comma-separated torchvision names (default: "
                         f"{','.join(DEFAULT_MODELS)})")
    ap.add_argument("--input-size", type=int, default=224,
                    help="input height and width (default 224)")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help="subset of ours,ncnn,mnn (default: all)")
    ap.add_argument("--no-sparse", action="store_true",
                    help="skip our sparse bundles at the NPAS rates")
    ap.add_argument("--no-fp16", action="store_true",
                    help="skip our fp16 bundles (NEON FP16 arithmetic: the 'ours fp16' row and the "
                         "sparse fp16 rows)")
    ap.add_argument("--no-int8", action="store_true",
                    help="skip the int8 rows: our int8 bundle (SDOT, 'ours int8') and ncnn's "
                         "int8 model ('ncnn int8', host/bench/ncnn_int8.py), both calibrated "
                         "on the same 4 seeded random batches, checked at --fp16-tolerance")
    ap.add_argument("--runs", type=int, default=2,
                    help="counted inferences per engine, after one untimed (default 2)")
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="largest accepted max|out - ref| / max|ref| in fp32 (default 1e-3)")
    ap.add_argument("--fp16-tolerance", type=float, default=0.25,
                    help="the same for fp16 arithmetic (default 0.25: ncnn's fp16 "
                         "MobileNet-V2, its default on ARMv8.2, is off by 0.16 here)")
    ap.add_argument("--layers", type=int, default=12,
                    help="our most expensive layers shown per model (default 12; all in "
                         "--json)")
    ap.add_argument("--timeout", type=float, default=3600.0,
                    help="seconds one engine's run may take under qemu (default 3600)")
    ap.add_argument("--json", type=Path, metavar="PATH",
                    help="write one record per (model, engine, precision) here")
    ap.add_argument("--cache", type=Path,
                    help="converted-model cache (default: ~/.cache/npas/bench)")
    return ap


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.models = parse_models(args.models)
    engines = tuple(dict.fromkeys(e.strip().lower() for e in args.engines.split(",")
                                  if e.strip()))
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or not engines:
        raise BenchArgError(f"--engines: unknown {', '.join(unknown) or '(none given)'}; "
                            f"choose from {', '.join(ENGINES)}")
    args.engines = engines
    if args.runs < 1 or args.input_size < 32 or args.layers < 0 or args.timeout <= 0:
        raise BenchArgError("--runs must be ≥ 1, --input-size ≥ 32, --layers ≥ 0 and "
                            "--timeout > 0")
    if not (0 < args.tolerance and 0 < args.fp16_tolerance):
        raise BenchArgError("--tolerance and --fp16-tolerance must be > 0")
    return args


# ---------------------------------------------------------------- one model

def calibrate_bn(w) -> None:
    """Give the model's BatchNorms the statistics of its own activations on 16 seeded random
    inputs (kept in the workload's cache): with the initial statistics (mean 0, variance 1)
    MobileNet-V2's activations shrink layer by layer to an output of about 3e-9, which fp16
    rounds to zero, and no fp16 engine could be checked against PyTorch."""
    import torch

    from host.models.data import Dataset, TensorData
    from host.models.train import recalibrate_bn

    path = w.cache / "weights.bn-calibrated.pt"
    if path.is_file():
        w.model.load_state_dict(torch.load(path, weights_only=True))
        return
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in w.model.modules()):
        return
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(16, *w.shape[1:], generator=g),
                      torch.zeros(16, dtype=torch.long), lambda b: b)
    recalibrate_bn(w.model, Dataset("random", data, data, 1, tuple(w.shape[1:])),
                   batch_size=8)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(w.model.state_dict(), tmp)
    os.replace(tmp, path)


def int8_calibration(w) -> list[list]:
    """The calibration batches of both int8 rows (ours and ncnn): 4 seeded random inputs."""
    from host.models import example_inputs

    return [list(example_inputs(w.example.shape, seed=s)) for s in range(1, 5)]


def ncnn_int8_files(files: Sequence[Path], w) -> tuple[Path, Path]:
    """ncnn's int8 model of the fp32 pair ``files``, by host/bench/ncnn_int8.py (absmax
    bottom-blob scales over ours' calibration batches, as ours' min/max ranges)."""
    from ..ncnn_int8 import int8_files

    return int8_files(files[0], files[1], [b[0].numpy() for b in int8_calibration(w)])


def bench_model(name: str, args: argparse.Namespace, runner: CountingRunner | None,
                prog, work: Path) -> list[Record]:
    import torch

    from codegen import compile_model

    from ..engines import OTHER_ENGINES, EngineUnavailable
    from ..sparse.mappings import MAPPINGS
    from ..sparse.work import compression, forward_work, prune, slug

    task = prog.add_task(f"{name}: loading the model", total=None)
    recs: list[Record] = []

    def step(what: str) -> None:
        prog.update(task, description=f"{name}: {what}")

    def attempt(rec: Record, fn) -> None:
        recs.append(rec)
        try:
            fn()
        except EngineUnavailable as e:
            rec.status, rec.note = "unavailable", str(e)
        except Exception as e:  # one engine failing is a result, not the end of the run
            rec.status, rec.note = "failed", f"{type(e).__name__}: {e}"
            rec.runs, rec.layers = [], []

    try:
        # its own cache: the dense and sparse benchmarks' conversions are of other weights
        w = load_workload(name, args.input_size, bench_cache_dir(args.cache) / "arm64")
        step("setting BatchNorm statistics from random inputs (cached)")
        calibrate_bn(w)
        with torch.inference_mode():
            ref = w.model(w.example).numpy()
        x = w.example.numpy()
        size = args.input_size
        if runner is not None:
            def ours_dense() -> None:
                step("compiling ours (arm64, fp32)")
                bundle = compile_model(w.model, (w.example,), work / "ours", name=w.cache.name,
                                       toolchain=arm64_toolchain())
                rec.version = f"bundle {bundle.manifest.content_hash[:12]}"
                step(f"counting ours ({args.runs} inferences after one, per layer)")
                runner.count(rec, bundle, x, ref, args.runs, args.tolerance)
            rec = Record(name, "ours", "fp32", size, "ours")
            attempt(rec, ours_dense)
            if not args.no_fp16:
                def ours_fp16(rec: Record) -> None:
                    step("compiling ours (arm64, fp16)")
                    bundle = compile_model(w.model, (w.example,), work / "ours-fp16",
                                           name=f"{w.cache.name}-fp16",
                                           toolchain=arm64_toolchain("fp16"))
                    rec.version = f"bundle {bundle.manifest.content_hash[:12]}"
                    step(f"counting ours fp16 ({args.runs} inferences after one, per layer)")
                    runner.count(rec, bundle, x, ref, args.runs, args.fp16_tolerance)
                rec16 = Record(name, "ours", "fp16", size, "ours fp16")
                attempt(rec16, lambda: ours_fp16(rec16))
            if not args.no_int8:
                def ours_int8(rec: Record) -> None:
                    step("compiling ours (arm64, int8)")
                    cal = int8_calibration(w)
                    bundle = compile_model(w.model, (w.example,), work / "ours-int8",
                                           name=f"{w.cache.name}-int8",
                                           toolchain=arm64_toolchain("int8"), calibration=cal)
                    rec.version = f"bundle {bundle.manifest.content_hash[:12]}"
                    step(f"counting ours int8 ({args.runs} inferences after one, per layer)")
                    runner.count(rec, bundle, x, ref, args.runs, args.fp16_tolerance)
                rec8 = Record(name, "ours", "int8", size, "ours int8")
                attempt(rec8, lambda: ours_int8(rec8))
            if not args.no_sparse:
                _, dense_works = forward_work(w.model, w.example)
                pruned_of: dict[str, tuple] = {}  # one pruning per mapping, both precisions
                precisions = ("fp32",) if args.no_fp16 else ("fp32", "fp16")
                precisions += () if args.no_int8 else ("int8",)  # sparse + int8 (SDOT)
                for mapping in MAPPINGS.get(name, ()):
                    for precision in precisions:
                        label = (f"ours {mapping.name} {mapping.npas:g}x"
                                 + ("" if precision == "fp32" else f" {precision}"))
                        rec = Record(name, "ours", precision, size, label)

                        def ours_sparse(rec=rec, mapping=mapping) -> None:
                            if mapping.name not in pruned_of:
                                step(f"pruning for {rec.label}")
                                solved, pruned, _ = prune(w.model, mapping, mapping.npas,
                                                          dense_works)
                                if not solved.reachable:
                                    raise RuntimeError(solved.note(mapping.npas))
                                pruned_of[mapping.name] = (pruned, *forward_work(
                                    pruned.model, w.example))
                            pruned, pref, works = pruned_of[mapping.name]
                            rec.compression = compression(dense_works, works)
                            step(f"compiling {rec.label} (arm64)")
                            from host.models import example_inputs

                            cal = ([list(example_inputs(w.example.shape, seed=s))
                                    for s in range(1, 5)] if rec.precision == "int8" else None)
                            bundle = compile_model(pruned.model, (w.example,),
                                                   work / slug(rec.label),
                                                   name=slug(f"{name}-{rec.label}"),
                                                   schemes=pruned.schemes,
                                                   toolchain=arm64_toolchain(rec.precision),
                                                   calibration=cal)
                            rec.version = f"bundle {bundle.manifest.content_hash[:12]}"
                            step(f"counting {rec.label}")
                            tol = (args.tolerance if rec.precision == "fp32"
                                   else args.fp16_tolerance)
                            runner.count(rec, bundle, x, pref, args.runs, tol)
                        attempt(rec, ours_sparse)
        x_file = save_input(x, work)
        for engine in (e for e in args.engines if e != "ours"):
            conv = OTHER_ENGINES[GUEST_ENGINES[engine]]()
            files: list[Path] = []

            def convert(conv=conv, files=files, engine=engine) -> None:
                step(f"converting for {engine} (cached after the first run)")
                conv.prepare(w)
                keys = ("ncnn.param", "ncnn.bin") if engine == "ncnn" else ("mnn",)
                files.extend(w.files[k] for k in keys)
            precisions = GUEST_PRECISIONS + (("int8",) if engine == "ncnn" and not
                                             args.no_int8 else ())
            for precision in precisions:
                rec = Record(name, engine, precision, size,
                             engine + (" int8" if precision == "int8" else ""))

                def guest(rec=rec, convert=convert, files=files) -> None:
                    if not files:
                        convert()
                    use = files
                    if rec.precision == "int8":
                        step("converting ncnn fp32 to int8, calibrated on ours' batches "
                             "(cached)")
                        use = list(ncnn_int8_files(files, w))
                    step(f"counting {rec.engine} {rec.precision} in the arm64 Python")
                    tol = args.tolerance if rec.precision == "fp32" else args.fp16_tolerance
                    count_guest(rec, use, x_file, ref, work, args.runs, tol, args.timeout,
                                per_layer=rec.engine == "ncnn" and rec.precision == "fp32")
                attempt(rec, guest)
    finally:
        prog.remove_task(task)
    return recs


# ---------------------------------------------------------------- tables

def _m(v: int | None) -> str:
    return "—" if v is None else f"{v / 1e6:,.1f}"


def _ratio(v: int | None, ours: int | None) -> str:
    return "—" if not v or not ours else f"{v / ours:.2f}"


def print_model(recs: Sequence[Record], shown_layers: int) -> None:
    r0 = recs[0]
    ours = next((r for r in recs if r.label == "ours" and r.counts), None)
    oc = ours.counts if ours else None
    t = Table(title=f"{r0.model} at {r0.input_size}×{r0.input_size}, 1 thread, qemu "
              f"-cpu cortex-a76: millions of instructions per inference", title_justify="left")
    for col in ("engine", "precision", "instructions", "vector MACs", "MAC share",
                "instr / ours", "MACs / ours", "max rel err", "top-1", "note"):
        t.add_column(col, justify="left" if col in ("engine", "precision", "note")
                     else "right", overflow="fold")
    for r in recs:
        c = r.counts
        t.add_row(r.label, r.precision, _m(c.total if c else None),
                  _m(c.mac if c else None),
                  f"{c.mac / c.total:.0%}" if c and c.total else "—",
                  _ratio(c.total if c else None, oc.total if oc else None),
                  _ratio(c.mac if c else None, oc.mac if oc else None),
                  "—" if r.max_rel_err is None else f"{r.max_rel_err:.1e}",
                  "—" if r.top1 is None else ("same" if r.top1 else "differs"),
                  escape(r.note if r.status != "ok" else r.version))
    out.print(t)
    if ours and ours.layers and shown_layers:
        total = sum(layer.counts.total for layer in ours.layers)
        lt = Table(title=f"{r0.model}: our {shown_layers} most expensive layers (of "
                   f"{len(ours.layers)})", title_justify="left")
        for col in ("step", "op", "kernel", "instructions (M)", "share", "vector MACs (M)",
                    "MACs / fp32 FMLA floor"):
            lt.add_column(col, justify="left" if col in ("step", "op", "kernel")
                          else "right", overflow="fold")
        for layer in sorted(ours.layers, key=lambda x: -x.counts.total)[:shown_layers]:
            floor = layer.fmla_floor
            lt.add_row(escape(layer.name), layer.op, escape(layer.kernels or layer.symbol),
                       _m(layer.counts.total), f"{layer.counts.total / total:.1%}",
                       _m(layer.counts.mac),
                       f"{layer.counts.mac / floor:.2f}" if floor else "—")
        out.print(lt)


def print_vs_ncnn(recs: Sequence[Record]) -> None:
    """Our conv/linear steps against ncnn fp32's layers of the same work, and the rest."""
    ours = next((r for r in recs if r.label == "ours" and r.layers), None)
    theirs = next((r for r in recs if r.engine == "ncnn" and r.precision == "fp32"
                   and r.layers), None)
    if ours is None or theirs is None:
        return
    pairs = pair_layers(ours.layers, theirs.layers)
    extra = sum(la.counts.total for la in theirs.layers) - theirs.counts.total
    t = Table(title=f"{ours.model}: our conv/linear steps against ncnn fp32's layers of the "
              f"same FLOPs, millions of instructions (ncnn's layer-by-layer inference, one "
              f"extraction a layer, costs {extra / 1e6:,.1f} M more than its whole one)",
              title_justify="left")
    for col in ("step", "kernel", "ours", "ncnn layer", "ncnn", "ours / ncnn"):
        t.add_column(col, justify="right" if col in ("ours", "ncnn", "ours / ncnn")
                     else "left", overflow="fold")
    for p in pairs:
        theirs_n = p.theirs.counts.total if p.theirs else None
        t.add_row(escape(p.ours.name), escape(p.ours.kernels or p.ours.op),
                  _m(p.ours.counts.total), escape(p.theirs.name) if p.theirs else "—",
                  _m(theirs_n), _ratio(p.ours.counts.total, theirs_n))
    paired = {id(p.ours) for p in pairs}
    matched = {id(p.theirs) for p in pairs if p.theirs}
    rest_ours = sum(la.counts.total for la in ours.layers if id(la) not in paired)
    rest_theirs = sum(la.counts.total for la in theirs.layers if id(la) not in matched)
    t.add_row("everything else", "pooling, layout, glue", _m(rest_ours),
              "pooling, add, relu, split, …", _m(rest_theirs), _ratio(rest_ours, rest_theirs))
    out.print(t)


def print_summary(recs: Sequence[Record]) -> None:
    for model in dict.fromkeys(r.model for r in recs):
        mine = [r for r in recs if r.model == model]
        ours = next((r for r in mine if r.label == "ours" and r.counts), None)
        if ours is None:
            continue
        for r in mine:
            if r.engine == "ours" or r.precision != "fp32" or not r.counts:
                continue  # the other precisions against ours at the same one, below
            out.print(f"{model}: ours fp32 vs {r.engine} {r.precision}: "
                      f"{_verdict(r.counts.total / ours.counts.total)} "
                      f"(ours {ours.counts.total / 1e6:,.1f} M against "
                      f"{r.counts.total / 1e6:,.1f} M)")
        ncnn16 = next((r for r in mine if r.engine == "ncnn" and r.precision == "fp16"
                       and r.counts), None)
        for r in mine if ncnn16 else ():
            if (r.engine != "ours" or r.precision != "fp16" or r.label == "ours fp16"
                    or not r.counts):
                continue  # the sparse fp16 rows (dense fp16 below)
            ratio = r.counts.total / ncnn16.counts.total
            out.print(f"{model}: {r.label} vs ncnn fp16: {ratio:.2f}x its instructions "
                      f"({r.counts.total / 1e6:,.1f} M against "
                      f"{ncnn16.counts.total / 1e6:,.1f} M; max rel err "
                      f"{r.max_rel_err:.1e} against ncnn's {ncnn16.max_rel_err:.1e})")
        for prec in ("fp16", "int8"):
            mine_p = next((r for r in mine if r.label == f"ours {prec}" and r.counts), None)
            for r in mine if mine_p else ():
                if r.engine == "ours" or r.precision != prec or not r.counts:
                    continue
                out.print(f"{model}: ours {prec} vs {r.engine} {prec}: "
                          f"{_verdict(r.counts.total / mine_p.counts.total)} "
                          f"(ours {mine_p.counts.total / 1e6:,.1f} M against "
                          f"{r.counts.total / 1e6:,.1f} M; max rel err "
                          f"{mine_p.max_rel_err:.1e} against {r.engine}'s "
                          f"{r.max_rel_err:.1e})")


def write_json(path: Path, recs: Sequence[Record]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps([r.to_json() for r in recs], indent=1) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except BenchArgError as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        return 2
    from .counting import CountError, find_plugin
    from .pyroot import find_pyroot

    try:
        find_plugin()
        if any(e != "ours" for e in args.engines):
            find_pyroot()
    except (CountError, FileNotFoundError) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        return 2
    if not out.is_terminal:
        out.width = max(out.width, 150)  # a piped console is 80 wide: the tables would wrap
    recs: list[Record] = []
    with ExitStack() as stack, progress() as prog:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="npas-arm64-")))
        runner = None
        if "ours" in args.engines:
            task = prog.add_task("starting the arm64 runner under qemu with the plugin",
                                 total=None)
            try:
                runner = CountingRunner(stack, work)
            except (OSError, RuntimeError, CountError) as e:
                err.print(f"[red]error:[/red] the arm64 runner: {escape(str(e))}")
                return 1
            finally:
                prog.remove_task(task)
        for name in args.models:
            mdir = work / name
            mdir.mkdir()
            got = bench_model(name, args, runner, prog, mdir)
            recs.extend(got)
            prog.stop()  # tables print between the progress lines
            print_model(got, args.layers)
            print_vs_ncnn(got)
            prog.start()
            if args.json:
                write_json(args.json, recs)  # after every model: a crash keeps what was done
    print_summary(recs)
    if args.json:
        err.print(f"wrote {len(recs)} records to {args.json}")
    return 0 if all(r.status in ("ok", "wrong") for r in recs) else 1


def _verdict(ratio: float) -> str:
    """``ratio``: the other engine's instructions over ours."""
    return (f"ours executes {1 - 1 / ratio:.0%} fewer instructions" if ratio > 1
            else f"ours executes {ratio ** -1 - 1:.0%} more instructions")
