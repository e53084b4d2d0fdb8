"""The engines the benchmarks compare: how each converts a model and runs it.

One class per engine, all with the same two steps: ``prepare`` converts the model once per
model (cached on disk, keyed by model name, input size and the converter's version) and
``load`` gives a ``Loaded`` for one thread count. Each engine's package is imported inside its
methods, so a missing package is an ``EngineUnavailable`` with the reason, never an import
error of the whole benchmark.

A sample is one timed inference that directly follows one untimed inference on the same
engine: engines are interleaved, so without it each sample would start with caches (and
thread pools) left cold by another engine. Ours does the same inside the runner
(``benchmark(runs=1, warmup=1)``), so its sample is the runner's own timing, without RPC.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch


class EngineUnavailable(Exception):
    """The engine cannot run this model here; the message says why."""


@dataclass
class Workload:
    """One model at one input size, with the files converted from it."""

    name: str
    input_size: int
    model: torch.nn.Module
    example: torch.Tensor  # the benchmark input, NCHW float32
    cache: Path  # this model's folder under the bench cache
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.example.shape)


@dataclass
class Loaded:
    engine: str
    infer: Callable[[], np.ndarray]  # one inference on the workload's example, its output
    sample_ns: Callable[[], int]  # one timed inference after one untimed one, in ns
    close: Callable[[], None] = lambda: None


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        raise EngineUnavailable(f"the Python package {dist!r} is not installed (pip install "
                                f"{dist}; see the 'bench' extra)") from None


def _timed_after_untimed(fn: Callable[[], object]) -> Callable[[], int]:
    def sample() -> int:
        fn()
        t0 = time.perf_counter_ns()
        fn()
        return time.perf_counter_ns() - t0
    return sample


def _atomic(final: Path, make: Callable[[Path], None]) -> Path:
    """``make(tmp)`` writes a file; it becomes ``final`` only when complete, so an interrupted
    conversion never leaves a broken file in the cache."""
    if final.is_file():
        return final
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        make(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def _run_tool(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise EngineUnavailable(f"{what}: {e}") from None
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-8:])
        raise EngineUnavailable(f"{what} failed (exit {p.returncode}): {tail}")


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence C-level prints on fd 1 (MNN announces CPU features and its precision there),
    so stdout holds only the benchmark's tables."""
    import ctypes

    sys.stdout.flush()
    saved, devnull = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # C stdio buffers, before fd 1 points back
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def onnx_file(w: Workload) -> Path:
    """The ONNX export shared by ONNX Runtime and MNN (TorchScript exporter: needs only
    ``onnx``, not ``onnxscript``)."""
    version_of("onnx")

    def export(tmp: Path) -> None:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's own deprecation notice
            torch.onnx.export(w.model, (w.example,), str(tmp), dynamo=False,
                              input_names=["input"], output_names=["output"],
                              opset_version=17)
    try:
        return _atomic(w.cache / f"model.opset17.torch{torch.__version__}.onnx", export)
    except EngineUnavailable:
        raise
    except Exception as e:  # the exporter raises many kinds; the message is what matters
        raise EngineUnavailable(f"torch.onnx.export: {e}") from None


def open_mnn(path: Path, threads: int):
    """(the MNN module, ``run(tensor) -> output``) for an MNN model on the CPU, precision
    "high": fp32 everywhere where the model is float (the default may pick fp16/bf16 where the
    CPU has it)."""
    with _quiet_stdout():
        import MNN

        interp = MNN.Interpreter(str(path))
        session = interp.createSession({"backend": "CPU", "numThread": threads,
                                        "precision": "high"})
    inp = interp.getSessionInput(session)

    def run(host_in) -> np.ndarray:
        inp.copyFrom(host_in)
        interp.runSession(session)
        out = interp.getSessionOutput(session)
        shape = tuple(out.getShape())
        host_out = MNN.Tensor(shape, MNN.Halide_Type_Float,
                              np.zeros(shape, np.float32), MNN.Tensor_DimensionType_Caffe)
        out.copyToHostTensor(host_out)
        return np.array(host_out.getNumpyData(), copy=True)
    return MNN, run


def mnn_tensor(MNN, a: np.ndarray):  # noqa: N803 (the module)
    return MNN.Tensor(a.shape, MNN.Halide_Type_Float, a, MNN.Tensor_DimensionType_Caffe)


def open_ncnn(param: Path, binf: Path, threads: int, int8: bool = False):
    """An ncnn net on the CPU: fp32 storage and arithmetic, as every other engine here; int8
    inference where the model has int8 layers and ``int8``."""
    import ncnn

    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = threads
    for flag in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic",
                 "use_bf16_storage", "use_bf16_packed"):
        setattr(net.opt, flag, False)
    net.opt.use_int8_inference = int8
    if net.load_param(str(param)) != 0 or net.load_model(str(binf)) != 0:
        raise EngineUnavailable(f"ncnn could not load {param}")
    return net


class TorchEngine:
    name = "PyTorch"

    def prepare(self, w: Workload) -> str:
        return f"eager, torch {torch.__version__}"

    def load(self, w: Workload, threads: int) -> Loaded:
        def infer() -> np.ndarray:
            torch.set_num_threads(threads)  # global: set on every call, others change it
            with torch.inference_mode():
                return w.model(w.example).numpy()
        return Loaded(self.name, infer, _timed_after_untimed(infer))


