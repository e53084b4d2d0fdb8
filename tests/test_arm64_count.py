"""arm64 tier: the instruction-counting qemu plugin (host/bench/arm64/npas_count.c) and the
runner's --count-markers, which `npas-host bench arm64` is built on.

The plugin's classes are checked exactly on a probe program whose loops execute known numbers
of each instruction; the runner's marks on a tiny model, where counts must be positive, come
once per counted inference and add up over the steps. No count thresholds: counts are
whatever the code is, only their bookkeeping is tested.
"""

from __future__ import annotations

import shutil
import subprocess
from contextlib import ExitStack

import pytest
import torch
from torch import nn

from codegen import compile_model
from host.bench.arm64 import counting
from host.bench.arm64.run import CountingRunner, Record, arm64_toolchain, kernel_variants

pytestmark = pytest.mark.arm64

# Each section runs N times a loop body of known instructions between a begin and an end mark.
PROBE = r"""
#include <sys/syscall.h>
#include <unistd.h>
#define MARK(c) syscall(SYS_lseek, -1, (long)(0x4E50415300000000ull + (c)), 0)
#define LOOP(body) do { MARK(1); for (long i_ = N; i_ > 0; --i_) \
  __asm__ volatile(body ::: "v0", "v1", "v2", "memory"); MARK(2); } while (0)
int main(void) {
  LOOP("fmla v0.4s, v1.4s, v2.4s\n fmls v0.2d, v1.2d, v2.2d\n fmla v0.4s, v1.4s, v2.s[1]");
  LOOP("fmla v0.8h, v1.8h, v2.8h\n fmla v0.8h, v1.8h, v2.h[3]\n fmls v0.4h, v1.4h, v2.4h");
  LOOP("fmlal v0.4s, v1.4h, v2.4h\n fmlal2 v0.4s, v1.4h, v2.4h\n"
       "fmlsl v0.4s, v1.4h, v2.h[2]\n fmlal2 v0.4s, v1.4h, v2.h[7]");
  LOOP("sdot v0.4s, v1.16b, v2.16b\n udot v0.4s, v1.16b, v2.4b[3]");
  LOOP("mla v0.4s, v1.4s, v2.4s\n mls v0.8h, v1.8h, v2.h[1]\n"
       "smlal v0.4s, v1.4h, v2.4h\n umlal2 v0.2d, v1.4s, v2.s[1]");
  LOOP("fmadd s0, s1, s2, s3\n fmla s0, s1, v2.s[1]\n fmul v0.4s, v1.4s, v2.4s\n"
       "fadd v0.4s, v1.4s, v2.4s\n ldr q0, [sp]\n str q1, [sp, #16]");
  LOOP("smmla v0.4s, v1.16b, v2.16b\n ummla v0.4s, v1.16b, v2.16b");
  return 0;
}
"""
# per section: its loop body's length and the classes it adds per iteration
EXPECTED = [
    (3, {"fmla": 3, "fp_simd": 3}),
    (3, {"fmla_f16": 3, "fp_simd": 3}),
    (4, {"fmlal": 4, "fp_simd": 4}),
    (2, {"dot": 2, "fp_simd": 2}),
    (4, {"int_mla": 4, "fp_simd": 4}),
    (6, {"fma_scalar": 2, "fp_simd": 4, "ldst": 2}),
    (2, {"mmla": 2, "fp_simd": 2}),
]
LOOP_OVERHEAD = 2  # the counter's decrement and the branch, as gcc -O1 writes the loop


@pytest.fixture(scope="module")
def plugin():
    try:
        path = counting.find_plugin()
    except counting.CountError as e:
        pytest.skip(f"arm64 tier: {e}")
    if not shutil.which("qemu-aarch64"):
        pytest.skip("arm64 tier: qemu-aarch64 is missing (scripts/build_arm64.sh)")
    return path


def run_probe(tmp_path, plugin, n: int) -> list[counting.Counts]:
    gcc = shutil.which("aarch64-linux-gnu-gcc")
    if not gcc:
        pytest.skip("arm64 tier: aarch64-linux-gnu-gcc is missing (scripts/build_arm64.sh)")
    src, exe, log = tmp_path / "probe.c", tmp_path / f"probe{n}", tmp_path / f"probe{n}.log"
    src.write_text(PROBE)
    subprocess.run([gcc, "-O1", "-static", f"-DN={n}",
                    "-march=armv8.6-a+fp16+fp16fml+dotprod+i8mm", str(src), "-o", str(exe)],
                   check=True)
    # -cpu max: the probe uses i8mm, which the benchmark's Cortex-A76 lacks
    subprocess.run(["qemu-aarch64", "-cpu", "max", *counting.plugin_args(log, plugin), str(exe)],
                   check=True, timeout=120)
    return counting.runs_of(counting.read_marks(log))


