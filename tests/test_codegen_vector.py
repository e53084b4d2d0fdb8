"""Host tier: the blocked layout (NCHW[x]c) and the vectorised kernels on awkward shapes.

Every case runs at each vector width the host can execute (16: AVX-512, 8: AVX2, 4: SSE), so
channel counts that are and are not multiples of the block are both covered, and is compared
with torch. Each legal tuning value of a conv is checked too (what the auto-tuner will search).
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from ctypes_exec import run_bundle
from torch import nn
from zoo import Seq, rel_err

from codegen import HostToolchain, capture, compile_model, cost
from codegen.isa import AVX2, AVX512, SSE, VectorIsa
from codegen.passes import pipeline, run_passes
from codegen.toolchain import _cpu_flags

pytestmark = pytest.mark.host
TOL = 1e-4


class _Fixed(HostToolchain):
    """The host compiler with a chosen vector ISA (any narrower one runs here too)."""

    def __init__(self, isa: VectorIsa) -> None:
        super().__init__()
        self._isa = isa

    def isa(self) -> VectorIsa:
        return self._isa


def _isas() -> list[VectorIsa]:
    flags = _cpu_flags()
    out = [SSE]
    if {"avx2", "fma"} <= flags:
        out.append(AVX2)
    if "avx512f" in flags:
        out.append(AVX512)
    return out


ISAS = _isas()


def _residual(self, x):
    a, b, c = self.mods
    y = F.relu(a(x))
    return F.relu(b(y) + c(x))


def _se(self, x):
    conv, s1, s2 = self.mods
    x = conv(x)
    s = torch.sigmoid(s2(F.relu(s1(F.adaptive_avg_pool2d(x, 1)))))
    return F.hardswish(x * s)


def _concat(self, x):
    a, b, c = self.mods
    return F.relu(torch.cat([a(x), b(x), c(x)], 1))


C = nn.Conv2d
CASES = {  # name: (model, input shape)
    "plain_in_3to5_pad": (Seq(C(3, 5, 3, padding=1)), (2, 3, 11, 9)),
    "odd_ch_stride2": (Seq(C(3, 20, 3, padding=1), nn.ReLU(), C(20, 37, 3, 2, 1)), (1, 3, 13, 17)),
    "dilation2": (Seq(C(3, 17, 1), C(17, 19, 3, padding=2, dilation=2), nn.ReLU6()),
                  (1, 3, 12, 10)),
    "groups2": (Seq(C(3, 32, 1), C(32, 32, 3, padding=1, groups=2), nn.ReLU()), (1, 3, 9, 7)),
    "groups4_ch8": (Seq(C(3, 32, 1), C(32, 16, 3, padding=1, groups=4)), (1, 3, 6, 5)),
    "depthwise_s2": (Seq(C(3, 24, 1), C(24, 24, 3, 2, 1, groups=24), nn.ReLU6()),
                     (2, 3, 15, 11)),
    "depthwise_5x5_odd": (Seq(C(3, 13, 1), C(13, 13, 5, padding=2, groups=13), nn.Hardswish()),
                          (1, 3, 9, 21)),
    "pointwise_s2": (Seq(C(3, 18, 1), C(18, 40, 1, stride=2), nn.Sigmoid()), (1, 3, 10, 10)),
    "spatial_1x1": (Seq(C(3, 33, 1), C(33, 20, 3, padding=1), nn.Hardsigmoid()), (2, 3, 1, 1)),
    "narrow_w3": (Seq(C(3, 16, 3, padding=1), C(16, 24, 3, padding=1)), (1, 3, 7, 3)),
    "rect_asym": (Seq(C(3, 16, 1), C(16, 9, (1, 3), padding=(0, 2)), C(9, 16, (3, 1), (2, 1))),
                  (1, 3, 9, 8)),
    "wide_row": (Seq(C(3, 16, 3, padding=1), C(16, 32, 3, padding=1)), (1, 3, 4, 45)),
    "pools": (Seq(C(3, 20, 3), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
                  nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                  nn.AvgPool2d(2, 1, 1), nn.AdaptiveAvgPool2d((3, 2)), nn.Flatten(),
                  nn.Linear(120, 19)), (2, 3, 21, 19)),
    "residual": (Seq(C(20, 20, 3, padding=1), C(20, 20, 3, padding=1), C(20, 20, 1), fn=_residual),
                 (1, 20, 8, 8)),
    "se_block": (Seq(C(3, 24, 3, padding=1), C(24, 6, 1), C(6, 24, 1), fn=_se), (1, 3, 7, 6)),
    "concat_blocks": (Seq(C(3, 16, 1), C(3, 32, 3, padding=1), C(3, 5, 1), fn=_concat),
                      (1, 3, 6, 7)),
}


@pytest.mark.parametrize("isa", ISAS, ids=[i.name for i in ISAS])
@pytest.mark.parametrize("case", list(CASES))
def test_blocked_kernels_match_torch(cc, tmp_path, case, isa) -> None:
    torch.manual_seed(0)
    model, shape = CASES[case]
    model.eval()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = model(x)
    compile_model(model, x, tmp_path / "b", name=case, toolchain=_Fixed(isa))
    (got,) = run_bundle(tmp_path / "b", [x.numpy()])
    assert got.shape == tuple(want.shape)
    assert rel_err(got, want) <= TOL
    src = (tmp_path / "b" / "kernels.c").read_text()
    assert re.search(rf"conv2d_\w+__{isa.name}_\d+x\d+w", src), "no vectorised conv emitted"


def test_layout_pass_converts_only_at_edges() -> None:
    model = Seq(C(3, 20, 3, padding=1), nn.ReLU(), C(20, 20, 3, padding=1, groups=20),
                nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, 4))
    g = run_passes(capture(model, torch.randn(1, 3, 8, 8)), pipeline(4, AVX512))
    ops = [la.op for la in g.steps]
    assert ops == ["conv2d", "conv2d", "maxpool2d", "adaptive_avgpool2d", "to_nchw", "linear"]
    conv = g.steps[0]
    assert g.shapes[conv.output] == (1, 2, 8, 8, 16)  # 20 channels padded to 32
    assert g.plan.offsets and conv.tuning["w_tile"] >= 1
    assert set(conv.tuning) == set(cost.tuning_space(conv, g.shapes[conv.output], AVX512))
    plain = run_passes(capture(model, torch.randn(1, 3, 8, 8)), pipeline(4))
    assert all(len(s) == 4 or len(s) == 2 for s in plain.shapes.values())


def test_every_legal_tuning_value_matches_torch(cc, tmp_path, monkeypatch) -> None:
    """The auto-tuner's search space: every (oc_tile, w_tile) of a direct conv gives torch's
    output (Winograd's: tests/test_codegen_winograd.py)."""
    torch.manual_seed(1)
    model = Seq(C(3, 64, 3, padding=1), C(64, 64, 3, padding=1)).eval()
    x = torch.randn(1, 3, 6, 23)
    with torch.no_grad():
        want = model(x)
    g = run_passes(capture(model, x), pipeline(4, AVX2))
    space = cost.tuning_space(g.steps[1], g.shapes[g.steps[1].output], AVX2)
    assert space["oc_tile"] == (1, 2, 4) and max(space["w_tile"]) == 14
    import codegen.passes.layout as layout
    for oc_tile in space["oc_tile"]:
        for w_tile in (1, 5, max(space["w_tile"])):
            monkeypatch.setattr(layout, "default_tuning",
                                lambda *a, o=oc_tile, w=w_tile: {"algo": "direct",
                                                                  "oc_tile": o, "w_tile": w})
            out = tmp_path / f"b{oc_tile}_{w_tile}"
            compile_model(model, x, out, name="t", toolchain=_Fixed(AVX2))
            (got,) = run_bundle(out, [x.numpy()])
            assert rel_err(got, want) <= TOL, (oc_tile, w_tile)
            assert f"__avx2_{oc_tile}x{w_tile}w" in (out / "kernels.c").read_text()
