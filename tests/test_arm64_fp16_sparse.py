"""arm64 fp16 sparse tier: pruned layers in NEON FP16 (``_Float16`` x 8, fp16 weights in the
blob) built with clang and run on the arm64 runner under ``qemu-aarch64 -cpu cortex-a76``,
against PyTorch's pruned model in float32.

Each storage format of ``codegen.emit.sparse.FORMATS``, at channel counts that are no
multiple of 8 and at odd sizes, and a pruned network end to end. Tolerance: max |got - want|
/ max |want| (``rel_err``). The convs (csr, bcsr, fkw, bcsr_blocked) accumulate in fp16 over
a filter's kept terms, as the dense fp16 convs do (tests/test_arm64_fp16.py's ``LAYER_TOL``
1e-2 for up to 2304 dense terms); a sparse conv keeps fewer, and the same bound
``SPARSE_CONV_TOL`` 1e-2 holds with room (measured 9.5e-4 to 2.1e-3 on ``FORMAT_CASES``,
two layers each). The block Linear accumulates in float32 chains (fp16 inputs and weights,
one rounding of the sum): measured 4.7e-4, bound ``SPARSE_LINEAR_TOL`` 2e-3. The pruned
network (every format, a fused residual, a depthwise conv, a plain max pool, a Linear):
measured 5.7e-4, bound ``SPARSE_MODEL_TOL`` 5e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_sparse import MIXED, SHAPE, _net
from torch import nn
from zoo import rel_err, run_on_runner

from codegen import compile_model, read_report
from codegen.toolchain import Arm64AndroidToolchain
from host.pruning import LayerRule, PruningConfig
from host.pruning.plan import PruningPlan

pytestmark = pytest.mark.arm64

SPARSE_CONV_TOL = 1e-2
SPARSE_LINEAR_TOL = 2e-3
SPARSE_MODEL_TOL = 5e-3
CALL_TIMEOUT_S = 300.0
CFG = PruningConfig(vector_width=16, pattern_count=8)


def _fp16(model: nn.Module, x: torch.Tensor, out, name: str, schemes, sparse="always"):
    return compile_model(model, (x,), out, name=name,
                         toolchain=Arm64AndroidToolchain(precision="fp16"),
                         schemes=schemes, sparse=sparse)


def _check(runner, bundle, want: np.ndarray, x, tol: float) -> float:
    worst = 0.0
    for t in (1, 2):
        got = run_on_runner(runner, bundle, x, t, call_timeout_s=CALL_TIMEOUT_S)
        assert got.dtype == np.float32 and got.shape == want.shape
        err = rel_err(got, want)
        print(f"{bundle.manifest.name}, {t} thread(s): rel err {err:.2e}")  # shown with -s
        assert err <= tol, f"{bundle.manifest.name}, {t} thread(s): rel err {err:.2e} > {tol}"
        worst = max(worst, err)
    return worst


class _Wide(nn.Module):
    """A padded 3x3 conv wide enough for whole-vector stores (>= 7 vectors of 8 halves) into
    a fused residual, then a stride-2 one (phase-split planes, row-segment stores)."""

    def __init__(self, c: int, o: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, 1, 1)
        self.b = nn.Conv2d(c, o, 3, 2, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x) + x))


class _OneByOne(nn.Module):
    """Dense 1x1 (blocked output) -> block-pruned 1x1 on NCHW8c (bcsr_blocked) -> dense 1x1
    (1x1s around it: no Winograd, whose fp16 error would swamp the sparse layer's)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(5, 21, 1)
        self.p = nn.Conv2d(21, 27, 1)
        self.c = nn.Conv2d(27, 11, 1)

    def forward(self, x):
        return self.c(torch.relu(self.p(torch.relu(self.a(x)))))


# name: (module, rules, input shape, storage expected in the report, bound)
FORMAT_CASES = {
    "csr_unstructured_pattern": (lambda: _Wide(13, 19), {"a": LayerRule("unstructured", 0.8),
                                                         "b": LayerRule("pattern", 0.8)},
                         (1, 13, 61, 59), {"a": "csr", "b": "csr"}, SPARSE_CONV_TOL),
    "bcsr_block_punched": (lambda: _Wide(21, 35),
                           {"a": LayerRule("block_punched", 0.75, {"filters": 8, "channels": 4}),
                            "b": LayerRule("block_punched", 0.8, {"filters": 16, "channels": 4})},
                           (1, 21, 58, 63), {"a": "bcsr", "b": "bcsr"}, SPARSE_CONV_TOL),
    "fkw_connectivity": (lambda: _Wide(11, 17), {"a": LayerRule("connectivity", 0.75),
                                                 "b": LayerRule("connectivity", 0.7)},
                         (1, 11, 57, 60), {"a": "fkw", "b": "fkw"}, SPARSE_CONV_TOL),
    "bcsr_blocked_1x1": (_OneByOne, {"p": LayerRule("block", 0.7, {"rows": 8})},
                         (1, 5, 13, 11), {"p": "bcsr_blocked"}, SPARSE_CONV_TOL),
    "bcsr_linear": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(3 * 29 * 31, 45), nn.ReLU(),
                                          nn.Linear(45, 13)),
                    {"1": LayerRule("block", 0.8, {"rows": 16}),
                     "3": LayerRule("block", 0.5, {"rows": 16})},
                    (2, 3, 29, 31), {"1": "bcsr", "3": "bcsr"}, SPARSE_LINEAR_TOL),
}


