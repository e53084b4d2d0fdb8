"""int8 kernels on uint8 activations: what ``codegen.quant`` defines, bit for bit.

Activations are uint8, blocked NCHW[x]c with x = the int32 lanes of a vector (16: AVX-512, 8:
AVX2, 4: NEON), so one pixel's channel block is x bytes and a float32 tensor beside it has
the same blocking. Weights are packed for the ISA's dot product (``QuantIsa``): a direct
conv's as ``[oc/x][ic/L][kh][kw][L/group][x oc][group ic]`` (L = x, or 4 for an image; int8
for ``vpdpbusd`` and SDOT, int16 pairs for AVX2's ``vpmaddwd``), a Linear's as
``[o/x][k/group][x][group]``. SDOT multiplies signed bytes: its kernels flip each
activation's top bit (``x ^ 0x80`` = x - 128) and the ISA's ``offset`` (128) adds
``128 * sum w`` back where ``-zero_x * sum w`` goes, the same integer. Names carry the precision:
``conv2d_3x3s1_nchw16c_qs8__avx512vnni_2x12w_add_relu``; ``_dq`` at the end when the layer
writes float32 (its dequantization fused into the requantization).

- ``qconv2d``: the float32 direct conv's tiling (items (n, oc tile, output row), interior
  tiles of ``w`` columns, 1-column edge calls with their tap range); each input group of 4
  (2) channels of a column is broadcast as one int32 and multiplied into an oc block's x
  accumulators by ``npas_dot``. The taps that only see padding are skipped, so the kernel adds
  ``-zero_x * sum w`` over the taps it ran (a per-tap table, ``comp``): the integer
  ``sum (x - zero_x) * w`` over the valid taps, which is what zero padding gives. Depthwise:
  ``(x - zero_x) * w`` in int32 vectors, per tap.
- ``q8_linear.py``: ``qlinear``, two dot-product chains over k; ``-zero_x * sum w`` folded
  into the bias (VNNI: 2 or 4 output blocks an item, a chain each).
- ``q8_convert.py``: ``qmaxpool2d`` (the max of uint8 vectors), ``quantize``, ``dequantize``
  and the uint8 layout conversions (``convert_u8``), either layout on either side.

The requantization (``requant``) is ``codegen.quant``'s: float(acc) * m, the residual's term,
the clamp, ``(v + 1.5 * 2^23) - 1.5 * 2^23`` (round to nearest, ties to even, for |v| < 2^22),
the zero point. The toolchain compiles int8 bundles with ``-ffp-contract=off`` so no multiply
and add fuse into one rounding.
"""

from __future__ import annotations

import numpy as np

from codegen.cost import best_tile, conv_kind
from codegen.emit.cpu import q8_neon
from codegen.emit.cpu.prelude import AI
from codegen.emit.cpu.q8_requant import (  # noqa: F401 (the sparse int8 kernels' imports)
    REQUANT_PARAMS,
    fl,
    requant,
    requant_args,
    requant_constants,
    requant_row,
)
from codegen.emit.cpu.q8_requant import epilogue_tag as _tag
from codegen.emit.cstyle import Ctx, Rendered
from codegen.isa import QuantIsa
from codegen.lr import Graph, Layer
from codegen.quant import LayerQuant, layer_quant

IX = "int64_t"  # the index type

TYPES = """\
typedef __UINT8_TYPE__ uint8_t;
typedef __INT8_TYPE__ int8_t;
typedef __INT16_TYPE__ int16_t;
typedef int32_t npas_i32u __attribute__((aligned(1), may_alias));
"""

SCALAR = """\
static inline uint8_t npas_q8(float v, float inv, float lo, float hi, int32_t z) {
  v = v * inv;
  v = v < lo ? lo : v;
  v = v > hi ? hi : v;
  v = (v + 12582912.0f) - 12582912.0f;
  return (uint8_t)((int32_t)v + z);
}
static inline float npas_dq8(uint8_t q, float s, int32_t z) { return (float)((int32_t)q - z) * s; }
"""


