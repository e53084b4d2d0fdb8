"""Test helper: run a compiled bundle in-process through ctypes, single-threaded.

Only codegen's own test tier uses this; the real runner (gRPC) is the product's executor.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from codegen.bundle import Bundle, load_bundle

FloatPtrArray = ctypes.POINTER(ctypes.c_void_p)


class StepArgs(ctypes.Structure):
    _fields_ = [("inputs", FloatPtrArray), ("output", ctypes.c_void_p), ("params", FloatPtrArray)]


KernelFn = ctypes.CFUNCTYPE(None, ctypes.POINTER(StepArgs), ctypes.c_int64, ctypes.c_int64,
                            ctypes.c_void_p)


def _aligned(nbytes: int, align: int = 64) -> np.ndarray:
    raw = np.zeros(nbytes + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + nbytes]


def weight_buffer(bundle: Bundle, lib: ctypes.CDLL) -> np.ndarray:
    """The weight buffer the runner builds at load: the blob itself, or what the manifest's
    prepare steps make of it (copies, and the library's prepare kernels)."""
    m = bundle.manifest
    blob = np.frombuffer(bundle.file("weights").read_bytes(), dtype=np.uint8)
    weights = _aligned(max(m.weights_bytes, 64))
    if not m.prepare:
        weights[:len(blob)] = blob
    src = _aligned(max(len(blob), 64))
    src[:len(blob)] = blob
    for p in m.prepare:
        if not p.symbol:
            weights[p.dst.offset:p.dst.offset + p.dst.nbytes] = \
                src[p.src.offset:p.src.offset + p.src.nbytes]
            continue
        prm = (ctypes.c_void_p * 1)(src.ctypes.data + p.src.offset)
        args = StepArgs(None, weights.ctypes.data + p.dst.offset, ctypes.cast(prm, FloatPtrArray))
        KernelFn((p.symbol, lib))(ctypes.byref(args), 0, p.work_items, None)
    return weights


def run_bundle(bundle: Bundle | str | Path, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    m = bundle.manifest
    lib = ctypes.CDLL(str(bundle.file("kernels")))
    assert ctypes.c_uint32.in_dll(lib, "npas_kernel_abi_version").value == m.kernel_abi_version
    arena = _aligned(max(m.arena_bytes, 64))
    weights = weight_buffer(bundle, lib)

    def view(i: int) -> np.ndarray:
        t = m.tensors[i]
        return arena[t.arena_offset:t.arena_offset + t.nbytes].view(np.float32).reshape(t.shape)

    scratch = _aligned(max(m.scratch_bytes_per_thread, 64))
    for i, x in zip(m.inputs, inputs, strict=True):
        view(i)[...] = x
    for s in m.steps:
        ins = (ctypes.c_void_p * max(len(s.inputs), 1))(
            *[arena.ctypes.data + m.tensors[i].arena_offset for i in s.inputs])
        prm = (ctypes.c_void_p * max(len(s.params), 1))(
            *[weights.ctypes.data + p.offset for p in s.params])
        args = StepArgs(ctypes.cast(ins, FloatPtrArray),
                        arena.ctypes.data + m.tensors[s.output].arena_offset,
                        ctypes.cast(prm, FloatPtrArray))
        KernelFn((s.symbol, lib))(ctypes.byref(args), 0, s.work_items, scratch.ctypes.data)
    return [view(i).copy() for i in m.outputs]
