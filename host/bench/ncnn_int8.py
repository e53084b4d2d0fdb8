"""ncnn int8 for the benchmarks: our converter from the fp32 ncnn model pnnx writes to ncnn's
int8 model format, calibrated with ncnn itself, and the engine that runs it.

The ncnn wheel ships neither ``ncnn2table`` nor ``ncnn2int8`` (nor does any PyPI or Debian
package), so this module does what the two tools do, in their format:

- ``.param``: every Convolution, ConvolutionDepthWise and InnerProduct gets
  ``8=int8_scale_term`` (2 for Convolution and InnerProduct, 1 for ConvolutionDepthWise: one
  weight scale per group), plus 100 where its output feeds one Convolution/ConvolutionDepthWise
  directly (``ncnn2int8``'s ``fuse_requantize``: the layer writes int8 at the next layer's input
  scale, and that layer reads it without quantizing);
- ``.bin``: the layer's weights as int8 (tag ``0x000D4B38``, then one byte a weight,
  ``round(w * scale)`` clamped to ±127, padded to 4 bytes), its fp32 bias unchanged, then raw
  fp32 ``weight_data_int8_scales`` (``127 / absmax`` of each output channel's weights, or each
  group's), ``bottom_blob_int8_scales`` (one), and ``top_blob_int8_scales`` (one) when fused.

Bottom-blob scales come from ncnn fp32 itself: each quantized layer's input blob is extracted
over the calibration batches; ``kl`` (``ncnn2table``'s default) builds a 2048-bin histogram of
``|x|`` (zeros left out) over ``[0, absmax]`` and picks the clipping threshold in bins
128…2047 whose 128-level quantized distribution has the smallest KL divergence from the
clipped one, scale ``127 / ((bin + 0.5) * width)``; ``absmax`` takes ``127 / absmax``. The
result is a pure function of the fp32 model, the batches and the method, cached next to the
fp32 model under a name carrying all three.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .engines import (
    EngineUnavailable,
    Loaded,
    NcnnEngine,
    _atomic,
    _timed_after_untimed,
    open_ncnn,
)

INT8_TAG = 0x000D4B38
FP16_TAG = 0x01306B47
HIST_BINS = 2048
TARGET_BINS = 128
METHODS = ("kl", "absmax")

# layers with no weights in the .bin (what pnnx writes for CNNs; anything else weighted is
# refused by name rather than misread)
WEIGHTLESS = frozenset((
    "Input", "Pooling", "BinaryOp", "ReLU", "Split", "Flatten", "Clip", "Sigmoid", "Softmax",
    "Concat", "Reshape", "Eltwise", "Dropout", "Noop", "Crop", "Interp", "Padding", "Permute",
    "HardSwish", "HardSigmoid", "Swish", "Mish", "TanH", "ELU", "GELU", "Slice", "Pooling1D",
    "UnaryOp", "ShuffleChannel", "PixelShuffle", "Reduction", "Squeeze", "ExpandDims",
))
QUANTIZED = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
# the .param key of weight_data_size and of the bias term, per quantized type
_WSIZE = {"Convolution": "6", "ConvolutionDepthWise": "6", "InnerProduct": "2"}
_BIAS = {"Convolution": "5", "ConvolutionDepthWise": "5", "InnerProduct": "1"}


@dataclass
class ParamLayer:
    """One line of an ncnn .param: type, name, bottom and top blobs, ``key=value`` pairs as
    written (keys as strings, array keys such as ``-23310`` kept verbatim)."""

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, str] = field(default_factory=dict)

    def int_param(self, key: str, default: int = 0) -> int:
        return int(self.params.get(key, default))

    def line(self) -> str:
        kv = " ".join(f"{k}={v}" for k, v in self.params.items())
        return (f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)} "
                + " ".join(self.bottoms + self.tops) + (f" {kv}" if kv else ""))


def parse_param(text: str) -> list[ParamLayer]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0].strip() != "7767517":
        raise ValueError("not an ncnn .param (the first line must be the magic 7767517)")
    layers = []
    for ln in lines[2:]:
        p = ln.split()
        nb, nt = int(p[2]), int(p[3])
        kv = dict(x.split("=", 1) for x in p[4 + nb + nt:])
        layers.append(ParamLayer(p[0], p[1], p[4:4 + nb], p[4 + nb:4 + nb + nt], kv))
    return layers


def format_param(layers: Sequence[ParamLayer]) -> str:
    blobs = {b for la in layers for b in la.bottoms + la.tops}
    return "\n".join(["7767517", f"{len(layers)} {len(blobs)}", *(la.line() for la in layers)]) \
        + "\n"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def raw(self, n: int) -> np.ndarray:
        """``n`` raw fp32 values (ModelBin type 1)."""
        a = np.frombuffer(self.data, np.float32, n, self.pos).copy()
        self.pos += 4 * n
        return a

    def tagged(self, n: int, where: str) -> np.ndarray:
        """``n`` values of ModelBin type 0: a 4-byte tag, then fp32 (tag 0) or fp16."""
        (tag,) = struct.unpack_from("<I", self.data, self.pos)
        self.pos += 4
        if tag == 0:
            return self.raw(n)
        if tag == FP16_TAG:
            a = np.frombuffer(self.data, np.float16, n, self.pos).astype(np.float32)
            self.pos += (2 * n + 3) // 4 * 4
            return a
        raise EngineUnavailable(f"{where}: weights stored with tag {tag:#x}; the int8 "
                                f"converter reads fp32 or fp16 weights (pnnx fp16=0 or 1)")


@dataclass
class Quantized:
    """What the converter decided for one layer (also what the tests check)."""

    name: str
    type: str
    int8_scale_term: int
    weight_scales: np.ndarray
    bottom_scale: float
    top_scale: float | None = None


def weight_scales(w: np.ndarray, groups: int) -> np.ndarray:
    """``127 / absmax`` of each of ``groups`` equal slices of ``w`` (1 where all zero)."""
    absmax = np.abs(w.reshape(groups, -1)).max(axis=1)
    return np.where(absmax == 0, 1.0, 127.0 / np.where(absmax == 0, 1.0, absmax)) \
        .astype(np.float32)


def quantize_weights(w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """ncnn's float2int8: round half away from zero, clamp to ±127."""
    v = w.reshape(len(scales), -1).astype(np.float64) * scales[:, None].astype(np.float64)
    q = np.sign(v) * np.floor(np.abs(v) + 0.5)
    return np.clip(q, -127, 127).astype(np.int8).ravel()