def test_plugin_counts_each_instruction_class_exactly(tmp_path, plugin):
    small, big = run_probe(tmp_path, plugin, 1000), run_probe(tmp_path, plugin, 3000)
    assert len(small) == len(big) == len(EXPECTED)
    for a, b, (body, want) in zip(small, big, EXPECTED, strict=True):
        d = b - a  # 2000 more iterations: the marks' own instructions cancel out
        assert d.total == 2000 * (body + LOOP_OVERHEAD)
        for cls, n in d.by_class.items():
            if cls not in ("total", "all_threads"):
                assert n == 2000 * want.get(cls, 0), (cls, want, d.by_class)
        assert d.mac == 2000 * sum(want.get(c, 0) for c in counting.VECTOR_MAC_CLASSES)


def test_plugin_refuses_bad_arguments(tmp_path, plugin):
    p = subprocess.run(["qemu-aarch64", "-plugin", f"{plugin},bogus=1", "/bin/true"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "unknown argument 'bogus=1'" in p.stderr


def test_log_parsing_rejects_what_it_cannot_pair(tmp_path):
    log = tmp_path / "x.counts"
    head = "# npas-count 2 total fmla\n"
    log.write_text(head + "M 2 10 1\n")
    with pytest.raises(counting.CountError, match="without its beginning"):
        counting.runs_of(counting.read_marks(log))
    log.write_text(head + "M 1 10 1 7\n")
    with pytest.raises(counting.CountError, match="3 counts for 2 classes"):
        counting.read_marks(log)
    log.write_text("garbage\n")
    with pytest.raises(counting.CountError, match="not an npas_count log"):
        counting.read_marks(log)
    log.write_text(head + "M 1 10 1\nM 256 12 1\nM 257 20 5\nM 2 31 6\nE 40 6\n")
    marks = counting.read_marks(log)
    assert [r.by_class for r in counting.runs_of(marks)] == [{"total": 21, "fmla": 5}]
    assert [[s.total for s in run] for run in counting.steps_of(marks)] == [[8, 11]]
    log.write_text(head + "M 1 10 1\nM 257 12 1\nM 2 31 6\n")
    with pytest.raises(counting.CountError, match="out of order"):
        counting.steps_of(counting.read_marks(log))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_runner_marks_every_counted_inference_and_step(tmp_path, plugin):
    torch.manual_seed(0)
    model, x = Tiny().eval(), torch.randn(1, 3, 8, 8)
    with torch.inference_mode():
        ref = model(x).numpy()
    bundle = compile_model(model, (x,), tmp_path / "b", name="tiny",
                           toolchain=arm64_toolchain())
    with ExitStack() as stack:
        try:
            runner = CountingRunner(stack, tmp_path)
        except FileNotFoundError as e:
            pytest.skip(f"arm64 tier: {e}")
        got = {}
        for runs in (1, 3):
            rec = Record("tiny", "ours", "fp32", 8, "ours")
            runner.count(rec, bundle, x.numpy(), ref, runs, tolerance=1e-4)
            got[runs] = rec
    one, three = got[1], got[3]
    assert one.status == three.status == "ok" and one.max_rel_err < 1e-4
    assert len(one.runs) == 1 and len(three.runs) == 3
    assert all(r.total > 0 and r.by_class["fmla"] > 0 for r in one.runs + three.runs)
    # counted on the marking thread only: the other threads' wake-ups do not show, so three
    # counted inferences are three times the work of one
    assert sum(r.total for r in three.runs) == pytest.approx(3 * one.runs[0].total, rel=0.01)
    assert all(0 < r.on_thread <= 1 for r in one.runs + three.runs)
    steps = bundle.manifest.steps
    assert [layer.name for layer in three.layers] == [s.name for s in steps]
    assert [layer.symbol for layer in three.layers] == [s.symbol for s in steps]
    assert sum(layer.counts.total for layer in three.layers) <= three.counts.total
    assert all(layer.counts.total > 0 for layer in three.layers)
    record = three.to_json()
    assert record["instructions_per_inference"] == three.counts.total > 0
    assert record["mac_instructions_per_inference"] == three.counts.mac > 0
    assert record["engine"] == "ours" and record["input_size"] == 8


def test_kernel_variants_fold_blocking_and_name_each_step():
    src = ("NPAS_EXPORT void npas_step_0_conv2d(const npas_step_args *a) {\n"
           "  conv2d_3x3s1_nchw4c__neon_2x14w_relu(a, 1);\n"
           "  conv2d_3x3s1_nchw4c__neon_2x3w_relu(a, 2);\n}\n"
           "NPAS_EXPORT void npas_step_1_add(const npas_step_args *a) {\n  x = y + 1;\n}\n")
    assert kernel_variants(src) == {"npas_step_0_conv2d": "conv2d_3x3s1_nchw4c__neon_2xNw_relu",
                                    "npas_step_1_add": ""}
