"""Sparse + int8 on x86: the block-sparse int8 kernels (``codegen/emit/sparse/q8.py``) bit-exact
against codegen.quant's reference on the pruned model, at each int8 ISA this host runs
(AVX-512 VNNI, AVX2), per format at awkward sizes (channels not whole blocks or groups of 4,
strides, padding, dilation, the narrow stem input, fused residual and ReLU6, dequantizing
outputs), and a pruned network with several formats end to end through ``compile --precision
int8 --plan``.

The reference runs the graph the quantization pass produces from the pruned model (zeros in
the weights): per-output-channel scales over the kept weights (pruned weights are 0 and change
neither the scale nor ``sum w``), so equality also checks that the kernels' zero-point
correction sums the kept weights of the taps they ran and nothing else.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ctypes_exec import run_bundle
from int8_tools import QISAS, FixedQ8
from int8_tools import batches as _batches
from int8_tools import reference as _reference
from torch import nn
from zoo import Seq, run_on_runner

from codegen import HostToolchain, compile_model, load_bundle, read_report

# ---- pruning masks (the schemes' shapes, written here so the tier needs no host code) --------

def block_punched(w: torch.Tensor, keep: float, filters: int = 16, channels: int = 4,
                  seed: int = 0) -> torch.Tensor:
    """Blocks of ``filters`` x ``channels`` share the kept kernel positions."""
    g = torch.Generator().manual_seed(seed)
    oc, ic, kh, kw = w.shape
    fb, cb = -(-oc // filters), -(-ic // channels)
    kept = torch.rand(fb, cb, kh, kw, generator=g) < keep
    kept[..., kh // 2, kw // 2] |= torch.rand(fb, cb, generator=g) < 0.5
    m = kept.repeat_interleave(filters, 0).repeat_interleave(channels, 1)[:oc, :ic]
    return w * m.float()


def block_rows(w: torch.Tensor, keep: float, rows: int = 16, seed: int = 0) -> torch.Tensor:
    """Block pruning of a GEMM-like weight: in blocks of ``rows`` outputs whole columns go."""
    g = torch.Generator().manual_seed(seed)
    o, k = w.shape[0], w[0].numel()
    kept = torch.rand(-(-o // rows), k, generator=g) < keep
    m = kept.repeat_interleave(rows, 0)[:o].reshape(w.shape)
    return w * m.float()


def _residual(self, x):  # conv -> pruned conv + skip -> relu: the fused residual in int8
    a, b = self.mods
    y = F.relu(a(x))
    return F.relu(b(y) + y)


def _mlp(self, x):
    a, b = self.mods
    return b(F.relu6(a(x)))


def _pruned(factory, rule):
    def make() -> nn.Module:
        torch.manual_seed(0)
        model = factory().eval()
        with torch.no_grad():
            for name, (fn, keep) in rule.items():
                mod = model.get_submodule(name)
                mod.weight.copy_(fn(mod.weight, keep))
        return model
    return make


BP, BR = block_punched, block_rows
# (model, input shape, schemes): every int8 sparse kernel at awkward sizes
CASES = {
    "bp3x3s1_relu": (_pruned(lambda: Seq(nn.Conv2d(16, 24, 3, padding=1), nn.ReLU()),
                             {"mods.0": (BP, 0.3)}), (1, 16, 9, 11), {"mods.0": "block_punched"}),
    "bp3x3s2_relu6_odd_channels": (
        _pruned(lambda: Seq(nn.Conv2d(6, 20, 3, 2, 1), nn.ReLU6()), {"mods.0": (BP, 0.4)}),
        (2, 6, 13, 10), {"mods.0": "block_punched"}),
    "bp7x7s2_stem": (_pruned(lambda: Seq(nn.Conv2d(3, 16, 7, 2, 3), nn.ReLU()),
                             {"mods.0": (BP, 0.4)}), (1, 3, 23, 21), {"mods.0": "block_punched"}),
    "bp3x3_dilated_dq": (_pruned(lambda: Seq(nn.Conv2d(16, 32, 3, padding=2, dilation=2)),
                                 {"mods.0": (BP, 0.3)}), (1, 16, 9, 9),
                         {"mods.0": "block_punched"}),
    "bp3x3_wide_rows": (_pruned(lambda: Seq(nn.Conv2d(8, 32, 3, padding=1), nn.ReLU()),
                                {"mods.0": (BP, 0.25)}), (1, 8, 5, 40),
                        {"mods.0": "block_punched"}),
    "bp_residual": (_pruned(lambda: Seq(nn.Conv2d(16, 32, 3, padding=1),
                                        nn.Conv2d(32, 32, 3, padding=1), fn=_residual),
                            {"mods.1": (BP, 0.3)}), (1, 16, 8, 8), {"mods.1": "block_punched"}),
    "block1x1": (_pruned(lambda: Seq(nn.Conv2d(40, 33, 1), nn.ReLU()), {"mods.0": (BR, 0.3)}),
                 (1, 40, 6, 7), {"mods.0": "block"}),
    "block_linear": (_pruned(lambda: Seq(nn.Linear(37, 50), nn.Linear(50, 7), fn=_mlp),
                             {"mods.0": (BR, 0.3), "mods.1": (BR, 0.5)}), (3, 37),
                     {"mods.0": "block", "mods.1": "block"}),
}


@pytest.mark.host
@pytest.mark.parametrize("qisa", QISAS, ids=lambda q: q.name)
@pytest.mark.parametrize("case", list(CASES))
def test_int8_sparse_kernel_is_bit_exact(case, qisa, tmp_path):
    factory, shape, schemes = CASES[case]
    model = factory()
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    b = compile_model(model, torch.from_numpy(x), tmp_path / "b", toolchain=FixedQ8(qisa),
                      calibration=batches, schemes=schemes, sparse="always")
    rep = read_report(b.path)
    assert rep.fp32_layers == {}  # every layer ran in int8, the pruned ones too
    src = (b.path / "kernels.c").read_text()
    for name in schemes:
        assert rep.sparse[name].split(": ")[1].startswith("bcsr"), rep.sparse[name]
    op = "splinear" if "linear" in case else "spconv2d"
    assert f"{op}_" in src and f"_qs8__{qisa.name}_" in src
    if shape[1] == 3:  # the stem's image: blocked by 4 channels, one entry per tap
        assert "_nchw4c_bcsr" in src
    got = run_bundle(b, [x])
    want = _reference(model, x, batches, qisa.lanes, schemes)
    with torch.no_grad():
        fp32 = model(torch.from_numpy(x))
    fp32 = [fp32] if isinstance(fp32, torch.Tensor) else list(fp32)
    for g, w, f in zip(got, want, fp32, strict=True):
        assert g.shape == w.shape
        assert np.array_equal(g, w), f"max |diff| {np.abs(g - w).max()}"
        f = f.numpy()  # and the int8 model is a model of the pruned float one
        assert np.abs(w - f).max() <= 0.1 * np.abs(f).max()
        assert np.std(w) > 0


@pytest.mark.host
def test_dense_enough_pruned_layers_run_dense_int8(tmp_path):
    """Above the int8 format's density limit the layer stays int8, on the dense kernel; the
    unstructured scheme keeps its float32 sparse kernel (the reason names it)."""
    model = _pruned(lambda: Seq(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                                nn.Conv2d(32, 32, 3, padding=1)),
                    {"mods.0": (BP, 0.9)})()
    with torch.no_grad():
        w = model.mods[2].weight
        w.mul_((torch.rand(w.shape, generator=torch.Generator().manual_seed(3)) < 0.2).float())
    shape = (1, 16, 10, 10)
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    schemes = {"mods.0": "block_punched", "mods.2": "unstructured"}
    b = compile_model(model, torch.from_numpy(x), tmp_path / "b",
                      toolchain=HostToolchain(precision="int8"), calibration=batches,
                      schemes=schemes)
    rep = read_report(b.path)
    assert list(rep.fp32_layers) == ["mods.2"]
    assert rep.fp32_layers["mods.2"].startswith("pruned (unstructured): sparse + int8 is built")
    assert "dense int8 kernel" in rep.sparse["mods.0"]
    src = (b.path / "kernels.c").read_text()
    assert "conv2d_3x3s1_nchw16c_qs8" in src or "conv2d_3x3s1_nchw8c_qs8" in src
    (got,) = run_bundle(b, [x])
    with torch.no_grad():
        fp32 = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - fp32).max() <= 0.05 * np.abs(fp32).max()


class Net(nn.Module):
    """A small ResNet-like network for the end-to-end test."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, 2, 1)
        self.c1 = nn.Conv2d(32, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 32, 3, padding=1)
        self.down = nn.Conv2d(32, 48, 1, 2)
        self.c3 = nn.Conv2d(32, 48, 3, 2, 1)
        self.narrow = nn.Conv2d(48, 32, 3, padding=1)
        self.fc = nn.Linear(32, 40)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = F.relu(self.c1(x))
        x = F.relu(self.c2(y) + x)
        x = F.relu(self.c3(x) + self.down(x))
        x = F.relu(self.narrow(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def net() -> nn.Module:
    """``Net`` with seeded weights (the CLI loads it as ``test_int8_sparse:net``)."""
    torch.manual_seed(0)
    return Net().eval()


RULES = ("stem=block_punched:2x", "c*=block_punched:4x:filters=16,channels=4",
         "down=block:4x:rows=16", "fc=block:3x:rows=16", "narrow=filter:0.5")


@pytest.mark.host
def test_pruned_network_through_compile_int8_plan(tmp_path, capsys, local_runner):
    """``plan`` then ``compile --precision int8 --plan``: block-punched 3x3 convs (one with a
    residual, one strided), a block-pruned 1x1 shortcut and fc, a filter-pruned (narrower)
    conv; every pruned layer runs in int8 (the block ones on the int8 block-sparse kernels),
    and the bundle is the reference bit for bit, also on the runner at 2 threads (the work
    items split across the pool)."""
    from host.cli import main
    from host.pruning.command import apply_plan_file

    shape = (1, 3, 32, 32)
    plan, out, cal = tmp_path / "plan.json", tmp_path / "b", tmp_path / "cal.npy"
    batches = _batches(shape)
    np.save(cal, np.stack([b[0] for b in batches]))
    rules = [a for r in RULES for a in ("--rule", r)]
    assert main(["plan", "test_int8_sparse:net", "-o", str(plan), *rules]) == 0
    assert main(["compile", "test_int8_sparse:net", "--input-shape", "1,3,32,32", "-o",
                 str(out), "--precision", "int8", "--plan", str(plan), "--calibration", str(cal),
                 "--no-tuning-db"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    rep = read_report(out)
    pruned = ("stem", "c1", "c2", "c3", "down", "fc", "narrow")
    assert not set(pruned) & set(rep.fp32_layers), rep.fp32_layers
    for name in ("c1", "c2", "c3", "fc"):
        assert rep.sparse[name].split(": ")[1].startswith("bcsr"), rep.sparse[name]
    assert "c2: block_punched: bcsr_blocked" in text
    src = (out / "kernels.c").read_text()
    assert "spconv2d_3x3s1_" in src and "_add_relu" in src and "splinear_bcsr" in src
    model, schemes = apply_plan_file(net(), plan)
    assert model.narrow.out_channels == 16
    x = _batches(shape, 1, seed=7)[0][0]
    (got,) = run_bundle(out, [x])
    (want,) = _reference(model, x, batches, HostToolchain(precision="int8")
                         .quant_isa().lanes, schemes)
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"
    assert np.array_equal(run_on_runner(local_runner, load_bundle(out), torch.from_numpy(x),
                                        threads=2), want)
    with torch.no_grad():
        fp32 = model(torch.from_numpy(x)).numpy()
    assert np.abs(got - fp32).max() <= 0.1 * np.abs(fp32).max()
