"""OpenCL emitter: GPU bundles. Tiers: pure Python (manifest and source structure, no tools),
clang (offline syntax check of every kernel, fp32 and fp16; skipped without clang), opencl
(run by the real runner's GPU backend on an OpenCL device such as PoCL, compared with torch;
skipped when the runner sees no OpenCL device)."""

from __future__ import annotations

import re
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from codegen_models import every_op_cnn
from zoo import rel_err, run_on_runner, small_cnn, torchvision_model

from codegen import CodegenError, CompileError, capture, compile_model
from codegen.compile import layout_weights
from codegen.emit.cstyle import step_params
from codegen.emit.opencl import OpenClHalfLanguage, OpenClLanguage
from codegen.lr import numel
from codegen.passes import pipeline, run_passes
from codegen.toolchain import OpenClToolchain, toolchain_for

TOL = 1e-4
SIG = re.compile(r"__kernel void (\w+)\(__global (float|half) \*arena, "
                 r"__global const (float|half) \*weights\) \{")


def _gpu_bundle(tmp_path, precision="fp32", model=None, shape=(2, 3, 33, 29), name="g"):
    model = model or small_cnn()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    b = compile_model(model, x, tmp_path / f"{name}-{precision}", name=name,
                      toolchain=OpenClToolchain(precision=precision))
    return b, model, x


def _with_tuning(g, tuning):
    """Every step of ``g`` with ``tuning`` (keeps the memory plan, unlike with_layers)."""
    return replace(g, layers=tuple(replace(la, tuning=dict(tuning)) if la.is_step else la
                                   for la in g.layers))


def _tuned_graph(model, x, tuning, elem_bytes=4):
    return _with_tuning(run_passes(capture(model, (x,)), pipeline(elem_bytes)), tuning)


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_bundle_manifest(tmp_path, precision) -> None:
    b, _, _ = _gpu_bundle(tmp_path, precision)
    m = b.manifest
    eb, dtype = (4, "float32") if precision == "fp32" else (2, "float16")
    assert {(a.role, a.kind, a.file) for a in m.artifacts} == {
        ("opencl", "opencl_source", "kernels.cl"), ("weights", "weights", "weights.bin")}
    assert m.target.arch == "opencl" and m.target.os == "any" and m.target.abi == "opencl"
    assert m.target.features == (() if precision == "fp32" else ("cl_khr_fp16",))
    assert m.toolchain.compiler == "opencl-runtime" and m.toolchain.version == "OpenCL C 1.2"
    assert m.toolchain.flags == ("-cl-std=CL1.2",)
    assert m.scratch_bytes_per_thread == 0
    for t in m.tensors:
        assert t.dtype == dtype and t.nbytes == numel(t.shape) * eb
        assert t.arena_offset % 64 == 0 and t.arena_offset + t.nbytes <= m.arena_bytes
    assert len({s.symbol for s in m.steps}) == len(m.steps)
    for s in m.steps:
        assert s.local_size == 64 and s.work_items % s.local_size == 0 and s.work_items > 0
        # tile 1: one work item per output element, padded to the work-group size
        assert s.work_items - s.local_size < numel(m.tensors[s.output].shape) <= s.work_items
        assert all(p.offset % 64 == 0 for p in s.params)
        assert all(0 <= i < len(m.tensors) for i in (*s.inputs, s.output))
    # flatten's output is an alias: it shares the adaptive pool's buffer
    fc = next(s for s in m.steps if s.name == "fc")
    pool = next(s for s in m.steps if s.op == "adaptive_avgpool2d")
    assert m.tensors[fc.inputs[0]].arena_offset == m.tensors[pool.output].arena_offset

    src = b.file("opencl").read_text(encoding="utf-8")
    sigs = SIG.findall(src)
    assert [s[0] for s in sigs] == [s.symbol for s in m.steps]
    scalar = "float" if precision == "fp32" else "half"
    assert all(s[1] == s[2] == scalar for s in sigs)
    assert src.count("__kernel") == len(m.steps)
    assert ("#pragma OPENCL EXTENSION cl_khr_fp16 : enable" in src) == (precision == "fp16")
    assert "native_" not in src and "image2d" not in src


