"""int8 latency: our int8 bundle against the int8 paths of the engines people deploy (ONNX
Runtime's static QDQ, ExecuTorch-XNNPACK's PT2E, OpenVINO's NNCF, MNN's quantization tool; the
peers in ``INT8_PEERS``), with float32 baselines, interleaved in one run, and each engine's
agreement with float32.

Every int8 engine quantizes the same model with the same calibration batches (seeded random
inputs of the benchmark's size, ``peers.calibration``): ours with ``--precision int8``
(``codegen.quant``: min/max, per-channel symmetric int8 weights, uint8 activations), ONNX
Runtime with ``quantize_static`` (QDQ format, ``QUInt8`` activations, ``QInt8`` per-channel
weights, MinMax calibration) on its own ONNX export, run with all graph optimizations (which
fuse the QDQ pairs into its int8 kernels); the others as ``peers.py`` says. Quantized models
are cached in the workload's folder, so a calibration runs once per model and version. For
every model and thread count the engines are sampled round-robin (``common.measure``), one
untimed inference before each timed one, and before each sample the wait until every thread
of the benchmark's processes is idle (``quiet.py``: pools that spin after a call returned
would take a core from the engine sampled next; ``--no-cool-down`` leaves it out);
``--schedule alone|both`` also times each engine's samples back to back. Printed:
median/p10/p90, CPU time per inference (the work itself at 1 thread, on a loaded machine
too), the cool-down waited, ours int8 against the fastest int8 peer (by wall median and by
CPU time), and for each engine top-1 agreement and mean cosine similarity with PyTorch
float32 on ``--eval`` further seeded inputs.

    python -m host.bench.int8 --models resnet18,mobilenet_v2,vgg16 --threads 1,2 --runs 20 \
        --schedule both
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from host.console import err, out

from .common import (
    BenchArgError,
    EngineRun,
    announce_machine,
    attach_samples,
    bench_cache_dir,
    check_sampling,
    close_loaded,
    engine_names,
    load_checked,
    load_workload,
    local_session,
    measure,
    parse_models,
    parse_threads,
)
from .engines import (
    EngineUnavailable,
    Loaded,
    OrtEngine,
    OursEngine,
    _atomic,
    onnx_file,
    version_of,
)
from .ncnn_int8 import NcnnInt8Engine, NcnnPeer
from .peers import (
    CALIBRATION_SEEDS,  # noqa: F401  (re-exported: the seeds every int8 engine calibrates on)
    ExecuTorchEngine,
    ExecuTorchInt8Engine,
    MnnInt8Engine,
    OpenVinoEngine,
    OpenVinoInt8Engine,
    calibration,
)
from .quiet import Meter, measure_alone, process_tree, run_ns, settle

DEFAULT_MODELS = ("resnet18", "mobilenet_v2", "vgg16")
SCHEDULES = ("interleaved", "alone", "both")
EVAL_SEED = 200
OURS = ("ours fp32", "ours int8")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="npas-host bench int8", description=(
        "int8 latency of our bundle against the int8 paths of ONNX Runtime, ExecuTorch-XNNPACK, "
        "OpenVINO and MNN (and fp32 baselines), interleaved, with top-1 agreement and cosine "
        "similarity against PyTorch fp32."))
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=30, help="timed samples per engine")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--eval", type=int, default=16,
                    help="seeded inputs for top-1 agreement and cosine (default 16)")
    ap.add_argument("--engines", default=",".join(engine_choices()),
                    help="subset of engines to run (default: all)")
    ap.add_argument("--schedule", choices=SCHEDULES, default="interleaved", help=(
        "interleaved (default): the engines round-robin, and before each sample the wait "
        "until every thread of the benchmark's processes (the peers', our runner's) is idle "
        "(host/bench/quiet.py: pools that spin after a call returns would otherwise take a "
        "core from the engine sampled next); alone: each engine's samples back to back, one "
        "engine after another; both: alone, then interleaved, both printed"))
    ap.add_argument("--no-cool-down", dest="cool_down", action="store_false", help=(
        "interleaved samples without the wait for idle threads before each (the old way: to "
        "see what other engines' spinning pools cost the one sampled next)"))
    ap.add_argument("--json", type=Path, metavar="PATH", help="write every sample here")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--runner", type=Path)
    return ap


class OrtInt8Engine(OrtEngine):
    name = "ONNX Runtime int8"
    file = "onnx-qdq"

    def prepare(self, w) -> str:
        v = version_of("onnxruntime")
        src = onnx_file(w)

        def quantize(tmp: Path) -> None:
            from onnxruntime.quantization import (
                CalibrationDataReader,
                CalibrationMethod,
                QuantFormat,
                QuantType,
                quantize_static,
            )

            class Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self.it = iter([{"input": x} for x in calibration(w.shape)])

                def get_next(self):
                    return next(self.it, None)

            import logging

            from onnxruntime.quantization.shape_inference import quant_pre_process

            logging.getLogger().setLevel(logging.ERROR)  # the quantizer's notices
            with tempfile.TemporaryDirectory() as d:
                pre = Path(d) / "pre.onnx"  # shape inference + folding, as ORT recommends
                quant_pre_process(str(src), str(pre))
                quantize_static(str(pre), str(tmp.with_suffix(".onnx")), Reader(),
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax,
                                extra_options={"CalibTensorRangeSymmetric": False},
                                calibration_providers=["CPUExecutionProvider"])
            os.replace(tmp.with_suffix(".onnx"), tmp)
        try:
            w.files[self.file] = _atomic(w.cache / f"model.qdq{v}.onnx", quantize)
        except EngineUnavailable:
            raise
        except Exception as e:
            raise EngineUnavailable(f"quantize_static: {type(e).__name__}: {e}") from None
        return f"onnxruntime {v} static QDQ (uint8 activations, per-channel int8 weights)"


# The peers, in table order: classes with ``prepare(w)`` and ``load(w, threads)`` (engines.py)
# that, once loaded, answer ``run_on(x)`` (one inference on another input, for the agreement
# with fp32). Names ending in "int8" are the int8 peers ours is compared with. Another
# engine is one more entry (``INT8_PEERS.append(MyEngine)``).
INT8_PEERS: list[type] = []


def engine_choices() -> tuple[str, ...]:
    return (*OURS, *(c.name for c in INT8_PEERS))


def _infer_on(eng, x: np.ndarray) -> np.ndarray:
    """One inference of a loaded engine on another input than the workload's example."""
    if isinstance(eng, OursEngine):
        return eng.session.run(eng._key, [x])[0]
    return eng.run_on(x)


