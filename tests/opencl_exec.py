"""Test helper: run a GPU bundle through pyopencl exactly as the runner's OpenCL backend does.

One program built from the ``opencl`` artifact with the manifest's toolchain flags as build
options; one arena buffer of ``arena_bytes`` and one weights buffer holding weights.bin; every
kernel gets arg 0 = arena, arg 1 = weights and is enqueued in step order as a 1-D NDRange of
``work_items`` by ``local_size`` (0: NULL). Inputs are written at their arena offsets, outputs
read from theirs. Only the OpenCL test tier uses this; the runner is the product's executor.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from codegen.bundle import Bundle, load_bundle

DTYPES = {"float32": np.float32, "float16": np.float16}


def opencl_context():
    """A context on the first OpenCL device, or None when there is no platform/device."""
    try:
        import pyopencl as cl
    except ImportError:
        return None
    try:
        for p in cl.get_platforms():
            devices = p.get_devices()
            if devices:
                return cl.Context(devices[:1])
    except cl.Error:
        return None
    return None


def run_bundle_cl(bundle: Bundle | str | Path, inputs: Sequence[np.ndarray], ctx
                  ) -> list[np.ndarray]:
    import pyopencl as cl

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    m = bundle.manifest
    assert m.target.arch == "opencl"
    src = bundle.file("opencl").read_text(encoding="utf-8")
    prog = cl.Program(ctx, src).build(options=list(m.toolchain.flags))
    queue = cl.CommandQueue(ctx)
    mf = cl.mem_flags
    arena = cl.Buffer(ctx, mf.READ_WRITE, max(m.arena_bytes, 64))
    cl.enqueue_fill_buffer(queue, arena, np.uint8(0xFF), 0, max(m.arena_bytes, 64))  # NaNs
    blob = bundle.file("weights").read_bytes() or b"\0" * 64
    weights = cl.Buffer(ctx, mf.READ_ONLY | mf.COPY_HOST_PTR, hostbuf=np.frombuffer(blob, np.uint8))
    for i, x in zip(m.inputs, inputs, strict=True):
        t = m.tensors[i]
        host = np.ascontiguousarray(x, dtype=DTYPES[t.dtype])
        assert host.nbytes == t.nbytes
        cl.enqueue_copy(queue, arena, host, dst_offset=t.arena_offset)
    for s in m.steps:
        k = cl.Kernel(prog, s.symbol)
        k.set_args(arena, weights)
        cl.enqueue_nd_range_kernel(queue, k, (s.work_items,),
                                   (s.local_size,) if s.local_size else None)
    outs = []
    for i in m.outputs:
        t = m.tensors[i]
        host = np.empty(t.shape, dtype=DTYPES[t.dtype])
        cl.enqueue_copy(queue, host, arena, src_offset=t.arena_offset)
        outs.append(host)
    queue.finish()
    return outs
