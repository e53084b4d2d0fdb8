"""int8 semantics, written once: how a tensor, a weight and a layer are quantized, and an
executor that runs a quantized LR graph exactly as the int8 kernels do.

What every int8 bundle computes (``codegen/emit/cpu/q8.py`` matches it bit for bit):

- Activations: per tensor, asymmetric uint8, ``real = scale * (q - zero)``, q in [0, 255].
  uint8 because VNNI's ``vpdpbusd`` multiplies unsigned bytes by signed ones, and because
  most activations follow a ReLU: a zero point of 0 gives all 256 levels to [0, max] where
  symmetric int8 would waste half of them. Scales come from the min/max each tensor takes
  over the calibration batches (``calibrate``), the range widened to include 0 so that 0 (and
  so zero padding) is exact.
- Weights: per output channel symmetric int8, ``w = scale_w[oc] * q``, q in [-127, 127]
  (-128 is never used: the range is symmetric).
- A conv or linear accumulates ``sum (x_q - zero_x) * w_q`` in int32 (the kernels compute
  ``sum x_q * w_q`` with ``vpdpbusd`` and add ``-zero_x * sum w_q`` over the taps that see no
  padding: the same integer), plus ``bias_q = rint(bias / (scale_x * scale_w))``.
- Requantization, in float32 and round half to even (XNNPACK's "fp32" scheme):
  ``v = float(acc) * m[oc]`` with ``m = scale_x * scale_w / scale_y`` rounded once to float32;
  a fused residual adds ``float(s_q - zero_s) * (scale_s / scale_y)``; v is clamped to the
  output's range (ReLU: below at 0, ReLU6: above at 6 / scale_y, and always to [-zero_y,
  255 - zero_y]), rounded to the nearest integer, ties to even, and ``zero_y`` added. Each
  float operation rounds once (kernels are compiled with ``-ffp-contract=off``). An int8
  layer whose output is read in float32 (fused dequantization) stores ``float(acc) *
  (scale_x * scale_w)`` (+ the residual's ``float(s_q - zero_s) * scale_s``), ReLU/ReLU6 as
  float clamps.
- ``quantize``: ``q = rint(clamp(x * float32(1 / scale), -zero, 255 - zero)) + zero``;
  ``dequantize``: ``float(q - zero) * scale``. Inputs must be finite.
- int8 max pooling takes the max of the uint8 values (quantization is monotonic: the same as
  quantizing the float max).

``run_int8_reference`` runs a graph after the quantization pass (``codegen/passes/
quantize.py``, before the layout pass) with these rules for int8 layers and torch for the
float32 ones; ``layer_quant`` derives every constant a kernel bakes in or reads, and the
emitters call it too, so the constants cannot differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from codegen.lr import ACTIVATIONS, OPS, CodegenError, Graph, Layer

QMAX_W = 127
BIAS_LIMIT = 2**28  # |bias_q| bound: the int32 sum stays exact for any layer of a CNN
INT8_ACTIVATIONS = ("relu", "relu6")  # the epilogue activations an int8 layer fuses


@dataclass(frozen=True)
class QParams:
    """A uint8 tensor's quantization: real = scale * (q - zero)."""

    scale: float  # a float32 value
    zero: int  # in [0, 255]

    def __repr__(self) -> str:
        return f"u8(scale={self.scale:.4g}, zero={self.zero})"


def qparams_from_range(lo: float, hi: float) -> QParams:
    """Asymmetric uint8 parameters covering [lo, hi] widened to include 0."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        hi = lo + 1.0
    scale = float(np.float32((hi - lo) / 255.0))
    zero = int(np.clip(np.rint(-lo / scale), 0, 255))
    return QParams(scale, zero)


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float64 scale per output channel): symmetric over each channel's
    largest |w|; an all-zero channel gets scale 1."""
    w = np.asarray(w, np.float64)
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / QMAX_W, 1.0)
    q = np.clip(np.rint(w / scale.reshape(-1, *([1] * (w.ndim - 1)))), -QMAX_W, QMAX_W)
    return q.astype(np.int8), scale


