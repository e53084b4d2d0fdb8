"""Pure-Python tier: the static memory plan and the manifest's JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch
from codegen_models import every_op_cnn
from zoo import torchvision_model

from codegen import capture
from codegen.bundle import (
    ArtifactRef,
    Manifest,
    ParamRef,
    Step,
    Target,
    TensorSpec,
    Toolchain,
)
from codegen.lr import numel
from codegen.passes import run_passes
from codegen.passes.memory_plan import ALIGN, buffer_size

MODELS = [("every_op", every_op_cnn, (2, 3, 61, 53)),
          ("resnet18", lambda: torchvision_model("resnet18"), (1, 3, 64, 64)),
          ("mobilenet_v2", lambda: torchvision_model("mobilenet_v2"), (1, 3, 64, 64))]


@pytest.mark.parametrize("name,factory,shape", MODELS, ids=[m[0] for m in MODELS])
def test_live_buffers_never_overlap(name, factory, shape) -> None:
    g = run_passes(capture(factory(), torch.randn(shape)))
    plan = g.plan
    roots = list(plan.lifetimes)
    for r in roots:
        assert plan.offsets[r] % ALIGN == 0
        assert plan.offsets[r] + buffer_size(g, r) <= plan.arena_bytes
    for i, a in enumerate(roots):
        for b in roots[i + 1:]:
            (a0, a1), (b0, b1) = plan.lifetimes[a], plan.lifetimes[b]
            if a0 <= b1 and b0 <= a1:  # both live at some step
                oa, ob = plan.offsets[a], plan.offsets[b]
                assert oa + buffer_size(g, a) <= ob or ob + buffer_size(g, b) <= oa, (a, b)
    # every step's inputs are live when it runs; outputs live to the end
    for i, la in enumerate(g.steps):
        for t in la.inputs:
            lo, hi = plan.lifetimes[g.alias_root(t)]
            assert lo <= i <= hi
    for t in g.outputs:
        assert plan.lifetimes[g.alias_root(t)][1] == len(g.steps)
    for t in g.inputs:
        assert plan.lifetimes[t][0] == 0
    # the peak is a real live set, a lower bound the arena respects
    assert plan.peak_bytes == sum(buffer_size(g, t) for t in plan.peak_tensors)
    assert max(buffer_size(g, r) for r in roots) <= plan.peak_bytes <= plan.arena_bytes
    assert plan.arena_bytes < sum(buffer_size(g, r) for r in roots)  # buffers are reused


def test_aliases_share_their_source_buffer() -> None:
    g = run_passes(capture(every_op_cnn(), torch.randn(2, 3, 61, 53)))
    aliases = [la for la in g.layers if la.op in ("flatten", "reshape")]
    assert len(aliases) == 3
    for la in aliases:
        root = g.alias_root(la.output)
        assert root != la.output and g.plan.offsets[la.output] == g.plan.offsets[root]
        assert numel(g.shapes[la.output]) == numel(g.shapes[root])
    assert "peak live" in repr(g.plan)


def _manifest() -> Manifest:
    return Manifest(
        name="m", target=Target("x86_64", "linux", "x86_64", ("avx2",)),
        toolchain=Toolchain("/usr/bin/cc", "cc 12", ("-O3",)),
        artifacts=(ArtifactRef("kernels", "kernel_library", "libm.so", "ab" * 32, 10),
                   ArtifactRef("weights", "weights", "weights.bin", "cd" * 32, 128)),
        tensors=(TensorSpec("x", (1, 3, 4, 4), "float32", 0, 192),
                 TensorSpec("y", (1, 48), "float32", 192, 192)),
        inputs=(0,), outputs=(1,), arena_bytes=384, scratch_bytes_per_thread=0,
        steps=(Step("conv", "conv2d", "npas_step_0_conv2d", (0,), 1,
                    (ParamRef(0, 64), ParamRef(64, 4)), 3, 100),), weights_bytes=128)


def test_manifest_json_round_trip_with_hash() -> None:
    m = _manifest().with_hash()
    assert len(m.content_hash) == 64
    back = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back == m and back.content_hash == m.content_hash
    assert back.with_hash().content_hash == m.content_hash
    changed = Manifest.from_dict({**m.to_dict(), "arena_bytes": 512})
    assert changed.with_hash().content_hash != m.content_hash
