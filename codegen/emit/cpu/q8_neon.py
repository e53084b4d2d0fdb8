"""The arm64 (NEON + SDOT) parts of the int8 kernels that differ from the other ISAs: the
requantization, the by-lane input loads of a direct conv's tile, and the depthwise conv by
SDOT. ``q8.py`` calls them where ``QuantIsa.name`` is "neondot"; they compute the same
integers and floats as ``codegen.quant``, bit for bit.

- Requantization: ``float(acc) * m`` (and the residual's term) as on every ISA, then FCVTNS
  (round to nearest, ties to even: what ``(v + 1.5 * 2^23) - 1.5 * 2^23`` gives for the
  clamped ``v``), the zero point added in int32, the clamp in int32 at the rounded bounds
  (rounding is monotonic, so ``round(clamp(v)) == clamp(round(v))`` at ``round(lo)``,
  ``round(hi)``) where it is narrower than [0, 255], and SQXTUN + UQXTN, whose saturation is
  that clamp otherwise. Two neighbouring pixels' vectors narrow together into one 8-byte
  store. 6 instructions a vector where the float clamps and the magic-number rounding took 12.
- By-lane loads: each 16-byte load of 4 neighbouring input pixels that lies inside the tile's
  span feeds the columns it holds; the last ones overlap the previous (a 6-column tile at
  stride 1 loads pixels 0-3 and 2-5) instead of broadcasting each column left over.
- Depthwise: a row's taps (up to 4) as the 4 bytes of an SDOT lane: one load of 4 pixels, one
  TBL that transposes it to channel-major (lane c: the 4 pixels' bytes of channel c), one
  SDOT against the row's weights ``[c/4][kh][4 c][4 taps]``; 4 instructions a row and pixel
  where the per-tap multiply-add took 15 for a 3-tap row. Interior tiles only (the edges keep
  the per-tap kernel), and like the VNNI one it reads up to one pixel past a row's taps.
"""

from __future__ import annotations

from collections.abc import Sequence

from codegen.cost import best_tile
from codegen.emit.cpu.q8_requant import REQUANT_PARAMS, epilogue_tag, requant_row
from codegen.isa import QuantIsa
from codegen.lr import Layer
from codegen.quant import LayerQuant

NEON_HELPERS = """\
static inline vi npas_rndn(vf v) {
  vi r;
  __asm__("fcvtns %0.4s, %1.4s" : "=w"(r) : "w"(v));
  return r;
}
static inline int32_t npas_sat8(vi a) {
  vi r;
  __asm__("sqxtun %0.4h, %1.4s\\n\\tuqxtn %0.8b, %0.8h" : "=w"(r) : "w"(a));
  return r[0];
}
static inline long long npas_sat8x2(vi a, vi b) {
  vi r;
  __asm__("sqxtun %0.4h, %1.4s\\n\\tsqxtun2 %0.8h, %2.4s\\n\\tuqxtn %0.8b, %0.8h"
          : "=&w"(r) : "w"(a), "w"(b));
  return ((npas_v2di)r)[0];
}
static inline vi npas_smax(vi a, int32_t b) {
  const vi bv = (vi){} + b;
  __asm__("smax %0.4s, %0.4s, %1.4s" : "+w"(a) : "w"(bv));
  return a;
}
static inline vi npas_smin(vi a, int32_t b) {
  const vi bv = (vi){} + b;
  __asm__("smin %0.4s, %0.4s, %1.4s" : "+w"(a) : "w"(bv));
  return a;
}
static inline vi npas_tbl(vi t, vi idx) {
  vi r;
  __asm__("tbl %0.16b, {%1.16b}, %2.16b" : "=w"(r) : "w"(t), "w"(idx));
  return r;
}
"""


# lane c of the result: bytes c, 4 + c, 8 + c, 12 + c (channel c of 4 pixels)
TRANSPOSE4 = "(vi){0x0C080400, 0x0D090501, 0x0E0A0602, 0x0F0B0703}"


