"""compile_model: nn.Module -> a Bundle folder (manifest.json, kernel library, weight blob).

capture -> passes -> emit C -> toolchain -> pack weights -> manifest. Also writes
``kernels.c`` (the generated source, for people to read; not an artifact) and ``report.json``
(a CompileReport: stage times and the memory plan's numbers; not an artifact either).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from codegen.bundle import (
    Bundle,
    Manifest,
    ParamRef,
    Step,
    TensorSpec,
    artifact_ref,
)
from codegen.capture import capture
from codegen.emit.c import emit_c
from codegen.lr import CodegenError, Graph, numel
from codegen.passes import run_passes
from codegen.passes.memory_plan import align
from codegen.toolchain import CToolchain, HostToolchain

REPORT_NAME = "report.json"
SOURCE_NAME = "kernels.c"
WEIGHTS_NAME = "weights.bin"


@dataclass
class CompileReport:
    name: str
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    flops: int = 0
    arena_bytes: int = 0
    peak_bytes: int = 0  # largest live set: a lower bound for any memory plan
    peak_step: int = 0
    peak_tensors: tuple[str, ...] = ()
    weights_bytes: int = 0
    source_bytes: int = 0

    def save(self, bundle_dir: Path) -> None:
        (Path(bundle_dir) / REPORT_NAME).write_text(json.dumps(asdict(self), indent=1) + "\n")


def read_report(bundle_dir: str | Path) -> CompileReport:
    """The CompileReport that compile_model left in ``bundle_dir``."""
    d = json.loads((Path(bundle_dir) / REPORT_NAME).read_text())
    d["peak_tensors"] = tuple(d["peak_tensors"])
    return CompileReport(**d)


def compile_model(module: torch.nn.Module,
                  example_inputs: torch.Tensor | Sequence[torch.Tensor],
                  out_dir: str | Path, name: str = "model", toolchain: CToolchain | None = None,
                  progress: Callable[[str], None] | None = None) -> Bundle:
    """Compile ``module`` for the shapes of ``example_inputs`` into the bundle ``out_dir``."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise CodegenError(f"bundle name {name!r}: use letters, digits, '_', '.', '-' only")
    toolchain = toolchain or HostToolchain()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = CompileReport(name=name)
    t_start = last = time.perf_counter()

    def stage(s: str) -> None:
        nonlocal last
        now = time.perf_counter()
        report.stage_seconds[s] = round(now - last, 4)
        last = now

    def say(s: str) -> None:
        if progress is not None:
            progress(s)

    say("capture")
    graph = capture(module, example_inputs)
    stage("capture")
    say("passes")
    graph = run_passes(graph)
    stage("passes")
    say("emit")
    prog = emit_c(graph)
    (out / SOURCE_NAME).write_text(prog.source)
    stage("emit")
    say("compile")
    lib = f"lib{name}.so"
    toolchain.compile(prog.source, out / lib)
    stage("compile")
    say("pack")
    param_refs = _pack_weights([s.params for s in prog.steps], out / WEIGHTS_NAME)
    stage("pack")

    say("manifest")
    tensors = _tensor_list(graph)
    index = {t.name: i for i, t in enumerate(tensors)}
    steps = tuple(
        Step(name=s.layer.name, op=s.layer.op, symbol=s.symbol,
             inputs=tuple(index[t] for t in s.layer.inputs), output=index[s.layer.output],
             params=refs, work_items=s.work_items, flops=s.flops)
        for s, refs in zip(prog.steps, param_refs, strict=True))
    manifest = Manifest(
        name=name, target=toolchain.target(), toolchain=toolchain.record(),
        artifacts=(artifact_ref(out, "kernels", "kernel_library", lib),
                   artifact_ref(out, "weights", "weights", WEIGHTS_NAME)),
        tensors=tuple(tensors), inputs=tuple(index[t] for t in graph.inputs),
        outputs=tuple(index[t] for t in graph.outputs),
        arena_bytes=graph.plan.arena_bytes, scratch_bytes_per_thread=0, steps=steps,
    ).with_hash()
    bundle = Bundle(path=out, manifest=manifest)
    bundle.save_manifest()
    stage("manifest")

    plan = graph.plan
    report.seconds = round(time.perf_counter() - t_start, 4)
    report.steps = len(steps)
    report.flops = sum(s.flops for s in steps)
    report.arena_bytes, report.peak_bytes = plan.arena_bytes, plan.peak_bytes
    report.peak_step, report.peak_tensors = plan.peak_step, plan.peak_tensors
    report.weights_bytes = (out / WEIGHTS_NAME).stat().st_size
    report.source_bytes = len(prog.source)
    report.save(out)
    say("done")
    return bundle


def _tensor_list(graph: Graph) -> list[TensorSpec]:
    """Every tensor a step or the graph's ends refer to; aliases share their root's offset."""
    names: list[str] = []
    for t in (*graph.inputs, *(t for la in graph.steps for t in (*la.inputs, la.output)),
              *graph.outputs):
        if t not in names:
            names.append(t)
    return [TensorSpec(name=t, shape=graph.shapes[t], dtype="float32",
                       arena_offset=graph.plan.offsets[t], nbytes=numel(graph.shapes[t]) * 4)
            for t in names]


def _pack_weights(params: Sequence[Sequence[np.ndarray]], path: Path
                  ) -> list[tuple[ParamRef, ...]]:
    """Write every param as little-endian float32, each 64-byte aligned; return the refs."""
    refs: list[tuple[ParamRef, ...]] = []
    pos = 0
    with open(path, "wb") as f:
        for step_params in params:
            step_refs = []
            for p in step_params:
                data = np.ascontiguousarray(p, dtype="<f4").tobytes()
                start = align(pos)
                f.write(b"\0" * (start - pos))
                f.write(data)
                pos = start + len(data)
                step_refs.append(ParamRef(offset=start, nbytes=len(data)))
            refs.append(tuple(step_refs))
        f.write(b"\0" * (align(pos) - pos))
    return refs
