"""The int8 peers (and their float32 twins) the int8 benchmark adds to ONNX Runtime's:
ExecuTorch with its XNNPACK delegate, OpenVINO (int8 from NNCF's post-training quantization)
and MNN (int8 from its quantization tool).

Every int8 peer is calibrated on the same batches as ours (``calibration`` below): PT2E for
ExecuTorch (``XNNPACKQuantizer``: static, per-channel symmetric int8 weights, per-tensor
asymmetric int8 activations, min/max observers), ``nncf.quantize`` for OpenVINO (preset MIXED:
symmetric weights, asymmetric activations, ``subset_size`` = the batches), ``mnnquant`` for MNN
(``EMA`` activations, ``MAX_ABS`` per-channel weights, the batches written as its "sequence"
input). Converted models are cached in the workload's folder, keyed by the converter's version,
so a calibration runs once. Each engine is an engine of ``engines.py`` (``prepare``/``load``)
plus ``run_on(x)``: one inference on another input, for the agreement with float32.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .engines import (
    EngineUnavailable,
    Loaded,
    MnnEngine,
    Workload,
    _atomic,
    _quiet_stdout,
    _run_tool,
    _timed_after_untimed,
    mnn_tensor,
    onnx_file,
    open_mnn,
    version_of,
)

Calibration = Callable[[tuple[int, ...]], list[np.ndarray]]
CALIBRATION_SEEDS = (101, 102, 103, 104)


def calibration(shape: tuple[int, ...]) -> list[np.ndarray]:
    """The batches every int8 engine calibrates on: seeded random inputs of ``shape``."""
    from host.models import example_inputs

    return [example_inputs(shape, seed=s)[0].numpy() for s in CALIBRATION_SEEDS]

# ---------------------------------------------------------------- ExecuTorch (XNNPACK)


def _et_threads(threads: int) -> None:
    """ExecuTorch's CPU thread pool is one per process: reset it when another count is set."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != threads:
        with _quiet_stdout():
            portable_lib._unsafe_reset_threadpool(threads)


