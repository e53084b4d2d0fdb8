"""host tier: the x86 int8 Linear that computes 2 or 4 output blocks an item, a chain each
(``q8.linear_blocks``: their weight rows streamed side by side), bit-exact against
codegen.quant's reference at each int8 ISA this host runs, at the block counts' edges: a
partial last block, a partial last input group, a batch of several rows, and a count of
blocks that is neither (1: the two-chain kernel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ctypes_exec import run_bundle
from int8_tools import QISAS, FixedQ8
from int8_tools import batches as _batches
from int8_tools import reference as _reference
from torch import nn
from zoo import Seq

from codegen import compile_model
from codegen.emit.cpu.q8_linear import linear_blocks
from codegen.isa import AVX2_Q8, AVX512_VNNI, NEON_DOT


def _mlp(self, x):
    a, b = self.mods
    return b(torch.relu(a(x)))


# (in, hidden, out, batch): hidden's 16-lane blocks at AVX-512: 4 (partial), 2, 3 (1 a item)
CASES = {"4_blocks": (37, 61, 10, 2), "2_blocks": (70, 32, 5, 1), "3_blocks": (64, 40, 3, 3)}


def test_block_counts_per_isa():
    assert linear_blocks(AVX512_VNNI, 256) == 4  # VGG-16's 4096 outputs
    assert linear_blocks(AVX512_VNNI, 2) == 2
    assert linear_blocks(AVX512_VNNI, 63) == 1  # 1000 outputs: the two-chain kernel
    assert linear_blocks(AVX2_Q8, 256) == 1  # pairs of int16: unchanged
    assert linear_blocks(NEON_DOT, 256) == 1  # SDOT: unchanged


@pytest.mark.host
@pytest.mark.parametrize("qisa", QISAS, ids=lambda q: q.name)
@pytest.mark.parametrize("case", list(CASES))
def test_multi_block_linear_is_bit_exact(case, qisa, tmp_path):
    k, hidden, o, n = CASES[case]
    torch.manual_seed(0)
    model = Seq(nn.Linear(k, hidden), nn.Linear(hidden, o), fn=_mlp).eval()
    shape = (n, k)
    batches = _batches(shape)
    x = _batches(shape, 1, seed=7)[0][0]
    b = compile_model(model, torch.from_numpy(x), tmp_path / "b", toolchain=FixedQ8(qisa),
                      calibration=batches)
    src = (b.path / "kernels.c").read_text()
    blocks = linear_blocks(qisa, -(-hidden // qisa.lanes))
    if blocks > 1:
        assert f"linear_qs8__{qisa.name}_{blocks}o" in src
    else:
        assert f"linear_qs8__{qisa.name}_2c" in src
    (got,) = run_bundle(b, [x])
    (want,) = _reference(model, x, batches, qisa.lanes)
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"max |diff| {np.abs(got - want).max()}"
    assert np.std(want) > 0
