"""Counting guest instructions under qemu-aarch64: the plugin, its marks and its log.

build/qemu-plugin/libnpas_count.so (host/bench/arm64/npas_count.c, built by
scripts/build_arm64.sh) counts every instruction the guest executes, by class, and writes the
running counts whenever the guest marks a point with ``lseek(-1, MARK_BASE + code, SEEK_SET)``.
The runner marks with ``--count-markers``, guest.py (ncnn, MNN) always. A mark records the
counts of the thread that made it, so only one-thread inferences are counted whole. One
inference is what lies between a ``MARK_BEGIN`` and the next ``MARK_END``; with per-layer
marks, step ``i`` is what lies between its ``MARK_STEP_BASE + i`` and the next mark.

Counts are work, not time: the same binary, input and qemu CPU model give the same counts on a
busy machine as on an idle one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from host.devices.local import REPO_ROOT

PLUGIN = REPO_ROOT / "build" / "qemu-plugin" / "libnpas_count.so"
BUILD_HINT = "build it with scripts/build_arm64.sh"
QEMU_CPU = "cortex-a76"  # every engine runs on this one qemu CPU model: ARMv8.2, fp16, dotprod

# The marks (android_app/src/main/cpp/core/os_util.h and guest.py say the same)
MARK_BASE = 0x4E50415300000000
MARK_BEGIN = 1
MARK_END = 2
MARK_STEP_BASE = 0x100

# The vector multiply-accumulate classes: the compute floor (an A76 retires at most two
# 128-bit FMA-class instructions a cycle). Scalar FMADD is counted apart (fma_scalar).
VECTOR_MAC_CLASSES = ("fmla", "fmla_f16", "fmlal", "dot", "mmla", "int_mla")


class CountError(Exception):
    """The plugin is missing, or its log does not hold what was asked of it."""


def find_plugin(explicit: Path | None = None) -> Path:
    path = Path(explicit) if explicit else PLUGIN
    if not path.is_file():
        raise CountError(f"the instruction-counting qemu plugin is not built ({path}); "
                         f"{BUILD_HINT}")
    return path


def plugin_args(log: Path, plugin: Path | None = None) -> tuple[str, ...]:
    """qemu-aarch64 options that load the plugin writing to ``log`` (qemu splits plugin
    options at commas, so neither path may hold one). Pair them with ``-cpu QEMU_CPU``."""
    plugin = find_plugin(plugin)
    for p in (plugin, log):
        if "," in str(p):
            raise CountError(f"qemu cannot pass a path with a comma to a plugin: {p}")
    return ("-plugin", f"{plugin},out={log}")


@dataclass(frozen=True)
class Counts:
    """Instructions by class over some stretch of a run, on the thread that marked it:
    ``total`` is every instruction of it; ``all_threads`` is every thread's total over the
    same stretch."""

    by_class: Mapping[str, int]

    @property
    def on_thread(self) -> float:
        """The marking thread's share of all threads' instructions (1.0: the work ran where it
        was marked, as a one-thread inference should)."""
        every = self.by_class.get("all_threads", 0)
        return self.total / every if every else 1.0

    @property
    def total(self) -> int:
        return self.by_class["total"]

    @property
    def mac(self) -> int:
        """Vector multiply-accumulate instructions, all classes together."""
        return sum(self.by_class.get(c, 0) for c in VECTOR_MAC_CLASSES)

    def __sub__(self, other: Counts) -> Counts:
        return Counts({k: v - other.by_class[k] for k, v in self.by_class.items()})


@dataclass(frozen=True)
class Mark:
    code: int
    counts: Counts  # since the start of the process


def read_marks(log: Path, skip: int = 0) -> list[Mark]:
    """The marks in the plugin's log after the first ``skip`` (a log that grows while a
    runner lives is read again after each call)."""
    try:
        lines = log.read_text().splitlines()
    except OSError as e:
        raise CountError(f"cannot read the plugin's log {log}: {e}") from None
    if not lines or not lines[0].startswith("# npas-count 2 "):
        raise CountError(f"{log} is not an npas_count log (first line {lines[:1]})")
    classes = lines[0].split()[3:]
    marks: list[Mark] = []
    for n, line in enumerate(lines[1:], 2):
        parts = line.split()
        if not parts or parts[0] != "M":
            continue  # "E": the counts at exit
        if len(parts) != 2 + len(classes):
            raise CountError(f"{log}:{n}: {len(parts) - 2} counts for {len(classes)} classes")
        values = dict(zip(classes, map(int, parts[2:]), strict=True))
        marks.append(Mark(int(parts[1]), Counts(values)))
    return marks[skip:]


def runs_of(marks: Sequence[Mark]) -> list[Counts]:
    """One Counts per inference: from each MARK_BEGIN to the MARK_END after it."""
    out: list[Counts] = []
    begin: Mark | None = None
    for m in marks:
        if m.code == MARK_BEGIN:
            begin = m
        elif m.code == MARK_END:
            if begin is None:
                raise CountError("an end-of-inference mark without its beginning")
            out.append(m.counts - begin.counts)
            begin = None
    return out


def steps_of(marks: Sequence[Mark]) -> list[list[Counts]]:
    """Per inference, one Counts per step: from each step's mark to the next mark."""
    out: list[list[Counts]] = []
    current: list[Counts] | None = None
    last: Mark | None = None
    for m in marks:
        if last is not None and last.code >= MARK_STEP_BASE and current is not None:
            if last.code - MARK_STEP_BASE != len(current):
                raise CountError(f"step mark {last.code - MARK_STEP_BASE} out of order "
                                 f"(expected {len(current)})")
            current.append(m.counts - last.counts)
        if m.code == MARK_BEGIN:
            current = []
        elif m.code == MARK_END and current is not None:
            out.append(current)
            current = None
        last = m
    return out


def typical(runs: Sequence[Counts]) -> Counts:
    """The run whose total is the median (an upper median for an even count): counts of
    repeated inferences differ only by what other threads did meanwhile."""
    if not runs:
        raise CountError("no counted inference in the plugin's log")
    return sorted(runs, key=lambda c: c.total)[len(runs) // 2]
