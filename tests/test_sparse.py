"""Sparse storage and kernels (issue 4): every mask scheme and a model mixing schemes (with
filter pruning) compile to sparse kernels that the runner executes like PyTorch runs the pruned
model; the storage choice and the packed formats decode to the pruned weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from zoo import rel_err, run_on_runner

from codegen import HostToolchain, compile_model, read_report
from codegen.cost import sparse_plan
from codegen.emit.sparse.blocked import pack_sparse_conv1x1_blocked
from codegen.emit.sparse.common import balanced_order
from codegen.emit.sparse.csr import pack_sparse_conv
from codegen.emit.sparse.fkw import pack_fkw
from codegen.emit.sparse.linear import pack_sparse_linear
from codegen.isa import AVX2, AVX512, NEON
from codegen.lr import CodegenError
from host.pruning import PruningConfig
from host.pruning.plan import LayerRule, PruningPlan


class SparseNet(nn.Module):
    """Odd sizes, stride 2 (3x3 and 1x1), a 1x1 stride-1 conv read in place, a residual add
    fused into a sparse conv, a 5x5 conv, a depthwise conv, a pool between sparse convs, and
    a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, 1, 1)
        self.c2 = nn.Conv2d(32, 48, 3, 2, 1)
        self.c3 = nn.Conv2d(48, 48, 1)
        self.c4 = nn.Conv2d(48, 48, 3, 1, 1)
        self.dw = nn.Conv2d(48, 48, 3, 1, 1, groups=48)
        self.c5 = nn.Conv2d(48, 40, 5, 1, 2)
        self.pool = nn.MaxPool2d(2)
        self.c6 = nn.Conv2d(40, 37, 1, 2)
        self.fc = nn.Linear(37 * 3 * 3, 29)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = torch.relu(x + self.c3(x))
        x = torch.relu(self.c4(x)) + x
        x = torch.relu(self.c5(self.dw(x)))
        x = self.c6(self.pool(x))
        return self.fc(x.flatten(1))


SHAPE = (1, 3, 21, 21)
CFG = PruningConfig(vector_width=16, pattern_count=8)
# scheme -> (rate, params); the kernel tests compile with sparse="always" (every layer that
# has a sparse kernel gets it, whatever its density), the cost-model tests with "auto"
SCHEMES = {
    "unstructured": (0.8, {}),
    "block": (0.75, {"rows": 16}),
    "block_punched": (0.75, {"filters": 8, "channels": 4}),
    "pattern": (0.8, {}),
    "connectivity": (0.7, {}),
}
MIXED = {"c1": LayerRule("pattern", 0.75), "c2": LayerRule("block_punched", 0.8,
                                                             {"filters": 16, "channels": 4}),
         "c3": LayerRule("block", 0.7, {"rows": 8}), "c4": LayerRule("unstructured", 0.85),
         "c5": LayerRule("connectivity", 0.75), "c6": LayerRule("filter", 0.5),
         "fc": LayerRule("block", 0.8, {"rows": 16})}


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return SparseNet().eval()


def _plan(scheme: str) -> PruningPlan:
    rate, params = SCHEMES[scheme]
    return PruningPlan.uniform(_net(), scheme, rate, CFG, params)


def _compile(pruned, tmp_path, name: str):
    x = torch.randn(*SHAPE)
    with torch.no_grad():
        want = pruned.model(x)
    bundle = compile_model(pruned.model, x, tmp_path / name, name=name, schemes=pruned.schemes,
                           sparse="always")
    return bundle, x, want


def _prune_and_compile(net: nn.Module, rules: dict, shape: tuple, out, sparse: str = "always"):
    """``net`` pruned by ``rules`` (layer -> LayerRule), a random input of ``shape``, PyTorch's
    output on it, the pruned model compiled with its schemes: (bundle, x, want)."""
    pruned = PruningPlan(rules, CFG).apply(net)
    x = torch.randn(*shape)
    with torch.no_grad():
        want = pruned.model(x)
    bundle = compile_model(pruned.model, x, out, name=out.name, schemes=pruned.schemes,
                           sparse=sparse)
    return bundle, x, want