@dataclass(frozen=True)
class LayerQuant:
    """Every constant of one int8 conv or linear (see the module doc)."""

    weight: np.ndarray  # int8, the layer's weight shape
    bias: np.ndarray  # int32 [oc]
    mult: np.ndarray  # float32 [oc]: scale_x * scale_w / scale_y (u8 out) or scale_x * scale_w
    x: QParams
    y: QParams | None  # None: float32 output (fused dequantization)
    skip: QParams | None  # the fused residual's
    skip_mult: float  # float32: scale_s / scale_y (u8 out) or scale_s
    lo: float | None  # clamp of v before rounding (None: none on that side)
    hi: float | None


def layer_quant(graph: Graph, la: Layer) -> LayerQuant:
    """The constants of int8 layer ``la`` in ``graph`` (its inputs are uint8 tensors)."""
    q = graph.quant
    qx = q[la.inputs[0]]
    qy = q.get(la.output)
    qs = q[la.inputs[1]] if "add" in la.epilogue else None
    wq, sw = quantize_weights(la.params["weight"])
    sxw = qx.scale * sw
    bias = np.clip(np.rint(la.params["bias"].astype(np.float64) / sxw), -BIAS_LIMIT, BIAS_LIMIT)
    acts = [e for e in la.epilogue if e != "add"]
    if qy is not None:
        mult = (sxw / qy.scale).astype(np.float32)
        skip_mult = float(np.float32(qs.scale / qy.scale)) if qs else 0.0
        lo, hi = float(-qy.zero), float(255 - qy.zero)
        if acts:
            lo = max(lo, 0.0)
        if "relu6" in acts:
            hi = min(hi, float(np.float32(6.0 / qy.scale)))
    else:
        mult = sxw.astype(np.float32)
        skip_mult = float(np.float32(qs.scale)) if qs else 0.0
        lo = 0.0 if acts else None
        hi = 6.0 if "relu6" in acts else None
    return LayerQuant(wq, bias.astype(np.int32), mult, qx, qy, qs, skip_mult, lo, hi)


def is_int8(la: Layer) -> bool:
    """Whether ``la`` runs in int8 (the quantization pass marks it)."""
    return la.attrs.get("precision") == "int8"


# ---- the executor --------------------------------------------------------------------------

def quantize_array(x: np.ndarray, qp: QParams) -> np.ndarray:
    t = np.asarray(x, np.float32) * np.float32(1.0 / qp.scale)
    t = np.clip(t, np.float32(-qp.zero), np.float32(255 - qp.zero))
    return (np.rint(t) + qp.zero).astype(np.uint8)


def dequantize_array(q: np.ndarray, qp: QParams) -> np.ndarray:
    return (q.astype(np.int32) - qp.zero).astype(np.float32) * np.float32(qp.scale)


def _requantize(acc: np.ndarray, lq: LayerQuant, skip: np.ndarray | None, axis_shape
                ) -> np.ndarray:
    v = acc.astype(np.float32) * lq.mult.reshape(axis_shape)
    if skip is not None:
        v = v + (skip.astype(np.int32) - lq.skip.zero).astype(np.float32) * np.float32(
            lq.skip_mult)
    if lq.lo is not None:
        v = np.maximum(v, np.float32(lq.lo))
    if lq.hi is not None:
        v = np.minimum(v, np.float32(lq.hi))
    if lq.y is None:
        return v
    return (np.rint(v) + lq.y.zero).astype(np.uint8)


