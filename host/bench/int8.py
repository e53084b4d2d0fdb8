"""int8 latency: our int8 bundle against ONNX Runtime's static QDQ int8, with both float32
baselines, interleaved in one run, and each int8 engine's agreement with float32.

Both int8 engines quantize the same model with the same calibration batches (seeded random
inputs of the benchmark's size; min/max ranges), weights per channel symmetric int8,
activations asymmetric uint8: ours with ``--precision int8`` (``codegen.quant``), ONNX
Runtime with ``quantize_static`` (QDQ format, ``QUInt8`` activations, ``QInt8`` per-channel
weights, MinMax calibration) on its own ONNX export, run with all graph optimizations (which
fuse the QDQ pairs into its int8 kernels). For every model and thread count the engines are
sampled round-robin (``common.measure``), one untimed inference before each timed one.
Printed: median/p10/p90, and for each engine top-1 agreement and mean cosine similarity with
PyTorch float32 on ``--eval`` further seeded inputs.

    python -m host.bench.int8 --models resnet18,mobilenet_v2 --threads 1,2 --runs 30
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict
from pathlib import Path

import numpy as np

from host.console import err, out

from .common import (
    EngineRun,
    announce_machine,
    bench_cache_dir,
    check_sampling,
    load_and_sample,
    load_workload,
    local_session,
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

DEFAULT_MODELS = ("resnet18", "mobilenet_v2")
CALIBRATION_SEEDS = (101, 102, 103, 104)
EVAL_SEED = 200


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="npas-host bench int8", description=(
        "int8 latency of our bundle against ONNX Runtime's static QDQ int8 (and both fp32), "
        "interleaved, with top-1 agreement and cosine similarity against PyTorch fp32."))
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=30, help="timed samples per engine")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--eval", type=int, default=16,
                    help="seeded inputs for top-1 agreement and cosine (default 16)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="write every sample here")
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--runner", type=Path)
    return ap


def calibration(shape: tuple[int, ...]) -> list[np.ndarray]:
    from host.models import example_inputs

    return [example_inputs(shape, seed=s)[0].numpy() for s in CALIBRATION_SEEDS]


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


def _infer_on(eng, x: np.ndarray) -> np.ndarray:
    """One inference of a loaded engine on another input than the workload's example."""
    if isinstance(eng, OursEngine):
        return eng.session.run(eng._key, [x])[0]
    return eng._sess.run(None, {eng._sess.get_inputs()[0].name: x})[0]


class _Ours(OursEngine):
    def load(self, w, threads: int) -> Loaded:
        from host.measure import MeasureConfig

        key = self.session.load(self.bundle, MeasureConfig(threads=threads))
        self._key = key
        one_run = MeasureConfig(threads=threads, runs=1, warmup=1)
        x = w.example.numpy()
        return Loaded(self.name, lambda: self.session.run(key, [x])[0],
                      lambda: int(self.session.benchmark(key, one_run).samples_ns[0]),
                      lambda: self.session.unload(key))


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
            self._sess = sess
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
    engines["ours fp32"] = _Ours(session, compile_model(w.model, (w.example,), tmp / "f32",
                                                        name=w.cache.name), "ours fp32")
    engines["ours int8"] = _Ours(session, compile_model(
        w.model, (w.example,), tmp / "i8", name=w.cache.name + "-int8",
        toolchain=HostToolchain(precision="int8"), calibration=cal), "ours int8")
    for cls in (OrtEngine, OrtInt8Engine):
        e = _ort_keep(cls)()
        try:
            e.prepare(w)
            engines[cls.name] = e
        except EngineUnavailable as ex:
            unavailable[cls.name] = str(ex)
    evals = [example_inputs(w.shape, seed=EVAL_SEED + i)[0].numpy() for i in range(args.eval)]
    with torch.inference_mode():
        eval_refs = [w.model(torch.from_numpy(x)).numpy() for x in evals]
    rows = []
    for threads in args.threads:
        runs = {k: EngineRun(name, threads, k, "unavailable", v) for k, v in unavailable.items()}
        quality: dict[str, tuple[float, float]] = {}
        load_and_sample(name, threads, [(k, _Probe(k, e, evals, eval_refs, quality), w, ref,
                                         False)
                                        for k, e in engines.items()], runs, args, progress)
        print_table(name, threads, runs, quality, args)
        for k, r in runs.items():
            rows.append({**asdict(r), "top1": quality.get(k, (None, None))[0],
                         "cosine": quality.get(k, (None, None))[1]})
    return rows


def print_table(name: str, threads: int, runs: dict[str, EngineRun], quality, args) -> None:
    from rich.table import Table

    t = Table(title=f"{name}, 1×3×{args.input_size}×{args.input_size}, {threads} thread(s): "
                    f"median of {args.runs} interleaved samples; load average "
                    f"{os.getloadavg()[0]:.2f} at the end")
    for col in ("engine", "median ms", "p10 ms", "p90 ms", f"top-1 vs fp32 ({args.eval})",
                "cosine vs fp32", "note"):
        t.add_column(col, justify="left" if col in ("engine", "note") else "right")
    for k, r in runs.items():
        s = r.stats
        q = quality.get(k)
        t.add_row(k, *(f"{v:.2f}" if v is not None else "–" for v in (
            r.median_ms, s.p10_ms if s else None, s.p90_ms if s else None)),
            f"{q[0]:.0%}" if q else "–", f"{q[1]:.5f}" if q else "–",
            r.detail if r.status != "ok" else "")
    out.print(t)


def main(argv: list[str] | None = None) -> int:
    from .common import progress as make_progress

    args = build_parser().parse_args(argv)
    args.models = parse_models(args.models)
    args.threads = parse_threads(args.threads)
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