class _Ours(OursEngine):
    def load(self, w, threads: int) -> Loaded:
        from host.measure import MeasureConfig

        key = self.session.load(self.bundle, MeasureConfig(threads=threads))
        self._key = key
        # the runner's benchmark runs its first run and at least one warm-up (0 asks for its
        # default) before the timed one: three inferences a sample (quiet.Meter's CPU time)
        one_run = MeasureConfig(threads=threads, runs=1, warmup=1)
        self.call_overhead_ns = call_overhead_ns(
            lambda runs: self.session.benchmark(key, replace(one_run, runs=runs)),
            process_tree())
        x = w.example.numpy()
        return Loaded(self.name, lambda: self.session.run(key, [x])[0],
                      lambda: int(self.session.benchmark(key, one_run).samples_ns[0]),
                      lambda: self.session.unload(key))


def call_overhead_ns(bench, pids: list[int], pairs: int = 3, more: int = 5) -> int:
    """The CPU time a runner benchmark call costs besides its inferences (gRPC, telemetry,
    memory counters: ~1.6 ms on the 2-core host, a fifth of a MobileNet-V2 sample), from
    calls of 1 and of ``1 + more`` timed runs: median CPU of the short calls less 3
    inferences' worth ((long - short) / more each); never below 0. ``quiet.Meter`` leaves it
    out of ours' CPU per inference."""
    short, long_ = [], []
    for _ in range(pairs):
        for runs, acc in ((1, short), (1 + more, long_)):
            settle(pids)
            c0 = run_ns(pids)
            bench(runs)
            acc.append(run_ns(pids) - c0)
    per = (statistics.median(long_) - statistics.median(short)) / more
    return max(0, int(statistics.median(short) - 3 * per))


