"""int8 semantics, written once: how a tensor, a weight and a layer are quantized, and an
executor that runs a quantized LR graph exactly as the int8 kernels do.

What every int8 bundle computes (``codegen/emit/cpu/q8.py`` matches it bit for bit):

- Activations: per tensor, asymmetric uint8, ``real = scale * (q - zero)``, q in [0, 255].
  uint8 because VNNI's ``vpdpbusd`` multiplies unsigned bytes by signed ones, and because
  most activations follow a ReLU: a zero point of 0 gives all 256 levels to [0, max] where
  symmetric int8 would waste half of them. Scales come from the min/max each tensor takes
  over the calibration batches (``calibrate``; ``method="percentile:P"``: the P-th and (100 -
  P)-th percentiles of its values instead, outliers clipped), the range widened to include 0 so
  that 0 (and so zero padding) is exact.
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
- int8 average pooling (k x k, and adaptive, the global pool among them) sums ``q - zero_x``
  over each window's real pixels in int32 and requantizes with the conv's rounding: ``v =
  float(sum) * m[d]``, ``m[d] = float32(scale_x / (scale_y * d))`` for the window's divisor d
  (its size, or its real pixels without ``count_include_pad``), then the clamp, ties to even,
  ``zero_y``.
- int8 ``add`` of two uint8 tensors of their own scales: ``v = float(a - zero_a) * float32(
  scale_a / scale_y) + float(b - zero_b) * float32(scale_b / scale_y)``, then the clamp
  (a fused ReLU/ReLU6 as for a conv) and the rounding.
- int8 ``concat``: each input requantized to the output's scale, ``v = float(q - zero_i) *
  float32(scale_i / scale_y)``, clamp, rounding (the identity where an input's quantization is
  the output's: the pass gives the output its inputs' quantization when they all share one).
- int8 ``mul_channel`` (squeeze-excite's ``x * gate``, the gate [N, C, 1, 1]), both uint8 of
  their own scales: ``v = float((x - zero_x) * (g - zero_g)) * float32(scale_x * scale_g /
  scale_y)`` (the int32 product, |.| <= 255^2, is exact in float32), then the clamp, ties to
  even, ``zero_y``; the output is calibrated as every tensor is.
- Element-wise activations without an int8 epilogue (hardswish, sigmoid, ...) are a 256-entry
  lookup table per tensor: ``T[q] = quantize(act(dequantize(q)))`` with torch in float32 (the
  quantization pass splits a conv's or linear's hardswish/sigmoid epilogue into such a step);
  the kernels index the same table, so it is exact by construction.
- Any of these whose output only float32 layers read writes float32 instead (no rounding, no
  zero point: ``m = scale_x / d``, ``scale_a`` ..., ``scale_x * scale_g``, the table
  ``act(dequantize(q))``).

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

from codegen.lr import ACTIVATIONS, ALIAS_OPS, OPS, CodegenError, Graph, Layer

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
    else:
        mult = sxw.astype(np.float32)
        skip_mult = float(np.float32(qs.scale)) if qs else 0.0
    lo, hi = _clamp(acts, qy)
    return LayerQuant(wq, bias.astype(np.int32), mult, qx, qy, qs, skip_mult, lo, hi)


@dataclass(frozen=True)
class OpQuant:
    """Every constant of an int8 average pool, add, concat or lookup table (see the module
    doc); ``y`` None: the op writes float32."""

    x: tuple[QParams, ...]  # the inputs'
    y: QParams | None
    mult: tuple[float, ...]  # float32 per input: scale_i / scale_y (u8 out) or scale_i;
    # mul_channel: one, scale_x * scale_g / scale_y (u8 out) or scale_x * scale_g
    lo: float | None  # clamp of v before rounding
    hi: float | None
    pool_mult: np.ndarray | None = None  # avg pools: float32 m[d] for each divisor d
    table: np.ndarray | None = None  # lookup tables: uint8[256] (u8 out) or float32[256]


LUT_OPS = tuple(a for a in ACTIVATIONS if a not in INT8_ACTIVATIONS)  # a table step each
POOL_OPS = ("avgpool2d", "adaptive_avgpool2d")


def _clamp(acts: Sequence[str], qy: QParams | None) -> tuple[float | None, float | None]:
    if qy is None:
        return (0.0 if acts else None), (6.0 if "relu6" in acts else None)
    lo, hi = float(-qy.zero), float(255 - qy.zero)
    if acts:
        lo = max(lo, 0.0)
    if "relu6" in acts:
        hi = min(hi, float(np.float32(6.0 / qy.scale)))
    return lo, hi


def pool_windows(la: Layer, ih: int, iw: int, oh: int, ow: int) -> tuple[np.ndarray, ...]:
    """(h0, h1, dh per output row; w0, w1, dw per output column) of an average pool: the
    real pixels [h0, h1) x [w0, w1) each window sums, as the float32 kernels bound them, and
    the divisor's factors (the divisor is ``dh[oh] * dw[ow]``; 0 for an empty window)."""
    a = la.attrs
    if la.op == "adaptive_avgpool2d":
        r, c = np.arange(oh), np.arange(ow)
        h0, h1 = r * ih // oh, ((r + 1) * ih + oh - 1) // oh
        w0, w1 = c * iw // ow, ((c + 1) * iw + ow - 1) // ow
        return h0, h1, h1 - h0, w0, w1, w1 - w0
    (kh, kw), (sh, sw), (ph, pw) = a["kernel"], a["stride"], a["padding"]
    out = []
    for o, k, st, p, size in ((oh, kh, sh, ph, ih), (ow, kw, sw, pw, iw)):
        lo = np.arange(o) * st - p
        hi = np.minimum(lo + k, size + p)
        pool = hi - lo
        lo, hi = np.maximum(lo, 0), np.minimum(hi, size)
        hi = np.maximum(hi, lo)  # an empty window sums nothing
        d = pool if a["count_include_pad"] else hi - lo
        out += [lo, hi, np.where(hi > lo, d, 0)]
    return tuple(out)