def _equals_torch(local_runner, bundle, x, want, threads=(1, 2)) -> None:
    for t in threads:
        assert rel_err(run_on_runner(local_runner, bundle, x, threads=t), want.numpy()) <= 1e-4, t


@pytest.mark.host
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_every_scheme_runs_sparse_and_equals_torch(scheme, local_runner, tmp_path):
    pruned = _plan(scheme).apply(_net())
    for row in pruned.report.rows:  # the one-shot pruner hits the rate in every layer
        w = dict(pruned.model.named_modules())[row.layer].weight
        unit = 9 if scheme == "connectivity" else 1
        assert abs(row.achieved * w.numel() - SCHEMES[scheme][0] * w.numel()) <= unit * 16
    bundle, x, want = _compile(pruned, tmp_path, scheme)
    sparse = read_report(bundle.path).sparse
    assert set(sparse) == set(pruned.schemes)
    # depthwise convs keep their dense kernel (there is no sparse one); everything else runs
    # sparse, even an unstructured Linear (blocks of outputs, zero-filled)
    assert {k for k, v in sparse.items() if ": dense (" in v} == {"dw"} & set(sparse), sparse
    for threads in (1, 2):
        got = run_on_runner(local_runner, bundle, x, threads=threads)
        assert rel_err(got, want.numpy()) <= 1e-4, (scheme, threads)


@pytest.mark.host
def test_mixed_schemes_with_filter_pruning_equal_torch(local_runner, tmp_path):
    pruned = PruningPlan(dict(MIXED), CFG).apply(_net(1))
    assert pruned.model.c6.out_channels == 16  # filter pruning shrank it (and fc's input)
    bundle, x, want = _compile(pruned, tmp_path, "mixed")
    sparse = read_report(bundle.path).sparse
    # m: 8 filters a block where the ISA has 32 vector registers (4 with 16); blocked 1x1
    # convs and Linear blocks are one vector of outputs (16 on AVX-512, 8 on AVX2)
    isa = HostToolchain().isa()
    rows = 8 if isa.registers >= 32 else 4
    assert sparse["c2"].startswith(f"block_punched: bcsr, m={rows},"), sparse
    assert sparse["c3"].startswith(f"block: bcsr_blocked, m={isa.floats},"), sparse
    assert sparse["c4"].startswith("unstructured: csr, m=1")
    assert sparse["c1"].startswith("pattern: csr") and sparse["c5"].startswith("connectivity: fkw")
    assert sparse["fc"].startswith(f"block: bcsr, m={isa.floats},"), sparse
    assert "c6" not in sparse  # structural: a plain, narrower dense layer
    ops = [s.op for s in bundle.manifest.steps]
    assert "sparse_pad" in ops
    for threads in (1, 2):
        got = run_on_runner(local_runner, bundle, x, threads=threads)
        assert rel_err(got, want.numpy()) <= 1e-4, threads


@pytest.mark.host
@pytest.mark.parametrize("size", [14, 7, 28])
def test_padded_planes_at_resnet_sizes(size, local_runner, tmp_path):
    """14x14 gives 16-float padded rows, the case GCC 12.2 once vectorised wrongly."""
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()).eval()
    bundle, x, want = _prune_and_compile(net, {"0": LayerRule("unstructured", 0.8)},
                                         (1, 16, size, size), tmp_path / f"p{size}")
    assert read_report(bundle.path).sparse["0"].startswith("unstructured: csr")
    _equals_torch(local_runner, bundle, x, want, threads=(1,))