def _ort_keep(cls):
    class Keep(cls):
        def load(self, w, threads: int) -> Loaded:
            import onnxruntime as ort

            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(str(w.files[getattr(self, "file", "onnx")]), so,
                                        providers=["CPUExecutionProvider"])
            self.run_on = lambda x: sess.run(None, {sess.get_inputs()[0].name: x})[0]
            feed = {sess.get_inputs()[0].name: w.example.numpy()}

            def infer() -> np.ndarray:
                return sess.run(None, feed)[0]

            def sample() -> int:
                import time

                infer()
                t0 = time.perf_counter_ns()
                infer()
                return time.perf_counter_ns() - t0
            return Loaded(self.name, infer, sample)
    Keep.name = cls.name
    return Keep


INT8_PEERS += [_ort_keep(OrtEngine), _ort_keep(OrtInt8Engine), ExecuTorchEngine,
               ExecuTorchInt8Engine, OpenVinoEngine, OpenVinoInt8Engine, MnnInt8Engine]
INT8_PEERS += [NcnnPeer, NcnnInt8Engine]  # host/bench/ncnn_int8.py: our ncnn2int8


class _Probe:
    """Wraps an engine so that its agreement is measured while it is loaded."""

    def __init__(self, label, eng, evals, refs, quality: dict) -> None:
        self.label, self.eng, self.evals, self.refs, self.quality = label, eng, evals, refs, \
            quality

    def load(self, w, threads: int) -> Loaded:
        lo = self.eng.load(w, threads)
        outs = [_infer_on(self.eng, x) for x in self.evals]
        self.quality[self.label] = agreement(outs, self.refs)
        return lo


def agreement(outs: Sequence[np.ndarray], refs: Sequence[np.ndarray]) -> tuple[float, float]:
    """(top-1 agreement, mean cosine similarity) of outputs with the float32 references."""
    top1 = np.mean([o.argmax() == r.argmax() for o, r in zip(outs, refs, strict=True)])
    with np.errstate(invalid="ignore", divide="ignore"):  # an all-zero output: nan, printed
        cos = np.mean([float((o.ravel() @ r.ravel()) / (np.linalg.norm(o) * np.linalg.norm(r)))
                       for o, r in zip(outs, refs, strict=True)])
    return float(top1), float(cos)


def bench_model(name: str, args, session, progress, tmp: Path) -> list[dict]:
    import torch

    from codegen import HostToolchain, compile_model
    from host.models import example_inputs

    w = load_workload(name, args.input_size, bench_cache_dir(args.cache))
    with torch.inference_mode():
        ref = w.model(w.example).numpy()
    cal = [[x] for x in calibration(w.shape)]
    engines: dict = {}
    unavailable: dict[str, str] = {}
    if "ours fp32" in args.engines:
        engines["ours fp32"] = _Ours(session, compile_model(
            w.model, (w.example,), tmp / "f32", name=w.cache.name), "ours fp32")
    if "ours int8" in args.engines:
        engines["ours int8"] = _Ours(session, compile_model(
            w.model, (w.example,), tmp / "i8", name=w.cache.name + "-int8",
            toolchain=HostToolchain(precision="int8"), calibration=cal), "ours int8")
    for cls in INT8_PEERS:
        if cls.name not in args.engines:
            continue
        e = cls()
        task = progress.add_task(f"{name}: preparing {cls.name}", total=None)
        try:
            err.print(f"{name}: {cls.name}: {e.prepare(w)}")
            engines[cls.name] = e
        except EngineUnavailable as ex:
            unavailable[cls.name] = str(ex)
        except Exception as ex:  # a converter failing is a result, not the end of the run
            unavailable[cls.name] = f"prepare failed: {type(ex).__name__}: {ex}"
        finally:
            progress.remove_task(task)
    evals = [example_inputs(w.shape, seed=EVAL_SEED + i)[0].numpy() for i in range(args.eval)]
    with torch.inference_mode():
        eval_refs = [w.model(torch.from_numpy(x)).numpy() for x in evals]
    rows = []
    for threads in args.threads:
        runs = {k: EngineRun(name, threads, k, "unavailable", v) for k, v in unavailable.items()}
        quality: dict[str, tuple[float, float]] = {}
        extra = sample(name, threads, {k: _Probe(k, e, evals, eval_refs, quality)
                                       for k, e in engines.items()}, w, ref, runs, args,
                       progress)
        print_table(name, threads, runs, quality, extra, args)
        for k, r in runs.items():
            rows.append({**asdict(r), "top1": quality.get(k, (None, None))[0],
                         "cosine": quality.get(k, (None, None))[1],
                         **{f"{s}_{what}": v for s, per in extra.items()
                            for what, v in per.get(k, {}).items()}})
    return rows


