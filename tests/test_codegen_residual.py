"""Residual adds fused into the producing conv's epilogue (codegen/passes/fuse_epilogue.py).

``y = conv(x) + skip`` becomes one conv step with the skip as its second input and the
epilogue ("add", ...): checked in the LR (no standalone add left in resnet18, the reference
executor against torch), then compiled on the host with the vector kernels (direct and
Winograd) and the scalar ones, against torch. A conv output with two consumers is not fused.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from ctypes_exec import run_bundle
from test_codegen_vector import Seq
from torch import nn
from zoo import rel_err, torchvision_model

from codegen import HostToolchain, capture, compile_model, cost
from codegen.lr import Layer
from codegen.passes import run_passes
from codegen.passes.memory_plan import buffer_size
from codegen.reference import run_reference

TOL = 1e-4
WINOGRAD_TOL = 1e-3  # the transforms round more than a direct sum


def _resnet18() -> tuple[nn.Module, torch.Tensor]:
    x = torch.randn((1, 3, 64, 64), generator=torch.Generator().manual_seed(7))
    return torchvision_model("resnet18").eval(), x


def _two_consumers(self, x):
    (a,) = self.mods
    y = a(x)
    return torch.cat([F.relu(y + x), torch.sigmoid(y)], 1)  # y feeds the add and the sigmoid


def test_resnet18_residual_adds_fuse_into_convs() -> None:
    model, x = _resnet18()
    graph = run_passes(capture(model, x))
    assert not [la for la in graph.layers if la.op == "add"]
    fused = [la for la in graph.layers if la.epilogue[:1] == ("add",)]
    assert len(fused) == 8  # one per basic block
    assert all(la.op == "conv2d" and len(la.inputs) == 2 for la in fused)
    assert all(la.epilogue == ("add", "relu") for la in fused)
    # the skip lives until its conv runs, in bytes the conv's output does not touch
    plan, steps = graph.plan, list(graph.steps)
    for la in fused:
        skip, out = la.inputs[1], la.output
        assert plan.lifetimes[graph.alias_root(skip)][1] >= steps.index(la)
        s0, o0 = plan.offsets[skip], plan.offsets[out]
        assert s0 + buffer_size(graph, skip) <= o0 or o0 + buffer_size(graph, out) <= s0
    with torch.no_grad():
        want = model(x)
    (got,) = run_reference(graph, [x.numpy()])
    assert rel_err(got, want) <= TOL


def test_conv_output_with_two_consumers_is_not_fused() -> None:
    model = Seq(nn.Conv2d(3, 3, 3, padding=1), fn=_two_consumers).eval()
    x = torch.randn((1, 3, 9, 7), generator=torch.Generator().manual_seed(2))
    graph = run_passes(capture(model, x))
    assert [la.epilogue for la in graph.layers if la.op == "add"] == [("relu",)]
    assert all("add" not in la.epilogue for la in graph.layers)
    with torch.no_grad():
        want = model(x)
    (got,) = run_reference(graph, [x.numpy()])
    assert rel_err(got, want) <= TOL


def _algo(algo: str):
    def lookup(la: Layer, graph, target):
        return {"algo": algo} if cost.winograd_ok(la) else None
    return lookup


@pytest.mark.host
@pytest.mark.parametrize("algo", [None, "direct"])
def test_resnet18_fused_bundle_matches_torch(cc, tmp_path, algo) -> None:
    """Default tuning puts resnet18's 3x3 convs on Winograd; ``direct`` forces the direct
    kernel everywhere."""
    model, x = _resnet18()
    bundle = compile_model(model, x, tmp_path / "b", name="resnet18",
                           tuning=_algo(algo) if algo else None)
    assert "add" not in [s.op for s in bundle.manifest.steps]
    src = (bundle.path / "kernels.c").read_text()
    assert re.search(r"conv2d_3x3s1_nchw\d+c__\w+_add_relu\b", src)
    if algo is None:
        assert re.search(r"winograd\d_output_nchw\d+c__\w+_add_relu\b", src)
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = run_bundle(bundle, [x.numpy()])
    assert rel_err(got, want) <= (WINOGRAD_TOL if algo is None else TOL)


class _Scalar(HostToolchain):
    vectorize = False


@pytest.mark.host
def test_scalar_kernels_add_the_residual(cc, tmp_path) -> None:
    model, x = _resnet18()
    bundle = compile_model(model, x, tmp_path / "b", name="resnet18_scalar",
                           toolchain=_Scalar())
    assert "add" not in [s.op for s in bundle.manifest.steps]
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = run_bundle(bundle, [x.numpy()])
    assert rel_err(got, want) <= TOL


@pytest.mark.host
def test_two_consumers_compiled_keeps_the_add(cc, tmp_path) -> None:
    model = Seq(nn.Conv2d(3, 3, 3, padding=1), fn=_two_consumers).eval()
    x = torch.randn((1, 3, 9, 7), generator=torch.Generator().manual_seed(2))
    bundle = compile_model(model, x, tmp_path / "b", name="two")
    assert "add" in [s.op for s in bundle.manifest.steps]
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = run_bundle(bundle, [x.numpy()])
    assert rel_err(got, want) <= TOL
