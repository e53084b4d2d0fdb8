"""int8 block-sparse kernels: pruned convs and Linears run in int8, ``codegen.quant``'s
semantics bit for bit (the dense int8 kernels' constants: ``layer_quant``, ``requant``).

Layout, and why. Activations stay what the dense int8 kernels read and write: blocked uint8
NCHW[x]c, x the int32 lanes of a vector (16 AVX-512 VNNI, 8 AVX2, 4 NEON SDOT). A block of x
output channels (one accumulator vector per output pixel) shares one index list, and an entry
is (4 consecutive input channels, one kernel tap): the dot products' 4-byte groups. The 4
channels of a pixel are 4 adjacent bytes of a blocked image, so an entry's input is one dword,
broadcast, and its weights one vector ``[x oc][4 ic]`` (int8 for ``vpdpbusd`` and SDOT, two
``[x][2]`` int16 pair vectors for AVX2's ``vpmaddwd``): the dense int8 conv's inner step with
its (channel, ky, kx) loops replaced by the list. Block-punched pruning (blocks of 16 filters x
4 channels sharing kernel positions, ``host/bench/sparse``'s mapping) fills such entries
exactly at every x (16, 8 and 4 divide 16), and block pruning's 16-row blocks of a 1x1 conv
keep whole entries where 4 adjacent channels go together. The float32 formats' other choice,
vectorising over output positions of plain planes (``csr.py``), would need the 4 channels of a
position adjacent (an NCHW4c plane layout no other int8 kernel reads, with a layout change
around every pruned layer) and still a weight broadcast per entry.

Padding: as in the dense int8 conv, taps that only see padding are skipped (no padded copy).
A block's entries are sorted by tap (``tptr``: each tap's range), so an interior column runs
the one contiguous range ``[tptr[ky0 * kw], tptr[ky1 * kw])`` of its valid rows and an edge
column one range per valid row and its column range. The kernel computes ``sum x_q * w_q``
over the entries it ran and adds ``(offset - zero_x) * sum w_q`` over the taps it ran (a table
per tap, ``comp``, summing the kept weights only: pruned weights quantize to 0), which is the
integer ``sum (x_q - zero_x) * w_q`` over the valid taps the reference computes.

The block-sparse Linear keeps, per block of x outputs, the input indices any of them keeps,
padded to a multiple of 4 (zero weights), and gathers each entry's 4 bytes into the dword the
dot product takes (a pruned Linear's kept inputs are rarely 4 adjacent ones); ``-zero_x * sum
w`` is folded into the bias, as in ``qlinear``.

Params, as float32 words: conv ``wq`` [entries][4x] (x oc by 4 ic, per the ISA), ``bias``
[ocp] int32, ``comp`` [oc/x][kh*kw][x] int32, ``mult`` [ocp], ``offs`` [entries] int32 (the
entry's byte offset from the tap's top-left input pixel: channel group and tap), ``tptr``
[oc/x][kh*kw+1] int32; Linear ``wq`` [entries][4x], ``bias``, ``mult``, ``idx`` [entries][4]
int32, ``gptr`` [o/x+1] int32.
"""

from __future__ import annotations

import numpy as np

from codegen.emit.cpu.prelude import AI
from codegen.emit.cpu.q8 import (
    IX,
    SCALAR,
    TYPES,
    bcast,
    column_loops,
    linear_store,
    vector_types,
    words,
)
from codegen.emit.cpu.q8_neon import NEON_HELPERS
from codegen.emit.cpu.q8_requant import (
    REQUANT_PARAMS,
    requant_args,
    requant_constants,
    requant_row,
)
from codegen.emit.cstyle import Ctx, Rendered
from codegen.isa import QuantIsa
from codegen.lr import Graph, Layer
from codegen.quant import LayerQuant, layer_quant

GROUP = 4  # input channels per entry: the dot products' byte groups


def _need(c: Ctx) -> None:
    h = c.lang.helpers
    h.setdefault("npas_q8_types", TYPES)
    h.setdefault("npas_q8_scalar", SCALAR)
    h.setdefault("npas_q8_vectors", vector_types(c.lang.qisa))
    if c.lang.qisa.name == "neondot":  # the NEON requantization's (requant_row)
        h.setdefault("npas_q8_neon", NEON_HELPERS)


def _tag(lq: LayerQuant, epilogue: tuple[str, ...]) -> str:
    return "".join(f"_{e}" for e in epilogue) + ("_dq" if lq.y is None else "")