def sample(model: str, threads: int, probes: dict, w, ref, runs: dict[str, EngineRun], args,
           progress) -> dict[str, dict[str, dict]]:
    """Load and check every engine (``load_checked``), sample the loaded ones as
    ``args.schedule`` says, close them; ``runs`` get the interleaved samples (the alone ones
    with ``--schedule alone``). Returns, per schedule run, per engine: its samples (alone),
    the median CPU ms per inference, and the median cool-down waited before a sample."""
    loaded: dict = {}
    extra: dict[str, dict[str, dict]] = {}
    task = progress.add_task(f"{model}, {threads} thread(s): loading", total=None)
    try:
        for label, eng in probes.items():
            progress.update(task, description=f"{model}, {threads} thread(s): loading and "
                                              f"checking {label}")
            runs[label], lo = load_checked(label, eng, w, ref, threads, args)
            if lo is not None:
                loaded[label] = lo
        progress.remove_task(task)
        pids = process_tree()  # this process (the peers) and the local runner (ours)
        todo = {"interleaved": ("interleaved",), "alone": ("alone",),
                "both": ("alone", "interleaved")}[args.schedule]
        task = progress.add_task(f"{model}, {threads} thread(s): sampling {len(loaded)} "
                                 f"engines ({' and '.join(todo)})",
                                 total=args.runs * len(loaded) * len(todo))
        for how in todo:
            meters = {k: Meter(pids, inferences=3 if k.startswith("ours") else 2,
                               # at 2+ threads the estimate holds the pool's waking and
                               # spinning too: left in (judge those by wall time)
                               overhead_ns=getattr(probes[k].eng, "call_overhead_ns", 0)
                               if threads == 1 else 0)
                      for k in loaded}
            wrapped = {k: meters[k].wrap(lo, quiet_first=how == "interleaved" and
                                         getattr(args, "cool_down", True))
                       for k, lo in loaded.items()}
            tick = lambda: progress.advance(task)  # noqa: E731
            got = (measure(wrapped, args.runs, tick) if how == "interleaved" else
                   measure_alone(wrapped, args.runs, measure, pids, tick))
            extra[how] = {k: {"cpu_ms": m.cpu_ms, "settle_ms": m.settle_ms,
                              "not_quiet": m.busy, "call_overhead_ms": m.overhead_ns / 1e6}
                          for k, m in meters.items()}
            if how == "alone":
                for k, s in got.items():
                    if not isinstance(k, tuple):
                        extra[how][k]["samples_ns"] = s
            if how == "interleaved" or args.schedule == "alone":
                attach_samples(runs, got)
    finally:
        for lo in loaded.values():
            close_loaded(lo)
        progress.remove_task(task)
    return extra


