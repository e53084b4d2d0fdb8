"""Freestanding C for an int8 CPU bundle: the float32 vector C, plus the int8 kernels of
``codegen/emit/cpu/q8.py`` for the layers the quantization pass marked (``codegen.quant``), for
the pruned ones among them the block-sparse int8 kernels of ``codegen/emit/sparse/q8.py``, and
for its pools, adds, concats, SE products (mul_channel) and activation tables those of
``codegen/emit/cpu/q8_ops.py``.

The graph is mixed: uint8 tensors (``Graph.quant``) between int8 layers, float32 elsewhere and
at the graph's ends. The float32 layers get the float32 ISA's kernels unchanged (same block
width as the int8 ones); an int8 layer's params are packed by ``q8`` as float32 words of
int8/int16/int32 data; a uint8 tensor is declared as float32 words in the manifest (the
runner's CPU check takes float32 tensors only), as fp16 intermediates are.
"""

from __future__ import annotations

import numpy as np

from codegen.emit.c import CLanguage
from codegen.emit.cpu import q8, q8_convert, q8_linear, q8_ops
from codegen.emit.cstyle import Ctx, Rendered
from codegen.emit.sparse import q8 as q8_sparse
from codegen.isa import QuantIsa
from codegen.lr import Graph, Layer, numel
from codegen.quant import LUT_OPS, POOL_OPS, is_int8


def _int8_or(int8, other):
    def kernel(c: Ctx) -> Rendered:
        return (int8 if is_int8(c.la) else other)(c)
    return kernel


def _dense_or_sparse(dense, sparse):
    def kernel(c: Ctx) -> Rendered:
        return (dense if c.la.storage == "dense" else sparse)(c)
    return kernel


def _u8_or(u8, other):
    def kernel(c: Ctx) -> Rendered:
        return (u8 if c.la.inputs[0] in c.graph.quant else other)(c)
    return kernel


class Int8CLanguage(CLanguage):
    """int8 kernels where the layer is int8 (``qisa``), float32 vector kernels elsewhere."""

    def __init__(self, qisa: QuantIsa) -> None:
        super().__init__(qisa.fp32)
        self.qisa = qisa
        k = dict(self.kernels)
        k["conv2d"] = _int8_or(_dense_or_sparse(q8.qconv2d, q8_sparse.qspconv), k["conv2d"])
        k["linear"] = _int8_or(_dense_or_sparse(q8_linear.qlinear, q8_sparse.qsplinear),
                               k["linear"])
        k["maxpool2d"] = _int8_or(q8_convert.qmaxpool2d, k["maxpool2d"])
        # pools, add, concat and the activations' lookup tables (codegen/emit/cpu/q8_ops.py)
        for op in POOL_OPS:
            k[op] = _int8_or(q8_ops.qavgpool, k[op])
        k["add"] = _int8_or(q8_ops.qadd, k["add"])
        k["concat"] = _int8_or(q8_ops.qconcat, k["concat"])
        k["mul_channel"] = _int8_or(q8_ops.qmul_channel, k["mul_channel"])
        for op in LUT_OPS:
            k[op] = _int8_or(q8_ops.qlut, k[op])
        k["to_nchwxc"] = _u8_or(q8_convert.convert_u8, k["to_nchwxc"])
        k["to_nchw"] = _u8_or(q8_convert.convert_u8, k["to_nchw"])
        self.kernels = k

    def tensor_scalar(self, graph: Graph, tensor: str) -> str:
        return "uint8_t" if tensor in graph.quant else "float"

    def tensor_bytes(self, graph: Graph, tensor: str) -> int:
        n = numel(graph.shapes[tensor])
        return -(-n // 4) * 4 if tensor in graph.quant else 4 * n

    def layer_params(self, graph: Graph, la: Layer) -> tuple[np.ndarray, ...]:
        if is_int8(la) and la.storage != "dense":  # pruned: the block-sparse int8 kernels
            pack = q8_sparse.pack_qspconv if la.op == "conv2d" else q8_sparse.pack_qsplinear
            return pack(graph, la, self.qisa)
        if is_int8(la) and la.op == "conv2d":
            return q8.pack_qconv(graph, la, self.qisa)
        if is_int8(la) and la.op == "linear":
            return q8_linear.pack_qlinear(graph, la, self.qisa)
        return super().layer_params(graph, la)

    def prepare_params(self, graph: Graph, la: Layer, step: int) -> tuple:
        return () if is_int8(la) else super().prepare_params(graph, la, step)