@pytest.mark.host
def test_batch_of_two_and_dense_fallback(local_runner, tmp_path):
    plan = PruningPlan({"c2": LayerRule("unstructured", 0.3), "c4": LayerRule("unstructured",
                                                                              0.9)}, CFG)
    pruned = plan.apply(_net(2))
    x = torch.randn(2, *SHAPE[1:])
    with torch.no_grad():
        want = pruned.model(x)
    bundle = compile_model(pruned.model, x, tmp_path / "b2", schemes=pruned.schemes)
    sparse = read_report(bundle.path).sparse
    assert "dense kernel is faster" in sparse["c2"]  # 70 % dense: not worth a sparse kernel
    assert sparse["c4"].startswith("unstructured: csr")
    got = run_on_runner(local_runner, bundle, x, threads=2)
    assert rel_err(got, want.numpy()) <= 1e-4


def test_unknown_layer_or_scheme_is_a_clear_error(tmp_path):
    x = torch.randn(*SHAPE)
    with pytest.raises(CodegenError, match=r"layer c9: no conv2d or linear layer"):
        compile_model(_net(), x, tmp_path / "a", schemes={"c9": "unstructured"})
    with pytest.raises(CodegenError, match=r"layer c1: unknown pruning scheme 'diagonal'"):
        compile_model(_net(), x, tmp_path / "b", schemes={"c1": "diagonal"})


# ---- the formats, without a compiler ----------------------------------------------------------

