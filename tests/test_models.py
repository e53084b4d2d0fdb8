"""Pure-Python tier: resolving the MODEL argument, and models whose module moved."""

import io

import pytest
import torch

from host.models import MOVED_MODULES, ModelSpecError, load_checkpoint, load_model, parse_shape
from host.models.zoo import DigitsNet


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


def test_a_moved_model_module_still_loads_by_its_old_name(tmp_path):
    """Journals of earlier searches name the old module, in the model spec and inside their
    pickled checkpoints; both still load (what --resume of such a run needs)."""
    assert MOVED_MODULES["host.search.zoo"] == "host.models.zoo"
    assert isinstance(load_model("host.search.zoo:digits_tiny"), DigitsNet)
    buf = io.BytesIO()
    torch.save(DigitsNet((4, 4, 4, 4)), buf, _use_new_zipfile_serialization=False)
    old = buf.getvalue().replace(b"host.models.zoo", b"host.search.zoo")  # same length
    assert b"host.models.zoo" not in old
    (tmp_path / "old.pt").write_bytes(old)
    m = load_checkpoint(tmp_path / "old.pt")
    assert isinstance(m, DigitsNet) and m.stem[0].out_channels == 4



def test_a_factory_module_that_imports_torchvision_loads(tmp_path):
    """A module:factory whose module does `import torchvision` (a broken CUDA wheel next to a
    CPU torch dies there with "torchvision::nms does not exist"), in a fresh interpreter."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "tv_factory.py").write_text(
        "import torchvision\n\n\ndef make():\n    return torchvision.models.resnet18()\n")
    root = Path(__file__).resolve().parents[1]
    code = ("from host.models import load_model; "
            "print(type(load_model('tv_factory:make')).__name__)")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                       text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ResNet"