# x uint8 at p, zero-extended to int32 lanes. gcc 12 turns __builtin_convertvector from 16
# bytes to 16 ints into 16 scalar loads and inserts (clang: one vpmovzxbd), so gcc gets the
# instruction's builtin
U8X = {
    16: "#ifdef __clang__\n  return __builtin_convertvector(*(const vq *)p, vi);\n#else\n"
        "  return (vi)__builtin_ia32_pmovzxbd512_mask(*(const npas_v16qi *)p, (vi){}, "
        "(unsigned short)0xFFFF);\n#endif\n",
    8: "#ifdef __clang__\n  return __builtin_convertvector(*(const vq *)p, vi);\n#else\n"
       "  const npas_v2di t = {*(const npas_i64u *)p, 0};\n"
       "  return (vi)__builtin_ia32_pmovzxbd256((npas_v16qi)t);\n#endif\n",
    4: "  return __builtin_convertvector(*(const vq *)p, vi);\n",
}


def vector_types(q: QuantIsa) -> str:
    """uint8 and int32 vectors of ``q.lanes``, ``npas_u8x`` (x uint8 as int32 lanes) and the
    dot product ``npas_dot``."""
    X = q.lanes
    s = (f"typedef uint8_t vq __attribute__((vector_size({X}), aligned(1), may_alias));\n"
         f"typedef int32_t vqi __attribute__((vector_size({4 * X}), may_alias));\n"
         "typedef char npas_v16qi __attribute__((vector_size(16), aligned(1), may_alias));\n"
         "typedef long long npas_v2di __attribute__((vector_size(16)));\n"
         "typedef long long npas_i64u __attribute__((aligned(1), may_alias));\n"
         f"static inline vi npas_u8x(const uint8_t *p) {{\n{U8X[X]}}}\n")
    if q.name == "neondot":  # and SDOT by element: w times x's dword (pixel) ``l``
        lanes = "".join(
            f"static inline vi npas_dotl{lane}(vi acc, vi w, vi x) {{\n"
            f'  __asm__("sdot %0.4s, %1.16b, %2.4b[{lane}]" : "+w"(acc) : "w"(w), "w"(x));\n'
            "  return acc;\n}\n" for lane in range(4))
        return s + ("typedef int32_t vqiu __attribute__((vector_size(16), aligned(1), "
                    "may_alias));\n"
                    "static inline vi npas_dot(vi acc, vi a, vi b) {\n"
                    '  __asm__("sdot %0.4s, %1.16b, %2.16b" : "+w"(acc) : "w"(a), "w"(b));\n'
                    "  return acc;\n}\n" + lanes)
    if q.group == 4:
        return s + ("static inline vi npas_dot(vi acc, vi a, vi b) {\n#ifdef __clang__\n"
                    "  return (vi)__builtin_ia32_vpdpbusd512(acc, a, b);\n#else\n"
                    "  return (vi)__builtin_ia32_vpdpbusd_v16si(acc, a, b);\n#endif\n}\n")
    pairs = "".join(
        f"static inline vi npas_pair{h}(const uint8_t *p) {{\n"
        "  const vi d = (vi){} + *(const npas_i32u *)p;\n"
        f"  return (vi)__builtin_ia32_pshufb256((npas_v32qi)d, (npas_v32qi){{"
        + ", ".join(f"{2 * h}, -128, {2 * h + 1}, -128" for _ in range(8)) + "});\n}\n"
        for h in (0, 1))
    return s + ("typedef short npas_v16hi __attribute__((vector_size(32)));\n"
                "typedef char npas_v32qi __attribute__((vector_size(32)));\n"
                "static inline vi npas_dot(vi acc, vi a, vi b) {\n"
                "  return acc + (vi)__builtin_ia32_pmaddwd256((npas_v16hi)a, (npas_v16hi)b);\n}\n"
                + pairs)


