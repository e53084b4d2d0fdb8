"""Pure-Python tier: resolving the MODEL argument."""

import pytest
import torch

from host.models import ModelSpecError, load_model, parse_shape


def test_parse_shape():
    assert parse_shape("1,3,224,224") == (1, 3, 224, 224)
    assert parse_shape("1x3x32x32") == (1, 3, 32, 32)
    for bad in ("", "1,a", "1,0,3"):
        with pytest.raises(ModelSpecError):
            parse_shape(bad)


def test_torchvision_model_without_download():
    m = load_model("resnet18")
    assert not m.training
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_unknown_model_names_the_fix():
    with pytest.raises(ModelSpecError, match="resnet"):
        load_model("resnet")


def test_factory_path():
    m = load_model("torch.nn:Identity")
    assert isinstance(m, torch.nn.Identity)
    with pytest.raises(ModelSpecError, match="cannot import"):
        load_model("no_such_module_xyz:make")


def test_export_file(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    loaded = load_model(str(path))
    torch.testing.assert_close(loaded(x), model(x))
    with pytest.raises(ModelSpecError, match="no such file"):
        load_model(str(tmp_path / "missing.pt2"))