def lut_table(qx: QParams, qy: QParams | None, acts: Sequence[str]) -> np.ndarray:
    """The 256-entry table of the activations ``acts`` applied in turn, from uint8 ``qx`` to
    uint8 ``qy`` (None: to float32)."""
    v = torch.from_numpy(dequantize_array(np.arange(256, dtype=np.uint8), qx))
    with torch.no_grad():
        for e in acts:
            v = ACTIVATIONS[e].torch_fn(v)
    v = v.numpy().astype(np.float32)
    return v if qy is None else quantize_array(v, qy)


def op_quant(graph: Graph, la: Layer) -> OpQuant:
    """The constants of int8 average pool, add, concat, mul_channel or table step ``la`` in
    ``graph``."""
    q = graph.quant
    qx = tuple(q[t] for t in la.inputs)
    qy = q.get(la.output)
    acts = [e for e in la.epilogue if e != "add"]
    if la.op in LUT_OPS:
        return OpQuant(qx, qy, (), None, None, table=lut_table(qx[0], qy, (la.op, *acts)))
    den = qy.scale if qy is not None else 1.0
    if la.op == "mul_channel":  # one multiplier for the product, rounded once
        mult = (float(np.float32(qx[0].scale * qx[1].scale / den)),)
    else:
        mult = tuple(float(np.float32(p.scale / den)) for p in qx)
    lo, hi = _clamp(acts, qy)
    pool = None
    if la.op in POOL_OPS:
        _, _, ih, iw = graph.shapes[la.inputs[0]][:4]
        _, _, oh, ow = graph.shapes[la.output][:4]
        win = pool_windows(la, ih, iw, oh, ow)
        dmax = int(win[2].max() * win[5].max())
        d = np.arange(dmax + 1, dtype=np.float64)
        with np.errstate(divide="ignore"):
            pool = np.where(d > 0, qx[0].scale / (den * d), 0.0).astype(np.float32)
    return OpQuant(qx, qy, mult, lo, hi, pool_mult=pool)


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
    return _store(v, lq)


def _store(v: np.ndarray, oq: OpQuant | LayerQuant) -> np.ndarray:
    """The clamp, the rounding and the zero point of ``oq`` (an ``OpQuant`` or a conv's
    ``LayerQuant``: both have ``lo``, ``hi`` and ``y``) on float32 ``v``."""
    if oq.lo is not None:
        v = np.maximum(v, np.float32(oq.lo))
    if oq.hi is not None:
        v = np.minimum(v, np.float32(oq.hi))
    if oq.y is None:
        return v
    return (np.rint(v) + oq.y.zero).astype(np.uint8)


def _centred(x: np.ndarray, qp: QParams) -> np.ndarray:
    return x.astype(np.int32) - qp.zero