def _need(c: Ctx, vectors: bool = False) -> None:
    h = c.lang.helpers
    h.setdefault("npas_q8_types", TYPES)
    h.setdefault("npas_q8_scalar", SCALAR)
    if vectors:
        h.setdefault("npas_q8_vectors", vector_types(c.lang.qisa))
        if c.lang.qisa.name == "neondot":
            h.setdefault("npas_q8_neon", q8_neon.NEON_HELPERS)


def bcast(q: QuantIsa, p: str, off: int = 0) -> str:
    """``q.group`` input bytes at ``p + off`` in every int32 lane (as the dot product pairs
    them). AVX2 (pairs as int16): the dword of 4 bytes at the 4-aligned offset, broadcast,
    its pair spread to two int16 by one vpshufb (5 scalar operations a pair before)."""
    if q.group == 4 and q.offset:  # SDOT: signed bytes, x - 128
        return f"((vi){{}} + (int32_t)(*(const npas_i32u *)({p} + {off}) ^ 0x80808080u))"
    if q.group == 4:
        return f"((vi){{}} + *(const npas_i32u *)({p} + {off}))"
    return f"npas_pair{(off % 4) // 2}({p} + {off - off % 4})"


def words(a: np.ndarray) -> np.ndarray:
    """An integer array's bytes as float32 words (the blob is float32 words; padded to 4)."""
    b = np.ascontiguousarray(a).tobytes()
    b += b"\0" * (-len(b) % 4)
    return np.frombuffer(b, np.float32).copy()


# ---- convolution ---------------------------------------------------------------------------

