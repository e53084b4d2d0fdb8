"""The code generator's tables are complete and agree (pure Python): every activation is
captured (fx and ATen front ends), emitted (scalar C, vector C, OpenCL) and referenced; every op
has its kernels and its reference; every storage format has a kernel and a packing for each op
it serves; the scheme names the sparse pass knows are the host's mask schemes."""

from __future__ import annotations

import pytest
import torch

import codegen
from codegen import ACTIVATIONS, OPS, SPARSE_FORMATS, SPARSE_SCHEMES, capture
from codegen.emit.c import CLanguage
from codegen.emit.cpu.prelude import vector_prelude
from codegen.emit.opencl import OpenClLanguage
from codegen.emit.sparse import FORMATS
from codegen.frontend import aten, fx
from codegen.isa import AVX512, NEON
from codegen.reference import run_reference

LANGUAGES = {"c": CLanguage(), "c-avx512": CLanguage(AVX512), "c-neon": CLanguage(NEON),
             "opencl": OpenClLanguage()}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_every_activation_is_captured_emitted_and_referenced(name):
    act = ACTIVATIONS[name]
    assert act.c_body and act.vec_body and act.modules and act.functions and act.aten
    op = OPS[name]
    assert op.kind == "compute" and op.follows_layout and op.reference is not None
    # captured: each of its torch forms maps to it, in both front ends
    assert all(dict(fx._ACT_MODULES)[t] == name for t in act.modules)
    assert all(fx._ACT_FUNCTIONS[f] == name for f in act.functions)
    assert all(fx._ACT_METHODS[m] == name for m in act.methods)
    for packet in act.aten:
        assert getattr(torch.ops.aten, packet) in aten.HANDLERS
    # emitted: a step kernel in every language, and the functions epilogues call
    for lang in LANGUAGES.values():
        assert name in lang.kernels
        assert f"float npas_{name}(float v)" in lang.activations()
    for isa in (AVX512, NEON):
        assert f"vf npas_v_{name}(vf v)" in vector_prelude(isa)
    # referenced, and the reference is torch's: capture a module of it and run the LR
    x = torch.randn(2, 3, 4, 5) * 4
    for module in act.modules:
        (got,) = run_reference(capture(module(), x), [x])
        assert torch.equal(torch.from_numpy(got), act.torch_fn(x))


def test_every_op_has_kernels_and_a_reference():
    assert {o.kind for o in OPS.values()} == {"compute", "alias", "graph", "internal"}
    kernels = {op for lang in LANGUAGES.values() for op in lang.kernels}
    assert kernels <= set(OPS), f"kernels for ops the LR does not know: {kernels - set(OPS)}"
    for name, op in OPS.items():
        if op.kind in ("compute", "alias"):
            assert op.reference is not None, name
        if op.kind == "compute" and op.emitted:
            for lname, lang in LANGUAGES.items():
                assert name in lang.kernels, (name, lname)
        if op.kind == "internal":  # inserted by the CPU passes, emitted by the vector C
            assert name in LANGUAGES["c-avx512"].kernels, name
    assert codegen.lr.SUPPORTED_OPS == tuple(n for n, o in OPS.items()
                                             if o.kind in ("compute", "alias"))


def test_every_storage_format_has_a_kernel_and_a_packing_for_each_op():
    assert set(FORMATS) == set(SPARSE_FORMATS)
    for name, fmt in FORMATS.items():
        ops = set(SPARSE_FORMATS[name].ops)
        assert set(fmt.kernel) == set(fmt.pack) == ops, name
        assert all(callable(k) for k in (*fmt.kernel.values(), *fmt.pack.values()))
        assert ops <= {n for n, o in OPS.items() if o.params}, name  # ops with weights


def test_sparse_schemes_are_the_host_mask_schemes():
    from host.pruning.schemes import SCHEMES

    assert set(SPARSE_SCHEMES) == {n for n, s in SCHEMES.items() if not s.structural}

