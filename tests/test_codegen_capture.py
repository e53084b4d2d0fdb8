"""Pure-Python tier: capture + passes + the reference executor agree with torch; errors name
the layer. No compiler needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from codegen_models import every_op_cnn
from torch import nn
from zoo import randomize_bn, rel_err, small_cnn, torchvision_model

from codegen import capture
from codegen.lr import CodegenError, UnsupportedOp
from codegen.passes import fold_bn, fuse_epilogue, run_passes
from codegen.reference import run_reference

TOL = 1e-4
TORCHVISION = [("resnet18", (2, 3, 64, 64)), ("mobilenet_v2", (1, 3, 64, 64)),
               ("vgg16", (1, 3, 64, 64))]


def _check(model: nn.Module, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x)
    graph = run_passes(capture(model, x))
    assert not any(la.op == "batchnorm2d" for la in graph.layers)
    (got,) = run_reference(graph, [x.numpy()])
    assert got.shape == tuple(want.shape)
    assert rel_err(got, want) <= TOL


def test_every_op_cnn_matches_torch() -> None:
    _check(every_op_cnn(), (2, 3, 61, 53))


def test_zoo_small_cnn_matches_torch() -> None:
    _check(small_cnn(), (2, 3, 33, 29))


@pytest.mark.parametrize("name,shape", TORCHVISION, ids=[n for n, _ in TORCHVISION])
def test_torchvision_matches_torch(name: str, shape: tuple[int, ...]) -> None:
    _check(torchvision_model(name), shape)


def test_capture_records_every_op_and_shapes() -> None:
    g = capture(every_op_cnn(), torch.randn(2, 3, 61, 53))
    ops = {la.op for la in g.layers}
    assert ops >= {"conv2d", "linear", "batchnorm2d", "relu", "relu6", "hardswish",
                   "hardsigmoid", "sigmoid", "add", "mul_channel", "maxpool2d", "avgpool2d",
                   "adaptive_avgpool2d", "flatten", "reshape", "concat", "input", "output"}
    assert g.shapes[g.inputs[0]] == (2, 3, 61, 53)
    assert g.shapes[g.outputs[0]] == (2, 10)
    same = next(la for la in g.layers if la.name == "same")
    assert same.attrs["padding"] == (1, 2, 1, 2)  # 'same', even kernel: extra row at the end
    names = [la.name for la in g.layers]
    assert len(names) == len(set(names)), "a module called twice gets a distinct layer name"
    assert "rect:2" in names


def test_fold_and_fuse() -> None:
    model = torchvision_model("resnet18")
    g = capture(model, torch.randn(1, 3, 32, 32))
    folded = fold_bn(g)
    assert sum(la.op == "batchnorm2d" for la in g.layers) == 20
    assert not any(la.op == "batchnorm2d" for la in folded.layers)
    fused = fuse_epilogue(folded)
    # each residual add (and the ReLU after it) is now the epilogue of the conv before it
    assert not any(la.op == "add" for la in fused.layers)
    adds = [la for la in fused.layers if la.epilogue[:1] == ("add",)]
    assert len(adds) == 8 and all(la.op == "conv2d" and la.epilogue == ("add", "relu")
                                  for la in adds)
    assert not any(la.op == "relu" for la in fused.layers)
    conv1 = next(la for la in fused.layers if la.name == "conv1")
    assert conv1.epilogue == ("relu",) and conv1.params["bias"].shape == (64,)
    assert "conv1" in repr(fused) and "+relu" in repr(conv1)


def test_activation_with_two_consumers_is_not_fused() -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = self.c(x)
            return F.relu(y) + y

    g = run_passes(capture(M(), torch.randn(1, 3, 8, 8)))
    assert [la.op for la in g.steps] == ["conv2d", "relu", "add"]
    assert g.steps[0].epilogue == ()


class _Elu(nn.Module):  # GELU was the example until it became supported (issue 20)
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.ELU())

    def forward(self, x):
        return self.features(x)


def test_unsupported_module_names_layer() -> None:
    with pytest.raises(UnsupportedOp) as e:
        capture(_Elu(), torch.randn(1, 3, 8, 8))
    msg = str(e.value)
    assert msg.startswith('layer "features.3" (ELU): not supported by the code generator; '
                          "replace it with ReLU (search phase 1 does this)")
    assert "supported: conv2d, linear" in msg
    assert isinstance(e.value, CodegenError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("fn,needle", [
    (lambda x: F.hardtanh(x, -1.0, 1.0), "hardtanh(-1.0, 1.0)"),
    # broadcast add/mul/sub compile since issue 20; operands of two ranks do not
    (lambda x: x + torch.flatten(x, 0, 1), "only same-rank operands"),
    (lambda x: x * torch.flatten(x, 0, 1), "only same-rank operands"),
    (lambda x: torch.cat([x, x], dim=2), "dim 2"),
    (lambda x: x + 1.0, "not a tensor"),
    (lambda x: torch.tanh(x), "(tanh): not supported"),
])
def test_unsupported_functional_forms(fn, needle: str) -> None:
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return fn(self.conv(x))

    with pytest.raises(UnsupportedOp, match="layer") as e:
        run_passes(capture(M(), torch.randn(1, 3, 8, 8)))
    assert needle in str(e.value)


def test_batchnorm_not_after_conv_is_a_per_channel_affine_step() -> None:
    """Refused until issue 20: now a depthwise 1x1 conv (scale, shift) with the ReLU after it
    fused, equal to torch."""
    m = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.ReLU()))
    x = torch.randn(1, 3, 8, 8)
    g = run_passes(capture(m, x))
    bn = next(la for la in g.layers if la.name == "2")
    assert bn.op == "conv2d" and bn.attrs["groups"] == 4 and bn.epilogue == ("relu",)
    (got,) = run_reference(g, [x])
    with torch.no_grad():
        assert np.allclose(got, m(x).numpy(), rtol=1e-5, atol=1e-6)


def test_padding_mode_refused_and_training_flag_restored() -> None:
    m = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"))
    m.train()
    with pytest.raises(UnsupportedOp, match="padding_mode='reflect'"):
        capture(m, torch.randn(1, 3, 8, 8))
    assert m.training