def dw_microkernel(name: str, kh: int, sw: int, w_tile: int, out: str, skip: bool,
                   params: str, tail: Sequence[str]) -> str:
    """An interior depthwise tile of ``w_tile`` pixels (4 channels) by row SDOTs: ``wd`` the
    rows' weights (16 bytes a row), ``zd`` the rows' ``(128 - zero_x) * sum w``; ``tail``:
    the lines that requantize the accumulators ``a0``, ``a1``, ... and store them."""
    acc = [f"a{j}" for j in range(w_tile)]
    L = [f"static inline __attribute__((always_inline)) void {name}(const uint8_t *restrict x, "
         f"int64_t xo, const int8_t *restrict wd, const int32_t *restrict zd, "
         f"const int32_t *restrict b, const float *restrict m, {out} *restrict y, "
         f"{'const uint8_t *restrict s, ' if skip else ''}int64_t rs, int64_t ky0, "
         f"int64_t ky1, {params}) {{",
         "  (void)qzx; (void)qzs; (void)qms; (void)qlo; (void)qhi; (void)qzy;",
         f"  const vi tr = {TRANSPOSE4}, flip = (vi){{}} + (int32_t)0x80808080u;",
         "  vi z = *(const vqi *)b;",
         "  for (int64_t ky = ky0; ky < ky1; ++ky) z += *(const vqi *)(zd + ky * 4);",
         f"  vi {', '.join(f'{a} = z' for a in acc)};",
         "  for (int64_t ky = ky0; ky < ky1; ++ky) {",
         "    const uint8_t *xp = x + (xo + ky * rs);",
         "    const vi wv = *(const vqi *)(wd + ky * 16);"]
    for j, a in enumerate(acc):
        L.append(f"    {a} = npas_dot({a}, npas_tbl((vi)(*(const vqiu *)(xp + {j * sw * 4})) ^ "
                 "flip, tr), wv);")
    L.append("  }")
    L += ["  " + ln for ln in tail]
    L.append("}")
    return "\n".join(L) + "\n"


# ---- dense conv tiles with the taps of each column known -----------------------------------

