# line budget: every portable template in one file (the C and OpenCL bodies in one place); a
# split of the layout-moving ones made an import cycle with the base (tests/test_boundaries.py)
"""The C-style emitter base: every kernel template, written once, rendered into C or OpenCL C.

A ``CStyleLanguage`` is data plus a few hooks: the storage type, pointer qualifiers, how a
kernel is declared, how it gets its tensors (``args->inputs[j]`` or ``arena + OFFSET``), how it
finds its work item (``for it in [begin, end)`` or ``get_global_id(0)``), and how much of the
output one work item covers. The templates below only speak in those terms. ``c.CLanguage`` and
``opencl.OpenClLanguage`` are the subclasses.

Templates describe an op as a loop nest over its output (``nest``): the CPU hands one work item
the outer dims and loops over the inner ones (a whole plane per item, say); the GPU flattens
all dims and gives each work item ``tile`` consecutive outputs. Two ops have a second strategy
that suits one side: conv2d (``conv2d_plane``: scatter per (kh, kw) tap over a whole output
plane with branch-free loops, for the CPU; ``conv2d_gather``: one output element from its
receptive field, for the GPU) and concat (row copies vs a per-element gather). A language
picks its strategies in its ``kernels`` table.

Arithmetic is in float whatever the storage type (fp16 bundles store half, compute in float).
Params of a step, in order: ``OPS[op].params`` (conv2d/linear: weight, bias; bias always
present). Others: none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from codegen.bundle import ParamRef
from codegen.lr import ACTIVATIONS, OPS, CodegenError, Graph, Layer, numel, used_activations

# The params each op's kernel reads, in order (from the op table).
PARAM_ORDER = {name: op.params for name, op in OPS.items() if op.params}


def step_params(layer: Layer) -> tuple[np.ndarray, ...]:
    """The params a step's kernel reads, in order."""
    return tuple(layer.params[k] for k in PARAM_ORDER.get(layer.op, ()))


@dataclass(frozen=True)
class StepCode:
    """One emitted step: what the manifest needs to call it."""

    layer: Layer
    symbol: str
    work_items: int  # CPU: the [0, work_items) range; GPU: the padded global size
    flops: int
    params: tuple[np.ndarray, ...]  # in the order the kernel reads them
    local_size: int = 0
    scratch_bytes: int = 0  # per thread, the kernel's ``scratch`` (transform buffers)


@dataclass(frozen=True)
class Program:
    source: str
    steps: tuple[StepCode, ...]


Dims = Sequence[tuple[str, int]]  # loop variable name, extent; row-major


