"""Capture of torch.export programs (the CLI's .pt2 input): a saved and reloaded exported model
gives the same LR as the nn.Module it came from, and agrees with torch. Pure Python, except the
one host-tier test that compiles an exported model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from codegen_models import every_op_cnn
from ctypes_exec import run_bundle
from torch import nn
from zoo import rel_err, small_cnn, torchvision_model

from codegen import compile_model
from codegen.frontend import capture, is_exported
from codegen.lr import Graph, UnsupportedOp
from codegen.passes import run_passes
from codegen.reference import run_reference

TOL = 1e-4
MODELS = [("small_cnn", small_cnn, (1, 3, 32, 32)),
          ("every_op", every_op_cnn, (2, 3, 61, 53)),
          ("resnet18", lambda: torchvision_model("resnet18"), (1, 3, 64, 64)),
          ("mobilenet_v2", lambda: torchvision_model("mobilenet_v2"), (1, 3, 64, 64))]


def _exported(model: nn.Module, x: torch.Tensor, tmp_path: Path) -> nn.Module:
    """What the CLI does with a .pt2 file: export, save, load, take the module."""
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model.eval(), (x,)), str(path))
    return torch.export.load(str(path)).module()


def _summary(g: Graph) -> list[tuple]:
    return [(la.name, la.op, la.attrs, g.shapes.get(la.output), sorted(la.params))
            for la in g.layers]


@pytest.mark.parametrize("name,factory,shape", MODELS, ids=[m[0] for m in MODELS])
def test_exported_model_gives_the_eager_lr(tmp_path, name, factory, shape) -> None:
    model = factory()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(x)
    loaded = _exported(model, x, tmp_path)
    assert is_exported(loaded) and not is_exported(model)
    x_before = x.clone()

    eager, exported = capture(model, x), capture(loaded, x)
    assert torch.equal(x, x_before), "capture must not write into the example inputs"
    assert _summary(exported) == _summary(eager)
    if name == "resnet18":
        assert {"layer1.0.conv1", "layer1.0.add", "layer1.0.relu:2"} <= {
            la.name for la in exported.layers}
    for a, b in zip(eager.layers, exported.layers, strict=True):
        for k in a.params:
            np.testing.assert_array_equal(a.params[k], b.params[k], err_msg=f"{a.name}.{k}")

    graph = run_passes(exported)
    assert not any(la.op == "batchnorm2d" for la in graph.layers)
    (got,) = run_reference(graph, [x.numpy()])
    assert got.shape == tuple(want.shape)
    assert rel_err(got, want) <= TOL


class _InPlace(nn.Module):
    """An in-place op whose operand is read again afterwards: the read must see the result."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        y.relu_()
        return y + self.b(x)


def test_in_place_ops_rebind_their_operand(tmp_path) -> None:
    model = _InPlace().eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
    for m in (model, _exported(model, x, tmp_path)):
        g = run_passes(capture(m, x))
        (got,) = run_reference(g, [x.numpy()])
        assert rel_err(got, want) <= TOL, type(m).__name__


class _Elu(nn.Module):  # GELU was the example until it became supported (issue 20)
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.head(F.elu(self.features(x)))


def test_unsupported_aten_op_names_the_layer(tmp_path) -> None:
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(UnsupportedOp) as e:
        capture(_exported(_Elu(), x, tmp_path), x)
    assert str(e.value).startswith('layer "elu" (aten.elu.default): not supported by the '
                                   "code generator; replace it with ReLU (search phase 1 does "
                                   "this); supported: conv2d, linear")


def test_unsupported_aten_op_in_a_layer_module_names_module_and_op(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ELU()).eval()
    x = torch.randn(1, 3, 8, 8)
    with pytest.raises(UnsupportedOp, match=r'^layer "2" \(ELU: aten\.elu\.default\): not '):
        capture(_exported(model, x, tmp_path), x)


def test_training_mode_batch_norm_is_refused(tmp_path) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedOp, match='layer "1" .*training mode.*model.eval'):
        capture(_exported(model, x, tmp_path), x)


@pytest.mark.host
def test_compiled_exported_model_matches_torch(cc, tmp_path) -> None:
    model = small_cnn()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = model(x)
    bundle = compile_model(_exported(model, x, tmp_path), (x,), tmp_path / "b", name="exp")
    (got,) = run_bundle(bundle, [x.numpy()])
    assert got.shape == tuple(want.shape)
    assert rel_err(got, want) <= TOL
    assert {"stem", "se.fc1", "fc", "out"} <= {s.name for s in bundle.manifest.steps}
