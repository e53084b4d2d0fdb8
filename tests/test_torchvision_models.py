"""Every classification model of torchvision either compiles to output equal to PyTorch or is
refused with a message that names a layer and an op (issue 20).

Random weights (``weights=None``, seed 0, BatchNorm with non-trivial statistics), batch 1, the
smallest input each model accepts (its weights' ``min_size``) but at least 32x32, so that a
3x3 conv sees more than its centre tap; ViTs take only their fixed 224x224. Compiled for the
host CPU (vector kernels) and run in-process; rel <= 1e-4, 1e-3 where a conv runs Winograd.

CI runs ``CI_MODELS``: the smallest model of every family (a deterministic subset; the others
only repeat the same blocks at other widths and depths). Every model, with a table of the
results (what the README lists):

    .venv/bin/python tests/test_torchvision_models.py [NAME ...]
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from ctypes_exec import run_bundle  # noqa: E402
from zoo import randomize_bn, rel_err  # noqa: E402

from codegen import compile_model  # noqa: E402
from codegen.lr import UnsupportedOp  # noqa: E402
from host.models.compat import import_torchvision  # noqa: E402

CI_MODELS = ("alexnet", "convnext_tiny", "densenet121", "efficientnet_b0", "efficientnet_v2_s",
             "googlenet", "inception_v3", "maxvit_t", "mnasnet0_5", "mobilenet_v2",
             "mobilenet_v3_small", "regnet_x_400mf", "regnet_y_400mf", "resnet18",
             "resnext50_32x4d", "shufflenet_v2_x0_5", "squeezenet1_1", "swin_t", "swin_v2_t",
             "vgg11", "vit_b_32", "wide_resnet50_2")
TOL, TOL_WINOGRAD = 1e-4, 1e-3
# a refusal names a layer (its module path) and the op in parentheses
REFUSAL = re.compile(r'layers? "[^"]+".* \([\w.:\- ]+\): ')


def all_models() -> list[str]:
    return list(import_torchvision().models.list_models(module=import_torchvision().models))


def input_size(name: str) -> int:
    if name.startswith("vit_"):
        return 224  # the model's image_size; its forward asserts it
    weights = import_torchvision().models.get_model_weights(name)
    return max(32, *list(weights)[0].meta.get("min_size", (1, 1)))


def check(name: str, out_dir: Path) -> tuple[str, str]:
    """("compiles", "rel error ...") or ("refused", the message); raises on a wrong output
    or a refusal that names no layer."""
    tv = import_torchvision()
    torch.manual_seed(0)
    model = randomize_bn(tv.models.get_model(name, weights=None), seed=0)
    size = input_size(name)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    try:
        bundle = compile_model(model, x, out_dir / name, name=name)
    except UnsupportedOp as e:
        msg = str(e)
        assert REFUSAL.search(msg), f"{name}: a refusal must name a layer and an op: {msg}"
        return "refused", msg
    with torch.no_grad():
        want = model(x)
    (got,) = run_bundle(bundle, [x.numpy()])
    winograd = "winograd" in (bundle.path / "kernels.c").read_text()  # its micro-kernels
    err = rel_err(got, want)
    tol = TOL_WINOGRAD if winograd else TOL
    assert got.shape == tuple(want.shape) and err <= tol, f"{name}: rel error {err:.2e} > {tol}"
    return "compiles", f"{size}x{size}, rel error {err:.1e}{' (Winograd)' if winograd else ''}"


@pytest.mark.host
@pytest.mark.parametrize("name", CI_MODELS)
def test_torchvision_model_compiles_or_is_refused(name, tmp_path, cc):
    assert name in all_models()
    status, detail = check(name, tmp_path)
    assert status in ("compiles", "refused"), detail


def test_ci_subset_has_every_family():
    """One model of every family of the list (the family: the name up to its size suffix)."""
    def family(n: str) -> str:
        return re.sub(r"(_?\d.*|_(small|large|tiny|base|[bslmht]_?\d*))$", "", n)

    assert {family(n) for n in all_models()} <= {family(n) for n in CI_MODELS}


def main(names: list[str]) -> int:
    """Every model (or ``names``): a markdown table of what compiles and what is refused."""
    names = names or all_models()
    rows, bad = [], 0
    with tempfile.TemporaryDirectory() as d:
        for name in names:
            t = time.monotonic()
            try:
                status, detail = check(name, Path(d))
            except AssertionError as e:
                status, detail, bad = "WRONG", str(e), bad + 1
            first = detail.split("\n")[1 if detail.count("\n") > 1 else 0].strip()
            rows.append(f"| {name} | {status} | {first[:160]} | {time.monotonic() - t:.1f} s |")
            print(rows[-1], flush=True)
    print("\n| model | result | detail | seconds |\n| --- | --- | --- | --- |")
    print("\n".join(rows))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