class CStyleLanguage:
    """Base language: the hooks every C-like target fills in (defaults are plain C)."""

    scalar = "float"  # storage type of tensors and weights
    dtype = "float32"  # TensorSpec.dtype
    elem_bytes = 4
    index = "int64_t"  # integer type of indices
    ptr_q = "*restrict "  # pointer declarator for tensors
    global_q = ""  # address-space qualifier for tensors and weights
    func_q = "static inline"  # helper functions
    kernel_q = ""
    exp = "npas_expf"
    neg_inf = "-__builtin_inff()"
    kernels: ClassVar[dict[str, Callable[[Ctx], Rendered]]] = {}

    # -- hooks ---------------------------------------------------------------------------------
    def prelude(self) -> str:
        raise NotImplementedError

    def signature(self, symbol: str) -> str:
        raise NotImplementedError

    def prologue(self) -> list[str]:
        """First lines of every kernel body."""
        return []

    def input_ref(self, c: Ctx, j: int) -> str:
        raise NotImplementedError

    def output_ref(self, c: Ctx) -> str:
        raise NotImplementedError

    def param_ref(self, c: Ctx, k: int) -> str:
        raise NotImplementedError

    def over_items(self, c: Ctx, items: int, body: list[str]) -> list[str]:
        """Run ``body`` once per work item ``it`` in [0, items)."""
        raise NotImplementedError

    def nest(self, c: Ctx, dims: Dims, inner: int, body: list[str]) -> tuple[list[str], int]:
        """Run ``body`` for every point of ``dims``; return the lines and the work item count.
        ``inner`` is how many trailing dims the CPU loops over inside one item."""
        raise NotImplementedError

    def chunk(self, c: Ctx) -> int:
        """Consecutive elements per work item of element-wise ops."""
        raise NotImplementedError

    def launch(self, c: Ctx, items: int) -> tuple[int, int]:
        """(work_items, local_size) for the manifest."""
        return items, 0

    def check_layer(self, graph: Graph, la: Layer) -> None:
        """Refuse what this language cannot emit for ``la`` (tuning, sizes)."""

    def layer_params(self, graph: Graph, la: Layer) -> tuple[np.ndarray, ...]:
        """The params ``la``'s kernel reads, in order and in the layout it reads them."""
        return step_params(la)

    # -- shared rendering ----------------------------------------------------------------------
    def activations(self, names: Sequence[str] | None = None) -> str:
        """The scalar activations (``ACTIVATIONS[a].c_body``) as C functions: ``names`` (in
        table order; ``used_activations(graph)``), or all of them."""
        return "".join(f"{self.func_q} float npas_{a}(float v) {{\n  "
                       f"{act.c_body.replace('{exp}', self.exp)}\n}}\n"
                       for a, act in ACTIVATIONS.items() if names is None or a in names)

    def tensor_scalar(self, graph: Graph, tensor: str) -> str:
        """The element type ``tensor`` is stored in (``scalar`` unless a language keeps some
        tensors in another: fp16 CPU graphs keep their ends in float)."""
        return self.scalar

    def decl(self, name: str, ref: str, const: bool = True, restrict: bool = True,
             scalar: str | None = None) -> str:
        """A pointer declaration to a tensor or param (of ``scalar``, default the language's)."""
        ptr = self.ptr_q if restrict else "*"
        return (f"{self.global_q}{'const ' if const else ''}{scalar or self.scalar} "
                f"{ptr}{name} = {ref};")

    def render(self, graph: Graph, param_refs: Sequence[Sequence[ParamRef]] | None = None
               ) -> Program:
        """Render every step of ``graph`` (after the passes); ``param_refs`` are where each
        step's params sit in the weight blob (needed by languages that bake them in)."""
        self.helpers: dict[str, str] = {}  # micro-kernels the steps call, by name
        self.used = used_activations(graph)  # the activations the prelude defines
        parts = []
        steps = []
        for i, la in enumerate(graph.steps):
            if la.op not in self.kernels:
                raise CodegenError(f'layer "{la.name}" ({la.op}): no {type(self).__name__} '
                                   "kernel for this op; run the passes first (batchnorm2d must "
                                   "be folded)")
            self.check_layer(graph, la)
            sym = f"npas_step_{i}_{la.op}"
            c = Ctx(self, graph, la, tuple(param_refs[i]) if param_refs is not None else ())
            body, items, flops = self.kernels[la.op](c)
            body = [*self.prologue(), *body]
            flops += numel(graph.shapes[la.output]) * len(la.epilogue)
            work_items, local = self.launch(c, items)
            parts.append(f"/* {la.name}: {la.op} {[list(graph.shapes[t]) for t in la.inputs]} "
                         f"-> {list(graph.shapes[la.output])}"
                         f"{' + ' + '+'.join(la.epilogue) if la.epilogue else ''} */\n"
                         f"{self.signature(sym)} {{\n"
                         + "".join(f"  {ln}\n" for ln in body) + "}\n")
            steps.append(StepCode(la, sym, work_items, flops, self.layer_params(graph, la),
                                  local, c.scratch_bytes))
        parts = [self.prelude(), *self.helpers.values(), *parts]
        return Program(source="\n".join(parts), steps=tuple(steps))