def _decode_conv(params, la, ic, kh, kw):
    vals, bias, offs, gptr, order = params
    m = la.sparse.m
    offs, gptr, order = (a.view(np.int32) for a in (offs, gptr, order))
    geo = la.sparse.geometry
    s = la.attrs["stride"][0]
    phase = {p: i for i, p in enumerate(geo.phases)}
    where = {}
    for c in range(ic):
        for ky in range(kh):
            for kx in range(kw):
                off = (c * geo.ps if geo.direct else
                       (c * len(phase) + phase[(ky % s, kx % s)]) * geo.ps
                       + (ky // s) * geo.wq + kx // s)
                where[off] = (c, ky, kx)
    oc = la.params["weight"].shape[0]
    w = np.zeros((-(-oc // m) * m, ic, kh, kw), np.float32)
    vals = vals.reshape(-1, m)
    for slot, g in enumerate(order):
        for e in range(gptr[slot], gptr[slot + 1]):
            c, ky, kx = where[int(offs[e])]
            w[g * m:(g + 1) * m, c, ky, kx] = vals[e]
    return w[:oc]


@pytest.mark.parametrize("stride,k,pad", [(1, 3, 1), (2, 3, 1), (1, 1, 0), (2, 1, 0), (1, 5, 2)])
def test_csr_and_bcsr_formats_decode_to_the_weights(stride, k, pad):
    from codegen import capture
    from codegen.passes import fold_bn, fuse_epilogue
    from codegen.passes.sparse import choose_storage, with_schemes

    torch.manual_seed(3)
    conv = nn.Sequential(nn.Conv2d(24, 40, k, stride, pad)).eval()
    for scheme, rate, params in (("unstructured", 0.8, {}),
                                 ("block_punched" if k > 1 else "block", 0.75,
                                  {"filters": 8, "channels": 4} if k > 1 else {"rows": 8})):
        pruned = PruningPlan({"0": LayerRule(scheme, rate, params)}, CFG).apply(conv)
        g = fuse_epilogue(fold_bn(capture(pruned.model, torch.randn(1, 24, 15, 15))))
        g = choose_storage(with_schemes(g, {"0": scheme}), AVX512, policy="always")
        (la,) = [la for la in g.layers if la.op == "conv2d"]
        w = la.params["weight"]
        if (stride, k, scheme) == (1, 1, "block"):  # a block-pruned 1x1: the blocked format
            assert la.storage == "bcsr_blocked"
            hw = 15 * 15
            vals, bias, offs, gptr = pack_sparse_conv1x1_blocked(la, 16, hw)
            offs, gptr, vals = offs.view(np.int32), gptr.view(np.int32), vals.reshape(-1, 16)
            got = np.zeros((48, 24), np.float32)
            for b in range(3):
                for e in range(gptr[b], gptr[b + 1]):
                    cb, lane = divmod(int(offs[e]), hw * 16)
                    assert lane < 16
                    got[b * 16:(b + 1) * 16, cb * 16 + lane] = vals[e]
            np.testing.assert_array_equal(got[:40], w.reshape(40, 24))
            continue
        assert la.storage == ("csr" if scheme == "unstructured" else "bcsr")
        np.testing.assert_array_equal(_decode_conv(pack_sparse_conv(la), la, 24, k, k), w)
        pads = [la for la in g.layers if la.op == "sparse_pad"]
        assert bool(pads) == (stride > 1 or pad > 0)


def test_block_linear_format_decodes_to_the_weights():
    from codegen.lr import Layer

    rng = np.random.default_rng(0)
    w = rng.standard_normal((37, 50)).astype(np.float32)
    w[:, rng.random(50) < 0.7] = 0
    la = Layer("fc", "linear", ("x",), "y", params={"weight": w, "bias": np.ones(37, np.float32)},
               storage="bcsr")
    vals, bias, offs, gptr = pack_sparse_linear(la, 16)
    offs, gptr = offs.view(np.int32), gptr.view(np.int32)
    got = np.zeros((48, 50), np.float32)
    vals = vals.reshape(-1, 16)
    for b in range(3):
        for e in range(gptr[b], gptr[b + 1]):
            got[b * 16:(b + 1) * 16, offs[e]] = vals[e]
    np.testing.assert_array_equal(got[:37], w)
    assert bias[:37].tolist() == [1.0] * 37 and not bias[37:].any()


def test_sparse_plan_shares_index_lists_only_where_zeros_line_up():
    rng = np.random.default_rng(1)
    unstructured = rng.random((64, 64, 3, 3)) < 0.2
    m, v, entries = sparse_plan(unstructured, 56 * 58, AVX512)
    assert (m, entries) == (1, int(unstructured.sum()))
    blocks = np.repeat(rng.random((4, 16, 3, 3)) < 0.2, 16, axis=0)  # 16 filters per block
    assert sparse_plan(blocks, 56 * 58, AVX512)[0] == 8
    assert sparse_plan(blocks, 56 * 58, AVX2)[0] == 4  # 16 registers: fewer rows
    assert sparse_plan(blocks, 7 * 9, NEON)[1] >= 1
    m, v, _ = sparse_plan(blocks, 7 * 9, AVX512)
    assert m * v + v <= AVX512.registers


def test_balanced_order_alternates_long_and_short():
    lengths = [5, 1, 9, 3, 7]
    order = balanced_order(lengths)
    assert sorted(order) == list(range(5))
    assert [lengths[i] for i in order] == [9, 1, 7, 3, 5]


@pytest.mark.parametrize("scheme,rate,stride", [("pattern", 0.8, 1), ("pattern", 0.7, 2),
                                                ("connectivity", 0.6, 1)])
def test_fkw_format_groups_kernels_by_shape_and_decodes(scheme, rate, stride):
    from codegen import capture
    from codegen.passes import fold_bn, fuse_epilogue
    from codegen.passes.sparse import choose_storage, with_schemes

    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(20, 24, 3, stride, 1)).eval()
    pruned = PruningPlan({"0": LayerRule(scheme, rate)}, CFG).apply(net)
    g = fuse_epilogue(fold_bn(capture(pruned.model, torch.randn(1, 20, 13, 13))))
    g = choose_storage(with_schemes(g, {"0": scheme}), AVX512,
                       fkw_schemes=("pattern", "connectivity"), policy="always")
    (la,) = [la for la in g.layers if la.op == "conv2d"]
    assert la.storage == "fkw"
    vals, bias, koff, runs, sptr, order, taps = pack_fkw(la)
    koff, runs, sptr, order, taps = (a.view(np.int32) for a in (koff, runs, sptr, order, taps))
    w = la.params["weight"]
    t = int((w[0] != 0).reshape(20, 9).sum(1).max())
    n_shapes = len(taps) // t
    assert n_shapes <= (8 if scheme == "pattern" else 1)
    geo = la.sparse.geometry
    per_channel = len(geo.phases) * geo.ps
    tap_to_pos = {}
    for ky in range(3):
        for kx in range(3):
            ph = geo.phases.index((ky % stride, kx % stride))
            tap_to_pos[ph * geo.ps + (ky // stride) * geo.wq + kx // stride] = ky * 3 + kx
    got = np.zeros((24, 20, 9), np.float32)
    runs, vals, taps = runs.reshape(-1, 3), vals.reshape(-1, t), taps.reshape(-1, t)
    for slot, f in enumerate(order):
        shapes_seen = [runs[r][0] for r in range(sptr[slot], sptr[slot + 1])]
        assert len(shapes_seen) == len(set(shapes_seen))  # one run per shape: no branches
        for r in range(sptr[slot], sptr[slot + 1]):
            sh, k0, k1 = runs[r]
            for k in range(k0, k1):
                for j in range(t):
                    got[f, koff[k] // per_channel, tap_to_pos[int(taps[sh][j])]] = vals[k][j]
    np.testing.assert_array_equal(got.reshape(w.shape), w)


@pytest.mark.parametrize("size,stride,rate,sparse", [
    (56, 1, 0.8, False),  # Winograd F(4,3) on 196 tiles: CSR must keep ≤ 12 %
    (56, 1, 0.9, True),
    (14, 1, 0.8, True),   # 16 tiles: Winograd's edge is smaller, 25 %
    (7, 1, 0.7, True),    # 4 tiles: 33 %
    (56, 2, 0.7, True),   # stride 2: direct dense kernel, 40 %
])
def test_density_limit_follows_the_dense_algorithm(size, stride, rate, sparse):
    from codegen import capture
    from codegen.passes import fold_bn, fuse_epilogue
    from codegen.passes.sparse import choose_storage, with_schemes

    torch.manual_seed(6)
    net = nn.Sequential(nn.Conv2d(32, 32, 3, stride, 1)).eval()
    pruned = PruningPlan({"0": LayerRule("unstructured", rate)}, CFG).apply(net)
    g = fuse_epilogue(fold_bn(capture(pruned.model, torch.randn(1, 32, size, size))))
    g = with_schemes(g, {"0": "unstructured"})
    (la,) = [la for la in choose_storage(g, AVX512).layers if la.op == "conv2d"]
    assert (la.storage == "csr") == sparse, la.attrs.get("sparse_skipped")
    if not sparse:
        assert "Winograd" in la.attrs["sparse_skipped"]
    (forced,) = [la for la in choose_storage(g, AVX512, policy="always").layers
                 if la.op == "conv2d"]
    assert forced.storage == "csr"
    with pytest.raises(CodegenError, match="sparse policy 'never'"):
        choose_storage(g, AVX512, policy="never")


class _Residual(nn.Module):
    def __init__(self, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, stride, 1)
        self.skip = nn.AvgPool2d(3, stride, 1) if stride > 1 else nn.Identity()

    def forward(self, x):
        return torch.relu(self.conv(x) + self.skip(x))


@pytest.mark.host
@pytest.mark.parametrize("size,stride", [(112, 1), (117, 1), (229, 2), (258, 1)])
def test_vector_stores_on_wide_images_equal_torch(size, stride, local_runner, tmp_path):
    """Images at least VEC_STORE_MIN_WIDTH vectors wide store whole vectors (with the fused
    residual and activation) and the row ends lane by lane; 258x258x16 is past
    PREFETCH_MIN_INPUT_BYTES (software prefetch in the inner loop)."""
    torch.manual_seed(7)
    bundle, x, want = _prune_and_compile(_Residual(stride).eval(),
                                         {"conv": LayerRule("unstructured", 0.8)},
                                         (1, 16, size, size), tmp_path / f"w{size}")
    assert read_report(bundle.path).sparse["conv"].startswith("unstructured: csr")
    assert ("__builtin_prefetch" in (bundle.path / "kernels.c").read_text()) == (size == 258)
    _equals_torch(local_runner, bundle, x, want)


class _PoolBetween(nn.Module):
    def __init__(self, pool: nn.Module):
        super().__init__()
        self.a, self.pool, self.b = nn.Conv2d(8, 16, 3, 1, 1), pool, nn.Conv2d(16, 16, 3, 1, 1)

    def forward(self, x):
        return self.b(self.pool(torch.relu(self.a(x))))


@pytest.mark.host
@pytest.mark.parametrize("size,pool,plain", [
    (224, nn.MaxPool2d(2, 2), True),                      # VGG's
    (112, nn.MaxPool2d(3, 2, 1), True),                   # ResNet's stem
    (75, nn.MaxPool2d(3, 2, 1, ceil_mode=True), True),    # odd width, windows past the end
    (28, nn.MaxPool2d(2, 2), False),                      # narrow: blocked kernel
])
def test_max_pool_between_sparse_convs_stays_plain(size, pool, plain, local_runner, tmp_path):
    """A stride-2 max pool whose wide input a sparse conv wrote plain runs on plain NCHW (no
    layout conversions around it) and equals PyTorch; a narrow one runs blocked."""
    torch.manual_seed(8)
    rules = {"a": LayerRule("unstructured", 0.8), "b": LayerRule("unstructured", 0.8)}
    bundle, x, want = _prune_and_compile(_PoolBetween(pool).eval(), rules, (1, 8, size, size),
                                         tmp_path / "pool")
    ops = [s.op for s in bundle.manifest.steps]
    assert ("to_nchwxc" not in ops and "to_nchw" not in ops) == plain, ops
    _equals_torch(local_runner, bundle, x, want)


class _InvertedResidual(nn.Module):
    """MobileNet-V2's block: expand 1x1, depthwise 3x3, project 1x1, residual."""

    def __init__(self, c: int = 24, e: int = 72):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e),
                                    nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(e, e, 3, 1, 1, groups=e, bias=False),
                                nn.BatchNorm2d(e), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.dw(self.expand(x)))


@pytest.mark.host
@pytest.mark.parametrize("size", [14, 23])
def test_block_pruned_1x1_convs_run_blocked_and_equal_torch(size, local_runner, tmp_path):
    """Block-pruned (rows = the vector width) 1x1 convs get the blocked sparse kernel: no
    layout change around the depthwise conv between them; the fused residual and ReLU6 go
    with it; a plane whose size is not a multiple of the tile ends in a shorter tile."""
    torch.manual_seed(10)
    net = nn.Sequential(nn.Conv2d(3, 24, 3, 1, 1), _InvertedResidual()).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
            nn.init.uniform_(m.running_mean, -0.1, 0.1)
    rules = {"1.expand.0": LayerRule("block", 0.6, {"rows": 16}),
             "1.project.0": LayerRule("block", 0.7, {"rows": 16})}
    bundle, x, want = _prune_and_compile(net, rules, (1, 3, size, size), tmp_path / f"ir{size}",
                                         sparse="auto")
    sparse = read_report(bundle.path).sparse
    m = HostToolchain().isa().floats  # one vector of outputs a block
    assert sparse["1.expand.0"].startswith(f"block: bcsr_blocked, m={m},"), sparse
    assert sparse["1.project.0"].startswith(f"block: bcsr_blocked, m={m},"), sparse
    ops = [s.op for s in bundle.manifest.steps]
    assert ops.count("to_nchwxc") == 0 and ops.count("to_nchw") == 1, ops  # the output's
    _equals_torch(local_runner, bundle, x, want)
