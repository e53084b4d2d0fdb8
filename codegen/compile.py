"""compile_model: nn.Module -> a Bundle folder (manifest.json, kernels, weight blob).

capture -> passes -> lay out weights -> emit (the toolchain's language) -> toolchain -> pack
weights -> manifest. The toolchain picks the target: ``HostToolchain`` (default) gives a CPU
bundle with a kernel library and ``kernels.c`` (for people to read; not an artifact);
``OpenClToolchain(precision="fp32"|"fp16")`` gives a GPU bundle whose ``kernels.cl`` is the
artifact; ``Arm64AndroidToolchain(precision="fp16")`` a CPU bundle in NEON FP16 (dense and sparse
layers). Weights are laid out before emitting because OpenCL kernels bake their offsets in.
Also writes ``report.json`` (a CompileReport: stage times and the memory plan's numbers; not
an artifact).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch

from codegen.bundle import (
    Bundle,
    Manifest,
    ParamRef,
    PrepareStep,
    Step,
    TensorSpec,
    artifact_ref,
)
from codegen.emit.cstyle import CStyleLanguage
from codegen.frontend import capture
from codegen.lr import CodegenError, Graph, numel
from codegen.passes import TuningLookup, pipeline, run_passes
from codegen.passes.memory_plan import align
from codegen.passes.quantize import fp32_layers, quantize_int8
from codegen.passes.sparse import sparse_summary, with_schemes
from codegen.toolchain import CToolchain, HostToolchain, OpenClToolchain

REPORT_NAME = "report.json"
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
    weights_bytes: int = 0  # the shipped weight blob (what an upload sends)
    loaded_weights_bytes: int = 0  # the weight buffer the prepare steps build at load time
    source_bytes: int = 0
    # layers given a pruning scheme: "storage (m filters per index list, density)", or why
    # they stayed dense
    sparse: dict[str, str] = field(default_factory=dict)
    # int8 bundles: the layers that stay float32, and why
    fp32_layers: dict[str, str] = field(default_factory=dict)

    def save(self, bundle_dir: Path) -> None:
        (Path(bundle_dir) / REPORT_NAME).write_text(json.dumps(asdict(self), indent=1) + "\n")


def read_report(bundle_dir: str | Path) -> CompileReport:
    """The CompileReport that compile_model left in ``bundle_dir``."""
    d = json.loads((Path(bundle_dir) / REPORT_NAME).read_text())
    d["peak_tensors"] = tuple(d["peak_tensors"])
    return CompileReport(**d)


def compile_model(module: torch.nn.Module,
                  example_inputs: torch.Tensor | Sequence[torch.Tensor],
                  out_dir: str | Path, name: str = "model",
                  toolchain: CToolchain | OpenClToolchain | None = None,
                  progress: Callable[[str], None] | None = None,
                  tuning: TuningLookup | None = None,
                  schemes: Mapping[str, str] | None = None, sparse: str = "auto",
                  compact_weights: bool = True,
                  calibration: Sequence[Sequence[torch.Tensor]] | None = None,
                  keep_fp32: Sequence[str] = (), calibration_method: str = "minmax") -> Bundle:
    """Compile ``module`` for the shapes of ``example_inputs`` into the bundle ``out_dir``.

    ``toolchain`` picks the target: None (the host's cc, a CPU bundle), a ``CToolchain``, or
    ``OpenClToolchain(precision="fp32"|"fp16")`` for a GPU bundle (see ``toolchain_for``).
    ``tuning(layer, graph, target) -> dict | None`` overrides the cost model's tuning of the
    layers it answers for (a tuning database's lookup; asked before the layout pass, about
    logical shapes; see ``codegen/passes/tune.py``). ``schemes`` maps a layer's module path
    to the pruning scheme its zeros follow (one of ``codegen.SPARSE_SCHEMES``): the sparse
    pass picks each such layer's storage format and kernel from it
    (``codegen/passes/sparse.py``); layers not named stay dense. ``sparse`` "auto" keeps a
    layer dense where its density makes the dense kernel faster, "always" uses every sparse
    kernel there is. ``compact_weights`` False ships every param as the kernels read it (no
    prepare steps: format 1's blobs, several times larger where Winograd layers are).
    With an int8 toolchain (``HostToolchain(precision="int8")``, or
    ``Arm64AndroidToolchain(precision="int8")``: SDOT) the layers that have int8
    kernels run in int8, scales calibrated on ``calibration`` (batches, each a list of the
    model's inputs; default: ``example_inputs`` alone), the rest (and ``keep_fp32``, layer
    names) in float32 (``codegen/passes/quantize.py``; the report's ``fp32_layers`` says
    why); ``calibration_method``: "minmax" or "percentile:P" (``codegen.quant.calibrate``)."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise CodegenError(f"bundle name {name!r}: use letters, digits, '_', '.', '-' only")
    toolchain = toolchain or HostToolchain()
    out = Path(out_dir)  # made after capture and the passes: a refused model leaves no folder
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
    if schemes:
        graph = with_schemes(graph, schemes)
    stage("capture")
    say("passes")
    lang = toolchain.language()
    if tuning is not None and lang.scalar == "_Float16":
        from codegen.autotune.db import DbLookup

        if isinstance(tuning, DbLookup):
            # the tuning database keys entries by target and ISA, not precision (an fp16
            # target reports the fp32 NEON key): its entries are fp32 timings, so fp16 keeps
            # the cost model's choices until the keys carry the precision
            tuning = None
    int8 = None
    if getattr(toolchain, "precision", "fp32") == "int8":
        isa = toolchain.isa()
        batches = calibration if calibration is not None else [
            [example_inputs] if isinstance(example_inputs, torch.Tensor) else example_inputs]
        batches = [[np.asarray(t.detach().cpu() if isinstance(t, torch.Tensor) else t,
                               np.float32) for t in b] for b in batches]
        int8 = partial(quantize_int8, calibration=batches, lanes=isa.floats,
                       keep_fp32=tuple(keep_fp32), method=calibration_method)
    graph = run_passes(graph, pipeline(lang.elem_bytes, toolchain.isa(), tuning,
                                       toolchain.target() if tuning is not None else None,
                                       sparse=sparse, int8=int8))
    if int8 is not None:
        report.fp32_layers = fp32_layers(graph, toolchain.isa().floats, keep_fp32)
    stage("passes")
    say("emit")
    params = [lang.layer_params(graph, la) for la in graph.steps]
    param_refs = layout_weights(params, lang.elem_bytes)
    prepare_of = getattr(lang, "prepare_params", None)
    prepared = [prepare_of(graph, la, i) if prepare_of and compact_weights else ()
                for i, la in enumerate(graph.steps)]
    prog = lang.render(graph, param_refs)
    source = prog.source
    if any(prepared):
        preps = [p for step in prepared for p in step if p is not None]
        helpers = dict(h for p in preps for h in p.helpers)
        source += "\n" + "\n".join([lang.prepare_prelude(), *helpers.values(),
                                     *(p.source for p in preps)])
    out.mkdir(parents=True, exist_ok=True)
    (out / toolchain.source_name).write_text(source, encoding="utf-8")
    stage("emit")
    say("compile")
    kernels = toolchain.build(source, out, name)
    stage("compile")
    say("pack")
    if any(prepared):
        prepare = write_compact_weights(graph, params, param_refs, prepared,
                                        out / WEIGHTS_NAME, lang)
    else:
        write_weights(params, param_refs, out / WEIGHTS_NAME, lang)
        prepare = ()
    weights_bytes = align(max((r.offset + r.nbytes for refs in param_refs for r in refs),
                              default=0))
    if not prepare:
        weights_bytes = (out / WEIGHTS_NAME).stat().st_size
    stage("pack")

    say("manifest")
    tensors = _tensor_list(graph, lang)
    index = {t.name: i for i, t in enumerate(tensors)}
    steps = tuple(
        Step(name=s.layer.name, op=s.layer.op, symbol=s.symbol,
             inputs=tuple(index[t] for t in s.layer.inputs), output=index[s.layer.output],
             params=refs, work_items=s.work_items, flops=s.flops, local_size=s.local_size)
        for s, refs in zip(prog.steps, param_refs, strict=True))
    manifest = Manifest(
        name=name, target=toolchain.target(), toolchain=toolchain.record(),
        artifacts=(*kernels, artifact_ref(out, "weights", "weights", WEIGHTS_NAME)),
        tensors=tuple(tensors), inputs=tuple(index[t] for t in graph.inputs),
        outputs=tuple(index[t] for t in graph.outputs),
        arena_bytes=graph.plan.arena_bytes,
        # the largest transform buffers any step asks for (Winograd convs)
        scratch_bytes_per_thread=max((s.scratch_bytes for s in prog.steps), default=0),
        steps=steps, weights_bytes=weights_bytes, prepare=prepare,
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
    report.loaded_weights_bytes = weights_bytes
    report.source_bytes = len(source)
    report.sparse = sparse_summary(graph)
    report.save(out)
    say("done")
    return bundle


def _tensor_list(graph: Graph, lang: CStyleLanguage) -> list[TensorSpec]:
    """Every tensor a step or the graph's ends refer to; aliases share their root's offset.

    fp16 CPU bundles keep their ends in float32 (``codegen/passes/precision.py``); their
    half-precision intermediates are declared as float32 words of the same bytes, shape
    ``(ceil(bytes / 4),)``, because the runner's CPU backend (and ``load_bundle``'s check,
    which mirrors it) accept only float32 tensors today. Only the arena offset and size of an
    intermediate matter to the runner; once its manifest check takes "float16" on the CPU,
    these become honest ``float16`` specs of the real shape (``FP16_AS_FLOAT32_WORDS``)."""
    names: list[str] = []
    for t in (*graph.inputs, *(t for la in graph.steps for t in (*la.inputs, la.output)),
              *graph.outputs):
        if t not in names:
            names.append(t)
    specs = []
    for t in names:
        shape, elem = graph.shapes[t], lang.tensor_scalar(graph, t)
        dtype, eb = (lang.dtype, lang.elem_bytes) if elem == lang.scalar else ("float32", 4)
        nbytes = numel(shape) * eb
        if elem == "uint8_t":  # an int8 graph's uint8 tensor, as float32 words
            nbytes = -(-numel(shape) // 4) * 4
            shape, dtype = (nbytes // 4,), "float32"
        if elem == "_Float16" and FP16_AS_FLOAT32_WORDS:
            nbytes = -(-nbytes // 4) * 4
            shape, dtype = (nbytes // 4,), "float32"
        specs.append(TensorSpec(name=t, shape=shape, dtype=dtype,
                                arena_offset=graph.plan.offsets[t], nbytes=nbytes))
    return specs


# fp16 CPU intermediates travel as float32 words (see _tensor_list): the runner's CPU manifest
# check refuses dtype "float16" (android_app/src/main/cpp/core/manifest.cpp, check_tensor).
FP16_AS_FLOAT32_WORDS = True


def layout_weights(params: Sequence[Sequence[np.ndarray]], elem_bytes: int = 4
                   ) -> list[tuple[ParamRef, ...]]:
    """Where each param goes in the weight blob: in order, each 64-byte aligned."""
    refs: list[tuple[ParamRef, ...]] = []
    pos = 0
    for step_params_ in params:
        step_refs = []
        for p in step_params_:
            start = align(pos)
            pos = start + p.size * elem_bytes
            step_refs.append(ParamRef(offset=start, nbytes=p.size * elem_bytes))
        refs.append(tuple(step_refs))
    return refs


def write_weights(params: Sequence[Sequence[np.ndarray]],
                  refs: Sequence[Sequence[ParamRef]], path: Path, lang: CStyleLanguage) -> None:
    """Write the blob ``layout_weights`` planned: little-endian float32 or float16, zero
    padding between params and up to a 64-byte multiple at the end."""
    dtype = {"float32": "<f4", "float16": "<f2"}[lang.dtype]
    pos = 0
    with open(path, "wb") as f:
        for step_params_, step_refs in zip(params, refs, strict=True):
            for p, ref in zip(step_params_, step_refs, strict=True):
                data = np.ascontiguousarray(p, dtype=dtype).tobytes()
                assert len(data) == ref.nbytes and ref.offset >= pos
                f.write(b"\0" * (ref.offset - pos))
                f.write(data)
                pos = ref.offset + len(data)
        f.write(b"\0" * (align(pos) - pos))


def write_compact_weights(graph: Graph, params: Sequence[Sequence[np.ndarray]],
                          refs: Sequence[Sequence[ParamRef]], prepared: Sequence[Sequence],
                          path: Path, lang: CStyleLanguage) -> tuple[PrepareStep, ...]:
    """Write the shipped blob of a bundle whose kernels read some params in a larger layout
    than they need to travel in (``prepared[step][k]``: a ``Prepared`` or None), and return
    the prepare steps that rebuild the layout ``layout_weights`` planned (``refs``, offsets
    in the weight buffer): each prepared param's raw float32 array with its kernel, and every
    run of params that ship as they are as one copy. Both layouts align each param to 64
    bytes from 64-aligned starts, so a run's params sit at the same distances in both."""
    dtype = {"float32": "<f4", "float16": "<f2"}[lang.dtype]
    steps: list[PrepareStep] = []
    run: list = []  # [name, src start, dst start, dst end] of the open copy run

    def close() -> None:
        if run:
            n = run[3] - run[2]
            steps.append(PrepareStep(name=run[0], symbol="", src=ParamRef(run[1], n),
                                     dst=ParamRef(run[2], n)))
            run.clear()

    pos = 0
    with open(path, "wb") as f:
        def put(data: bytes, at: int) -> None:
            nonlocal pos
            assert at >= pos
            f.write(b"\0" * (at - pos))
            f.write(data)
            pos = at + len(data)

        for la, step_params, step_refs, step_prep in zip(graph.steps, params, refs, prepared,
                                                          strict=True):
            for k, (p, ref) in enumerate(zip(step_params, step_refs, strict=True)):
                prep = step_prep[k] if k < len(step_prep) else None
                if prep is not None:
                    close()
                    raw = np.ascontiguousarray(prep.raw, dtype="<f4").tobytes()
                    at = align(pos)
                    put(raw, at)
                    steps.append(PrepareStep(name=la.name, symbol=prep.symbol,
                                             src=ParamRef(at, len(raw)), dst=ref,
                                             work_items=prep.work_items))
                    continue
                data = np.ascontiguousarray(p, dtype=dtype).tobytes()
                assert len(data) == ref.nbytes
                if not run:
                    run[:] = [la.name, align(pos), ref.offset, ref.offset]
                at = run[1] + ref.offset - run[2]
                assert at == align(pos)
                put(data, at)
                run[3] = ref.offset + ref.nbytes
        close()
        f.write(b"\0" * (align(pos) - pos))
    return tuple(steps)