def int8_layer(graph: Graph, la: Layer, xs: list[np.ndarray]) -> np.ndarray:
    """One int8 conv2d, linear or max pool on uint8 inputs, as the kernels compute it."""
    if la.op == "maxpool2d":
        a = la.attrs
        y = F.max_pool2d(torch.from_numpy(xs[0].astype(np.float32)), a["kernel"], a["stride"],
                         a["padding"], a["dilation"], a["ceil_mode"])
        return y.numpy().astype(np.uint8)
    lq = layer_quant(graph, la)
    xi = xs[0].astype(np.int64) - lq.x.zero
    if la.op == "linear":
        acc = xi @ lq.weight.astype(np.int64).T + lq.bias
        return _requantize(acc, lq, None, (1, -1))
    a = la.attrs
    pt, pb, pl, pr = a["padding"]
    xt = F.pad(torch.from_numpy(xi.astype(np.float64)), (pl, pr, pt, pb))
    acc = F.conv2d(xt, torch.from_numpy(lq.weight.astype(np.float64)), None, a["stride"], 0,
                   a["dilation"], a["groups"]).numpy()  # exact: integers far below 2^53
    acc = np.rint(acc).astype(np.int64) + lq.bias.reshape(1, -1, 1, 1)
    skip = xs[1] if "add" in la.epilogue else None
    return _requantize(acc, lq, skip, (1, -1, 1, 1))


def run_int8_reference(graph: Graph, inputs: Sequence[np.ndarray | torch.Tensor]
                       ) -> list[np.ndarray]:
    """Run ``graph`` (after ``quantize_int8``, before the layout pass) on float32 ``inputs``:
    int8 layers, ``quantize`` and ``dequantize`` as the kernels compute them, float32 layers
    with torch (``codegen.lr.OPS``). Returns the graph's outputs."""
    env: dict[str, np.ndarray] = {}
    for name, x in zip(graph.inputs, inputs, strict=True):
        env[name] = np.asarray(x, dtype=np.float32)
    with torch.no_grad():
        for la in graph.layers:
            if la.op in ("input", "output"):
                continue
            xs = [env[t] for t in la.inputs]
            if la.op == "quantize":
                y = quantize_array(xs[0], graph.quant[la.output])
            elif la.op == "dequantize":
                y = dequantize_array(xs[0], graph.quant[la.inputs[0]])
            elif is_int8(la):
                y = int8_layer(graph, la, xs)
            else:
                y = _float_layer(graph, la, xs)
            env[la.output] = y
    return [env[t] for t in graph.outputs]


def _float_layer(graph: Graph, la: Layer, xs: list[np.ndarray]) -> np.ndarray:
    op = OPS.get(la.op)
    if op is None or op.reference is None:
        raise NotImplementedError(f"reference executor has no {la.op}")
    ts = [torch.from_numpy(np.ascontiguousarray(x)) for x in xs]
    y = op.reference(la, ts, graph.shapes[la.output])
    for e in la.epilogue:
        y = y + ts[1] if e == "add" else ACTIVATIONS[e].torch_fn(y)
    return y.numpy()


def calibrate(graph: Graph, batches: Sequence[Sequence[np.ndarray | torch.Tensor]]
              ) -> dict[str, tuple[float, float]]:
    """(min, max) of every tensor of the float32 ``graph`` over ``batches`` (each a list of
    the graph's inputs), run with torch."""
    if not batches:
        raise CodegenError("int8 calibration needs at least one batch of inputs")
    ranges: dict[str, tuple[float, float]] = {}

    def seen(t: str, v: np.ndarray) -> None:
        lo, hi = float(np.min(v)), float(np.max(v))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CodegenError(f"int8 calibration: tensor {t!r} takes non-finite values")
        old = ranges.get(t)
        ranges[t] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))

    with torch.no_grad():
        for batch in batches:
            env: dict[str, np.ndarray] = {}
            for name, x in zip(graph.inputs, batch, strict=True):
                env[name] = np.asarray(x, dtype=np.float32)
                seen(name, env[name])
            for la in graph.layers:
                if la.op in ("input", "output"):
                    continue
                env[la.output] = _float_layer(graph, la, [env[t] for t in la.inputs])
                seen(la.output, env[la.output])
    return ranges