def test_gpu_bundle_bakes_manifest_offsets(tmp_path) -> None:
    b, _, _ = _gpu_bundle(tmp_path, "fp16")
    m = b.manifest
    src = b.file("opencl").read_text(encoding="utf-8")
    kernels = src.split("__kernel void ")[1:]
    for s, body in zip(m.steps, kernels, strict=True):
        assert body.startswith(s.symbol + "(")
        arena = [int(v) for v in re.findall(r"= arena \+ (\d+);", body)]
        want = [m.tensors[i].arena_offset // 2 for i in (*s.inputs, s.output)]
        assert arena == want, s.name
        weights = [int(v) for v in re.findall(r"= weights \+ (\d+);", body)]
        assert weights == [p.offset // 2 for p in s.params], s.name
        assert "if (e >= " in body or "if (it >= " in body  # the padding guard


def test_fp16_weights_are_little_endian_half(tmp_path) -> None:
    b16, model, x = _gpu_bundle(tmp_path, "fp16")
    b32, _, _ = _gpu_bundle(tmp_path, "fp32", model=model)
    blob16 = b16.file("weights").read_bytes()
    blob32 = b32.file("weights").read_bytes()
    assert len(blob16) % 64 == 0
    for s16, s32 in zip(b16.manifest.steps, b32.manifest.steps, strict=True):
        for p16, p32 in zip(s16.params, s32.params, strict=True):
            assert p16.nbytes * 2 == p32.nbytes
            w16 = np.frombuffer(blob16, "<f2", p16.nbytes // 2, p16.offset)
            w32 = np.frombuffer(blob32, "<f4", p32.nbytes // 4, p32.offset)
            np.testing.assert_array_equal(w16, w32.astype(np.float16))


def test_tuning_tile_and_work_group() -> None:
    model, x = every_op_cnn(), torch.randn(1, 3, 29, 31)
    g = _tuned_graph(model, x, {"tile": 3, "work_group": 32})
    refs = layout_weights([step_params(la) for la in g.steps])
    prog = OpenClLanguage().render(g, refs)
    for s in prog.steps:
        total = numel(g.shapes[s.layer.output])
        assert s.local_size == 32 and s.work_items % 32 == 0
        items = (total + 2) // 3  # three outputs per work item
        assert s.work_items == (items + 31) // 32 * 32, s.layer.name
    assert "for (int t = 0; t < 3; ++t)" in prog.source


@pytest.mark.parametrize("tuning,match", [
    ({"activation_storage": "image2d"}, "image2d activations are planned"),
    ({"vector_width": 4}, "vector_width=4 is not implemented"),
    ({"tile": 0}, r"tile=0; use an integer in \[1, 1024\]"),
    ({"work_goup": 64}, "unknown OpenCL tuning keys"),
])
def test_unsupported_tuning_is_refused(tuning, match) -> None:
    model, x = small_cnn(), torch.randn(1, 3, 16, 16)
    g = _tuned_graph(model, x, tuning)
    refs = layout_weights([step_params(la) for la in g.steps])
    with pytest.raises(CodegenError, match=match):
        OpenClLanguage().render(g, refs)


def test_toolchain_api() -> None:
    assert isinstance(toolchain_for("gpu", "fp16"), OpenClToolchain)
    assert isinstance(OpenClToolchain(precision="fp16").language(), OpenClHalfLanguage)
    with pytest.raises(CodegenError, match="precision 'int8'"):
        OpenClToolchain(precision="int8")
    with pytest.raises(CodegenError, match="CPU bundles are fp32 only"):
        toolchain_for("cpu", "fp16")
    with pytest.raises(CodegenError, match="target 'npu'"):
        toolchain_for("npu")


# -- clang tier ------------------------------------------------------------------------------

needs_clang = pytest.mark.skipif(shutil.which("clang") is None,
                                 reason="clang tier: no clang on PATH (apt-get install clang)")
CHECK_MODELS = [("small_cnn", small_cnn, (2, 3, 33, 29)),
                ("resnet18", lambda: torchvision_model("resnet18"), (1, 3, 64, 64)),
                ("mobilenet_v2", lambda: torchvision_model("mobilenet_v2"), (1, 3, 64, 64))]


@needs_clang
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name,factory,shape", CHECK_MODELS, ids=[m[0] for m in CHECK_MODELS])
def test_every_kernel_passes_offline_clang(tmp_path, name, factory, shape, precision) -> None:
    tc = OpenClToolchain(precision=precision, verify=True)  # compile_model runs tc.check
    b = compile_model(factory(), torch.randn(shape), tmp_path / name, name=name, toolchain=tc)
    src = b.file("opencl").read_text(encoding="utf-8")
    assert len(SIG.findall(src)) == len(b.manifest.steps)


@needs_clang
def test_clang_check_reports_its_stderr() -> None:
    bad = "__kernel void k(__global float *arena, __global const float *weights) " \
          "{ arena[0] = undefined_thing; }\n"
    with pytest.raises(CompileError, match="undefined_thing"):
        OpenClToolchain().check(bad)
    half_without_pragma = "__kernel void k(__global half *arena) { arena[0] = arena[1]; }\n"
    with pytest.raises(CompileError, match="cl_khr_fp16"):
        OpenClToolchain().check(half_without_pragma)


# -- OpenCL tier -----------------------------------------------------------------------------

RUN_MODELS = [("small_cnn", small_cnn, (2, 3, 33, 29), {}),
              ("every_op", every_op_cnn, (2, 3, 61, 53), {}),
              ("every_op_tiled", every_op_cnn, (2, 3, 61, 53), {"tile": 3, "work_group": 32}),
              ("resnet18", lambda: torchvision_model("resnet18"), (1, 3, 64, 64), {}),
              ("mobilenet_v2", lambda: torchvision_model("mobilenet_v2"), (1, 3, 64, 64), {})]


@pytest.fixture(scope="module")
def gpu_runner(local_runner):
    """The real runner, when it sees an OpenCL device (PoCL here, installed by setup.sh)."""
    info = local_runner.client().device_info()
    if not any(p.devices for p in info.opencl_platforms):
        pytest.skip(f"opencl tier: the runner sees no OpenCL device ({info.opencl_status}); "
                    f"apt-get install pocl-opencl-icd ocl-icd-libopencl1")
    return local_runner


@pytest.mark.opencl
@pytest.mark.parametrize("name,factory,shape,tuning", RUN_MODELS, ids=[m[0] for m in RUN_MODELS])
def test_gpu_bundle_matches_torch(gpu_runner, monkeypatch, tmp_path, name, factory, shape,
                                  tuning) -> None:
    model = factory()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = model(x)
    if tuning:  # compile_model has no tuning hook (a tuner pass would set it): patch it in
        import codegen.compile as cc
        real = cc.run_passes
        monkeypatch.setattr(cc, "run_passes", lambda g, pipe: _with_tuning(real(g, pipe), tuning))
    b = compile_model(model, x, tmp_path / name, name=name, toolchain=OpenClToolchain())
    if tuning:
        assert all(s.local_size == tuning["work_group"] for s in b.manifest.steps)
    got = run_on_runner(gpu_runner, b, x, backend="gpu")
    assert got.shape == tuple(want.shape)
    assert rel_err(got, want) <= TOL