def print_table(name: str, threads: int, runs: dict[str, EngineRun], quality, extra,
                args) -> None:
    from rich.table import Table

    main = "interleaved" if "interleaved" in extra else "alone"
    alone = extra.get("alone", {}) if main == "interleaved" else {}
    cool = main == "interleaved" and getattr(args, "cool_down", True)
    t = Table(title=f"{name}, 1×3×{args.input_size}×{args.input_size}, {threads} thread(s): "
                    f"median of {args.runs} {main} samples"
                    f"{'' if cool or main == 'alone' else ' without cool-down'}"
                    f"{' (and alone)' if alone else ''}; load average "
                    f"{os.getloadavg()[0]:.2f} at the end")
    cols = ["engine", "median ms", "p10 ms", "p90 ms"]
    if alone:
        cols += ["alone median ms", "interleaved / alone"]
    cols += ["CPU ms", *(["cool-down ms"] if cool else []),
             f"top-1 vs fp32 ({args.eval})", "cosine vs fp32", "note"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("engine", "note") else "right")

    def ms(v: float | None) -> str:
        return f"{v:.2f}" if v is not None else "–"
    for k, r in runs.items():
        s = r.stats
        q = quality.get(k)
        e = extra.get(main, {}).get(k, {})
        row = [k, *(ms(v) for v in (r.median_ms, s.p10_ms if s else None,
                                     s.p90_ms if s else None))]
        if alone:
            a_ns = alone.get(k, {}).get("samples_ns")
            a_ms = statistics.median(a_ns) / 1e6 if a_ns else None
            row += [ms(a_ms), f"{r.median_ms / a_ms:.3f}" if a_ms and r.median_ms else "–"]
        row.append(ms(e.get("cpu_ms")))
        if cool:
            busy = e.get("not_quiet")
            row.append(ms(e.get("settle_ms")) + (f" ({busy} busy)" if busy else ""))
        row += [f"{q[0]:.0%}" if q else "–", f"{q[1]:.5f}" if q else "–",
                r.detail if r.status != "ok" else ""]
        t.add_row(*row)
    out.print(t)
    vs = versus_fastest_int8(runs)
    if vs:
        out.print(f"{name}, {threads} thread(s): ours int8 / fastest int8 peer ({vs[0]}) = "
                  f"{vs[1]:.2f} by median, {vs[2]:.2f} by p10 ({main}; below 1: ours is "
                  f"faster)")
    if alone:
        alone_runs = {k: replace(r, samples_ns=alone.get(k, {}).get("samples_ns") or [])
                      for k, r in runs.items()}
        va = versus_fastest_int8(alone_runs)
        if va:
            out.print(f"{name}, {threads} thread(s): alone, ours int8 / fastest int8 peer "
                      f"({va[0]}) = {va[1]:.2f} by median")
    for k, v in extra.get(main, {}).items():
        if v.get("call_overhead_ms"):
            out.print(f"{name}, {threads} thread(s): {k}'s CPU ms leave out the runner's "
                      f"{v['call_overhead_ms']:.2f} ms a benchmark call costs besides its "
                      f"inferences (measured at load)")
    cpu = {k: v["cpu_ms"] for k, v in extra.get(main, {}).items()
           if k.endswith("int8") and v.get("cpu_ms")}
    if "ours int8" in cpu and len(cpu) > 1:
        best = min((k for k in cpu if k != "ours int8"), key=cpu.get)
        out.print(f"{name}, {threads} thread(s): by CPU time per inference, ours int8 / "
                  f"{best} = {cpu['ours int8'] / cpu[best]:.2f}"
                  + (" (the work at 1 thread)" if threads == 1 else
                     " (includes in-call spinning: judge 2 threads by wall time)"))


def versus_fastest_int8(runs: dict[str, EngineRun]) -> tuple[str, float, float] | None:
    """(the int8 peer with the lowest median, ours int8 / its median, the same for p10s);
    None when ours int8 or every int8 peer has no samples."""
    ours = runs.get("ours int8")
    peers = {k: r for k, r in runs.items()
             if k != "ours int8" and k.endswith("int8") and r.samples_ns}
    if ours is None or not ours.samples_ns or not peers:
        return None
    best = min(peers, key=lambda k: peers[k].median_ms)
    return (best, ours.median_ms / peers[best].median_ms,
            ours.stats.p10_ms / peers[best].stats.p10_ms)


def main(argv: list[str] | None = None) -> int:
    from .common import progress as make_progress

    args = build_parser().parse_args(argv)
    args.models = parse_models(args.models)
    args.threads = parse_threads(args.threads)
    known = engine_choices()
    args.engines = engine_names(args.engines)
    unknown = [e for e in args.engines if e not in known]
    if unknown or not args.engines:
        raise BenchArgError(f"--engines: unknown {', '.join(unknown) or '(none given)'}; "
                            f"choose from {', '.join(known)}")
    args.tolerance = float("inf")  # int8 outputs are judged by agreement, printed
    check_sampling(args)
    announce_machine(140)
    rows: list[dict] = []
    with ExitStack() as stack, make_progress() as progress:
        session = local_session(args.runner, stack, progress)
        for name in args.models:
            with tempfile.TemporaryDirectory(prefix="npas-bench-int8-") as tmp:
                rows += bench_model(name, args, session, progress, Path(tmp))
    if args.json:
        args.json.write_text(json.dumps({"load_average": os.getloadavg(), "rows": rows},
                                        indent=1) + "\n")
        err.print(f"samples written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
