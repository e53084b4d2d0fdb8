"""Host tier: Winograd F(m, 3) convolutions (codegen/emit/cpu/winograd.py) against torch.

Every variant in ``cost.WINOGRAD`` (the registry that dispatch reads) runs at each vector width
the host executes (16, 8, 4; the NEON build shares the width-4 C and runs in the arm64 tier) on
awkward shapes: odd sizes that are not multiples of m, padding 0 and 1, channel counts that are
not multiples of the block, 2x2/3x3 images, batch 2. Winograd layers are held to a relative
error of 1e-3 (the transforms round more than a direct sum; the issue's tolerance), everything
else to 1e-4. Whole models go through the real runner at 1 and 2 threads.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ctypes_exec import run_bundle
from test_codegen_vector import ISAS, Seq, _Fixed
from torch import nn
from zoo import rel_err, run_on_runner, torchvision_model

from codegen import compile_model, cost
from codegen.emit.cpu.winograd import winograd_matrices
from codegen.isa import AVX512
from codegen.lr import Layer

pytestmark = pytest.mark.host
TOL = 1e-3  # layers computed by Winograd

C = nn.Conv2d
CASES = {  # name: (model, input shape); the 1x1 first conv makes the 3x3 read blocked input
    "odd_pad1_relu": (Seq(C(3, 20, 1), C(20, 37, 3, padding=1), nn.ReLU()), (1, 3, 11, 9)),
    "pad0_batch2": (Seq(C(3, 16, 1), C(16, 24, 3), nn.ReLU6()), (2, 3, 13, 7)),
    "tiny_2x2": (Seq(C(3, 5, 1), C(5, 33, 3, padding=1)), (1, 3, 2, 2)),
    "tiny_3x3_pad0": (Seq(C(3, 16, 1), C(16, 16, 3)), (2, 3, 3, 3)),
    "wide_chain": (Seq(C(3, 48, 1), C(48, 64, 3, padding=1), nn.ReLU(), C(64, 40, 3, padding=1),
                       nn.Hardswish()), (1, 3, 10, 23)),
    "asym_pad": (Seq(C(3, 16, 1), C(16, 16, 3, padding=(0, 1)), nn.Sigmoid()), (1, 3, 9, 14)),
}


def _force(algo: str, **extra):
    """A tuning lookup that puts every Winograd-able conv on ``algo``."""
    def lookup(la: Layer, graph, target):
        return {"algo": algo, **extra} if cost.winograd_ok(la) else None
    return lookup


def test_transform_matrices_compute_the_correlation() -> None:
    """A^T[(G g)(B^T d)] is the 3-tap correlation of d, for every m (exact matrices, float64)."""
    rng = np.random.default_rng(0)
    for m in cost.WINOGRAD.values():
        at, g, bt = (np.array(t, dtype=np.float64) for t in winograd_matrices(m))
        d, w = rng.standard_normal(m + 2), rng.standard_normal(3)
        want = np.array([d[i:i + 3] @ w for i in range(m)])
        np.testing.assert_allclose(at @ ((g @ w) * (bt @ d)), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("isa", ISAS, ids=[i.name for i in ISAS])
@pytest.mark.parametrize("algo", list(cost.WINOGRAD))
@pytest.mark.parametrize("case", list(CASES))
def test_winograd_variant_matches_torch(cc, tmp_path, case, algo, isa) -> None:
    torch.manual_seed(0)
    model, shape = CASES[case]
    model.eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x)
    b = compile_model(model, x, tmp_path / "b", name=case, toolchain=_Fixed(isa),
                      tuning=_force(algo))
    (got,) = run_bundle(b, [x.numpy()])
    assert got.shape == tuple(want.shape)
    assert rel_err(got, want) <= TOL
    m = cost.WINOGRAD[algo]
    src = (tmp_path / "b" / "kernels.c").read_text()
    assert f"winograd{m}_output_nchw{isa.floats}c__{isa.name}" in src
    assert b.manifest.scratch_bytes_per_thread > 0


@pytest.mark.parametrize("algo", list(cost.WINOGRAD))
def test_every_register_tile_matches_torch(cc, tmp_path, algo) -> None:
    """The auto-tuner's space under Winograd: (oc_tile, w_tile = tiles per GEMM block)."""
    torch.manual_seed(1)
    model = Seq(C(3, 64, 1), C(64, 64, 3, padding=1)).eval()
    x = torch.randn(1, 3, 9, 17)
    with torch.no_grad():
        want = model(x)
    for oc_tile, w_tile in ((1, 1), (2, 5), (4, 6), (1, 14)):
        out = tmp_path / f"b{oc_tile}_{w_tile}"
        compile_model(model, x, out, name="t", toolchain=_Fixed(AVX512),
                      tuning=_force(algo, oc_tile=oc_tile, w_tile=w_tile))
        (got,) = run_bundle(out, [x.numpy()])
        assert rel_err(got, want) <= TOL, (oc_tile, w_tile)
        src = (out / "kernels.c").read_text()
        assert f"winograd_gemm_nchw16c__avx512_{oc_tile}x{w_tile}t" in src


