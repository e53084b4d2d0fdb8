"""The one place where host records and proto messages meet: a bundle's Manifest
(codegen/bundle.py) and a MeasureConfig (host/measure.py) become requests, and the runner's
answers become LoadedModel and BenchmarkResult records."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from codegen import Manifest

from ..measure import BenchmarkResult, LayerTiming, MeasureConfig, Telemetry
from .stubs import load


@dataclass(frozen=True)
class LoadedModel:
    handle: str
    init_ns: int
    threads: int
    cpu_affinity: tuple[int, ...]
    affinity_note: str = ""  # the cores the OS refused to pin to, and why (protocol 1.3)


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
        weights_bytes=m.weights_bytes,
        prepare=[pb.PrepareStep(name=p.name, symbol=p.symbol,
                                src=pb.ParamRef(offset=p.src.offset, nbytes=p.src.nbytes),
                                dst=pb.ParamRef(offset=p.dst.offset, nbytes=p.dst.nbytes),
                                work_items=p.work_items) for p in m.prepare],
        content_hash=m.content_hash,
    )


def inputs_to_proto(manifest: Manifest, arrays: Sequence[np.ndarray]) -> list:
    """The model's inputs as proto Tensors (float32, little-endian), named as in the manifest."""
    pb, _ = load()
    specs = [manifest.tensors[i] for i in manifest.inputs]
    if len(arrays) != len(specs):
        raise ValueError(f"model {manifest.name} takes {len(specs)} inputs, got "
                         f"{len(arrays)}")
    out = []
    for spec, a in zip(specs, arrays, strict=True):
        a = np.ascontiguousarray(a, dtype="<f4")
        out.append(pb.Tensor(name=spec.name, shape=list(a.shape), dtype="float32",
                             data=a.tobytes()))
    return out


def arrays_from_proto(tensors) -> list[np.ndarray]:
    """proto Tensors (float32) -> arrays (copies: the message's buffer is not kept)."""
    return [np.frombuffer(t.data, dtype="<f4").reshape(tuple(t.shape)).copy() for t in tensors]


def load_request(manifest: Manifest, measure: MeasureConfig):
    """LoadModelRequest: the manifest and the load-time half of ``measure``."""
    pb, _ = load()
    return pb.LoadModelRequest(
        manifest=manifest_to_proto(manifest),
        backend=pb.Backend.Value(measure.backend.upper()),
        threads=measure.threads, cpu_affinity=list(measure.cpu_affinity),
        pin_big_cores=measure.pin_big_cores)


def loaded_model(r) -> LoadedModel:
    """LoadModelResponse -> LoadedModel."""
    return LoadedModel(r.handle, r.init_ns, r.threads, tuple(r.cpu_affinity), r.affinity_note)


def benchmark_request(handle: str, measure: MeasureConfig):
    """BenchmarkRequest: the benchmark-time half of ``measure`` (seconds become the proto's
    whole milliseconds and microseconds, rounded up so an asked-for time is never cut)."""
    pb, _ = load()
    return pb.BenchmarkRequest(handle=handle, runs=measure.runs, warmup=measure.warmup,
                               per_layer=measure.per_layer,
                               warmup_min_ms=_whole(measure.warmup_min_s, 1e3, "warmup_min_s"),
                               pause_us=_whole(measure.pause_s, 1e6, "pause_s"))


def _whole(seconds: float, per_second: float, what: str) -> int:
    """``seconds`` in whole units of 1/``per_second`` s for a uint32 field, rounded up."""
    if not 0 <= seconds < 2**32 / per_second:  # also refuses NaN
        raise ValueError(f"MeasureConfig.{what} {seconds} is not a time in seconds from 0 "
                         f"to {2**32 / per_second:.0f}")
    return int(math.ceil(round(seconds * per_second, 6)))


def benchmark_result(r) -> BenchmarkResult:
    """BenchmarkResponse -> BenchmarkResult."""
    return BenchmarkResult(
        samples_ns=tuple(r.samples_ns),
        warmup_ns=tuple(r.warmup_ns),
        init_ns=r.init_ns,
        threads=r.threads,
        layers=tuple(LayerTiming(x.name, x.op, tuple(x.samples_ns), x.symbol)
                     for x in r.layers),
        telemetry_before=telemetry(r.telemetry_before),
        telemetry_after=telemetry(r.telemetry_after),
        first_run_ns=r.first_run_ns,
        first_run_cold=r.first_run_cold,
        warmup_elapsed_ns=r.warmup_elapsed_ns,
        rss_before_bytes=r.rss_before_bytes,
        peak_rss_bytes=r.peak_rss_bytes,
        memory_note=r.memory_note,
    )


def telemetry(t) -> Telemetry:
    """proto Telemetry -> Telemetry."""
    return Telemetry(timestamp_ns=t.timestamp_ns,
                     core_freq_khz={c.id: c.cur_freq_khz for c in t.cores},
                     thermal_millicelsius={z.name: z.temp_millicelsius for z in t.thermal},
                     missing=tuple(t.missing))