def int8_op(graph: Graph, la: Layer, xs: list[np.ndarray]) -> np.ndarray:
    """One int8 average pool, add, concat, mul_channel or table step on uint8 inputs."""
    oq = op_quant(graph, la)
    if oq.table is not None:
        return oq.table[xs[0]]
    if la.op == "add":
        v = (_centred(xs[0], oq.x[0]).astype(np.float32) * np.float32(oq.mult[0])
             + _centred(xs[1], oq.x[1]).astype(np.float32) * np.float32(oq.mult[1]))
        return _store(v, oq)
    if la.op == "mul_channel":  # x [N, C, H, W] times the gate [N, C, 1, 1]
        p = _centred(xs[0], oq.x[0]) * _centred(xs[1], oq.x[1])  # int32, exact
        return _store(p.astype(np.float32) * np.float32(oq.mult[0]), oq)
    if la.op == "concat":
        parts = [_store(_centred(x, p).astype(np.float32) * np.float32(m), oq)
                 for x, p, m in zip(xs, oq.x, oq.mult, strict=True)]
        return np.concatenate(parts, axis=1)
    n, c, ih, iw = xs[0].shape
    oh, ow = graph.shapes[la.output][2:4]
    h0, h1, dh, w0, w1, dw = pool_windows(la, ih, iw, oh, ow)
    div = np.outer(dh, dw)
    s = np.zeros((n, c, ih + 1, iw + 1), np.int64)  # the integral image
    s[:, :, 1:, 1:] = _centred(xs[0], oq.x[0]).cumsum(2).cumsum(3)
    acc = (s[:, :, h1][:, :, :, w1] - s[:, :, h0][:, :, :, w1] - s[:, :, h1][:, :, :, w0]
           + s[:, :, h0][:, :, :, w0])
    return _store(acc.astype(np.float32) * oq.pool_mult[div], oq)


def int8_layer(graph: Graph, la: Layer, xs: list[np.ndarray]) -> np.ndarray:
    """One int8 conv2d, linear or max pool on uint8 inputs, as the kernels compute it."""
    if la.op in ("add", "concat", "mul_channel", *POOL_OPS, *LUT_OPS):
        return int8_op(graph, la, xs)
    if la.op in ALIAS_OPS:
        return xs[0].reshape(graph.shapes[la.output])
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


CALIBRATION_METHODS = ("minmax", "percentile")
DEFAULT_PERCENTILE = 99.99


def calibration_method(method: str) -> tuple[str, float]:
    """("minmax", 100) or ("percentile", P) from "minmax", "percentile" (P = 99.99) or
    "percentile:P" (50 < P <= 100)."""
    name, _, arg = method.partition(":")
    if name == "minmax" and not arg:
        return "minmax", 100.0
    if name == "percentile":
        try:
            p = float(arg) if arg else DEFAULT_PERCENTILE
        except ValueError:
            p = float("nan")
        if 50.0 < p <= 100.0:
            return "percentile", p
    raise CodegenError(f"int8 calibration method {method!r}: use minmax, percentile or "
                       f"percentile:P with 50 < P <= 100 (e.g. percentile:{DEFAULT_PERCENTILE})")


def calibrate(graph: Graph, batches: Sequence[Sequence[np.ndarray | torch.Tensor]],
              method: str = "minmax") -> dict[str, tuple[float, float]]:
    """(min, max) of every tensor of the float32 ``graph`` over ``batches`` (each a list of
    the graph's inputs), run with torch; ``method`` "percentile:P": the (100 - P)-th and P-th
    percentiles of each tensor's values over all batches instead (``calibration_method``)."""
    kind, pct = calibration_method(method)
    if not batches:
        raise CodegenError("int8 calibration needs at least one batch of inputs")
    ranges: dict[str, tuple[float, float]] = {}
    values: dict[str, list[np.ndarray]] = {}

    def seen(t: str, v: np.ndarray) -> None:
        lo, hi = float(np.min(v)), float(np.max(v))
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise CodegenError(f"int8 calibration: tensor {t!r} takes non-finite values")
        old = ranges.get(t)
        ranges[t] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
        if kind == "percentile":
            values.setdefault(t, []).append(np.asarray(v, np.float32).ravel())

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
    for t, vs in values.items():
        v = np.concatenate(vs)
        lo, hi = np.percentile(v, [100.0 - pct, pct])
        ranges[t] = (float(lo), float(hi))
    return ranges