def _int8_blob(q: np.ndarray) -> bytes:
    body = q.tobytes()
    return struct.pack("<I", INT8_TAG) + body + b"\0" * (-len(body) % 4)


def convert(param_text: str, bin_data: bytes, bottom_scales: dict[str, float],
            fuse_requantize: bool = True) -> tuple[str, bytes, list[Quantized]]:
    """The int8 .param text and .bin bytes for an fp32 ncnn model, given each quantized
    layer's bottom-blob scale (by layer name)."""
    layers = parse_param(param_text)
    rd, out = _Reader(bin_data), bytearray()
    done: dict[str, Quantized] = {}
    pending: list[tuple[ParamLayer, np.ndarray, np.ndarray | None, np.ndarray]] = []
    for la in layers:
        if la.type in WEIGHTLESS:
            continue
        if la.type not in QUANTIZED:
            raise EngineUnavailable(f"ncnn int8 converter: layer {la.name} ({la.type}) has "
                                    f"weights of a layout it does not know; supported: "
                                    f"{', '.join(QUANTIZED)} and weightless layers")
        if la.name not in bottom_scales:
            raise EngineUnavailable(f"ncnn int8 converter: no calibrated scale for {la.name}")
        n_out = la.int_param("0")
        size = la.int_param(_WSIZE[la.type])
        w = rd.tagged(size, la.name)
        bias = rd.raw(n_out) if la.int_param(_BIAS[la.type]) else None
        groups = la.int_param("7", 1) if la.type == "ConvolutionDepthWise" else n_out
        ws = weight_scales(w, groups)
        term = 1 if la.type == "ConvolutionDepthWise" else 2
        done[la.name] = Quantized(la.name, la.type, term, ws, float(bottom_scales[la.name]))
        pending.append((la, w, bias, ws))
    if rd.pos != len(bin_data):
        raise EngineUnavailable(f"ncnn int8 converter: read {rd.pos} of {len(bin_data)} bytes "
                                f"of the .bin: the .param and .bin do not match")
    if fuse_requantize:
        # ncnn2int8's fuse_requantize: a conv whose top is the single bottom of a later conv
        convs = [la for la in layers if la.type in ("Convolution", "ConvolutionDepthWise")]
        for i, la in enumerate(convs):
            nxt = next((b for b in convs[i + 1:] if len(b.bottoms) == 1
                        and b.bottoms[0] == la.tops[0]), None)
            if nxt is not None:
                q = done[la.name]
                q.int8_scale_term += 100
                q.top_scale = done[nxt.name].bottom_scale
    for la, w, bias, ws in pending:
        q = done[la.name]
        la.params[_WSIZE[la.type]] = str(w.size)
        la.params["8"] = str(q.int8_scale_term)
        out += _int8_blob(quantize_weights(w, ws))
        if bias is not None:
            out += bias.astype("<f4").tobytes()
        out += ws.astype("<f4").tobytes() + np.float32(q.bottom_scale).tobytes()
        if q.top_scale is not None:
            out += np.float32(q.top_scale).tobytes()
    return format_param(layers), bytes(out), list(done.values())


