"""The ops issue 20 added (SiLU, GELU, Mish, mean over H and W, BatchNorm anywhere, channel
shuffle's view/transpose/view, chunk and split along channels, cat of many inputs, average
pools in every ceil_mode/count_include_pad combination), checked against torch at awkward
shapes in every tier: the reference executor (pure Python), the host CPU at each vector width
it runs (ctypes), arm64 under qemu, OpenCL on PoCL (both through the real runner)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ctypes_exec import run_bundle
from test_arm64 import qemu_runner  # noqa: F401  (a fixture; clang is conftest's)
from test_codegen_opencl import gpu_runner  # noqa: F401  (fixture)
from test_codegen_vector import ISAS, _Fixed
from torch import nn
from zoo import randomize_bn, rel_err, run_on_runner

from codegen import capture, compile_model
from codegen.lr import UnsupportedOp
from codegen.passes import run_passes
from codegen.reference import run_reference
from codegen.toolchain import Arm64AndroidToolchain, OpenClToolchain

TOL = 1e-4


class Activations(nn.Module):
    """Each new activation fused into a conv (blocked output), as a step after a pool, and
    after a plain-layout op (a channel slice), and in the functional forms."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 13, 3, padding=1)
        self.c2 = nn.Conv2d(13, 13, 3, padding=1, groups=13)
        self.c3 = nn.Conv2d(13, 21, 1)
        self.silu, self.gelu, self.mish = nn.SiLU(), nn.GELU(), nn.Mish()

    def forward(self, x):
        x = self.silu(self.c1(x))
        x = self.gelu(F.max_pool2d(self.c2(x), 2, ceil_mode=True))
        x = self.mish(self.c3(x))
        y = F.silu(F.avg_pool2d(x, 3, 1, 1))
        parts = x.chunk(3, dim=1)  # slices: plain layout
        z = F.mish(F.gelu(torch.cat([parts[2], parts[0], parts[1]], 1)))
        return y + z


class ActivationsFunctional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 17, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(17, 17, 1)

    def forward(self, x):
        x = F.gelu(self.c1(x))
        a, b = x.chunk(2, dim=1)  # 9 and 8 channels: not whole vectors
        return torch.cat([F.mish(a), F.silu(b), self.c2(x).sigmoid()], 1)


class MeanHead(nn.Module):
    """MNASNet/ShuffleNet heads: mean over H and W (keepdim both ways)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 19, 3, stride=2)
        self.fc = nn.Linear(19, 7)
        self.e = nn.Conv2d(19, 19, 1)

    def forward(self, x):
        x = F.relu(self.c(x))
        s = torch.sigmoid(self.e(x.mean((2, 3), keepdim=True)))
        return self.fc((x * s).mean([-1, -2]))


class SumHead(nn.Module):
    """A sum over H and W (keepdim both ways; method and function forms)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 19, 3, stride=2)
        self.fc = nn.Linear(19, 7)
        self.e = nn.Conv2d(19, 19, 1)
        with torch.no_grad():  # the sums are ~90x the mean: keep the sigmoid off its rails
            self.e.weight.mul_(0.02)

    def forward(self, x):
        x = F.relu(self.c(x))
        s = torch.sigmoid(self.e(x.sum((2, 3), keepdim=True)))
        return self.fc(torch.sum(x * s, dim=[-1, -2]))


class BatchNormAnywhere(nn.Module):
    """DenseNet's BatchNorm after a concat, one after a pool, one on the input, one at the end;
    the first three feed more than one layer."""

    def __init__(self) -> None:
        super().__init__()
        self.bn_in = nn.BatchNorm2d(3)
        self.c1 = nn.Conv2d(3, 10, 3, padding=1)
        self.c2 = nn.Conv2d(3, 7, 1)
        self.bn_cat = nn.BatchNorm2d(20)
        self.c3 = nn.Conv2d(20, 11, 3, padding=1, bias=False)
        self.bn_pool = nn.BatchNorm2d(11)
        self.bn_out = nn.BatchNorm2d(11)

    def forward(self, x):
        x = self.bn_in(x)
        y = torch.cat([self.c1(x), self.c2(x), x], 1)
        y = F.relu(self.bn_cat(y))
        y = F.avg_pool2d(self.c3(y), 2)
        y = self.bn_pool(y)
        return self.bn_out(y + F.relu(y))


