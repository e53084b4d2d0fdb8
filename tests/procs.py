"""Processes by /proc (Linux): a process's descendants, and whether one of them still runs,
for the tests that SIGKILL a host and check that nothing it started outlives it."""

from __future__ import annotations

import time
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(") ", 1)[1].split()  # fields after "pid (comm)": state, ppid, ...


def identity(pid: int) -> tuple[int, str] | None:
    """(pid, start time): a pid the kernel reuses later is another identity."""
    f = _stat(pid)
    return (pid, f[19]) if f else None


def descendants(pid: int) -> dict[tuple[int, str], str]:
    """Every living process below ``pid``: identity → command line."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (f := _stat(int(d.name))) is not None:
            children.setdefault(int(f[1]), []).append(int(d.name))
    out, todo = {}, list(children.get(pid, []))
    while todo:
        p = todo.pop()
        ident = identity(p)
        if ident is None:
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        out[ident] = cmd
        todo += children.get(p, [])
    return out


def alive(ident: tuple[int, str]) -> bool:
    """The same process still runs (a zombie, exited but not yet reaped, counts as gone)."""
    f = _stat(ident[0])
    return f is not None and f[0] != "Z" and f[19] == ident[1]


def wait_gone(idents, timeout_s: float) -> list[tuple[int, str]]:
    """Poll until none of ``idents`` runs or the deadline passes; the ones still running."""
    deadline = time.monotonic() + timeout_s
    left = [i for i in idents if alive(i)]
    while left and time.monotonic() < deadline:
        time.sleep(0.1)  # polling the processes' state, with a deadline
        left = [i for i in left if alive(i)]
    return left
