"""fp16 Winograd's own templates (``codegen/emit/cpu/winograd.py``): F(4,3)'s transforms as
shared sums and differences, the per-point GEMM as one asm statement a channel block (LD1 of
four registers, FMLA by lane) and the last tiles' GEMM as wide as they are.

The programs are checked exactly against the transform matrices (no compiler); the kernels
under ``qemu-aarch64 -cpu cortex-a76`` against PyTorch in float32, max |got - want| / max
|want|. Bounds: F(4,3) at fp16 measured 1.5e-2 to 2.1e-2 on these convs (24-40 input
channels; its fp16 GEMM's roundings amplified by A^T), bound ``WINOGRAD4_TOL`` 1e-1 as in
tests/test_arm64_fp16.py; F(2,3) measured 1.2e-3, bound ``WINOGRAD2_TOL`` 1e-2.
"""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
import torch
from torch import nn
from zoo import randomize_bn, rel_err, run_on_runner

from codegen import compile_model
from codegen.cost import _exact_width, default_tuning
from codegen.emit.cpu import winograd as W
from codegen.isa import NEON_FP16
from codegen.toolchain import Arm64AndroidToolchain

WINOGRAD4_TOL = 1e-1
WINOGRAD2_TOL = 1e-2


def _evaluate(expr: str, env: dict[str, list[Fraction]]) -> list[Fraction]:
    """A transform program's C expression over coefficient vectors (exact): terms are names,
    constants ``N.0f``, operators + - * and parentheses."""
    py = re.sub(r"(\d+)\.0f", r"Frac(\1)", expr)
    return eval(py, {"Frac": _Scalar}, {k: _Vec(v) for k, v in env.items()}).v


class _Vec:
    def __init__(self, v):
        self.v = list(v)

    def __add__(self, o):
        return _Vec(a + b for a, b in zip(self.v, o.v, strict=True))

    def __sub__(self, o):
        return _Vec(a - b for a, b in zip(self.v, o.v, strict=True))

    def __mul__(self, k):
        return _Vec(a * k.k for a in self.v)


class _Scalar:
    def __init__(self, k):
        self.k = Fraction(k)


@pytest.mark.parametrize("kind, m", sorted(W._F16_TRANSFORMS))
def test_f16_transform_programs_are_the_matrices(kind, m):
    at, _, bt = W.winograd_matrices(m)
    mat = bt if kind == "bt" else at
    a = m + 2
    names = [f"z{k}" for k in range(a)]
    env = {n: [Fraction(int(k == j)) for j in range(a)] for k, n in enumerate(names)}
    temps, rows = W._F16_TRANSFORMS[(kind, m)](names)
    for n, e in temps:
        env[n] = _evaluate(e, env)
    assert [_evaluate(r, env) for r in rows] == [list(row) for row in mat]


def test_f16_gemm_is_asm_where_it_fits():
    _, src = W.winograd_gemm_kernel(NEON_FP16, 1, 16)
    assert src.count("ld1 {v16.8h, v17.8h, v18.8h, v19.8h}") == 1
    assert src.count("ld1 {v0.8h, v1.8h, v2.8h, v3.8h}") == 4
    assert len(re.findall(r"fmla %\[a0_\d+\]\.8h, v\d+\.8h, v[0-3]\.h\[\d\]", src)) == 128
    _, src = W.winograd_gemm_kernel(NEON_FP16, 2, 6)  # all 32 registers
    assert src.count("fmla") == 96 and '"v31"' in src
    _, src = W.winograd_gemm_kernel(NEON_FP16, 4, 3)  # too many weights: the C kernel
    assert "__asm__" not in src and "a3_2 += w3_7 * x2[7];" in src


@pytest.mark.parametrize("tiles, want", [(4, 4), (9, 9), (16, 16), (49, 16), (196, 16)])
def test_f16_gemm_width(tiles, want):
    assert _exact_width(NEON_FP16, tiles, 1) == want


def _direct_algo(algo, oc_tile=None, w_tile=None):
    def lookup(la, graph, target):
        if la.op != "conv2d" or la.params["weight"].shape[1] < 8:
            return None
        t = {"algo": algo}
        if oc_tile:
            t |= {"oc_tile": oc_tile, "w_tile": w_tile}
        return t
    return lookup


CASES = {
    # name: (ic, oc, size, tuning, the remainder GEMM the source must call, bound)
    "f43_rem1": (24, 32, 28, None, "_1x1t(", WINOGRAD4_TOL),  # 49 tiles: 3 x 16 + 1
    "f43_2x6": (32, 32, 10, (2, 6), "_2x3t(", WINOGRAD4_TOL),  # 9 tiles: 6 + 3
    "f43_4x3_c": (40, 32, 12, (4, 3), None, WINOGRAD4_TOL),  # the C kernel, 9 tiles
    "f23_rem": (24, 16, 13, None, "_1x1t(", WINOGRAD2_TOL),  # F(2,3): 49 tiles
}


@pytest.mark.arm64
@pytest.mark.parametrize("case", list(CASES))
def test_f16_winograd_equals_pytorch(case, a76, clang, tmp_path):
    ic, oc, size, tile, rem, tol = CASES[case]
    algo = "winograd2" if case.startswith("f23") else "winograd4"
    torch.manual_seed(7)
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, ic, 1), nn.ReLU(),
                                       nn.Conv2d(ic, oc, 3, padding=1), nn.BatchNorm2d(oc),
                                       nn.ReLU()).eval())
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(8))
    tuning = _direct_algo(algo, *(tile or ()))
    bundle = compile_model(model, (x,), tmp_path, name=f"w16_{case}",
                           toolchain=Arm64AndroidToolchain(precision="fp16"), tuning=tuning)
    src = (bundle.path / "kernels.c").read_text()
    assert f"winograd{algo[-1]}_input_nchw8c_f16__neonfp16" in src
    if rem:
        assert rem in src
    got = run_on_runner(a76, bundle, x, 1, call_timeout_s=300.0)
    with torch.no_grad():
        want = model(x).numpy()
    err = rel_err(got, want)
    print(f"{case}: rel err {err:.2e}")  # shown with -s
    assert err <= tol


def test_default_tuning_f16_width_is_exact():
    """The cost model's fp16 Winograd width is _exact_width's (a 28x28 output: 49 tiles, 16
    wide and a remainder of 1), the fp32 one the evened-out width (13: 4 tiles of 13)."""
    from codegen import capture
    from codegen.isa import NEON

    la = capture(nn.Sequential(nn.Conv2d(32, 32, 3, padding=1)).eval(),
                 torch.randn(1, 32, 28, 28)).steps[0]
    t16 = default_tuning(la, (1, 4, 28, 28, 8), NEON_FP16)
    assert (t16["algo"], t16["w_tile"]) == ("winograd4", 16)
    assert default_tuning(la, (1, 8, 28, 28, 4), NEON)["w_tile"] != 16
