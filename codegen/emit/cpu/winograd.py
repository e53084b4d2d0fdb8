"""Winograd F(m, 3) for 3x3 stride-1 convs on blocked input: the exact transform matrices,
the input/GEMM/output micro-kernels and the step that runs them per tile block (which
variants exist, and which a layer gets, is ``codegen.cost``'s ``WINOGRAD``/``conv_algo``)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from fractions import Fraction

from codegen.emit.cpu.prelude import (
    AI,
    by_lane_fma,
    epi,
    half,
    lane_fma,
    narrow,
    ptag,
    skip_param,
    widen,
)
from codegen.emit.cstyle import Ctx
from codegen.isa import VectorIsa

# Interpolation points (infinity is the last one) and the input transform B^T they give
# (solved exactly once; the same matrices as ncnn/NNPACK up to row scaling).
_WINO_POINTS = {2: ("0", "1", "-1"), 4: ("0", "1", "-1", "2", "-2"),
                6: ("0", "1", "-1", "2", "-2", "1/2", "-1/2")}


_WINO_BT = {
    2: ("-1 0 1 0", "0 1 1 0", "0 -1 1 0", "0 -1 0 1"),
    4: ("4 0 -5 0 1 0", "0 -4 -4 1 1 0", "0 4 -4 -1 1 0", "0 -2 -1 2 1 0", "0 2 -1 -2 1 0",
        "0 4 0 -5 0 1"),
    6: ("-1 0 21/4 0 -21/4 0 1 0", "0 1 1 -17/4 -17/4 1 1 0", "0 -1 1 17/4 -17/4 -1 1 0",
        "0 1/2 1/4 -5/2 -5/4 2 1 0", "0 -1/2 1/4 5/2 -5/4 -2 1 0", "0 2 4 -5/2 -5 1/2 1 0",
        "0 -2 4 5/2 -5 -1/2 1 0", "0 -1 0 21/4 0 -21/4 0 1"),
}


# Scratch (per thread) the transform buffers of one work item may take: V and M of a tile
# block stay in L2 (1 MiB per core on the AVX-512 host; phones' big cores have 512 KiB-1 MiB).
WINOGRAD_SCRATCH_BUDGET = 384 << 10


@functools.cache
def winograd_matrices(m: int) -> tuple[tuple[tuple[Fraction, ...], ...], ...]:
    """(A^T [m][a], G [a][3], B^T [a][a]) of F(m, 3), a = m + 2, exact: y = A^T[(G g)(B^T d)]
    is the correlation of d (a samples) with g (3 taps)."""
    pts = [Fraction(p) for p in _WINO_POINTS[m]]
    a = m + 2
    at = [[p ** i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    g = []
    for p in pts:
        f = Fraction(1)
        for q in pts:
            if q != p:
                f *= p - q
        g.append([p ** k / f for k in range(3)])
    g.append([Fraction(0), Fraction(0), Fraction(1)])
    bt = [[Fraction(v) for v in row.split()] for row in _WINO_BT[m]]
    assert len(at[0]) == len(g) == len(bt) == a
    return tuple(map(tuple, at)), tuple(map(tuple, g)), tuple(map(tuple, bt))


def _frac_c(v: Fraction) -> str:
    return f"{float(v)!r}f" if v.denominator != 1 else f"{v.numerator}.0f"


def _lincomb(coeffs: Sequence[Fraction], terms: Sequence[str], vt: str = "vf") -> str:
    """C for sum(coeffs[k] * terms[k]) with zeros dropped and +-1 as add/sub."""
    out = ""
    for cf, t in zip(coeffs, terms, strict=True):
        if cf == 0:
            continue
        mag = abs(cf)
        term = t if mag == 1 else f"{t} * {_frac_c(mag)}"
        if not out:
            out = term if cf > 0 else (f"-{t}" if mag == 1 else f"{t} * {_frac_c(cf)}")
        else:
            out += f" {'+' if cf > 0 else '-'} {term}"
    return out or f"({vt}){{}}"


# F(4,3)'s transforms at fp16 as ncnn writes them: shared sums and differences, 12 operations
# for B^T's 6 rows (22 as one linear combination a row) and 10 for A^T's 4 (17). Each is a
# function of the 6 terms: (temporaries as (name, C), the rows' C). fp32 keeps its text.
def _f43_bt(d: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    return ([("p", f"{d[4]} - {d[2]} * 4.0f"), ("q", f"{d[3]} - {d[1]} * 4.0f"),
             ("s", f"{d[4]} - {d[2]}"), ("u", f"{d[3]} - {d[1]}")],
            [f"({d[4]} - {d[2]} * 5.0f) + {d[0]} * 4.0f", "p + q", "p - q", "s + u * 2.0f",
             "s - u * 2.0f", f"({d[5]} - {d[3]} * 5.0f) + {d[1]} * 4.0f"])


def _f43_at(t: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
    return ([("s1", f"{t[1]} + {t[2]}"), ("d1", f"{t[1]} - {t[2]}"),
             ("s2", f"{t[3]} + {t[4]}"), ("d2", f"{t[3]} - {t[4]}")],
            [f"{t[0]} + s1 + s2", "d1 + d2 * 2.0f", "s1 + s2 * 4.0f",
             f"(d1 + {t[5]}) + d2 * 8.0f"])


_F16_TRANSFORMS = {("bt", 4): _f43_bt, ("at", 4): _f43_at}


def _transform(isa: VectorIsa, kind: str, m: int, terms: Sequence[str],
               vt: str) -> tuple[list[str], list[str]]:
    """(lines of temporaries, each row's C) of B^T ("bt") or A^T ("at") applied to ``terms``:
    the fp16 programs above where there is one, else a linear combination a row."""
    prog = _F16_TRANSFORMS.get((kind, m)) if half(isa) else None
    if prog is not None:
        temps, rows = prog(terms)
        return [f"const {vt} {n} = {e};" for n, e in temps], rows
    at, _, bt = winograd_matrices(m)
    return [], [_lincomb(row, terms, vt) for row in (bt if kind == "bt" else at)]


# fp16 Winograd (NEON FP16) is F(4,3) and F(2,3) (``codegen.cost.FP16_WINOGRAD`` says why
# and how accurate), all of it in fp16: the per-point GEMM accumulates over input channels
# (ic terms, where a direct conv sums ic * 9). Transforms in float32 (``vw``, True below)
# were measured with F(2,3) only (resnet18 at 224, qemu cortex-a76, 1 thread): 197.7 M
# instructions, max error / max |output| 1.3e-3; in fp16 188.7 M, 1.6e-3: F(2,3)'s transforms
# are sums and differences, and F(4,3)'s error is its fp16 GEMM's, amplified by A^T, which
# wider transforms do not change.
FP16_WIDE_TRANSFORMS = False


def _transform_type(isa: VectorIsa) -> tuple[str, bool]:
    """(the vector type the transforms compute in, whether it is wider than ``vf``)."""
    wide = half(isa) and FP16_WIDE_TRANSFORMS
    return ("vw" if wide else "vf"), wide


def winograd_input_kernel(isa: VectorIsa, m: int) -> tuple[str, str]:
    """B^T d B of one tile and one input channel block: d is the a x a patch at x + xo (row
    stride rs), zero outside rows [r0, r1) x columns [c0, c1); point p goes to v + p * vs."""
    X, a, E = isa.floats, m + 2, isa.elem
    vt, wide = _transform_type(isa)
    name = f"winograd{m}_input_nchw{X}c{ptag(isa)}__{isa.name}"
    i = "int64_t"
    load = f"*(const vf *)(x + (xo + r * rs + c * {X}))"
    L = [f"/* {name}: F({m},3) input transform of one {a}x{a} tile, {X} channels"
         f"{', in float32' if wide else ''}. */",
         f"{AI} void {name}(const {E} *restrict x, {i} xo, {i} rs, {i} r0, {i} r1, {i} c0, "
         f"{i} c1, {E} *restrict v, {i} vs) {{",
         f"  {vt} d[{a}][{a}], t[{a}][{a}];",
         f"  for (int r = 0; r < {a}; ++r)",
         f"    for (int c = 0; c < {a}; ++c)",
         "      d[r][c] = (r >= r0 && r < r1 && c >= c0 && c < c1) ? "
         f"{widen(load) if wide else load} : ({vt}){{}};",
         f"  for (int c = 0; c < {a}; ++c) {{"]
    temps, rows = _transform(isa, "bt", m, [f"d[{k}][c]" for k in range(a)], vt)
    L += [f"    {ln}" for ln in temps] + [f"    t[{r}][c] = {e};" for r, e in enumerate(rows)]
    L += ["  }", f"  for (int r = 0; r < {a}; ++r) {{"]
    temps, rows = _transform(isa, "bt", m, [f"t[r][{k}]" for k in range(a)], vt)
    L += [f"    {ln}" for ln in temps]
    for c, e in enumerate(rows):
        L.append(f"    *(vf *)(v + (r * {a} + {c}) * vs) = {narrow(e) if wide else e};")
    L += ["  }", "}"]
    return name, "\n".join(L) + "\n"


def winograd_output_kernel(isa: VectorIsa, m: int, epilogue: tuple[str, ...]) -> tuple[str, str]:
    """A^T M A + bias, then the epilogue, of one tile and one output channel block: point p of
    M at mm + p * ms; stores rows [0, rows) x columns [0, cols) of the m x m tile at y (row
    stride rs)."""
    X, a, E = isa.floats, m + 2, isa.elem
    vt, wide = _transform_type(isa)
    name = (f"winograd{m}_output_nchw{X}c{ptag(isa)}__{isa.name}"
            + "".join(f"_{e}" for e in epilogue))
    i = "int64_t"

    def mm_at(k: int) -> str:
        v = f"*(const vf *)(mm + ({k} * {a} + c) * ms)"
        return widen(v) if wide else v

    L = [f"/* {name}: F({m},3) output transform of one tile, {X} channels, + bias"
         f"{''.join(' + ' + e for e in epilogue)}{', in float32' if wide else ''}. */",
         f"{AI} void {name}(const {E} *restrict mm, {i} ms, const {E} *restrict b, "
         f"{E} *restrict y, {skip_param(epilogue, E)}{i} rs, {i} rows, {i} cols) {{",
         f"  const {vt} bv = {widen('*(const vf *)b') if wide else '*(const vf *)b'};",
         f"  {vt} t[{m}][{a}];",
         f"  for (int c = 0; c < {a}; ++c) {{"]
    temps, rows = _transform(isa, "at", m, [mm_at(k) for k in range(a)], vt)
    L += [f"    {ln}" for ln in temps] + [f"    t[{r}][c] = {e};" for r, e in enumerate(rows)]
    L += ["  }", f"  for (int r = 0; r < {m}; ++r) {{"]
    temps, rows = _transform(isa, "at", m, [f"t[r][{k}]" for k in range(a)], vt)
    L += [f"    {ln}" for ln in temps]
    for c, e in enumerate(rows):
        # the residual is only read inside the image (a tile may overhang it)
        o = f"bv + ({e})"
        L += [f"    if (r < rows && {c} < cols) {{",
              f"      vf o = {narrow(o) if wide else o};",
              *[f"      {ln}" for ln in epi(epilogue, "o", f"s + r * rs + {c * X}")],
              f"      *(vf *)(y + r * rs + {c * X}) = o; }}"]
    L += ["  }", "}"]
    return name, "\n".join(L) + "\n"


def winograd_gemm_kernel(isa: VectorIsa, oc_tile: int, t_tile: int) -> tuple[str, str]:
    """One transform point's batched GEMM, an ``oc_tile`` (oc blocks) x ``t_tile`` (tiles)
    accumulator tile: M[o][t] = sum over input channels of V[t][ic] (broadcast) * U[ic][o]
    (vector over x output channels). v: V at (first channel block, first tile), cs floats
    between channel blocks, X floats between tiles; w: U at (first oc block, ic 0), wb floats
    between oc blocks; mo: M at (first oc block, first tile), ms floats between oc blocks."""
    X = isa.floats
    if half(isa):
        return _gemm_kernel_f16(isa, oc_tile, t_tile)
    name = f"winograd_gemm_nchw{X}c{ptag(isa)}__{isa.name}_{oc_tile}x{t_tile}t"
    return name, _gemm_c(isa, name, oc_tile, t_tile)


def _gemm_c(isa: VectorIsa, name: str, oc_tile: int, t_tile: int) -> str:
    X, E = isa.floats, isa.elem
    i = "int64_t"
    acc = [[f"a{o}_{j}" for j in range(t_tile)] for o in range(oc_tile)]
    L = [f"/* {name}: {oc_tile} oc block(s) x {t_tile} tile(s) of one Winograd point. */",
         f"{AI} void {name}(const {E} *restrict v, const {E} *restrict w, {i} wb, "
         f"{E} *restrict mo, {i} ms, {i} cb, {i} cs) {{"]
    for o in range(oc_tile):
        L.append(f"  vf {', '.join(f'{a_} = (vf){{}}' for a_ in acc[o])};")
    L += [f"  for ({i} c = 0; c < cb; ++c) {{",
          f"    const {E} *vp = v + c * cs;",
          f"    const {E} *wp = w + c * {X * X};"]
    if isa.by_lane:
        L += by_lane_fma(" " * 4, X, acc, lambda j: f"vp + {j * X}")
    else:
        L.append(f"    for (int l = 0; l < {X}; ++l) {{")
        L += lane_fma(" " * 6, X, acc, lambda j: f"vp[{j * X} + l]", E)
        L.append("    }")
    L.append("  }")
    for o in range(oc_tile):
        for j in range(t_tile):
            L.append(f"  *(vf *)(mo + {o} * ms + {j * X}) = {acc[o][j]};")
    L.append("}")
    return "\n".join(L) + "\n"


# The fp16 per-point GEMM's channel block is one asm statement: clang hoisted every input load
# of the block above its FMAs (16 accumulators + 8 weights + 16 inputs: spills, 12.5 M
# loads/stores where 6.9 M were), and it pairs vector loads at best (LDP), where LD1 loads four
# registers an instruction. The by-lane operand of an FP16 FMLA must be v0-v15: the inputs go
# to v0-v3, the weights to v16 up, the accumulators wherever the compiler puts them.
_F16_X = ("v0", "v1", "v2", "v3")


def _f16_asm_fits(oc_tile: int, t_tile: int) -> bool:
    return oc_tile * (8 + t_tile) + 4 <= 32


def _ld1(regs: Sequence[str], ptr: str) -> str:
    return f"ld1 {{{', '.join(r + '.8h' for r in regs)}}}, [%[{ptr}]], #{16 * len(regs)}"


def _gemm_kernel_f16(isa: VectorIsa, oc_tile: int, t_tile: int) -> tuple[str, str]:
    """``winograd_gemm_kernel`` at NEON FP16 (same contract): per channel block, two LD1s of
    an oc block's eight lane weights and one LD1 per four tiles' inputs, then the FMLAs by
    lane (1 x 16: 6 loads for 128 FMAs, where paired loads took 12). A tile too big for the
    registers (oc tiles over 2) is the C kernel."""
    X, E = isa.floats, isa.elem
    name = f"winograd_gemm_nchw{X}c{ptag(isa)}__{isa.name}_{oc_tile}x{t_tile}t"
    if not _f16_asm_fits(oc_tile, t_tile) or X != 8:
        return name, _gemm_c(isa, name, oc_tile, t_tile)
    i = "int64_t"
    acc = [[f"a{o}_{j}" for j in range(t_tile)] for o in range(oc_tile)]
    wreg = [[f"v{16 + 8 * o + lane}" for lane in range(X)] for o in range(oc_tile)]
    asm = []
    for o in range(oc_tile):
        asm += [_ld1(wreg[o][:4], f"w{o}"), _ld1(wreg[o][4:], f"w{o}")]
    for g in range(0, t_tile, 4):
        xs = _F16_X[:min(4, t_tile - g)]
        asm.append(_ld1(xs, "x"))
        asm += [f"fmla %[{acc[o][g + k]}].8h, {wreg[o][lane]}.8h, {xr}.h[{lane}]"
                for lane in range(X) for k, xr in enumerate(xs) for o in range(oc_tile)]
    outs = [f'[{a}] "+w"({a})' for row in acc for a in row]
    outs += [f'[w{o}] "+r"(w{o})' for o in range(oc_tile)] + ['[x] "+r"(x)']
    clob = [*_F16_X[:min(4, t_tile)], *(r for row in wreg for r in row), "memory"]
    L = [f"/* {name}: {oc_tile} oc block(s) x {t_tile} tile(s) of one Winograd point, "
         "loads by four (LD1). */",
         f"{AI} void {name}(const {E} *restrict v, const {E} *restrict w, {i} wb, "
         f"{E} *restrict mo, {i} ms, {i} cb, {i} cs) {{"]
    for o in range(oc_tile):
        L.append(f"  vf {', '.join(f'{a_} = (vf){{}}' for a_ in acc[o])};")
    L += [f"  const {E} *{', *'.join(f'w{o} = w + {o} * wb' for o in range(oc_tile))};",
          "  (void)wb;",
          f"  for ({i} c = 0; c < cb; ++c) {{",
          f"    const {E} *x = v + c * cs;",
          *[("    __asm__(" if k == 0 else " " * 12) + f'"{a}\\n\\t"'
            for k, a in enumerate(asm)],
          f"            : {', '.join(outs)}",
          f"            : : {', '.join(f'{chr(34)}{r}{chr(34)}' for r in clob)});",
          "  }"]
    for o in range(oc_tile):
        for j in range(t_tile):
            L.append(f"  *(vf *)(mo + {o} * ms + {j * X}) = {acc[o][j]};")
    L.append("}")
    return name, "\n".join(L) + "\n"


# Load-time kernels compute in double without fused multiply-adds, as
# ``codegen.emit.cpu.pack.winograd_transform`` does, so the weights they write are the ones a
# compile-time transform wrote (gcc contracts across statements unless told otherwise).
PREPARE_PRELUDE = """\
#if defined(__clang__)
#define NPAS_PREPARE_ATTR
#define NPAS_PREPARE_BEGIN _Pragma("clang fp contract(off)")
#else
#define NPAS_PREPARE_ATTR __attribute__((optimize("fp-contract=off")))
#define NPAS_PREPARE_BEGIN
#endif
"""


def winograd_prepare_helper(isa: VectorIsa, m: int) -> tuple[str, str]:
    """(name, C) of the F(m, 3) weight transform every layer's load-time kernel calls: raw
    float32 weights ``g`` ``[oc][ic][3][3]`` into the packed ``u`` ``[a*a][ocb][icp][x]`` of
    ``pack_winograd`` for oc blocks [b0, b1), pad lanes +0 (as the compile-time packing wrote
    them), x lanes at a time (contiguous stores: the compiler vectorises). One function per
    m with the shapes as arguments, not one per layer: clang took 20 s more on ResNet-18's
    arm64 kernels with a specialised copy per layer."""
    X, E, a = isa.floats, isa.elem, m + 2
    _, g, _ = winograd_matrices(m)
    gs = ", ".join("{" + ", ".join(f"{float(v)!r}" for v in row) + "}" for row in g)
    i = "int64_t"
    name = f"npas_winograd{m}_prepare{ptag(isa)}__{isa.name}"
    return name, "\n".join([
        f"/* {name}: U = G g G^T of F({m},3) in double, without contraction. */",
        f"NPAS_PREPARE_ATTR __attribute__((noinline)) static void {name}(const float *restrict g, "
        f"{E} *restrict u, {i} b0, {i} b1, {i} oc, {i} ic, {i} ocb, {i} icp) {{",
        "  NPAS_PREPARE_BEGIN",
        f"  static const double G[{a}][3] = {{{gs}}};",
        f"  const {i} ps = ocb * icp * {X};  /* elements between transform points */",
        f"  for ({i} ob = b0; ob < b1; ++ob) {{",
        f"    const int lanes = oc - ob * {X} < {X} ? (int)(oc - ob * {X}) : {X};",
        f"    for ({i} i = 0; i < icp; ++i) {{",
        f"      {E} *d = u + (ob * icp + i) * {X};",
        "      const int n = i < ic ? lanes : 0;",
        f"      double w[9][{X}], t[{a}][3][{X}];",
        "      for (int l = 0; l < n; ++l)",
        "        for (int k = 0; k < 9; ++k)",
        f"          w[k][l] = (double)g[((ob * {X} + l) * ic + i) * 9 + k];",
        f"      for (int r = 0; r < {a}; ++r)",
        "        for (int c = 0; c < 3; ++c)",
        "          for (int l = 0; l < n; ++l)",
        "            t[r][c][l] = (G[r][0] * w[c][l] + G[r][1] * w[3 + c][l]) + "
        "G[r][2] * w[6 + c][l];",
        f"      for (int r = 0; r < {a}; ++r)",
        f"        for (int c = 0; c < {a}; ++c) {{",
        f"          {E} *dp = d + (r * {a} + c) * ps;",
        "          for (int l = 0; l < n; ++l)",
        f"            dp[l] = ({E})(float)((t[r][0][l] * G[c][0] + t[r][1][l] * G[c][1]) + "
        "t[r][2][l] * G[c][2]);",
        f"          for (int l = n; l < {X}; ++l) dp[l] = ({E})0;",
        "        }",
        "    }",
        "  }",
        "}", ""])


def winograd_prepare_kernel(isa: VectorIsa, m: int, oc: int, ic: int, symbol: str,
                            layer: str) -> tuple[str, str, str]:
    """The load-time kernel of one F(m, 3) layer (params[0]: its raw float32 weights
    ``[oc][ic][3][3]``; output: the packed transform; work item = one oc block): (helper
    name, helper C, the kernel's C), the helper shared by every layer of that m."""
    X, E = isa.floats, isa.elem
    ocb, icp = -(-oc // X), -(-ic // X) * X
    helper, helper_src = winograd_prepare_helper(isa, m)
    return helper, helper_src, "\n".join([
        f"/* {symbol}: load-time F({m},3) weight transform of {layer} ({oc}x{ic}x3x3 float32 "
        f"-> [{(m + 2) ** 2}][{ocb}][{icp}][{X}] {E}). */",
        f"NPAS_EXPORT void {symbol}(const npas_step_args *args, int64_t begin, int64_t end, "
        "void *scratch) {",
        "  (void)scratch;",
        f"  {helper}(args->params[0], ({E} *)args->output, begin, end, {oc}, {ic}, {ocb}, {icp});",
        "}", ""])


def winograd_blocking(m: int, out_shape: tuple[int, ...], in_shape: tuple[int, ...],
                      oc_tile: int, t_tile: int, elem_bytes: int = 4) -> tuple[int, int, int]:
    """(tiles per work item, oc groups, scratch floats): tile blocks of a multiple of
    ``t_tile`` tiles whose V and M fit the scratch budget, then the output channels split into
    groups until there are a few work items for the threads."""
    n, ocb, oh, ow, X = out_shape
    icb = in_shape[1]
    a2 = (m + 2) ** 2
    tiles = -(-oh // m) * -(-ow // m)
    groups = -(-tiles // t_tile)
    per_group = a2 * (icb + ocb) * X * elem_bytes * t_tile
    tb = t_tile * max(1, min(groups, WINOGRAD_SCRATCH_BUDGET // per_group))
    octs, og = ocb // oc_tile, 1
    while n * -(-tiles // tb) * og < 4 and octs % (og * 2) == 0:
        og *= 2
    return tb, og, a2 * (icb + ocb // og) * X * tb


def conv2d_winograd(c: Ctx, m: int, oc_tile: int, t_tile: int) -> tuple[list[str], int, int]:
    """Step body of an F(m, 3) conv: items (n, tile block, oc group). Per item: the input
    transform of the block's tiles into V (scratch, [a*a][ic/x][tiles][x]), one batched GEMM per
    transform point into M (scratch, [a*a][oc/x][tiles][x]), then the output transform with
    bias and epilogue straight into y."""
    isa: VectorIsa = c.lang.isa
    X, E = isa.floats, isa.elem
    la = c.la
    n, icb, ih, iw, _ = c.ins[0]
    _, ocb, oh, ow, _ = c.out
    oc, ic_real = la.params["weight"].shape[:2]
    pt, _, pl, _ = la.attrs["padding"]
    a = m + 2
    a2 = a * a
    th, tw = -(-oh // m), -(-ow // m)
    tiles = th * tw
    tb, og, scratch = winograd_blocking(m, c.out, c.ins[0], oc_tile, t_tile, isa.elem_bytes)
    ocg = ocb // og
    blocks = -(-tiles // tb)
    c.scratch_bytes = scratch * isa.elem_bytes
    # fp16 runs the last block's last tiles with a GEMM as wide as they are (``rem``), not a
    # whole t_tile over zero-filled slots (resnet18's and vgg16's 56x56 and 28x28 layers
    # computed 6 % more tiles than they have)
    exact = half(isa)
    rem = (tiles - (blocks - 1) * tb) % t_tile if exact else 0
    names = []
    gemms = [winograd_gemm_kernel(isa, oc_tile, t_tile)]
    if rem:
        gemms.append(winograd_gemm_kernel(isa, oc_tile, rem))
    for nm, src in (winograd_input_kernel(isa, m), *gemms,
                    winograd_output_kernel(isa, m, la.epilogue)):
        c.lang.helpers.setdefault(nm, src)
        names.append(nm)
    fin, fgemm, fout = names[0], names[1], names[-1]
    i = "int64_t"
    vs = icb * tb * X  # floats between V's transform points
    ms = ocg * tb * X  # and M's
    rs = iw * X

    def gemm_call(fn: str, t: str) -> str:
        return (f"{fn}(v + p * {vs} + {t} * {X}, w + ((p * {ocb} + g * {ocg} + ob) * "
                f"{icb * X}) * {X}, {icb * X * X}, mm + p * {ms} + (ob * {tb} + {t}) * {X}, "
                f"{tb * X}, {icb}, {tb * X});")

    if exact:
        gemm = [f"  for ({i} ob = 0; ob < {ocg}; ob += {oc_tile}) {{",
                f"    {i} t = 0;",
                f"    for (; t + {t_tile} <= nt; t += {t_tile})",
                f"      {gemm_call(fgemm, 't')}"]
        if rem:
            gemm += [f"    if (t < nt) {gemm_call(names[2], 't')}"]
        gemm += ["  }"]
        pad = []
    else:
        gemm = [f"  for ({i} ob = 0; ob < {ocg}; ob += {oc_tile})",
                f"    for ({i} t = 0; t < nt; t += {t_tile})",
                f"      {gemm_call(fgemm, 't')}"]
        # GEMM tiles past nt read these slots: keep them finite
        pad = [f"  for ({i} t = nt; t < (nt + {t_tile - 1}) / {t_tile} * {t_tile}; ++t)",
               f"    for ({i} p = 0; p < {a2}; ++p) *(vf *)(vc + t * {X} + p * {vs}) = (vf){{}};"]
    body = [f"const {i} n = it / {blocks * og}, t0 = (it / {og}) % {blocks} * {tb}, "
            f"g = it % {og};",
            f"const {i} nt = {tiles} - t0 < {tb} ? {tiles} - t0 : {tb};",
            f"{E} *v = ({E} *)scratch, *mm = v + {a2 * vs};",
            f"for ({i} cb = 0; cb < {icb}; ++cb) {{",
            f"  const {i} xo = (n * {icb} + cb) * {ih * iw * X};",
            f"  {E} *vc = v + cb * {tb * X};",
            f"  for ({i} t = 0; t < nt; ++t) {{",
            f"    const {i} r = (t0 + t) / {tw} * {m} - {pt}, "
            f"col = (t0 + t) % {tw} * {m} - {pl};",
            f"    const {i} o = xo + r * {rs} + col * {X};",
            f"    if (r >= 0 && r + {a} <= {ih} && col >= 0 && col + {a} <= {iw})",
            f"      {fin}(x, o, {rs}, 0, {a}, 0, {a}, vc + t * {X}, {vs});",
            "    else",
            f"      {fin}(x, o, {rs}, r < 0 ? -r : 0, {ih} - r, col < 0 ? -col : 0, "
            f"{iw} - col, vc + t * {X}, {vs});",
            "  }",
            *pad,
            "}",
            f"for ({i} p = 0; p < {a2}; ++p)" + (" {" if exact else ""),
            *gemm,
            *(["}"] if exact else []),
            f"for ({i} ob = 0; ob < {ocg}; ++ob) {{",
            f"  const {i} oc = g * {ocg} + ob;",
            f"  {E} *yc = y + (n * {ocb} + oc) * {oh * ow * X};",
            f"  for ({i} t = 0; t < nt; ++t) {{",
            f"    const {i} r = (t0 + t) / {tw} * {m}, col = (t0 + t) % {tw} * {m};",
            f"    {fout}(mm + (ob * {tb} + t) * {X}, {ms}, b + oc * {X}, "
            f"yc + (r * {ow} + col) * {X}, "
            + (f"s + (yc - y) + (r * {ow} + col) * {X}, " if "add" in la.epilogue else "")
            + f"{ow * X}, {oh} - r, {ow} - col);",
            "  }",
            "}"]
    items = n * blocks * og
    L = [c.x(), *c.skip(), c.y(), c.w(0, "w"), c.w(1, "b"), *c.lang.over_items(c, items, body)]
    return L, items, 2 * n * oc * oh * ow * ic_real * 9