# ---------------------------------------------------------------- calibration

def kl_threshold_bin(hist: np.ndarray, target: int = TARGET_BINS) -> int:
    """The clipping bin t (in [target, len(hist))) with the smallest KL divergence between P,
    the bins below t with everything above added to the last, and Q, those bins (without the
    clipped mass) quantized to ``target`` levels and expanded back over the bins that hold
    values (TensorRT's entropy calibration, as ``ncnn2table``'s ``kl``)."""
    hist = hist.astype(np.float64)
    eps = 1e-4
    best, best_kl = target, np.inf
    for t in range(target, len(hist)):
        p = hist[:t].copy()
        p[t - 1] += hist[t:].sum()
        nz = (hist[:t] != 0).astype(np.float64)
        edges = np.arange(target + 1) * (t / target)
        # Q quantizes the bins below t without the clipped mass, which only P holds
        cp = np.concatenate([[0.0], np.cumsum(hist[:t])])
        cn = np.concatenate([[0.0], np.cumsum(nz)])
        x = np.arange(t + 1, dtype=np.float64)
        mass = np.diff(np.interp(edges, x, cp))  # quantized bins, fractional edges
        count = np.diff(np.interp(edges, x, cn))  # non-empty bins under each
        val = np.divide(mass, count, out=np.zeros_like(mass), where=count > 0)
        # each fine bin j takes val of the coarse bins it overlaps, by overlap, if non-empty
        j = np.arange(t, dtype=np.float64)
        lo = np.floor(j * target / t).astype(int)
        b = (lo + 1) * (t / target)
        first = np.minimum(b, j + 1) - j
        hi = np.minimum(lo + 1, target - 1)
        q = (val[lo] * first + val[hi] * (1 - first)) * nz + eps
        pp = p + eps
        pp, q = pp / pp.sum(), q / q.sum()
        kl = float(np.sum(pp * np.log(pp / q)))
        if kl < best_kl:
            best, best_kl = t, kl
    return best


def blob_scale(absmax: float, hist: np.ndarray | None, method: str) -> float:
    if absmax == 0:
        return 1.0
    if method == "absmax":
        return 127.0 / absmax
    width = absmax / HIST_BINS
    return 127.0 / ((kl_threshold_bin(hist) + 0.5) * width)


def _fp32_net(param: Path, binf: Path, threads: int = 1):
    return open_ncnn(param, binf, threads, int8=False)


def _bottoms(net, layers: Sequence[ParamLayer], batch: np.ndarray) -> dict[str, np.ndarray]:
    """Each quantized layer's input blob on ``batch`` (NCHW, batch 1), from ncnn fp32."""
    import ncnn

    names = {la.name: la.bottoms[0] for la in layers if la.type in QUANTIZED}
    out = {}
    with net.create_extractor() as ex:
        ex.input("in0", ncnn.Mat(np.ascontiguousarray(batch[0], dtype=np.float32)))
        for lname, blob in names.items():
            ret, m = ex.extract(blob)
            if ret != 0:
                raise EngineUnavailable(f"ncnn: extracting blob {blob} (input of {lname}) "
                                        f"failed ({ret})")
            out[lname] = np.array(m)
    return out