class Shuffle(nn.Module):
    """ShuffleNet-V2's unit: chunk, two branches, cat, channel shuffle (view, transpose,
    contiguous, view), and a split of uneven sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 3, stride=2, padding=1)
        self.b = nn.Sequential(nn.Conv2d(12, 12, 1), nn.ReLU(),
                               nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.Conv2d(12, 12, 1))

    def forward(self, x):
        x = self.stem(x)
        a, b = x.chunk(2, dim=1)
        x = torch.cat((a, self.b(b)), dim=1)
        n, c, h, w = x.size()
        x = x.view(n, 2, c // 2, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        x = x.view(n, -1, h, w)
        p, q, r = torch.split(x, [5, 11, 8], dim=1)
        return torch.cat([r, F.relu(p), q.permute(0, 1, 3, 2).flatten(2).view(n, 11, h, w)], 1)


class Pools(nn.Module):
    """Average pools in all four ceil_mode x count_include_pad combinations with padding,
    and a cat of five inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 9, 3)
        self.pools = nn.ModuleList(nn.AvgPool2d(3, 2, 1, ceil_mode=cm, count_include_pad=cip)
                                   for cm in (False, True) for cip in (False, True))

    def forward(self, x):
        x = self.c(x)
        ys = [p(x) for p in self.pools]
        m = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
        return torch.cat([torch.flatten(y, 1) for y in (*ys, m)], 1)  # sizes differ


class Resize(nn.Module):
    """Super-resolution's ops: nearest and bilinear upsampling (align_corners both ways, by
    size and by a non-integer scale factor), PixelShuffle and PixelUnshuffle, ConvTranspose2d
    (stride 2, padding, output_padding, dilation)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.ps = nn.PixelShuffle(2)
        self.pu = nn.PixelUnshuffle(2)
        self.t1 = nn.ConvTranspose2d(3, 5, 3, stride=2, padding=1, output_padding=1)
        self.t2 = nn.ConvTranspose2d(5, 4, (2, 3), stride=(1, 2), dilation=(2, 1))

    def forward(self, x):
        y = self.up(F.relu(self.c1(x)))
        a = F.interpolate(y, size=(17, 30), mode="bilinear", align_corners=False)
        b = F.interpolate(a, scale_factor=1.5, mode="bilinear", align_corners=True)
        c = F.interpolate(b, scale_factor=0.7, mode="nearest")
        d = self.ps(c)  # 12 -> 3 channels
        e = self.t2(F.silu(self.t1(d)))
        return torch.cat([torch.flatten(e, 1), torch.flatten(self.pu(y), 1)], 1)


class Clamps(nn.Module):
    """clamp (both bounds, one bound, relu6's), LeakyReLU, PReLU (one slope and per channel),
    on blocked and plain producers, with NaN-free wide inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 11, 3, padding=1)
        self.leaky = nn.LeakyReLU(0.2)
        self.p1, self.p11 = nn.PReLU(), nn.PReLU(11)
        with torch.no_grad():
            self.p11.weight.copy_(torch.linspace(-0.5, 1.5, 11))

    def forward(self, x):
        y = self.c(x)
        a = torch.clamp(y, -0.3, 0.4) + y.clamp(min=0.1) + y.clamp(max=-0.2)
        b = self.leaky(y) + F.leaky_relu(a, 0.05) + y.clamp(0, 6)
        return self.p11(b) + self.p1(F.max_pool2d(b, 3, 1, 1))