def _entry_weights(blk: np.ndarray, q: QuantIsa) -> np.ndarray:
    """One entry's weights ``blk`` [x oc][4 ic] in the ISA's order: [4/group][x][group]."""
    x = blk.shape[0]
    g = q.group
    return blk.reshape(x, GROUP // g, g).transpose(1, 0, 2).reshape(-1)


def conv_entries(w: np.ndarray, x: int) -> np.ndarray:
    """bool [oc/x][ic/4][kh][kw]: the (channel group, tap) entries a block of x filters keeps."""
    oc, ic, kh, kw = w.shape
    ob, g = -(-oc // x), -(-ic // GROUP)
    nz = np.zeros((ob * x, g * GROUP, kh, kw), bool)
    nz[:oc, :ic] = w != 0
    return nz.reshape(ob, x, g, GROUP, kh, kw).any(axis=(1, 3))


def linear_entries(w: np.ndarray, x: int) -> list[np.ndarray]:
    """Per block of x outputs, the input indices any of them keeps."""
    o, _ = w.shape
    ob = -(-o // x)
    nz = np.zeros((ob * x, w.shape[1]), bool)
    nz[:o] = w != 0
    return [np.flatnonzero(nz[j * x:(j + 1) * x].any(0)) for j in range(ob)]


# ---- convolution ---------------------------------------------------------------------------

def pack_qspconv(graph: Graph, la: Layer, q: QuantIsa) -> tuple[np.ndarray, ...]:
    """The int8 block-sparse conv's params (see the module doc)."""
    X = q.lanes
    lq = layer_quant(graph, la)
    w = lq.weight.astype(np.int32)
    oc, ic, kh, kw = w.shape
    _, _, ih, iw, lin = graph.shapes[la.inputs[0]]
    dh, dw = la.attrs["dilation"]
    cs, rs = ih * iw * lin, iw * lin
    ob, g = -(-oc // X), -(-ic // GROUP)
    wp = np.zeros((ob * X, g * GROUP, kh, kw), np.int32)
    wp[:oc, :ic] = w
    blocks = wp.reshape(ob, X, g, GROUP, kh, kw)
    keep = conv_entries(w, X)
    vals, offs, tptr = [], [], []
    for b in range(ob):
        tp = [len(offs)]
        for ky in range(kh):
            for kx in range(kw):
                for cg in np.flatnonzero(keep[b, :, ky, kx]):
                    c0 = int(cg) * GROUP
                    offs.append((c0 // lin) * cs + c0 % lin + ky * dh * rs + kx * dw * lin)
                    vals.append(_entry_weights(blocks[b, :, cg, :, ky, kx], q))
                tp.append(len(offs))
        tptr.append(tp)
    wdt = np.int8 if q.weight == "int8_t" else np.int16
    wq = (np.concatenate(vals) if vals else np.zeros(GROUP * X, np.int32)).astype(wdt)
    bias = np.zeros(ob * X, np.int32)
    bias[:oc] = lq.bias
    mult = np.zeros(ob * X, np.float32)
    mult[:oc] = lq.mult
    comp = np.zeros((ob * X, kh * kw), np.int64)
    comp[:oc] = (q.offset - lq.x.zero) * w.sum(axis=1).reshape(oc, -1)
    comp = comp.reshape(ob, X, kh * kw).transpose(0, 2, 1).astype(np.int32)
    assert max(offs, default=0) < 2**31
    return (words(wq), words(bias), words(comp), mult, words(np.asarray(offs or [0], np.int32)),
            words(np.asarray(tptr, np.int32)))


def _conv_microkernel(q: QuantIsa, lq: LayerQuant, kh: int, kw: int, sh: int, sw: int,
                      dh: int, dw: int, lin: int, w_tile: int, epilogue: tuple[str, ...]
                      ) -> tuple[str, str]:
    """(name, C) of one block of x filters over ``w_tile`` output columns."""
    X, WT = q.lanes, q.weight
    s = f"s{sh}" if sh == sw else f"s{sh}x{sw}"
    d = "" if dh == dw == 1 else (f"d{dh}" if dh == dw else f"d{dh}x{dw}")
    name = (f"spconv2d_{kh}x{kw}{s}{d}_nchw{lin}c_bcsr{X}x{GROUP}_qs8__{q.name}_{w_tile}w"
            f"{_tag(lq, epilogue)}")
    out = "float" if lq.y is None else "uint8_t"
    skip = "add" in epilogue
    acc = [f"a{j}" for j in range(w_tile)]
    step = []  # one entry
    step += ["const uint8_t *xp = xb + offs[e];", f"const {WT} *wp = w + (int64_t)e * {GROUP * X};"]
    for g in range(GROUP // q.group):
        step.append(f"{{ const vi wv = *(const vqi *)(wp + {g * X * q.group});")
        rest = list(range(w_tile))
        if q.name == "neondot" and lin == GROUP:
            # SDOT by element: one 16-byte load of 4 neighbouring pixels (a dword each),
            # flipped once, feeds the columns it holds (as the dense conv's _by_lane_sdot);
            # only whole loads inside the tile's span, the rest broadcast
            whole = ((w_tile - 1) * sw + 1) // 4
            for v in range(whole):
                cols = [j for j in rest if 4 * v <= j * sw < 4 * v + 4]
                if not cols:
                    continue
                step.append(f"  {{ const vi xv = (vi)(*(const vqiu *)(xp + {16 * v})) ^ "
                            "((vi){} + (int32_t)0x80808080u);")
                step += [f"    {acc[j]} = npas_dotl{j * sw - 4 * v}({acc[j]}, wv, xv);"
                         for j in cols]
                step.append("  }")
            rest = [j for j in rest if j * sw >= 4 * whole]
        step += [f"  {acc[j]} = npas_dot({acc[j]}, {bcast(q, 'xp', j * sw * lin + g * q.group)}, "
                 "wv);" for j in rest]
        step.append("}")
    L = [f"{AI} void {name}(const uint8_t *restrict x, {IX} xo, const {WT} *restrict w, "
         f"const int32_t *restrict offs, const int32_t *restrict tp, const int32_t *restrict ws, "
         f"const int32_t *restrict b, const float *restrict m, {out} *restrict y, "
         f"{'const uint8_t *restrict s, ' if skip else ''}{IX} ky0, {IX} ky1, {IX} kx0, "
         f"{IX} kx1, {REQUANT_PARAMS}) {{",
         "  (void)qzx; (void)qzs; (void)qms; (void)qlo; (void)qhi; (void)qzy;",
         "  vi z = (vi){};",
         f"  for ({IX} ky = ky0; ky < ky1; ++ky)",
         f"    for ({IX} kx = kx0; kx < kx1; ++kx) z += *(const vqi *)(ws + (ky * {kw} + kx) * "
         f"{X});",
         f"  vi {', '.join(f'{a} = *(const vqi *)b + z' for a in acc)};",
         "  const uint8_t *xb = x + xo;",
         f"  if (kx0 == 0 && kx1 == {kw}) {{",
         f"    for (int32_t e = tp[ky0 * {kw}], e1 = tp[ky1 * {kw}]; e < e1; ++e) {{",
         *["      " + ln for ln in step], "    }",
         "  } else {",
         f"    for ({IX} ky = ky0; ky < ky1; ++ky)",
         f"      for (int32_t e = tp[ky * {kw} + kx0], e1 = tp[ky * {kw} + kx1]; e < e1; ++e) {{",
         *["        " + ln for ln in step], "      }",
         "  }"]
    # NEON: two pixels a requantization (FCVTNS, saturating narrows: q8_requant.requant_neon)
    L += ["  " + ln for ln in requant_row(q, lq, acc, "*(const vf *)m", lambda j: f"y + {j * X}",
                                          (lambda j: f"s + {j * X}") if skip else None)]
    L.append("}")
    return name, "\n".join(L) + "\n"


def _w_tile(q: QuantIsa, interior: int, sw: int) -> int:
    """Output columns per tile: the fewest calls, ties to the larger tile. SDOT at stride 1
    takes multiples of 4 up to 16 (a 16-byte load feeds 4 columns by element; a 14-wide tile
    left 2 columns to broadcasts: 29 instructions for 14 SDOTs an entry, 16 wide 29 for 16);
    the others up to the registers left beside the weight vector and the broadcast."""
    if q.name == "neondot" and sw == 1:
        if interior <= 16:
            return max(1, interior)
        return min((12, 16), key=lambda t: (-(-interior // t), -t))
    most = min(14, q.registers - (4 if q.offset else 3))
    if interior <= most:
        return max(1, interior)
    return min(range(most // 2, most + 1), key=lambda t: (-(-interior // t), -t))


def qspconv(c: Ctx) -> Rendered:
    """Step body of an int8 block-sparse conv on blocked uint8: items (n, oc block, output
    row), columns as the dense int8 conv's (edge columns one at a time with their tap range,
    interior tiles of ``w_tile``)."""
    _need(c)
    q: QuantIsa = c.lang.qisa
    X = q.lanes
    la = c.la
    lq = layer_quant(c.graph, la)
    n, cbk, ih, iw, lin = c.ins[0]
    _, ob, oh, ow, _ = c.out
    oc, _, kh, kw = la.params["weight"].shape
    sh, sw = la.attrs["stride"]
    dh, dw = la.attrs["dilation"]
    pt, _, pl, _ = la.attrs["padding"]
    ow_lo = min(ow, -(-pl // sw))
    ow_hi = max(ow_lo, min(ow, (iw - 1 + pl - (kw - 1) * dw) // sw + 1))
    interior = ow_hi - ow_lo
    w_tile = _w_tile(q, interior, sw)
    main_n, rem = divmod(interior, w_tile) if interior else (0, 0)
    names = {}
    for t in {1, w_tile if main_n else 1, rem or 1}:
        nm, src = _conv_microkernel(q, lq, kh, kw, sh, sw, dh, dw, lin, t, la.epilogue)
        c.lang.helpers.setdefault(nm, src)
        names[t] = nm
    skip = "add" in la.epilogue
    out = "float" if lq.y is None else "uint8_t"
    rs = iw * lin
    xn = cbk * ih * iw * lin
    ntap = kh * kw

    def call(t: int, kx: str) -> str:
        sarg = f"sr + ow * {X}, " if skip else ""
        return (f"{names[t]}(x, n * {xn} + ih0 * {rs} + (ow * {sw} - {pl}) * {lin}, w, offs, tpb, "
                f"wsp, bp, mp, yr + ow * {X}, {sarg}ky0, ky1, {kx}, {requant_args(lq)});")

    body = [f"const {IX} n = it / {ob * oh}, obk = (it / {oh}) % {ob}, oh = it % {oh};",
            f"const {IX} ih0 = oh * {sh} - {pt};",
            f"const {IX} ky0 = ih0 < 0 ? (-ih0 + {dh - 1}) / {dh} : 0;",
            f"const {IX} kyr = ({ih} - ih0 + {dh - 1}) / {dh};",
            f"const {IX} ky1 = kyr < {kh} ? kyr : {kh};",
            f"const int32_t *tpb = tptr + obk * {ntap + 1};",
            f"const int32_t *wsp = ws + obk * {ntap * X};",
            f"const int32_t *bp = b + obk * {X};",
            f"const float *mp = m + obk * {X};",
            f"{out} *yr = y + ((n * {ob} + obk) * {oh} + oh) * {ow * X};"]
    if skip:
        body.append("const uint8_t *sr = s + (yr - y);")
    edge = [f"  const {IX} iw0 = ow * {sw} - {pl};",
            f"  const {IX} kx0 = iw0 < 0 ? (-iw0 + {dw - 1}) / {dw} : 0;",
            f"  const {IX} kxr = ({iw} - iw0 + {dw - 1}) / {dw};",
            f"  const {IX} kx1 = kxr < {kw} ? kxr : {kw};",
            "  " + call(1, "kx0, kx1")]
    body += column_loops(ow, ow_lo, ow_hi, main_n, w_tile, rem, kw, call, edge)
    items = n * ob * oh
    pr = c.lang.param_ref
    WT = q.weight
    decl = [f"const {WT} *restrict w = (const {WT} *){pr(c, 0)};",
            f"const int32_t *restrict b = (const int32_t *){pr(c, 1)};",
            f"const int32_t *restrict ws = (const int32_t *){pr(c, 2)};",
            f"const float *restrict m = (const float *){pr(c, 3)};",
            f"const int32_t *restrict offs = (const int32_t *){pr(c, 4)};",
            f"const int32_t *restrict tptr = (const int32_t *){pr(c, 5)};"]
    L = [c.x(), *([c.x(1, "s")] if skip else []), c.y(), *decl,
         *c.lang.over_items(c, items, body)]
    nnz = int((la.params["weight"] != 0).sum())
    return L, items, 2 * n * nnz * oh * ow


# ---- linear --------------------------------------------------------------------------------

def pack_qsplinear(graph: Graph, la: Layer, q: QuantIsa) -> tuple[np.ndarray, ...]:
    """The int8 block-sparse Linear's params (see the module doc)."""
    X = q.lanes
    lq = layer_quant(graph, la)
    w = lq.weight.astype(np.int32)
    o, _ = w.shape
    ob = -(-o // X)
    wp = np.zeros((ob * X, w.shape[1]), np.int32)
    wp[:o] = w
    vals, idx, gptr = [], [], [0]
    for j, li in enumerate(linear_entries(w, X)):
        pad = -len(li) % GROUP
        li_p = np.concatenate([li, np.full(pad, li[-1] if len(li) else 0)]).astype(np.int64)
        blk = np.zeros((X, len(li_p)), np.int32)
        blk[:, :len(li)] = wp[j * X:(j + 1) * X][:, li]
        for e in range(len(li_p) // GROUP):
            vals.append(_entry_weights(blk[:, e * GROUP:(e + 1) * GROUP], q))
            idx.append(li_p[e * GROUP:(e + 1) * GROUP])
        gptr.append(len(idx))
    wdt = np.int8 if q.weight == "int8_t" else np.int16
    wq = (np.concatenate(vals) if vals else np.zeros(GROUP * X, np.int32)).astype(wdt)
    bias = np.zeros(ob * X, np.int32)
    bias[:o] = lq.bias.astype(np.int64) + (q.offset - lq.x.zero) * w.sum(axis=1)
    mult = np.zeros(ob * X, np.float32)
    mult[:o] = lq.mult
    ix = np.asarray(idx, np.int32).reshape(-1) if idx else np.zeros(GROUP, np.int32)
    return words(wq), words(bias), mult, words(ix), words(np.asarray(gptr, np.int32))


def _gather(q: QuantIsa, e: str) -> list[str]:
    """Expressions of entry ``e``'s input bytes as the dot product takes them (an int32 per
    weight vector): 4 bytes (SDOT: flipped to signed), or AVX2's two 16-bit pairs."""
    b = [f"(uint32_t)xr[ix[4 * ({e}) + {r}]]" for r in range(GROUP)]
    if q.group == 4:
        flip = " ^ 0x80808080u" if q.offset else ""
        return [f"(int32_t)(({b[0]} | ({b[1]} << 8) | ({b[2]} << 16) | ({b[3]} << 24)){flip})"]
    return [f"(int32_t)({b[0]} | ({b[1]} << 16))", f"(int32_t)({b[2]} | ({b[3]} << 16))"]


def qsplinear(c: Ctx) -> Rendered:
    """Block-sparse int8 Linear: one (output block, batch row) per item, two dot-product
    chains over the block's entries."""
    _need(c)
    q: QuantIsa = c.lang.qisa
    X, WT = q.lanes, q.weight
    lq = layer_quant(c.graph, c.la)
    n, k = c.ins[0]
    o = c.out[1]
    ob = -(-o // X)
    out = "float" if lq.y is None else "uint8_t"
    name = f"splinear_bcsr{X}x{GROUP}_qs8__{q.name}_2c" + _tag(lq, c.la.epilogue)
    nv = GROUP // q.group  # weight vectors per entry

    def dots(e: str, acc: tuple[str, str]) -> list[str]:
        ex = _gather(q, e)
        return [f"{acc[v % 2]} = npas_dot({acc[v % 2]}, (vi){{}} + {ex[v]}, "
                f"*(const vqi *)(w + (int64_t)({e}) * {GROUP * X} + {v * X * q.group}));"
                for v in range(nv)]

    body = [f"/* {name}: gathered 4-byte groups, two dot-product chains */",
            *requant_constants(lq),
            f"const {IX} obk = it / {n}, n = it % {n};",
            f"const uint8_t *xr = x + n * {k};",
            f"vi a0 = *(const vqi *)(b + obk * {X}), a1 = (vi){{}};",
            "int32_t e = gptr[obk];",
            "const int32_t e1 = gptr[obk + 1];"]
    if nv == 2:
        body += ["for (; e < e1; ++e) {", *["  " + ln for ln in dots("e", ("a0", "a1"))], "}"]
    else:
        body += ["for (; e + 2 <= e1; e += 2) {",
                 *["  " + ln for ln in dots("e", ("a0", "a0"))],
                 *["  " + ln for ln in dots("e + 1", ("a1", "a1"))], "}",
                 "if (e < e1) {", *["  " + ln for ln in dots("e", ("a0", "a0"))], "}"]
    body += linear_store(lq, out, X, o, ob)
    items = ob * n
    pr = c.lang.param_ref
    decl = [f"const {WT} *restrict w = (const {WT} *){pr(c, 0)};",
            f"const int32_t *restrict b = (const int32_t *){pr(c, 1)};",
            f"const float *restrict m = (const float *){pr(c, 2)};",
            f"const int32_t *restrict ix = (const int32_t *){pr(c, 3)};",
            f"const int32_t *restrict gptr = (const int32_t *){pr(c, 4)};"]
    nnz = int((c.la.params["weight"] != 0).sum())
    return [c.x(), c.y(), *decl, *c.lang.over_items(c, items, body)], items, 2 * n * nnz