def column_taps(ow0: int, cols: int, sw: int, pl: int, kw: int, dw: int, iw: int
                ) -> tuple[tuple[int, int], ...]:
    """Per column ``ow0 + j`` of a tile, the taps ``[kx0, kx1)`` that see the input row (the
    others see padding)."""
    out = []
    for j in range(cols):
        iw0 = (ow0 + j) * sw - pl
        kx0 = (-iw0 + dw - 1) // dw if iw0 < 0 else 0
        kx1 = min(kw, (iw - iw0 + dw - 1) // dw)
        out.append((kx0, max(kx0, kx1)))
    return tuple(out)


def taps_tag(taps: Sequence[tuple[int, int]], kw: int) -> str:
    """The column taps in a kernel's name: "" when every column sees all ``kw`` taps, else
    ``_k`` and each column's first and last tap + 1 (``_k13_03_03``)."""
    if all(t == (0, kw) for t in taps):
        return ""
    return "_k" + "_".join(f"{a}{b}" for a, b in taps)


def _loads_for(pix: Sequence[tuple[int, int]]) -> tuple[list[tuple[int, list]], list[int]]:
    """16-byte loads (first pixel, [(column, lane)]) for columns at pixels ``pix`` (column,
    pixel), inside [first pixel, last pixel]; and the columns left (a span under 4)."""
    if not pix:
        return [], []
    lo, hi = pix[0][1], pix[-1][1]
    if hi - lo + 1 < 4:
        return [], [j for j, _ in pix]
    left = list(pix)
    loads = []
    while left:
        start = min(left[0][1], hi - 3)
        cols = [(j, p - start) for j, p in left if start <= p < start + 4]
        loads.append((start, cols))
        done = {j for j, _ in cols}
        left = [(j, p) for j, p in left if j not in done]
    return loads, []


def _row_loads(pix: Sequence[int]) -> list[int] | None:
    """First pixels of 16-byte loads covering every pixel in ``pix`` (sorted) and staying in
    [first, last]: 0, 4, ... from the first, the last one ending at the last pixel; None
    where they span under 4 pixels."""
    lo, hi = pix[0], pix[-1]
    if hi - lo + 1 < 4:
        return None
    starts = list(range(lo, hi - 2, 4))
    if starts[-1] + 3 < hi:
        starts.append(hi - 3)
    return starts


def row_columns(most: int, oc_tile: int, sw: int, kw: int, dw: int) -> int:
    """The most columns (up to ``most``) of a tile whose row of input pixels (its loads:
    ``_row_loads``) fits in the registers beside the accumulators, the weights and the sign
    flip: a 3x3 stride-2 conv's 6 columns need 4 loads (33 registers, per tap then: 3 loads a
    tap), 5 need 3 (28); ``most`` where none does."""
    for w in range(most, 0, -1):
        span = (w - 1) * sw + (kw - 1) * dw + 1
        loads = _row_loads(list(range(span)))
        if loads is not None and oc_tile * (w + 1) + len(loads) + 1 <= 32:
            return w
    return most


def dense_microkernel(name: str, wtype: str, kh: int, kw: int, sw: int, dh: int, dw: int,
                      lin: int, oc_tile: int, taps: Sequence[tuple[int, int]], out: str,
                      skip: bool, params: str, tail: Sequence[str]) -> str:
    """A dense int8 conv tile (``oc_tile`` x 4 channels, ``len(taps)`` columns) whose columns'
    taps are known (``taps``): the taps unrolled, each feeding only the columns it reaches,
    by-lane SDOTs from loads that stay inside those columns' pixels. The rows' range is a
    run-time one (``ky0``, ``ky1``); ``bz``: bias + every tap's ``(128 - zero_x) * sum w``,
    the accumulators' start when a column sees every tap. ``tail``: the requantization of
    ``a{o}_{j}``."""
    X = 4
    w_tile = len(taps)
    acc = [[f"a{o}_{j}" for j in range(w_tile)] for o in range(oc_tile)]
    kinds = list(dict.fromkeys(taps))
    full = (0, kw)
    L = [f"static inline __attribute__((always_inline)) void {name}(const uint8_t *restrict x, "
         f"int64_t xo, const {wtype} *restrict w, int64_t wb, const int32_t *restrict b, "
         f"const int32_t *restrict bz, const int32_t *restrict ws, const float *restrict m, "
         f"{out} *restrict y, {'const uint8_t *restrict s, ' if skip else ''}int64_t ys, "
         f"int64_t cb, int64_t cs, int64_t rs, int64_t ky0, int64_t ky1, {params}) {{",
         "  (void)qzx; (void)qzs; (void)qms; (void)qlo; (void)qhi; (void)qzy; (void)wb;"]
    for k, (k0, k1) in enumerate(kinds):
        zs = [f"z{o}_{k}" for o in range(oc_tile)]
        loop = ["  for (int64_t ky = ky0; ky < ky1; ++ky) {"]
        loop += [f"    {zs[o]} += *(const vqi *)(ws + {o * kh * kw * X} + (ky * {kw} + {kx}) "
                 f"* {X});" for o in range(oc_tile) for kx in range(k0, k1)]
        loop.append("  }")
        L += [f"  vi {', '.join(f'{z} = *(const vqi *)(b + {o * X})' for o, z in enumerate(zs))};"]
        if (k0, k1) == full:
            L += [f"  if (ky0 == 0 && ky1 == {kh}) {{",
                  *[f"    {z} = *(const vqi *)(bz + {o * X});" for o, z in enumerate(zs)],
                  "  } else {", *["  " + ln for ln in loop], "  }"]
        else:
            L += loop
    for o in range(oc_tile):
        L.append("  vi " + ", ".join(f"{acc[o][j]} = z{o}_{kinds.index(taps[j])}"
                                     for j in range(w_tile)) + ";")
    L += ["  for (int64_t c = 0; c < cb; ++c)",
          "    for (int64_t ky = ky0; ky < ky1; ++ky) {",
          f"      const uint8_t *xr = x + (xo + c * cs + ky * {dh} * rs);",
          "      const vi flip = (vi){} + (int32_t)0x80808080u;"]
    reach = [(j, kx) for kx in range(kw) for j in range(w_tile) if taps[j][0] <= kx < taps[j][1]]
    pix = sorted({j * sw + kx * dw for j, kx in reach})
    row = _row_loads(pix) if pix else None
    if row is not None and oc_tile * (w_tile + 1) + len(row) + 1 > 32:
        row = None  # the row's loads would not stay in registers: per tap
    if row is not None:  # the row's pixels loaded once, each (column, tap) a lane of one
        for i, st in enumerate(row):
            L.append(f"      const vi xv{i} = (vi)(*(const vqiu *)(xr + {st * lin})) ^ flip;")
    for kx in range(kw):
        cols = [j for j in range(w_tile) if taps[j][0] <= kx < taps[j][1]]
        if not cols:
            continue
        L += ["      {",
              f"        const {wtype} *wp = w + ((c * {kh} + ky) * {kw} + {kx}) * "
              f"{lin * X * oc_tile};"]
        # the tile's weight vectors side by side: LDP pairs (one LD1 of 4 needs 4 consecutive
        # registers, and 24 accumulators leave none: it spilled)
        L += [f"        const vi w{o} = *(const vqi *)(wp + {16 * o});" for o in range(oc_tile)]
        if row is not None:
            for j in cols:
                p = j * sw + kx * dw
                i = max(i for i, st in enumerate(row) if st <= p)
                L += [f"        {acc[o][j]} = npas_dotl{p - row[i]}({acc[o][j]}, w{o}, xv{i});"
                      for o in range(oc_tile)]
            L.append("      }")
            continue
        L.append(f"        const uint8_t *xp = xr + {kx * dw * lin};")
        loads, rest = _loads_for([(j, j * sw) for j in cols])
        for start, lanes in loads:
            L.append(f"        {{ const vi xv = (vi)(*(const vqiu *)(xp + {start * lin})) ^ flip;")
            L += [f"          {acc[o][j]} = npas_dotl{lane}({acc[o][j]}, w{o}, xv);"
                  for j, lane in lanes for o in range(oc_tile)]
            L.append("        }")
        for j in rest:
            L.append(f"        {{ const vi xb = ((vi){{}} + (int32_t)(*(const npas_i32u *)"
                     f"(xp + {j * sw * lin}) ^ 0x80808080u));")
            L += [f"          {acc[o][j]} = npas_dot({acc[o][j]}, xb, w{o});"
                  for o in range(oc_tile)]
            L.append("        }")
        L.append("      }")
    L.append("    }")
    L += ["  " + ln for ln in tail]
    L.append("}")
    return "\n".join(L) + "\n"


def columns(q: QuantIsa, lq: LayerQuant, la: Layer, oc_tile: int, most: int, ow: int,
                  ow_lo: int, ow_hi: int, iw: int, lin: int) -> list:
    """SDOT dense convs: a row's columns as tiles whose columns' taps are known
    (``dense_microkernel``): the first ``most`` columns and the last (the padding's
    edges among them), the interior between (or, where the edges do not fit in those two
    tiles, each edge column alone); each entry ``((first, end, step), (name, C))``."""
    oc, _, kh, kw = la.params["weight"].shape
    sw, dw = la.attrs["stride"][1], la.attrs["dilation"][1]
    pl = la.attrs["padding"][2]
    left = min(ow, most)
    right = max(left, ow - most)
    if left < min(ow_lo, ow) or right > max(ow_hi, left):
        return None
    wtype = q.weight
    out = "float" if lq.y is None else "uint8_t"
    skip = "add" in la.epilogue
    base = (f"conv2d_{kh}x{kw}s{la.attrs['stride'][0]}" + ("" if sw == la.attrs["stride"][0]
            else f"x{sw}") + ("" if la.attrs["dilation"] == (1, 1) else f"d{dw}")
            + f"_nchw{lin}c_qs8__{q.name}_lanes_{oc_tile}x")

    def kernel(first: int, cols: int):
        taps = column_taps(first, cols, sw, pl, kw, dw, iw)
        name = f"{base}{cols}w{taps_tag(taps, kw)}{epilogue_tag(lq, la.epilogue)}"
        accs = [[f"a{o}_{j}" for j in range(cols)] for o in range(oc_tile)]
        tail = [ln for o in range(oc_tile) for ln in requant_row(
            q, lq, accs[o], f"*(const vf *)(m + {o * q.lanes})",
            lambda j, o=o: f"y + {o} * ys + {j * q.lanes}",
            (lambda j, o=o: f"s + {o} * ys + {j * q.lanes}") if skip else None)]
        return name, dense_microkernel(
            name, wtype, kh, kw, sw, la.attrs["dilation"][0], dw, lin, oc_tile, taps, out,
            skip, REQUANT_PARAMS, tail)

    def tiles(a: int, b: int) -> list:  # interior columns [a, b)
        if b <= a:
            return []
        t = best_tile(b - a, most)
        n_t, r = divmod(b - a, t)
        return ([((a, a + n_t * t, t), kernel(a, t))] if n_t else []) + \
            ([((a + n_t * t, b, r), kernel(a + n_t * t, r))] if r else [])

    if left >= min(ow_lo, ow) and right <= max(ow_hi, left):
        # the first and last tiles hold the edges
        return [((0, left, left), kernel(0, left)), *tiles(left, right),
                *([((right, ow, ow - right), kernel(right, ow - right))] if right < ow else [])]
    # more edge columns than a tile: one by one
    return [*[((j, j + 1, 1), kernel(j, 1)) for j in range(ow_lo)], *tiles(ow_lo, ow_hi),
            *[((j, j + 1, 1), kernel(j, 1)) for j in range(ow_hi, ow)]]
