"""Toolchains: generated source -> the bundle's kernel artifact, plus the records the manifest
keeps. A toolchain also names the language its source is written in (``language()``).

A toolchain compiles with flags that keep the kernels free of libc (``-ffreestanding -nostdlib
-fno-builtin -fno-tree-loop-distribute-patterns`` so gcc emits no memset/memcpy calls) and
links with ``-Wl,-z,defs`` so any undefined symbol fails the build here, not on the phone.
``HostToolchain`` uses the system ``cc``; an arm64/Android one is another subclass that
changes the compiler, target flags and target record (see ``CToolchain``).

``OpenClToolchain`` builds nothing here: the OpenCL C source is the artifact and the runner
builds it on the device with ``clBuildProgram(build_options)``. ``check`` compiles it offline
with clang (``-x cl``, SPIR target, syntax only) when clang is installed.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from codegen.bundle import ArtifactRef, Target, Toolchain, artifact_ref
from codegen.emit.c import CLanguage
from codegen.emit.cstyle import CStyleLanguage
from codegen.emit.opencl import LANGUAGES as OPENCL_LANGUAGES
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

    source_name = "kernels.c"  # the generated source, kept in the bundle for people to read

    def language(self) -> CStyleLanguage:
        return CLanguage()

    def build(self, source: str, bundle_dir: Path, name: str) -> tuple[ArtifactRef, ...]:
        """Write the kernel artifact(s) for ``source`` into ``bundle_dir``."""
        lib = f"lib{name}.so"
        self.compile(source, Path(bundle_dir) / lib)
        return (artifact_ref(Path(bundle_dir), "kernels", "kernel_library", lib),)

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


OPENCL_BUILD_OPTIONS = ("-cl-std=CL1.2",)
CLANG_CL_FLAGS = ("-x", "cl", "-cl-std=CL1.2", "--target=spir64", "-fsyntax-only",
                  "-Xclang", "-finclude-default-header", "-Werror=implicit-function-declaration")


@dataclass
class OpenClToolchain:
    """OpenCL C source for the GPU runner, fp32 or fp16 (half storage, needs cl_khr_fp16).

    ``build_options`` go to the manifest's toolchain flags; the runner passes them to
    clBuildProgram. ``verify`` runs ``check`` (offline clang) during compile_model when clang
    is installed, and skips it quietly when not.
    """

    precision: str = "fp32"
    build_options: tuple[str, ...] = OPENCL_BUILD_OPTIONS
    verify: bool = False
    clang: str = "clang"
    timeout_s: float = 600.0
    source_name = "kernels.cl"

    def __post_init__(self) -> None:
        if self.precision not in OPENCL_LANGUAGES:
            raise CodegenError(f"OpenCL precision {self.precision!r}: use one of "
                               f"{sorted(OPENCL_LANGUAGES)}")

    def language(self) -> CStyleLanguage:
        return OPENCL_LANGUAGES[self.precision]()

    def record(self) -> Toolchain:
        return Toolchain(compiler="opencl-runtime", version="OpenCL C 1.2",
                         flags=self.build_options)

    def target(self) -> Target:
        return Target(arch="opencl", os="any", abi="opencl",
                      features=self.language().extensions)

    def build(self, source: str, bundle_dir: Path, name: str) -> tuple[ArtifactRef, ...]:
        """The source is the artifact; with ``verify``, check it with clang first."""
        if self.verify and shutil.which(self.clang):
            self.check(source)
        (Path(bundle_dir) / self.source_name).write_text(source, encoding="utf-8")
        return (artifact_ref(Path(bundle_dir), "opencl", "opencl_source", self.source_name),)

    def check(self, source: str) -> None:
        """Compile ``source`` offline with clang (syntax and types, SPIR target); raise
        CompileError with clang's stderr if it is rejected."""
        path = shutil.which(self.clang)
        if path is None:
            raise CompileError(f"{self.clang!r} not found on PATH; the offline OpenCL check "
                               "needs clang (apt-get install clang)")
        with tempfile.TemporaryDirectory(prefix="npas-cl-") as tmp:
            src = Path(tmp) / self.source_name
            src.write_text(source, encoding="utf-8")
            cmd = [path, *CLANG_CL_FLAGS, str(src)]
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                   timeout=self.timeout_s)
            except subprocess.TimeoutExpired as e:
                raise CompileError(f"clang took over {self.timeout_s:.0f} s checking OpenCL "
                                   "source") from e
        if r.returncode != 0:
            raise CompileError(f"clang rejected the OpenCL source ({r.returncode}):\n"
                               f"{' '.join(cmd)}\n{r.stderr.strip()[-4000:]}")


def toolchain_for(target: str = "cpu", precision: str = "fp32") -> CToolchain | OpenClToolchain:
    """The default toolchain for a target name: "cpu" (host cc) or "gpu" (OpenCL)."""
    if target == "gpu":
        return OpenClToolchain(precision=precision)
    if target == "cpu":
        if precision != "fp32":
            raise CodegenError(f"precision {precision!r}: CPU bundles are fp32 only")
        return HostToolchain()
    raise CodegenError(f"target {target!r}: use \"cpu\" or \"gpu\"")