class Ctx:
    """What a template sees of one layer: shapes, attrs, and the language's hooks."""

    def __init__(self, lang: CStyleLanguage, graph: Graph, la: Layer,
                 param_refs: tuple[ParamRef, ...]) -> None:
        self.lang = lang
        self.graph = graph
        self.la = la
        self.a: dict[str, Any] = la.attrs
        self.ins = [graph.shapes[t] for t in la.inputs]
        self.out = graph.shapes[la.output]
        self.param_refs = param_refs
        self.i = lang.index
        self.scratch_bytes = 0  # a template that uses the per-thread scratch sets its size

    def x(self, j: int = 0, name: str = "x") -> str:
        return self.lang.decl(name, self.lang.input_ref(self, j),
                              scalar=self.lang.tensor_scalar(self.graph, self.la.inputs[j]))

    def y(self, name: str = "y") -> str:
        return self.lang.decl(name, self.lang.output_ref(self), const=False,
                              scalar=self.lang.tensor_scalar(self.graph, self.la.output))

    def w(self, k: int, name: str) -> str:
        return self.lang.decl(name, self.lang.param_ref(self, k), restrict=False)

    def epilogue(self, var: str, index: str | None = None) -> list[str]:
        """Lines applying the epilogue to ``var``; a fused residual ("add") reads the layer's
        second input (declared by ``skip``) at ``index``, the output element's index."""
        return [f"{var} += (float)s[{index}];" if e == "add" else f"{var} = npas_{e}({var});"
                for e in self.la.epilogue]

    def skip(self) -> list[str]:
        """The declaration of ``s``, the fused residual, when the epilogue has one."""
        return [self.x(1, "s")] if "add" in self.la.epilogue else []


Rendered = tuple[list[str], int, int]  # body lines, work items, flops


def _conv_geometry(c: Ctx) -> tuple[int, ...]:
    n, ic, ih, iw = c.ins[0]
    _, oc, oh, ow = c.out
    kh, kw = c.a["kernel"]
    sh, sw = c.a["stride"]
    dh, dw = c.a["dilation"]
    pt, _, pl, _ = c.a["padding"]
    return n, ic, ih, iw, oc, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, c.a["groups"]