class OrtEngine:
    name = "ONNX Runtime"

    def prepare(self, w: Workload) -> str:
        v = version_of("onnxruntime")
        w.files["onnx"] = onnx_file(w)
        return f"onnxruntime {v}"

    def load(self, w: Workload, threads: int) -> Loaded:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(str(w.files["onnx"]), so,
                                    providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: w.example.numpy()}

        def infer() -> np.ndarray:
            return sess.run(None, feed)[0]
        return Loaded(self.name, infer, _timed_after_untimed(infer))


class MnnEngine:
    name = "MNN"

    def prepare(self, w: Workload) -> str:
        v = version_of("MNN")
        src = onnx_file(w)

        def convert(tmp: Path) -> None:
            # The wheel's converter (the `mnnconvert` console script), in a child process:
            # it prints a lot and exits the process on some errors.
            _run_tool([sys.executable, "-c",
                       "import sys; from MNN.tools.mnnconvert import main; sys.exit(main())",
                       "-f", "ONNX", "--modelFile", str(src), "--MNNModel", str(tmp),
                       "--bizCode", "npas"], "MNN's converter (mnnconvert)")
            if not tmp.is_file():
                raise EngineUnavailable(f"mnnconvert wrote no {tmp.name}")
        w.files["mnn"] = _atomic(w.cache / f"model.mnn{v}.mnn", convert)
        return f"MNN {v} (mnnconvert from ONNX)"

    def load(self, w: Workload, threads: int) -> Loaded:
        import_mnn, run = open_mnn(w.files["mnn"], threads)
        x = w.example.numpy()
        host_in = mnn_tensor(import_mnn, x)

        def infer() -> np.ndarray:
            return run(host_in)
        # The Python API has no releaseSession: the session goes with the interpreter.
        return Loaded(self.name, infer, _timed_after_untimed(infer))


class NcnnEngine:
    name = "ncnn"

    def prepare(self, w: Workload) -> str:
        v = version_of("ncnn")
        pv = version_of("pnnx")
        param = w.cache / f"model.pnnx{pv}.ncnn.param"
        binf = w.cache / f"model.pnnx{pv}.ncnn.bin"
        if not (param.is_file() and binf.is_file()):
            self._convert(w, param, binf)
        w.files["ncnn.param"], w.files["ncnn.bin"] = param, binf
        return f"ncnn {v} (pnnx {pv} from TorchScript)"

    @staticmethod
    def _convert(w: Workload, param: Path, binf: Path) -> None:
        import pnnx  # only for the path of its executable; it imports no torch at load

        with tempfile.TemporaryDirectory(prefix="pnnx-", dir=w.cache) as tmp:
            t = Path(tmp)
            traced = torch.jit.trace(w.model, (w.example,))
            traced.save(str(t / "model.pt"))
            shape = ",".join(str(d) for d in w.shape)
            # fp16=0: keep fp32 weights (pnnx stores fp16 by default); the ncnn.* outputs
            # go to the temporary folder first so a failed run caches nothing.
            _run_tool([pnnx.EXEC_PATH, "model.pt", f"inputshape=[{shape}]", "fp16=0",
                       "ncnnparam=out.param", "ncnnbin=out.bin"], "pnnx", cwd=t)
            if not ((t / "out.param").is_file() and (t / "out.bin").is_file()):
                raise EngineUnavailable("pnnx wrote no ncnn .param/.bin")
            shutil.move(t / "out.bin", binf)
            shutil.move(t / "out.param", param)  # last: its presence marks a complete pair

    def load(self, w: Workload, threads: int) -> Loaded:
        import ncnn

        net = open_ncnn(w.files["ncnn.param"], w.files["ncnn.bin"], threads)
        x = np.ascontiguousarray(w.example.numpy()[0])  # ncnn.Mat is CHW, no batch

        def infer() -> np.ndarray:
            with net.create_extractor() as ex:
                ex.input("in0", ncnn.Mat(x))
                ret, out = ex.extract("out0")
                if ret != 0:
                    raise RuntimeError(f"ncnn extract failed ({ret})")
                return np.array(out)[None]

        return Loaded(self.name, infer, _timed_after_untimed(infer), net.clear)


class OursEngine:
    """Our bundle on the local npas-runner, through a Session (the same path as `profile`)."""

    name = "ours"

    def __init__(self, session, bundle, label: str = "ours", per_threads=None):
        """``bundle`` everywhere, or ``per_threads[threads]`` where given (tuned bundles are
        compiled for one thread count)."""
        self.session, self.bundle, self.name = session, bundle, label
        self.per_threads = per_threads or {}

    def prepare(self, w: Workload) -> str:
        return f"bundle {self.bundle.manifest.name} ({self.bundle.manifest.content_hash[:12]})"

    def load(self, w: Workload, threads: int) -> Loaded:
        from host.measure import MeasureConfig

        bundle = self.per_threads.get(threads, self.bundle)
        key = self.session.load(bundle, MeasureConfig(threads=threads))
        one_run = MeasureConfig(threads=threads, runs=1, warmup=1)
        x = w.example.numpy()

        def infer() -> np.ndarray:
            return self.session.run(key, [x])[0]

        def sample() -> int:
            return int(self.session.benchmark(key, one_run).samples_ns[0])

        return Loaded(self.name, infer, sample, lambda: self.session.unload(key))


OTHER_ENGINES = {e.name: e for e in (TorchEngine, OrtEngine, MnnEngine, NcnnEngine)}