@pytest.mark.parametrize("case", list(FORMAT_CASES))
def test_sparse_format_at_fp16_equals_pytorch(case, a76, tmp_path):
    factory, rules, shape, storage, tol = FORMAT_CASES[case]
    torch.manual_seed(5)
    pruned = PruningPlan(rules, CFG).apply(factory().eval())
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = pruned.model(x).numpy()
    sparse = "auto" if case == "bcsr_blocked_1x1" else "always"
    bundle = _fp16(pruned.model, x, tmp_path, f"f16_{case}", pruned.schemes, sparse)
    report = read_report(bundle.path).sparse
    for layer, fmt in storage.items():
        assert report[layer].split(": ")[1].startswith(fmt + ","), report[layer]
    src = (bundle.path / "kernels.c").read_text()
    assert "typedef _Float16 vf" in src and "const float *wv" not in src
    if case == "bcsr_block_punched":  # blocks of 8 filters: one weight vector, by lane
        assert "const vf wl = *(const vfu *)wv;" in src and "wl[7]" in src
    _check(a76, bundle, want, x, tol)


def test_pruned_network_at_fp16_equals_pytorch(a76, tmp_path):
    """Every format in one network (test_sparse's SparseNet: pattern, block-punched, block,
    unstructured, connectivity, filter and a block Linear), end to end in fp16."""
    pruned = PruningPlan(dict(MIXED), PruningConfig(vector_width=16)).apply(_net(1))
    x = torch.randn(*SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = pruned.model(x).numpy()
    bundle = _fp16(pruned.model, x, tmp_path, "f16_sparsenet", pruned.schemes, "always")
    report = read_report(bundle.path).sparse
    assert {v.split(": ")[1].split(",")[0] for v in report.values()} >= {"csr", "bcsr", "fkw"}
    weights = (bundle.path / "weights.bin").stat().st_size
    fp32 = compile_model(pruned.model, (x,), tmp_path / "fp32", name="f32_sparsenet",
                         toolchain=Arm64AndroidToolchain(), schemes=pruned.schemes,
                         sparse="always")
    # fp16 values, int32 indices: the blob is between half and the whole of fp32's
    assert weights < 0.8 * (fp32.path / "weights.bin").stat().st_size
    _check(a76, bundle, want, x, SPARSE_MODEL_TOL)


def test_int32_params_travel_bit_for_bit_in_the_fp16_blob(tmp_path):
    """No qemu: a csr conv's index params (gptr, order: the same at fp32 and fp16, they
    depend only on the mask) read back from the fp16 blob as the int32s of the fp32 one,
    and its values as float16 (half the bytes)."""
    import shutil

    if not shutil.which("clang") or not shutil.which("ld.lld"):
        pytest.skip("clang and lld are needed")
    torch.manual_seed(7)
    pruned = PruningPlan({"0": LayerRule("unstructured", 0.8)}, CFG).apply(
        nn.Sequential(nn.Conv2d(13, 19, 3, 1, 1)).eval())
    x = torch.randn(1, 13, 17, 15)
    b16 = _fp16(pruned.model, x, tmp_path / "f16", "ints_f16", pruned.schemes)
    b32 = compile_model(pruned.model, (x,), tmp_path / "f32", name="ints_f32",
                        toolchain=Arm64AndroidToolchain(), schemes=pruned.schemes,
                        sparse="always")

    def params(bundle) -> list[bytes]:
        (step,) = [s for s in bundle.manifest.steps if s.op == "conv2d"]
        blob = (bundle.path / "weights.bin").read_bytes()
        return [blob[p.offset:p.offset + p.nbytes] for p in step.params]

    p16, p32 = params(b16), params(b32)
    assert len(p16) == len(p32) == 5  # vals, bias, offs, gptr, order
    for k in (3, 4):
        assert np.frombuffer(p16[k], np.int32).tolist() == np.frombuffer(p32[k], np.int32).tolist()
    assert len(p16[0]) * 2 == len(p32[0])
    np.testing.assert_array_equal(np.frombuffer(p16[0], np.float16),
                                  np.frombuffer(p32[0], np.float32).astype(np.float16))
