"""Toolchains: C source -> a freestanding shared library, plus the records the manifest keeps.

A toolchain compiles with flags that keep the kernels free of libc (``-ffreestanding -nostdlib
-fno-builtin -fno-tree-loop-distribute-patterns`` so gcc emits no memset/memcpy calls) and
links with ``-Wl,-z,defs`` so any undefined symbol fails the build here, not on the phone.
``HostToolchain`` uses the system ``cc``; an arm64/Android one is another subclass that
changes the compiler, target flags and target record (see ``CToolchain``).
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from codegen.bundle import Target, Toolchain
from codegen.lr import CodegenError

COMMON_FLAGS = ("-O3", "-ffreestanding", "-nostdlib", "-fPIC", "-shared", "-fno-builtin",
                "-fno-tree-loop-distribute-patterns", "-fno-stack-protector", "-Wl,-z,defs")


class CompileError(CodegenError):
    """The C compiler rejected generated code; the message carries its stderr."""


@dataclass
class CToolchain:
    """A C compiler and the flags to build a kernel library for one target."""

    compiler: str = "cc"
    target_flags: tuple[str, ...] = ()
    extra_flags: tuple[str, ...] = ()
    timeout_s: float = 600.0
    _version: str | None = field(default=None, init=False, repr=False)

    @property
    def flags(self) -> tuple[str, ...]:
        return (*COMMON_FLAGS, *self.target_flags, *self.extra_flags)

    def compiler_path(self) -> str:
        path = shutil.which(self.compiler)
        if path is None:
            raise CompileError(f"C compiler {self.compiler!r} not found on PATH; install it "
                               "(e.g. apt-get install gcc) or pass another toolchain")
        return path

    def version(self) -> str:
        if self._version is None:
            out = subprocess.run([self.compiler_path(), "--version"], capture_output=True,
                                 text=True, check=False)
            self._version = (out.stdout or out.stderr).splitlines()[0].strip()
        return self._version

    def record(self) -> Toolchain:
        return Toolchain(compiler=self.compiler_path(), version=self.version(),
                         flags=self.flags)

    def target(self) -> Target:
        raise NotImplementedError

    def compile(self, source: str, out: Path) -> Path:
        """Compile C ``source`` into the shared library ``out``; return ``out``."""
        out = Path(out)
        with tempfile.TemporaryDirectory(prefix="npas-cc-") as tmp:
            src = Path(tmp) / (out.stem + ".c")
            src.write_text(source)
            cmd = [self.compiler_path(), *self.flags, f"-Wl,-soname,{out.name}", "-o",
                   str(out), str(src)]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                   timeout=self.timeout_s)
            except subprocess.TimeoutExpired as e:
                raise CompileError(f"{self.compiler} took over {self.timeout_s:.0f} s compiling "
                                   f"{out.name}") from e
        if r.returncode != 0:
            raise CompileError(f"{self.compiler} failed ({r.returncode}) building {out.name}:\n"
                               f"{' '.join(cmd)}\n{r.stderr.strip()[-4000:]}")
        return out


@dataclass
class HostToolchain(CToolchain):
    """The machine's own ``cc`` (gcc or clang), building for the machine it runs on."""

    target_flags: tuple[str, ...] = ("-march=native",)

    def target(self) -> Target:
        arch = platform.machine()
        abi = {"x86_64": "x86_64", "aarch64": "arm64-v8a"}.get(arch, arch)
        features: tuple[str, ...] = ()
        if "-march=native" in self.flags:
            features = tuple(f for f in ("avx2", "fma", "avx512f", "asimd") if f in
                             _cpu_flags())
        return Target(arch=arch, os="linux", abi=abi, features=features)


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(val.split())
    return set()