class Broadcast(nn.Module):
    """add, sub and mul of two tensors with broadcasting: per-channel vectors on either side,
    a per-position map ([N,1,H,W]), same shapes (sub, mul), in-place forms."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(3, 10, 3, padding=1)
        self.d = nn.Conv2d(10, 10, 1)

    def forward(self, x):
        y = self.c(x)
        v = F.adaptive_avg_pool2d(y, 1)
        m = torch.sigmoid(self.d(y)).chunk(10, dim=1)[3]  # [N, 1, H, W]
        a = (y + v) - (v * y) + (y * m) - (m - y) + (y - y.sigmoid()) * self.d(y)
        a -= v
        return a


CASES = {
    "activations": (Activations, (1, 3, 19, 23)),
    "activations_functional": (ActivationsFunctional, (2, 3, 17, 15)),
    "mean_head": (MeanHead, (2, 3, 21, 18)),
    "sum_head": (SumHead, (2, 3, 21, 18)),
    "batchnorm_anywhere": (BatchNormAnywhere, (2, 3, 13, 11)),
    "shuffle": (Shuffle, (1, 3, 22, 26)),
    "pools": (Pools, (2, 3, 22, 19)),
    "resize": (Resize, (1, 3, 7, 9)),
    "clamps": (Clamps, (2, 3, 9, 13)),
    "broadcast": (Broadcast, (2, 3, 7, 5)),
}


def _case(name: str):
    cls, shape = CASES[name]
    torch.manual_seed(3)
    m = randomize_bn(cls(), seed=3)
    x = 3 * torch.randn(shape, generator=torch.Generator().manual_seed(4))  # wide range
    with torch.no_grad():
        want = m(x)
    return m, x, want


# ---- pure Python: capture, passes, reference executor ----

@pytest.mark.parametrize("name", list(CASES))
def test_reference_equals_torch(name):
    m, x, want = _case(name)
    (got,) = run_reference(run_passes(capture(m, x)), [x])
    assert rel_err(got, want) <= 1e-5


def test_channel_shuffle_is_a_permute_between_aliases():
    m, x, _ = _case("shuffle")
    ops = [la.op for la in capture(m, x).layers]
    assert ops.count("slice") == 5 and ops.count("permute") == 2
    assert "floordiv" not in ops


def test_every_unsupported_op_is_reported_at_once_with_its_layers():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(3, 4, 3)
            self.n1, self.n2 = nn.LayerNorm([4, 6, 6]), nn.LayerNorm([4, 6, 6])
            self.t = nn.Tanh()

        def forward(self, x):
            y = self.c(x)
            assert_ok = y.shape[1] == 4
            torch._assert(assert_ok, "four channels")  # integer arithmetic: not blamed
            return self.t(self.n2(self.n1(y))) + F.elu(y)

    with pytest.raises(UnsupportedOp) as e:
        capture(M(), torch.randn(1, 3, 8, 8))
    msg = str(e.value)
    assert msg.startswith("4 unsupported ops in 3 kind(s)")
    assert 'layers "n1", "n2" (LayerNorm): not supported by the code generator; the code ' \
        "generator has no LayerNorm" in msg
    assert 'layer "t" (Tanh)' in msg and 'layer "elu" (elu)' in msg
    assert "eq" not in msg.split("\n")[1:-1] and "_assert" not in msg
    assert msg.count("supported: ") == 1 or msg.rstrip().split("\n")[-1].startswith("The code")


@pytest.mark.parametrize("fn,needle", [
    (lambda x: x.mean(1), "only the spatial dims"),
    (lambda x: x.sum((1, 2, 3)), "sum over dims [1, 2, 3]"),
    (lambda x: x.chunk(2, dim=2)[0], "only the channel dim"),
    (lambda x: x.permute(1, 0, 2, 3), "moves the batch dim"),
    (lambda x: F.gelu(x, approximate="tanh"), "approximate='none'"),
])
def test_new_op_variants_that_are_refused(fn, needle):
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return fn(self.conv(x))

    with pytest.raises(UnsupportedOp, match="layer") as e:
        capture(M(), torch.randn(1, 3, 8, 8))
    assert needle in str(e.value)


# ---- host CPU (ctypes), each vector width the host runs, and the scalar C ----

@pytest.mark.host
@pytest.mark.parametrize("isa", [*ISAS, None], ids=[*(i.name for i in ISAS), "scalar"])
@pytest.mark.parametrize("name", list(CASES))
def test_host_equals_torch(name, isa, tmp_path, cc):
    from codegen import HostToolchain

    m, x, want = _case(name)
    tc = _Fixed(isa) if isa is not None else HostToolchain(vectorize=False)
    b = compile_model(m, x, tmp_path / name, name=name, toolchain=tc)
    (got,) = run_bundle(b, [x.numpy()])
    assert rel_err(got, want) <= TOL


# ---- arm64 under qemu and OpenCL on PoCL, through the runner ----

@pytest.mark.arm64
@pytest.mark.parametrize("name", list(CASES))
def test_arm64_equals_torch(name, tmp_path, clang, qemu_runner):  # noqa: F811
    from test_arm64 import CALL_TIMEOUT_S

    m, x, want = _case(name)
    b = compile_model(m, x, tmp_path / name, name=f"ops_{name}",
                      toolchain=Arm64AndroidToolchain())
    got = run_on_runner(qemu_runner, b, x, threads=2, call_timeout_s=CALL_TIMEOUT_S)
    assert rel_err(got, want) <= TOL


@pytest.mark.arm64
@pytest.mark.parametrize("name", ["activations", "batchnorm_anywhere", "resize"])
def test_arm64_fp16_is_close_to_torch(name, tmp_path, clang, qemu_runner):  # noqa: F811
    """NEON FP16 storage and arithmetic (measured 1.2e-3 to 1.4e-2 on these cases)."""
    from test_arm64 import CALL_TIMEOUT_S

    m, x, want = _case(name)
    b = compile_model(m, x, tmp_path / name, name=f"ops16_{name}",
                      toolchain=Arm64AndroidToolchain(precision="fp16"))
    got = run_on_runner(qemu_runner, b, x, threads=1, call_timeout_s=CALL_TIMEOUT_S)
    assert rel_err(got, want) <= 3e-2


@pytest.mark.opencl
@pytest.mark.parametrize("name", list(CASES))
def test_opencl_equals_torch(name, tmp_path, gpu_runner):  # noqa: F811
    m, x, want = _case(name)
    b = compile_model(m, x, tmp_path / name, name=f"ops_cl_{name}", toolchain=OpenClToolchain())
    got = run_on_runner(gpu_runner, b, x, backend="gpu")
    assert rel_err(got, want) <= TOL


@pytest.mark.parametrize("name", list(CASES))
def test_exported_program_gives_the_same_result(name):
    """The torch.export front end (ATen ops) captures the same ops."""
    m, x, want = _case(name)
    ep = torch.export.export(m, (x,)).module()
    (got,) = run_reference(run_passes(capture(ep, x)), [x])
    assert rel_err(got, want) <= 1e-5