def calibrate(param: Path, binf: Path, batches: Sequence[np.ndarray],
              method: str = "absmax") -> dict[str, float]:
    """Per quantized layer, its bottom-blob scale over ``batches`` (ncnn fp32 activations)."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: choose from {', '.join(METHODS)}")
    layers = parse_param(param.read_text())
    net = _fp32_net(param, binf)
    absmax: dict[str, float] = {}
    for x in batches:  # pass 1: ranges
        for k, v in _bottoms(net, layers, x).items():
            absmax[k] = max(absmax.get(k, 0.0), float(np.abs(v).max()))
    hists: dict[str, np.ndarray] = {k: np.zeros(HIST_BINS) for k in absmax}
    if method == "kl":
        for x in batches:  # pass 2: histograms over each blob's range
            for k, v in _bottoms(net, layers, x).items():
                a = np.abs(v.ravel())
                a = a[a != 0]
                if absmax[k] > 0 and a.size:
                    idx = np.minimum((a / (absmax[k] / HIST_BINS)).astype(np.int64),
                                     HIST_BINS - 1)
                    hists[k] += np.bincount(idx, minlength=HIST_BINS)
    net.clear()
    return {k: blob_scale(absmax[k], hists[k], method) for k in absmax}


def int8_files(param: Path, binf: Path, batches: Sequence[np.ndarray], method: str = "absmax",
               ) -> tuple[Path, Path]:
    """The int8 .param/.bin for an fp32 pair, converted once and cached beside it under a name
    carrying the calibration batches' digest and the method."""
    h = hashlib.sha256(method.encode())
    for x in batches:
        h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    stem = param.name.removesuffix(".param") + f".int8-{method}-{h.hexdigest()[:12]}"
    qparam, qbin = param.with_name(stem + ".param"), param.with_name(stem + ".bin")
    if qparam.is_file() and qbin.is_file():
        return qparam, qbin
    scales = calibrate(param, binf, batches, method)
    text, data, _ = convert(param.read_text(), binf.read_bytes(), scales)
    _atomic(qbin, lambda tmp: tmp.write_bytes(data))
    _atomic(qparam, lambda tmp: tmp.write_text(text))  # last: it marks a complete pair
    return qparam, qbin


# ---------------------------------------------------------------- the engine

class NcnnInt8Engine(NcnnEngine):
    """ncnn running the converted int8 model (``use_int8_inference``), fp32 elsewhere."""

    name = "ncnn int8"

    def __init__(self, calibration: Sequence[np.ndarray] | None = None,
                 method: str = "absmax") -> None:
        self.calibration, self.method = calibration, method

    def prepare(self, w) -> str:
        v = super().prepare(w)
        batches = self.calibration
        if batches is None:  # the batches every engine of `bench int8` calibrates on
            from .peers import calibration

            batches = calibration(w.shape)
        try:
            w.files["ncnn-int8.param"], w.files["ncnn-int8.bin"] = int8_files(
                w.files["ncnn.param"], w.files["ncnn.bin"], batches, self.method)
        except (ValueError, OSError) as e:
            raise EngineUnavailable(f"ncnn int8 conversion: {e}") from None
        return (f"{v}, int8 by host/bench/ncnn_int8.py ({self.method} on {len(batches)} "
                f"batches, per-channel weights)")

    def open(self, w, threads: int):
        return open_ncnn(w.files["ncnn-int8.param"], w.files["ncnn-int8.bin"], threads, int8=True)

    @staticmethod
    def run(net, x: np.ndarray) -> np.ndarray:
        import ncnn

        with net.create_extractor() as ex:
            ex.input("in0", ncnn.Mat(np.ascontiguousarray(x[0], dtype=np.float32)))
            ret, out = ex.extract("out0")
            if ret != 0:
                raise RuntimeError(f"ncnn extract failed ({ret})")
            return np.array(out)[None]

    def load(self, w, threads: int) -> Loaded:
        net = self.open(w, threads)
        self._net = net
        x = w.example.numpy()

        def infer() -> np.ndarray:
            return self.run(net, x)
        return Loaded(self.name, infer, _timed_after_untimed(infer), net.clear)

    def run_on(self, x: np.ndarray) -> np.ndarray:
        """One inference of the loaded net on another input (``bench int8``'s agreement)."""
        return self.run(self._net, x)


class NcnnPeer(NcnnEngine):
    """ncnn fp32 (engines.py's) that answers ``run_on`` too: ``bench int8``'s fp32 baseline
    beside ncnn int8."""

    name = "ncnn"

    def load(self, w, threads: int) -> Loaded:
        net = open_ncnn(w.files["ncnn.param"], w.files["ncnn.bin"], threads, int8=False)
        self._net = net
        x = w.example.numpy()

        def infer() -> np.ndarray:
            return NcnnInt8Engine.run(net, x)
        return Loaded(self.name, infer, _timed_after_untimed(infer), net.clear)

    def run_on(self, x: np.ndarray) -> np.ndarray:
        return NcnnInt8Engine.run(self._net, x)