def _microkernel(q: QuantIsa, lq: LayerQuant, kh: int, kw: int, sh: int, sw: int, dh: int,
                 dw: int, depthwise: bool, oc_tile: int, w_tile: int,
                 epilogue: tuple[str, ...], lin: int) -> tuple[str, str]:
    """(name, C) of an ``oc_tile`` x ``w_tile`` int8 conv tile; the quantization constants
    are arguments (``REQUANT_PARAMS``: constants where it is inlined)."""
    X, WT = q.lanes, q.weight
    fam = "dwconv2d" if depthwise else "conv2d"
    s = f"s{sh}" if sh == sw else f"s{sh}x{sw}"
    d = "" if dh == dw == 1 else (f"d{dh}" if dh == dw else f"d{dh}x{dw}")
    name = (f"{fam}_{kh}x{kw}{s}{d}_nchw{lin}c_qs8__{q.name}_{oc_tile}x{w_tile}w"
            f"{_tag(lq, epilogue)}")
    out = "float" if lq.y is None else "uint8_t"
    skip = "add" in epilogue
    acc = [[f"a{o}_{j}" for j in range(w_tile)] for o in range(oc_tile)]
    wtype = "int32_t" if depthwise else WT
    L = [f"{AI} void {name}(const uint8_t *restrict x, {IX} xo, const {wtype} *restrict w, "
         f"{IX} wb, const int32_t *restrict b, const int32_t *restrict ws, const float *restrict m,"
         f" {out} *restrict y, {'const uint8_t *restrict s, ' if skip else ''}{IX} ys, {IX} cb, "
         f"{IX} cs, {IX} rs, {IX} ky0, {IX} ky1, {IX} kx0, {IX} kx1, {REQUANT_PARAMS}) {{",
         "  (void)qzx; (void)qzs; (void)qms; (void)qlo; (void)qhi; (void)qzy;"]
    if depthwise:
        L += ["  (void)cb; (void)cs; (void)wb; (void)ws;",
              *[f"  vi {a} = *(const vqi *)b;" for a in acc[0]],
              f"  for ({IX} ky = ky0; ky < ky1; ++ky)",
              f"    for ({IX} kx = kx0; kx < kx1; ++kx) {{",
              f"      const uint8_t *xp = x + (xo + ky * {dh} * rs + kx * {dw * X});",
              f"      const vi wv = *(const vqi *)(w + (ky * {kw} + kx) * {X});"]
        L += [f"      {acc[0][j]} += (npas_u8x(xp + {j * sw * X}) - qzx) * wv;"
              for j in range(w_tile)]
        L.append("    }")
    else:
        for o in range(oc_tile):
            L.append(f"  vi z{o} = (vi){{}};")
        L += [f"  for ({IX} ky = ky0; ky < ky1; ++ky)",
              f"    for ({IX} kx = kx0; kx < kx1; ++kx) {{",
              *[f"      z{o} += *(const vqi *)(ws + {o * kh * kw * X} + (ky * {kw} + kx) * {X});"
                for o in range(oc_tile)], "    }"]
        for o in range(oc_tile):
            init = ", ".join(f"{a} = *(const vqi *)(b + {o * X}) + z{o}" for a in acc[o])
            L.append(f"  vi {init};")
        tap = [f"        const uint8_t *xp = x + (xo + c * cs + ky * {dh} * rs + kx * "
               f"{dw * lin});",
               f"        const {WT} *wp = w + ((c * {kh} + ky) * {kw} + kx) * {lin * X};"]
        for g in range(lin // q.group):
            tap += [f"        {{ const vi w{o} = *(const vqi *)(wp + {o} * wb + {g * X * q.group});"
                    for o in range(oc_tile)]
            for j in range(w_tile):
                xb = bcast(q, "xp", j * sw * lin + g * q.group)
                tap.append(f"          {{ const vi xb = {xb};")
                tap += [f"            {acc[o][j]} = npas_dot({acc[o][j]}, xb, w{o});"
                        for o in range(oc_tile)]
                tap.append("          }")
            tap.append("        " + "}" * oc_tile)
        L += [f"  for ({IX} c = 0; c < cb; ++c)",
              f"    for ({IX} ky = ky0; ky < ky1; ++ky)",
              f"      for ({IX} kx = kx0; kx < kx1; ++kx) {{", *tap, "      }"]
    for o in range(oc_tile):
        L += ["  " + ln for ln in requant_row(
            q, lq, acc[o], f"*(const vf *)(m + {o * X})", lambda j, o=o: f"y + {o} * ys + {j * X}",
            (lambda j, o=o: f"s + {o} * ys + {j * X}") if skip else None)]
    L.append("}")
    return name, "\n".join(L) + "\n"


# A 64-byte load holds 4 neighbouring pixels' 16 channels; as one dword per channel of those
# 4 pixels' bytes it feeds one vpdpbusd with a row's <= 4 depthwise taps (weights 0 past kw)
T4 = ", ".join(str(16 * (o % 4) + o // 4) for o in range(64))
DW_DOT_TYPES = f"""\
typedef uint8_t vq64 __attribute__((vector_size(64), aligned(1), may_alias));
static inline vi npas_t4(vq64 v) {{
#ifdef __clang__
  return (vi)__builtin_shufflevector(v, v, {T4});
#else
  return (vi)__builtin_shuffle(v, (vq64){{{T4}}});
#endif
}}
"""


def dw_dot(la: Layer, q: QuantIsa) -> bool:
    """Whether an int8 depthwise conv's interior runs a row's taps in one dot product (VNNI,
    16 channels, or SDOT, 4: ``q8_neon``; at most 4 taps a row, no dilation): 4 neighbouring
    input pixels per load."""
    return (q.group == 4 and (q.lanes == 16 or q.name == "neondot")
            and la.params["weight"].shape[3] <= 4
            and tuple(la.attrs["dilation"]) == (1, 1) and conv_kind(la, q.lanes) == "depthwise")


def _dw_dot_microkernel(q: QuantIsa, lq: LayerQuant, kh: int, sw: int, w_tile: int,
                        epilogue: tuple[str, ...]) -> tuple[str, str]:
    X = q.lanes
    name = f"dwconv2d_{kh}xNs{sw}_nchw{X}c_qs8__{q.name}_dot_{w_tile}w{_tag(lq, epilogue)}"
    out = "float" if lq.y is None else "uint8_t"
    skip = "add" in epilogue
    acc = [f"a{j}" for j in range(w_tile)]
    if q.name == "neondot":
        tail = requant_row(q, lq, acc, "*(const vf *)m", lambda j: f"y + {j * X}",
                           (lambda j: f"s + {j * X}") if skip else None)
        return name, q8_neon.dw_microkernel(name, kh, sw, w_tile, out, skip, REQUANT_PARAMS,
                                            tail)
    L = [f"{AI} void {name}(const uint8_t *restrict x, {IX} xo, const int8_t *restrict wd, "
         f"const int32_t *restrict zd, const int32_t *restrict b, const float *restrict m, "
         f"{out} *restrict y, {'const uint8_t *restrict s, ' if skip else ''}{IX} rs, "
         f"{IX} ky0, {IX} ky1, {REQUANT_PARAMS}) {{",
         "  (void)qzx; (void)qzs; (void)qms; (void)qlo; (void)qhi; (void)qzy;",
         f"  vi {', '.join(f'{a} = *(const vqi *)b' for a in acc)};",
         f"  for ({IX} ky = ky0; ky < ky1; ++ky) {{",
         "    const uint8_t *xp = x + (xo + ky * rs);",
         f"    const vi wv = *(const vqi *)(wd + ky * {4 * X});",
         f"    const vi zv = *(const vqi *)(zd + ky * {X});"]
    for j, a in enumerate(acc):
        L.append(f"    {a} = npas_dot({a} + zv, npas_t4(*(const vq64 *)(xp + {j * sw * X})), "
                 "wv);")
    L.append("  }")
    for j, a in enumerate(acc):
        L += ["  " + ln for ln in requant(lq, a, "*(const vf *)m", f"y + {j * X}",
                                          f"s + {j * X}" if skip else None)]
    L.append("}")
    return name, "\n".join(L) + "\n"


def conv_oc_tile(q: QuantIsa, la: Layer, out: tuple[int, ...]) -> int:
    """The oc blocks of a dense int8 conv's tile (1 for depthwise)."""
    n, ocb, oh = out[0], out[1], out[2]
    kh, kw = la.params["weight"].shape[2:]
    if conv_kind(la, q.lanes) == "depthwise":
        return 1
    oc_tile = 2 if ocb % 2 == 0 and n * ocb // 2 * oh >= 32 else 1
    # 4 oc blocks a tile where a column's input is reused over several taps: 3x3 convs of
    # resnet18 at 224, 1 thread, AVX-512 VNNI: the model 10.1-10.3 -> 9.5-9.7 ms; 1x1 convs
    # keep 2 (mobilenet_v2 2.52 -> 2.60 ms with 4 there). SDOT: 4 for 1x1 too (one LD1 of the
    # tile's 4 weight vectors a tap, 6 columns from 2 loads: 5 instructions a tap besides the
    # 24 SDOTs, 9 for 2 x 13)
    if ((kh * kw > 1 or q.name == "neondot") and ocb % 4 == 0 and n * ocb // 4 * oh >= 32
            and q.registers >= 32):
        oc_tile = 4
    return oc_tile


def qconv2d(c: Ctx) -> Rendered:
    """Step body of an int8 conv (blocked uint8 input): items (n, oc tile, output row)."""
    _need(c, vectors=True)
    q: QuantIsa = c.lang.qisa
    X = q.lanes
    la = c.la
    lq = layer_quant(c.graph, la)
    xin = c.ins[0]
    n, cbk, ih, iw, lin = xin  # lin: channels per input pixel block (x, or 4: a narrow input)
    _, ocb, oh, ow, _ = c.out
    oc, icg, kh, kw = la.params["weight"].shape
    sh, sw = la.attrs["stride"]
    dh, dw = la.attrs["dilation"]
    pt, _, pl, _ = la.attrs["padding"]
    depthwise = conv_kind(la, X) == "depthwise"
    oc_tile = conv_oc_tile(q, la, c.out)
    # accumulators + a weight vector per oc block + the broadcast (VNNI, AVX2); SDOT by lane
    # keeps up to 2 input vectors and the sign-flip constant too (2 x 14 spilled 2 registers)
    spare = 4 if q.name == "neondot" else 2
    most = min(16, (q.registers - 3) if depthwise else (q.registers - oc_tile - spare) // oc_tile)
    if q.name == "neondot" and not depthwise:  # the widest tile whose row loads stay in registers
        most = q8_neon.row_columns(most, oc_tile, sw, kw, dw)
    ow_lo = min(ow, -(-pl // sw))
    ow_hi = max(ow_lo, min(ow, (iw - 1 + pl - (kw - 1) * dw) // sw + 1))
    interior = ow_hi - ow_lo
    w_tile = best_tile(interior, most) if interior else 1
    main_n, rem = divmod(interior, w_tile)
    cs = ih * iw * lin
    xn = cbk * cs
    cb = 1 if depthwise else cbk
    wblk = kh * kw * X if depthwise else cbk * kh * kw * lin * X
    names, dot = {}, dw_dot(la, q)
    # SDOT dense convs: q8_neon's tiles (below) instead
    for t in {1, w_tile if main_n else 1, rem or 1} if depthwise or q.name != "neondot" else ():
        nm, src = _microkernel(q, lq, kh, kw, sh, sw, dh, dw, depthwise, oc_tile, t, la.epilogue,
                               lin)
        c.lang.helpers.setdefault(nm, src)
        names[t] = nm
    if dot and q.lanes == 16:
        c.lang.helpers.setdefault("npas_q8_dw_dot", DW_DOT_TYPES)
    if dot:
        for t in {w_tile if main_n else 1, rem or 1}:
            nm, src = _dw_dot_microkernel(q, lq, kh, sw, t, la.epilogue)
            c.lang.helpers.setdefault(nm, src)
            names[("dot", t)] = nm
    octs = ocb // oc_tile
    skip = "add" in la.epilogue
    out = "float" if lq.y is None else "uint8_t"
    rs = iw * lin
    xbase = f"n * {xn} + ocb * {cs}" if depthwise else f"n * {xn}"

    def call(t: int, kx: str) -> str:
        sarg = f"sr + ow * {X}, " if skip else ""
        if dot and kx == f"0, {kw}":  # an interior tile
            return (f"{names[('dot', t)]}(x, xb + ih0 * {rs} + (ow * {sw} - {pl}) * {X}, wdp, "
                    f"zdp, bp, mp, yr + ow * {X}, {sarg}{rs}, ky0, ky1, {requant_args(lq)});")
        return (f"{names[t]}(x, xb + ih0 * {rs} + (ow * {sw} - {pl}) * {lin}, wp, {wblk}, bp, "
                f"wsp, mp, yr + ow * {X}, {sarg}{oh * ow * X}, {cb}, {cs}, {rs}, ky0, ky1, {kx}, "
                f"{requant_args(lq)});")

    wt = "int32_t" if depthwise else q.weight
    body = [f"const {IX} n = it / {octs * oh}, ocb = (it / {oh}) % {octs} * {oc_tile}, "
            f"oh = it % {oh};",
            f"const {IX} ih0 = oh * {sh} - {pt};",
            f"const {IX} ky0 = ih0 < 0 ? (-ih0 + {dh - 1}) / {dh} : 0;",
            f"const {IX} kyr = ({ih} - ih0 + {dh - 1}) / {dh};",
            f"const {IX} ky1 = kyr < {kh} ? kyr : {kh};",
            f"const {IX} xb = {xbase};",
            f"const {wt} *wp = w + ocb * {wblk};",
            f"const int32_t *bp = b + ocb * {X};",
            f"const int32_t *wsp = {'0' if depthwise else f'ws + ocb * {kh * kw * X}'};",
            f"const float *mp = m + ocb * {X};",
            f"{out} *yr = y + ((n * {ocb} + ocb) * {oh} + oh) * {ow * X};"]
    if skip:
        body.append("const uint8_t *sr = s + (yr - y);")
    if dot:
        body += [f"const int8_t *wdp = wd + ocb * {kh * 4 * X};",
                 f"const int32_t *zdp = zd + ocb * {kh * X};"]
    def edge() -> list[str]:  # a column at the padding, its taps' range at run time
        return [f"  const {IX} iw0 = ow * {sw} - {pl};",
                f"  const {IX} kx0 = iw0 < 0 ? (-iw0 + {dw - 1}) / {dw} : 0;",
                f"  const {IX} kxr = ({iw} - iw0 + {dw - 1}) / {dw};",
                f"  const {IX} kx1 = kxr < {kw} ? kxr : {kw};",
                "  " + call(1, "kx0, kx1")]
    plan = (q8_neon.columns(q, lq, la, oc_tile, most, ow, ow_lo, ow_hi, iw, lin)
             if q.name == "neondot" and not depthwise else None)
    if plan is not None:
        for ow0, kname in plan:  # (first column or a loop, kernel)
            c.lang.helpers.setdefault(kname[0], kname[1])
            sarg = f"sr + ow * {X}, " if skip else ""
            cl = (f"{kname[0]}(x, xb + ih0 * {rs} + (ow * {sw} - {pl}) * {lin}, wp, {wblk}, "
                  f"bp, bzp, wsp, mp, yr + ow * {X}, {sarg}{oh * ow * X}, {cb}, {cs}, {rs}, "
                  f"ky0, ky1, {requant_args(lq)});")
            body += [f"for ({IX} ow = {ow0[0]}; ow < {ow0[1]}; ow += {ow0[2]})", "  " + cl]
        body.insert(body.index(f"const float *mp = m + ocb * {X};"),
                    f"const int32_t *bzp = bz + ocb * {X};")
        main_n = rem = ow_lo = 0
        ow_hi = ow
    edges = edge() if ow_lo or ow_hi < ow else []  # names[1] exists only with edge columns
    body += column_loops(ow, ow_lo, ow_hi, main_n, w_tile, rem, kw, call, edges)
    items = n * octs * oh
    pr = c.lang.param_ref
    decl = [f"const {wt} *restrict w = (const {wt} *){pr(c, 0)};",
            f"const int32_t *restrict b = (const int32_t *){pr(c, 1)};"]
    if depthwise:
        decl += [f"const float *restrict m = (const float *){pr(c, 2)};"]
        if dot:
            decl += [f"const int8_t *restrict wd = (const int8_t *){pr(c, 3)};",
                     f"const int32_t *restrict zd = (const int32_t *){pr(c, 4)};"]
    else:
        decl += [f"const int32_t *restrict ws = (const int32_t *){pr(c, 2)};",
                 f"const float *restrict m = (const float *){pr(c, 3)};"]
        if plan is not None:
            decl.append(f"const int32_t *restrict bz = (const int32_t *){pr(c, 4)};")
    L = [c.x(), *([c.x(1, "s")] if skip else []), c.y(), *decl,
         *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * oc * oh * ow * icg * kh * kw


def pack_qconv(graph: Graph, la: Layer, q: QuantIsa) -> tuple[np.ndarray, ...]:
    """The int8 conv's params as float32 words: dense (weights, bias, comp, mult), depthwise
    (int32 weights ``[c/x][kh][kw][x]``, bias, mult)."""
    X = q.lanes
    lq = layer_quant(graph, la)
    w = lq.weight.astype(np.int32)
    oc, icg, kh, kw = w.shape
    ocp = -(-oc // X) * X
    bias = np.zeros(ocp, np.int32)
    mult = np.zeros(ocp, np.float32)
    mult[:oc] = lq.mult
    if conv_kind(la, X) == "depthwise":
        bias[:oc] = lq.bias
        wp = np.zeros((ocp, kh, kw), np.int32)
        wp[:oc] = w[:, 0]
        wq = wp
        wp = wp.reshape(ocp // X, X, kh, kw).transpose(0, 2, 3, 1)
        if not dw_dot(la, q):
            return words(wp), words(bias), mult
        # a row's taps as one dword per channel ([c/x][kh][x][4], zero past kw), and the
        # row's -zero_x * sum w
        wd = np.zeros((ocp, kh, 4), np.int8)
        wd[:, :, :kw] = wq
        wd = wd.reshape(ocp // X, X, kh, 4).transpose(0, 2, 1, 3)
        # SDOT's x - 128 needs 128 * sum w back (q.offset; 0 for VNNI's unsigned bytes)
        zd = ((q.offset - lq.x.zero) * wq.sum(axis=2)).astype(np.int32)
        zd = zd.reshape(ocp // X, X, kh).transpose(0, 2, 1)
        return words(wp), words(bias), mult, words(wd), words(zd)
    bias[:oc] = lq.bias
    lin = graph.shapes[la.inputs[0]][4]  # input channels per pixel block
    icp = -(-icg // lin) * lin
    wp = np.zeros((ocp, icp, kh, kw), np.int32)
    wp[:oc, :icg] = w
    comp = np.zeros((ocp, kh, kw), np.int64)
    comp[:oc] = (q.offset - lq.x.zero) * w.sum(axis=1)
    comp = comp.reshape(ocp // X, X, kh * kw).transpose(0, 2, 1).astype(np.int32)
    g = q.group
    wp = wp.reshape(ocp // X, X, icp // lin, lin // g, g, kh, kw).transpose(0, 2, 5, 6, 3, 1, 4)
    wdt = np.int8 if q.weight == "int8_t" else np.int16
    if q.name == "neondot":
        # a tile's oc blocks side by side a tap ([oc/(x T)][ic/L][kh][kw][T][x][group], LDP
        # pairs: q8_neon.dense_microkernel), and bias + every tap's comp (its bz)
        t = conv_oc_tile(q, la, graph.shapes[la.output])
        wp = wp.reshape(ocp // X // t, t, *wp.shape[1:]).transpose(0, 2, 3, 4, 5, 1, 6, 7)
        bz = (bias.reshape(-1, X) + comp.sum(axis=1)).astype(np.int32).ravel()
        return words(wp.astype(wdt)), words(bias), words(comp), mult, words(bz)
    return words(wp.astype(wdt)), words(bias), words(comp), mult


# ---- linear --------------------------------------------------------------------------------

def column_loops(ow: int, ow_lo: int, ow_hi: int, main_n: int, w_tile: int, rem: int, kw: int,
                 call, edge: list[str]) -> list[str]:
    """A conv row's columns: ``edge`` for each column left of ``ow_lo`` and from ``ow_hi``
    on, ``main_n`` whole tiles of ``w_tile`` columns and a ``rem``-column tile between,
    ``call(columns, taps)`` each (dense and block-sparse int8 convs)."""
    out = []
    if ow_lo:
        out += [f"for ({IX} ow = 0; ow < {ow_lo}; ++ow) {{", *edge, "}"]
    if main_n:
        out += [f"for ({IX} ow = {ow_lo}; ow < {ow_lo + main_n * w_tile}; ow += {w_tile})",
                "  " + call(w_tile, f"0, {kw}")]
    if rem:
        out += ["{", f"  const {IX} ow = {ow_lo + main_n * w_tile};",
                "  " + call(rem, f"0, {kw}"), "}"]
    if ow_hi < ow:
        out += [f"for ({IX} ow = {ow_hi}; ow < {ow}; ++ow) {{", *edge, "}"]
    return out


def linear_store(lq: LayerQuant, out: str, X: int, o: int, ob: int) -> list[str]:
    """A Linear's output block ``obk`` of batch row ``n``: the two chains summed, requantized
    (or dequantized: ``out`` float) and stored, the last block's lanes past ``o`` through a
    buffer (dense and block-sparse int8 Linear)."""
    acc = ["a0 += a1;"]
    if o % X == 0:
        return acc + requant(lq, "a0", f"*(const vf *)(m + obk * {X})",
                             f"y + n * {o} + obk * {X}", None)
    return acc + [f"{out} tmp[{X}] __attribute__((aligned(64)));",
                  *requant(lq, "a0", f"*(const vf *)(m + obk * {X})", "tmp", None),
                  f"const {IX} cnt = obk < {ob - 1} ? {X} : {o % X};",
                  f"for ({IX} l = 0; l < cnt; ++l) y[n * {o} + obk * {X} + l] = tmp[l];"]
