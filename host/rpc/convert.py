"""The one place where a bundle's Manifest (codegen/bundle.py) becomes the proto message."""

from __future__ import annotations

from codegen.bundle import Manifest

from .stubs import load

KIND_TO_PROTO = {"kernel_library": "KERNEL_LIBRARY", "weights": "WEIGHTS",
                 "opencl_source": "OPENCL_SOURCE"}


def kind_to_proto(kind: str) -> int:
    pb, _ = load()
    return pb.ArtifactKind.Value(KIND_TO_PROTO[kind])


def manifest_to_proto(m: Manifest):
    pb, _ = load()
    return pb.Manifest(
        format_version=m.format_version,
        name=m.name,
        target=pb.Target(arch=m.target.arch, os=m.target.os, abi=m.target.abi,
                         features=list(m.target.features)),
        toolchain=pb.Toolchain(compiler=m.toolchain.compiler, version=m.toolchain.version,
                               flags=list(m.toolchain.flags)),
        kernel_abi_version=m.kernel_abi_version,
        artifacts=[pb.ArtifactRef(role=a.role, kind=kind_to_proto(a.kind), sha256=a.sha256,
                                  size=a.size) for a in m.artifacts],
        tensors=[pb.TensorSpec(name=t.name, shape=list(t.shape), dtype=t.dtype,
                               arena_offset=t.arena_offset, nbytes=t.nbytes)
                 for t in m.tensors],
        inputs=list(m.inputs),
        outputs=list(m.outputs),
        arena_bytes=m.arena_bytes,
        scratch_bytes_per_thread=m.scratch_bytes_per_thread,
        steps=[pb.Step(name=s.name, op=s.op, symbol=s.symbol, inputs=list(s.inputs),
                       output=s.output,
                       params=[pb.ParamRef(offset=p.offset, nbytes=p.nbytes) for p in s.params],
                       work_items=s.work_items, flops=s.flops,
                       local_size=s.local_size) for s in m.steps],
        content_hash=m.content_hash,
    )