def _q8_config():
    """XNNPACK's static per-channel config, with min/max activation observers (as every other
    engine here calibrates) and no 2^-12 floor on scales: the benchmark's random-weight models
    have outputs of ~1e-9 (MobileNet-V2), which that floor rounds to zero."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e import MinMaxObserver, PerChannelMinMaxObserver

    base = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    eps = float(torch.finfo(torch.float32).tiny)
    act = replace(base.input_activation,
                  observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=eps))
    wgt = replace(base.weight,
                  observer_or_fake_quant_ctr=PerChannelMinMaxObserver.with_args(eps=eps))
    return replace(base, input_activation=act, output_activation=act, weight=wgt)


class ExecuTorchEngine:
    """``torch.export`` → ``to_edge_transform_and_lower`` with ``XnnpackPartitioner`` → .pte,
    run through ``executorch.runtime``."""

    name = "ExecuTorch"
    int8 = False

    def __init__(self, batches: Calibration = calibration) -> None:
        self.calibration = batches

    def prepare(self, w: Workload) -> str:
        v = version_of("executorch")
        kind = "xnnpack-q8" if self.int8 else "xnnpack"
        w.files[self.name] = _atomic(w.cache / f"model.et{v}.{kind}.pte", lambda t:
                                     self._export(w, t))
        what = ("PT2E static int8 (per-channel weights)" if self.int8 else "fp32")
        return f"executorch {v}, XNNPACK delegate, {what}"

    def _export(self, w: Workload, tmp: Path) -> None:
        import warnings

        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )
        from executorch.exir import to_edge_transform_and_lower

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.export's and torchao's notices
                ep = torch.export.export(w.model, (w.example,))
                if self.int8:
                    ep = torch.export.export(self._quantize(w, ep.module()), (w.example,))
                prog = to_edge_transform_and_lower(
                    ep, partitioner=[XnnpackPartitioner()]).to_executorch()
        except Exception as e:  # export and lowering raise many kinds
            raise EngineUnavailable(f"ExecuTorch export: {type(e).__name__}: {e}") from None
        tmp.write_bytes(prog.buffer)

    def _quantize(self, w: Workload, gm):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        gm = prepare_pt2e(gm, XNNPACKQuantizer().set_global(_q8_config()))
        with torch.no_grad():
            for x in self.calibration(w.shape):
                gm(torch.from_numpy(x))
        return convert_pt2e(gm)

    def load(self, w: Workload, threads: int) -> Loaded:
        # The pool is set before the method is loaded, never after: a reset destroys the pool
        # the loaded XNNPACK runtimes hold (they then fail with xnn_status_invalid_state).
        # Both ExecuTorch engines of one row ask for the same count, so the second load
        # leaves the pool alone.
        _et_threads(threads)
        with _quiet_stdout():
            from executorch.runtime import Runtime

            method = Runtime.get().load_program(str(w.files[self.name])).load_method("forward")
        x = w.example.contiguous()

        def run_on(a: np.ndarray) -> np.ndarray:
            return method.execute([torch.from_numpy(a)])[0].numpy()

        def infer() -> np.ndarray:
            return method.execute([x])[0].numpy()

        self.run_on = run_on
        return Loaded(self.name, infer, _timed_after_untimed(infer))


class ExecuTorchInt8Engine(ExecuTorchEngine):
    name = "ExecuTorch int8"
    int8 = True


# ---------------------------------------------------------------- OpenVINO


class OpenVinoEngine:
    """OpenVINO's CPU plugin on the shared ONNX export, float32 inference precision (no bf16
    where the CPU has it), one stream, ``threads`` inference threads."""

    name = "OpenVINO"
    int8 = False

    def __init__(self, batches: Calibration = calibration) -> None:
        self.calibration = batches

    def prepare(self, w: Workload) -> str:
        v = version_of("openvino")
        src = onnx_file(w)
        if not self.int8:
            w.files[self.name] = src
            return f"openvino {v} (from ONNX)"
        nv = version_of("nncf")
        xml = w.cache / f"model.ov{v}.nncf{nv}.q8.xml"

        def quantize(tmp: Path) -> None:
            import logging

            import nncf
            import openvino as ov

            logging.getLogger("nncf").setLevel(logging.ERROR)
            cal = self.calibration(w.shape)
            try:
                q = nncf.quantize(ov.Core().read_model(str(src)), nncf.Dataset(cal),
                                  preset=nncf.QuantizationPreset.MIXED,
                                  subset_size=len(cal))
            except Exception as e:  # nncf raises many kinds
                raise EngineUnavailable(f"nncf.quantize: {type(e).__name__}: {e}") from None
            with tempfile.TemporaryDirectory(dir=w.cache) as d:
                out = Path(d) / "q.xml"
                ov.save_model(q, str(out), compress_to_fp16=False)
                os.replace(out.with_suffix(".bin"), xml.with_suffix(".bin"))
                os.replace(out, tmp)
        w.files[self.name] = _atomic(xml, quantize)
        return f"openvino {v}, nncf {nv} post-training int8 (MIXED preset)"

    def load(self, w: Workload, threads: int) -> Loaded:
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        core = ov.Core()
        compiled = core.compile_model(str(w.files[self.name]), "CPU", {
            props.inference_num_threads: threads,
            hints.inference_precision: ov.Type.f32,
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            props.num_streams: 1,
            hints.enable_cpu_pinning: False,
        })
        req = compiled.create_infer_request()
        x = w.example.numpy()

        def run_on(a: np.ndarray) -> np.ndarray:
            return np.array(req.infer({0: a})[0], copy=True)

        def infer() -> np.ndarray:
            return run_on(x)

        self.run_on = run_on
        return Loaded(self.name, infer, _timed_after_untimed(infer))


class OpenVinoInt8Engine(OpenVinoEngine):
    name = "OpenVINO int8"
    int8 = True


# ---------------------------------------------------------------- MNN int8


class MnnInt8Engine(MnnEngine):
    """MNN's quantization tool (``mnnquant``) on the MNN fp32 conversion, calibrated on the
    benchmark's batches written as its "sequence" input (a folder per batch: ``input.json``
    and the values as text)."""

    name = "MNN int8"
    file = "mnn-q8"

    def __init__(self, batches: Calibration = calibration) -> None:
        self.calibration = batches

    def prepare(self, w: Workload) -> str:
        super().prepare(w)
        v = version_of("MNN")
        src = w.files["mnn"]

        def quantize(tmp: Path) -> None:
            with tempfile.TemporaryDirectory(prefix="mnnquant-", dir=w.cache) as d:
                root = Path(d)
                for i, x in enumerate(self.calibration(w.shape)):
                    s = root / "cal" / f"{i:03d}"
                    s.mkdir(parents=True)
                    (s / "input.json").write_text(json.dumps({
                        "inputs": [{"name": "input", "shape": list(x.shape)}],
                        "outputs": ["output"]}))
                    np.savetxt(s / "input.txt", x.ravel(), fmt="%.9g")
                cfg = root / "quant.json"
                cfg.write_text(json.dumps({
                    "input_type": "sequence", "path": str(root / "cal"),
                    "used_sample_num": len(list((root / "cal").iterdir())),
                    "feature_quantize_method": "EMA", "weight_quantize_method": "MAX_ABS",
                    "quant_bits": 8, "batch_size": 1,
                    # read for images only; given so the tool's defaults do not matter
                    "format": "RGB", "mean": [0, 0, 0], "normal": [1, 1, 1],
                    "width": w.shape[3], "height": w.shape[2]}))
                # The extension's entry point itself, in a child process: the wheel's
                # `mnnquant` script passes it three strings where it wants one argv list
                # (it aborts with std::length_error), and its logger pip-installs a package;
                # its return value is no status (1 after success): the file is checked.
                _run_tool([sys.executable, "-c",
                           "import sys, _tools; _tools.mnnquant(sys.argv)",
                           str(src), str(tmp), str(cfg)], "MNN's quantization tool (mnnquant)")
            if not tmp.is_file():
                raise EngineUnavailable(f"mnnquant wrote no {tmp.name}")
        w.files[self.file] = _atomic(w.cache / f"model.mnn{v}.q8.mnn", quantize)
        return f"MNN {v} (mnnquant: EMA activations, MAX_ABS per-channel weights)"

    def load(self, w: Workload, threads: int) -> Loaded:
        mnn, run = open_mnn(w.files[self.file], threads)

        def run_on(a: np.ndarray) -> np.ndarray:
            return run(mnn_tensor(mnn, a))

        x = w.example.numpy()
        self.run_on = run_on
        return Loaded(self.name, lambda: run_on(x), _timed_after_untimed(lambda: run_on(x)))