def _conv(ic: int, oc: int, k: int = 3, stride: int = 1, groups: int = 1) -> Layer:
    w = np.zeros((oc, ic // groups, k, k), np.float32)
    return Layer("c", "conv2d", ("x",), "y", {"stride": (stride, stride), "dilation": (1, 1),
                                             "groups": groups, "padding": (1, 1, 1, 1)},
                 {"weight": w, "bias": np.zeros(oc, np.float32)})


def test_cost_model_picks_the_measured_winner() -> None:
    """Defaults as measured per layer shape (see ``cost.default_algo``); the space lists every
    Winograd variant only where one is legal."""
    def algo(la: Layer, hw: int) -> str:
        return cost.default_tuning(la, (1, 4, hw, hw, 16), AVX512)["algo"]
    assert algo(_conv(64, 64), 56) == algo(_conv(512, 512), 7) == "winograd4"
    assert algo(_conv(256, 256), 4) == algo(_conv(64, 64), 3) == "winograd2"
    assert algo(_conv(128, 128), 2) == "direct"
    assert algo(_conv(4, 64), 56) == "direct"  # too few input channels
    assert algo(_conv(64, 64, stride=2), 28) == algo(_conv(64, 64, k=1), 28) == "direct"
    assert algo(_conv(64, 64, groups=4), 28) == "direct"
    assert cost.tuning_space(_conv(64, 64), (1, 4, 8, 8, 16), AVX512)["algo"] == (
        "direct", *cost.WINOGRAD)
    assert cost.tuning_space(_conv(64, 64, stride=2), (1, 4, 8, 8, 16), AVX512)["algo"] == (
        "direct",)


MODELS = {
    "resnet18": (lambda: torchvision_model("resnet18"), (1, 3, 64, 64)),
    "vgg16": (lambda: torchvision_model("vgg16"), (1, 3, 32, 32)),
}


@pytest.fixture(scope="module")
def winograd_bundles(tmp_path_factory, cc):
    cache: dict = {}

    def get(key: str, algo: str | None):
        if (key, algo) not in cache:
            factory, shape = MODELS[key]
            model = factory().eval()
            x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
            out = tmp_path_factory.mktemp(f"wino-{key}-{algo}")
            b = compile_model(model, x, out, name=f"{key}_{algo or 'default'}",
                              tuning=_force(algo) if algo else None)
            cache[key, algo] = (b, model, x)
        return cache[key, algo]
    return get


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("key", "algo"), [("resnet18", None), ("vgg16", None),
                                           ("resnet18", "winograd6"), ("vgg16", "winograd2")])
def test_models_with_winograd_on_the_runner(key, algo, threads, winograd_bundles,
                                            local_runner):
    bundle, model, x = winograd_bundles(key, algo)
    assert "winograd" in (bundle.path / "kernels.c").read_text()
    with torch.no_grad():
        want = model(x).numpy()
    got = run_on_runner(local_runner, bundle, x, threads)
    assert got.shape == want.shape
    assert rel_err(got, want) <= TOL