def conv2d_plane(c: Ctx) -> Rendered:
    """One (n, oc) output plane per item; per (kh, kw) tap the valid output rows and columns
    are worked out here, so the inner loops have no branches."""
    n, ic, ih, iw, oc, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, g = _conv_geometry(c)
    icg, ocg = ic // g, oc // g
    plane = oh * ow
    i, f = c.i, "float"
    s = c.lang.global_q + c.lang.scalar
    body = [f"const {i} n = it / {oc}, oc = it % {oc};",
            f"{s} *yp = y + it * {plane};",
            f"const {f} bv = b[oc];",
            f"for ({i} i = 0; i < {plane}; ++i) yp[i] = bv;",
            f"const {s} *xg = x + (n * {ic} + (oc / {ocg}) * {icg}) * {ih * iw};",
            f"const {s} *wp = w + oc * {icg * kh * kw};",
            f"for ({i} c = 0; c < {icg}; ++c) {{",
            f"  const {s} *xp = xg + c * {ih * iw};",
            f"  const {s} *wk = wp + c * {kh * kw};"]
    for ky in range(kh):
        h0 = max(0, -((ky * dh - pt) // sh))
        h1 = min(oh, (ih - 1 + pt - ky * dh) // sh + 1)
        for kx in range(kw):
            w0 = max(0, -((kx * dw - pl) // sw))
            w1 = min(ow, (iw - 1 + pl - kx * dw) // sw + 1)
            if h0 >= h1 or w0 >= w1:
                continue  # this tap only ever sees padding
            body += [f"  {{ const {f} wv = wk[{ky * kw + kx}];",
                     f"    for ({i} oh = {h0}; oh < {h1}; ++oh) {{",
                     f"      const {s} *xr = xp + (oh * {sh} + {ky * dh - pt}) * {iw} "
                     f"+ {kx * dw - pl};",
                     f"      {s} *yr = yp + oh * {ow};",
                     f"      for ({i} ow = {w0}; ow < {w1}; ++ow) yr[ow] += wv * xr[ow * {sw}];",
                     "    } }"]
    body.append("}")
    if c.la.epilogue:
        body += [f"for ({i} i = 0; i < {plane}; ++i) {{", f"  {f} v = yp[i];",
                 *["  " + ln for ln in c.epilogue("v", f"it * {plane} + i")], "  yp[i] = v;",
                 "}"]
    L = [c.x(), *c.skip(), c.y(), c.w(0, "w"), c.w(1, "b"),
         *c.lang.over_items(c, n * oc, body)]
    return L, n * oc, 2 * n * oc * plane * icg * kh * kw


def _tap_range(var: str, base: str, pad: int, out: int, stride: int, k: int, dil: int,
               size: int, i: str) -> list[str]:
    """Lines that set [var0, var1): the taps whose input index base + t * dil is in [0, size).
    Constants when no output ever reaches the padding."""
    if pad == 0 and (out - 1) * stride + (k - 1) * dil < size:
        return [f"const {i} {var}0 = 0, {var}1 = {k};"]
    return [f"const {i} {var}0 = {base} < 0 ? (-{base} + {dil - 1}) / {dil} : 0;",
            f"const {i} {var}r = ({size} - {base} + {dil - 1}) / {dil};",
            f"const {i} {var}1 = {var}r < {k} ? {var}r : {k};"]


def conv2d_gather(c: Ctx) -> Rendered:
    """One output element from its receptive field; the valid tap ranges are computed once per
    output, so the inner loops have no branches. Offsets are integers (an offset may be
    negative until a valid tap is added; a pointer there would be outside the buffer)."""
    n, ic, ih, iw, oc, oh, ow, kh, kw, sh, sw, dh, dw, pt, pl, g = _conv_geometry(c)
    icg, ocg = ic // g, oc // g
    i, f = c.i, "float"
    body = [f"const {i} ih0 = oh * {sh} - {pt}, iw0 = ow * {sw} - {pl};",
            *_tap_range("ky", "ih0", pt, oh, sh, kh, dh, ih, i),
            *_tap_range("kx", "iw0", pl, ow, sw, kw, dw, iw, i),
            f"const {i} xg = (n * {ic} + (oc / {ocg}) * {icg}) * {ih * iw} + ih0 * {iw} + iw0;",
            f"const {i} wg = oc * {icg * kh * kw};",
            f"{f} acc = b[oc];",
            f"for ({i} c = 0; c < {icg}; ++c)",
            f"  for ({i} ky = ky0; ky < ky1; ++ky) {{",
            f"    const {i} xr = xg + c * {ih * iw} + ky * {dh * iw};",
            f"    const {i} wr = wg + (c * {kh} + ky) * {kw};",
            f"    for ({i} kx = kx0; kx < kx1; ++kx)",
            f"      acc += ({f})w[wr + kx] * ({f})x[xr + kx * {dw}];",
            "  }",
            f"const {i} yi = ((n * {oc} + oc) * {oh} + oh) * {ow} + ow;",
            *c.epilogue("acc", "yi"),
            "y[yi] = acc;"]
    lines, items = c.lang.nest(c, [("n", n), ("oc", oc), ("oh", oh), ("ow", ow)], 2, body)
    return [c.x(), *c.skip(), c.y(), c.w(0, "w"), c.w(1, "b"), *lines], items, \
        2 * n * oc * oh * ow * icg * kh * kw


def linear(c: Ctx) -> Rendered:
    """One output feature for every batch row (CPU), one (feature, row) pair (GPU); eight
    partial sums in a fixed order."""
    n, k = c.ins[0]
    o = c.out[1]
    k8 = k // 8 * 8
    i, s, f = c.i, c.lang.scalar, "float"
    q = c.lang.global_q
    body = [f"{q}const {s} *wr = w + o * {k};",
            f"{q}const {s} *xr = x + n * {k};",
            f"{f} acc[8] = {{0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f}};",
            f"for ({i} i = 0; i < {k8}; i += 8)",
            "  for (int j = 0; j < 8; ++j) acc[j] += "
            f"({f})xr[i + j] * ({f})wr[i + j];",
            f"for ({i} i = {k8}; i < {k}; ++i) acc[0] += ({f})xr[i] * ({f})wr[i];",
            f"{f} v = b[o] + (((acc[0] + acc[1]) + (acc[2] + acc[3])) + "
            "((acc[4] + acc[5]) + (acc[6] + acc[7])));",
            *c.epilogue("v"),
            f"y[n * {o} + o] = v;"]
    lines, items = c.lang.nest(c, [("o", o), ("n", n)], 1, body)
    return [c.x(), c.y(), c.w(0, "w"), c.w(1, "b"), *lines], items, 2 * n * o * k


def eltwise(expr: str, nin: int) -> Callable[[Ctx], Rendered]:
    """A chunk of consecutive elements per work item; ``expr`` reads x0..x{nin-1} at i."""
    def kernel(c: Ctx) -> Rendered:
        total = numel(c.out)
        ch = c.lang.chunk(c)
        items = (total + ch - 1) // ch
        i = c.i
        body = [f"const {i} i1 = it * {ch} + {ch} < {total} ? it * {ch} + {ch} : {total};",
                f"for ({i} i = it * {ch}; i < i1; ++i) {{",
                f"  float v = {expr};", *["  " + ln for ln in c.epilogue("v")],
                "  y[i] = v;", "}"]
        L = [c.x(j, f"x{j}") for j in range(nin)]
        return [*L, c.y(), *c.lang.over_items(c, items, body)], items, total
    return kernel


def clamp(c: Ctx) -> Rendered:
    lo, hi = c.a["min"], c.a["max"]
    expr = "x0[i]"
    if lo is not None:
        expr = f"npas_max_f((float){expr}, {float(lo)!r}f)"
    if hi is not None:
        expr = f"npas_min_f({expr}, {float(hi)!r}f)"
    return eltwise(expr, 1)(c)


def leaky_relu(c: Ctx) -> Rendered:
    return eltwise(f"npas_leaky((float)x0[i], {float(c.a['slope'])!r}f)", 1)(c)


def prelu(c: Ctx) -> Rendered:
    """One slope per channel (or one for all), one (n, c) plane per item (CPU)."""
    n, ch = c.out[0], c.out[1]
    plane = numel(c.out[2:])
    k = "k" if c.la.params["weight"].size > 1 else "0"
    body = [f"const float v = (float)x[(n * {ch} + k) * {plane} + i];",
            f"y[(n * {ch} + k) * {plane} + i] = v < 0.0f ? (float)w[{k}] * v : v;"]
    lines, items = c.lang.nest(c, [("n", n), ("k", ch), ("i", plane)], 1, body)
    return [c.x(), c.y(), c.w(0, "w"), *lines], items, numel(c.out)


# NaN-propagating min/max and the leaky slope, defined where a clamp or leaky_relu step is
CLAMP_HELPERS = {
    "npas_max_f": "{q} float npas_max_f(float v, float lo) {{ return v < lo ? lo : v; }}\n",
    "npas_min_f": "{q} float npas_min_f(float v, float hi) {{ return v > hi ? hi : v; }}\n",
    "npas_leaky": "{q} float npas_leaky(float v, float s) {{ return v < 0.0f ? v * s : v; }}\n",
}


def _with_helpers(kernel: Callable[[Ctx], Rendered]) -> Callable[[Ctx], Rendered]:
    def k(c: Ctx) -> Rendered:
        for name, text in CLAMP_HELPERS.items():
            c.lang.helpers.setdefault(name, text.format(q=c.lang.func_q))
        return kernel(c)
    return k


def mul_channel(c: Ctx) -> Rendered:
    n, ch, h, w = c.out
    body = [f"float v = (float)x[nc * {h * w} + i] * (float)s[nc];", *c.epilogue("v"),
            f"y[nc * {h * w} + i] = v;"]
    lines, items = c.lang.nest(c, [("nc", n * ch), ("i", h * w)], 1, body)
    return [c.x(0), c.x(1, "s"), c.y(), *lines], items, n * ch * h * w


def maxpool2d(c: Ctx) -> Rendered:
    n, ch, ih, iw = c.ins[0]
    _, _, oh, ow = c.out
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (c.a["kernel"], c.a["stride"], c.a["padding"],
                                             c.a["dilation"])
    i, q, s = c.i, c.lang.global_q, c.lang.scalar
    body = [f"{q}const {s} *xp = x + nc * {ih * iw};",
            f"float m = {c.lang.neg_inf};",
            f"for ({i} ky = 0; ky < {kh}; ++ky) {{",
            f"  const {i} ih = oh * {sh} - {ph} + ky * {dh};",
            f"  if (ih < 0 || ih >= {ih}) continue;",
            f"  for ({i} kx = 0; kx < {kw}; ++kx) {{",
            f"    const {i} iw = ow * {sw} - {pw} + kx * {dw};",
            f"    if (iw < 0 || iw >= {iw}) continue;",
            f"    const float v = xp[ih * {iw} + iw];",
            "    if (v > m || v != v) m = v;", "  }", "}",
            f"y[(nc * {oh} + oh) * {ow} + ow] = m;"]
    lines, items = c.lang.nest(c, [("nc", n * ch), ("oh", oh), ("ow", ow)], 2, body)
    return [c.x(), c.y(), *lines], items, numel(c.out) * kh * kw


def avgpool2d(c: Ctx) -> Rendered:
    n, ch, ih, iw = c.ins[0]
    _, _, oh, ow = c.out
    (kh, kw), (sh, sw), (ph, pw) = c.a["kernel"], c.a["stride"], c.a["padding"]
    div = "(float)pool" if c.a["count_include_pad"] else "(float)((h1 - h0) * (w1 - w0))"
    i, q, s = c.i, c.lang.global_q, c.lang.scalar
    body = [f"{q}const {s} *xp = x + nc * {ih * iw};",
            f"{i} h0 = oh * {sh} - {ph}, w0 = ow * {sw} - {pw};",
            f"{i} h1 = h0 + {kh} < {ih + ph} ? h0 + {kh} : {ih + ph};",
            f"{i} w1 = w0 + {kw} < {iw + pw} ? w0 + {kw} : {iw + pw};",
            f"const {i} pool = (h1 - h0) * (w1 - w0);",
            "if (h0 < 0) h0 = 0;", "if (w0 < 0) w0 = 0;",
            f"if (h1 > {ih}) h1 = {ih};", f"if (w1 > {iw}) w1 = {iw};",
            "float s = 0.0f;",
            f"for ({i} i = h0; i < h1; ++i)",
            f"  for ({i} j = w0; j < w1; ++j) s += xp[i * {iw} + j];",
            f"y[(nc * {oh} + oh) * {ow} + ow] = (h0 >= h1 || w0 >= w1) ? 0.0f : s / {div};"]
    lines, items = c.lang.nest(c, [("nc", n * ch), ("oh", oh), ("ow", ow)], 2, body)
    return [c.x(), c.y(), *lines], items, numel(c.out) * kh * kw


def adaptive_avgpool2d(c: Ctx) -> Rendered:
    n, ch, ih, iw = c.ins[0]
    _, _, oh, ow = c.out
    i, q, s = c.i, c.lang.global_q, c.lang.scalar
    body = [f"{q}const {s} *xp = x + nc * {ih * iw};",
            f"const {i} h0 = oh * {ih} / {oh}, h1 = ((oh + 1) * {ih} + {oh - 1}) / {oh};",
            f"const {i} w0 = ow * {iw} / {ow}, w1 = ((ow + 1) * {iw} + {ow - 1}) / {ow};",
            "float s = 0.0f;",
            f"for ({i} i = h0; i < h1; ++i)",
            f"  for ({i} j = w0; j < w1; ++j) s += xp[i * {iw} + j];",
            f"y[(nc * {oh} + oh) * {ow} + ow] = s / (float)((h1 - h0) * (w1 - w0));"]
    lines, items = c.lang.nest(c, [("nc", n * ch), ("oh", oh), ("ow", ow)], 2, body)
    return [c.x(), c.y(), *lines], items, n * ch * ih * iw


def concat_copy(c: Ctx) -> Rendered:
    """One (batch row, input) pair per item: a straight copy."""
    n = c.out[0]
    row = numel(c.out) // n
    k = len(c.ins)
    i, s = c.i, c.lang.global_q + c.lang.scalar
    body = [f"const {i} n = it / {k}, k = it % {k};",
            f"const {s} *src = 0; {s} *dst = 0; {i} cnt = 0;", "switch (k) {"]
    off = 0
    for j, shape in enumerate(c.ins):
        sz = numel(shape) // n
        body.append(f"  case {j}: src = {c.lang.input_ref(c, j)} + n * {sz}; "
                    f"dst = y + n * {row} + {off}; cnt = {sz}; break;")
        off += sz
    body += ["  default: break;", "}", f"for ({i} i = 0; i < cnt; ++i) dst[i] = src[i];"]
    return [c.y(), *c.lang.over_items(c, n * k, body)], n * k, 0


def concat_gather(c: Ctx) -> Rendered:
    """One output element, read from the input whose slice of the row it falls in."""
    n = c.out[0]
    row = numel(c.out) // n
    L, body, off = [], [], 0
    for j, shape in enumerate(c.ins):
        sz = numel(shape) // n
        L.append(c.x(j, f"x{j}"))
        cond = f"if (r < {off + sz}) " if j < len(c.ins) - 1 else ""
        body.append(f"{'else ' if j else ''}{cond}y[n * {row} + r] = x{j}[n * {sz} + r - {off}];")
        off += sz
    lines, items = c.lang.nest(c, [("n", n), ("r", row)], 1, body)
    return [*L, c.y(), *lines], items, 0


def permute(c: Ctx) -> Rendered:
    """One output element (CPU: a run of the last dim per item), read at its source index."""
    src, perm = c.ins[0], c.a["perm"]
    strides = [numel(src[k + 1:]) for k in range(len(src))]
    dims = [(f"d{k}", e) for k, e in enumerate(c.out)]
    read = " + ".join(f"d{k} * {strides[p]}" for k, p in enumerate(perm))
    write = " + ".join(f"d{k} * {numel(c.out[k + 1:])}" for k in range(len(c.out)))
    lines, items = c.lang.nest(c, dims, 1, [f"y[{write}] = x[{read}];"])
    return [c.x(), c.y(), *lines], items, 0


def _src_scale(c: Ctx, k: int) -> float:
    """Source pixels per output pixel along H (k=0) or W (k=1), as torch maps them."""
    i, o = c.ins[0][2 + k], c.out[2 + k]
    if c.a["align_corners"]:
        return (i - 1) / (o - 1) if o > 1 else 0.0
    sf = c.a["scale_factor"]
    return 1.0 / sf[k] if sf else i / o


def interpolate(c: Ctx) -> Rendered:
    """One output element: nearest (src = floor(dst * scale)), or bilinear from its four
    neighbours (src = (dst + 0.5) * scale - 0.5 clamped at 0, or dst * scale with
    align_corners), as torch computes them in float."""
    n, ch, ih, iw = c.ins[0]
    _, _, oh, ow = c.out
    sh, sw = _src_scale(c, 0), _src_scale(c, 1)
    i, f = c.i, "float"
    q, s = c.lang.global_q, c.lang.scalar
    body = [f"{q}const {s} *xp = x + nc * {ih * iw};"]
    if c.a["mode"] == "nearest":
        body += [f"{i} hs = ({i})(({f})oh * {sh!r}f), ws = ({i})(({f})ow * {sw!r}f);",
                 f"if (hs > {ih - 1}) hs = {ih - 1};", f"if (ws > {iw - 1}) ws = {iw - 1};",
                 f"{f} v = ({f})xp[hs * {iw} + ws];"]
        flops = 0
    else:
        off = "" if c.a["align_corners"] else " + 0.5f"
        sub = "" if c.a["align_corners"] else " - 0.5f"
        body += [f"{f} hf = (({f})oh{off}) * {sh!r}f{sub}, wf = (({f})ow{off}) * {sw!r}f{sub};",
                 "if (hf < 0.0f) hf = 0.0f;", "if (wf < 0.0f) wf = 0.0f;",
                 f"const {i} h0 = ({i})hf, w0 = ({i})wf;",
                 f"const {i} h1 = h0 < {ih - 1} ? h0 + 1 : h0, w1 = w0 < {iw - 1} ? w0 + 1 : w0;",
                 f"const {f} lh = hf - ({f})h0, lw = wf - ({f})w0;",
                 f"{f} v = (1.0f - lh) * ((1.0f - lw) * ({f})xp[h0 * {iw} + w0] + "
                 f"lw * ({f})xp[h0 * {iw} + w1])",
                 f"  + lh * ((1.0f - lw) * ({f})xp[h1 * {iw} + w0] + "
                 f"lw * ({f})xp[h1 * {iw} + w1]);"]
        flops = 11 * numel(c.out)
    body += [*c.epilogue("v"), f"y[(nc * {oh} + oh) * {ow} + ow] = v;"]
    lines, items = c.lang.nest(c, [("nc", n * ch), ("oh", oh), ("ow", ow)], 2, body)
    return [c.x(), c.y(), *lines], items, flops


def conv_transpose2d(c: Ctx) -> Rendered:
    """One output element gathered from the inputs that reach it: oh = ih * s - p + kh * d,
    so ih = (oh + p - kh * d) / s where that divides (groups 1; weight [ic][oc][kh][kw])."""
    n, ic, ih, iw = c.ins[0]
    _, oc, oh, ow = c.out
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (c.a["kernel"], c.a["stride"], c.a["padding"],
                                             c.a["dilation"])
    i, f = c.i, "float"
    body = [f"{f} acc = ({f})b[oc];",
            f"for ({i} c = 0; c < {ic}; ++c) {{",
            f"  for ({i} ky = 0; ky < {kh}; ++ky) {{",
            f"    const {i} th = oh + {ph} - ky * {dh};",
            f"    if (th < 0 || th % {sh} != 0 || th / {sh} >= {ih}) continue;",
            f"    for ({i} kx = 0; kx < {kw}; ++kx) {{",
            f"      const {i} tw = ow + {pw} - kx * {dw};",
            f"      if (tw < 0 || tw % {sw} != 0 || tw / {sw} >= {iw}) continue;",
            f"      acc += ({f})x[((n * {ic} + c) * {ih} + th / {sh}) * {iw} + tw / {sw}] * "
            f"({f})w[((c * {oc} + oc) * {kh} + ky) * {kw} + kx];",
            "    }", "  }", "}",
            f"const {i} yi = ((n * {oc} + oc) * {oh} + oh) * {ow} + ow;",
            *c.epilogue("acc", "yi"), "y[yi] = acc;"]
    lines, items = c.lang.nest(c, [("n", n), ("oc", oc), ("oh", oh), ("ow", ow)], 2, body)
    return [c.x(), c.y(), c.w(0, "w"), c.w(1, "b"), *lines], items, \
        2 * n * ic * kh * kw * numel(c.ins[0][2:]) * oc


def binary(c: Ctx) -> Rendered:
    """One output element from both inputs, a broadcast dim read with stride 0."""
    out = c.out
    sym = {"add": "+", "sub": "-", "mul": "*"}[c.a["fn"]]

    def index(shape: tuple[int, ...]) -> str:
        terms = [f"d{k} * {numel(shape[k + 1:])}" for k in range(len(out))
                 if not (shape[k] == 1 and out[k] != 1)]
        return " + ".join(terms) or "0"

    body = [f"y[{index(out)}] = (float)x0[{index(c.ins[0])}] {sym} "
            f"(float)x1[{index(c.ins[1])}];"]
    lines, items = c.lang.nest(c, [(f"d{k}", e) for k, e in enumerate(out)], 1, body)
    return [c.x(0, "x0"), c.x(1, "x1"), c.y(), *lines], items, numel(out)


def slice_channels(c: Ctx) -> Rendered:
    """Channels [start, start + size) of each batch image: one (n, channel) plane per item
    (CPU), one element (GPU)."""
    n, ch = c.out[0], c.out[1]
    plane = numel(c.out[2:])
    cin, start = c.ins[0][1], c.a["start"]
    body = [f"y[(n * {ch} + k) * {plane} + i] = x[(n * {cin} + {start} + k) * {plane} + i];"]
    lines, items = c.lang.nest(c, [("n", n), ("k", ch), ("i", plane)], 1, body)
    return [c.x(), c.y(), *lines], items, 0


KERNELS: dict[str, Callable[[Ctx], Rendered]] = {
    "permute": permute,
    "slice": slice_channels,
    "binary": binary,
    "clamp": _with_helpers(clamp),
    "leaky_relu": _with_helpers(leaky_relu),
    "prelu": prelu,
    "interpolate": interpolate,
    "conv_transpose2d": conv_transpose2d,
    "conv2d": conv2d_plane,
    "linear": linear,
    "add": eltwise("x0[i] + x1[i]", 2),
    "mul_channel": mul_channel,
    "maxpool2d": maxpool2d,
    "avgpool2d": avgpool2d,
    "adaptive_avgpool2d": adaptive_avgpool2d,
    "concat": concat_copy,
    **{a: eltwise(f"npas_{a}(x0[i])", 1) for a in ACTIVATIONS},
}


def decompose(dims: Dims, flat: str, index: str) -> list[str]:
    """Lines that split the row-major flat index ``flat`` into the named dims."""
    out, stride = [], 1
    strides = []
    for _, ext in reversed(dims):
        strides.append(stride)
        stride *= ext
    strides.reverse()
    for k, ((name, ext), st) in enumerate(zip(dims, strides, strict=True)):
        e = flat if st == 1 else f"{flat} / {st}"
        if k > 0:
            e = f"({e}) % {ext}" if st != 1 else f"{flat} % {ext}"
        out.append(f"const {index} {name} = {e};")
    return out
