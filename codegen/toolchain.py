"""Toolchains: generated source -> the bundle's kernel artifact, plus the records the manifest
keeps. A toolchain also names the language its source is written in (``language()``).

A toolchain compiles with flags that keep the kernels free of libc (``-ffreestanding -nostdlib
-fno-builtin -fno-tree-loop-distribute-patterns`` so gcc emits no memset/memcpy calls) and
links with ``-Wl,-z,defs`` so any undefined symbol fails the build here, not on the phone.
``HostToolchain`` uses the system ``cc``. ``Arm64AndroidToolchain`` builds for arm64-v8a
phones with clang (the NDK's when one is given or ``ANDROID_NDK_HOME``/``ANDROID_NDK_ROOT``
names one, else Debian's ``clang`` + ``lld``); the generated C is the same. ``isa()`` names
the vector ISA the kernels are written for (AVX-512/AVX2/SSE from the host's features, NEON on
arm64, NEON FP16 on arm64 at precision "fp16"): it sets the blocked layout's width and the
element type, and the vector-extension kernels compile to it. At precision "int8" (the host's
AVX-512 VNNI or AVX2, arm64's SDOT: ``codegen.isa.QuantIsa``) the language is
``Int8CLanguage`` and the flags add ``-ffp-contract=off``.

``OpenClToolchain`` builds nothing here: the OpenCL C source is the artifact and the runner
builds it on the device with ``clBuildProgram(build_options)``. ``check`` compiles it offline
with clang (``-x cl``, SPIR target, syntax only) when clang is installed.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from codegen.bundle import ArtifactRef, Target, Toolchain, artifact_ref
from codegen.emit.c import CLanguage
from codegen.emit.c_int8 import Int8CLanguage
from codegen.emit.cstyle import CStyleLanguage
from codegen.emit.opencl import LANGUAGES as OPENCL_LANGUAGES
from codegen.isa import FP16_FEATURES, QuantIsa, VectorIsa, isa_for, quant_isa_for
from codegen.lr import CodegenError

COMMON_FLAGS = ("-O3", "-ffreestanding", "-nostdlib", "-fPIC", "-shared", "-fno-builtin",
                "-fno-tree-loop-distribute-patterns", "-fno-stack-protector", "-Wl,-z,defs")
# clang has no -fno-tree-loop-distribute-patterns: -fno-builtin already keeps it from turning
# loops into memset/memcpy calls. lld, 16 KB pages and a soname (added by compile()) are what
# Android asks of a library.
CLANG_ANDROID_FLAGS = ("-O3", "-ffreestanding", "-nostdlib", "-fPIC", "-shared", "-fuse-ld=lld",
                       "-fno-builtin", "-fno-stack-protector", "-Wl,-z,defs",
                       "-Wl,-z,max-page-size=16384")


class CompileError(CodegenError):
    """The C compiler rejected generated code; the message carries its stderr."""


@dataclass
class CToolchain:
    """A C compiler and the flags to build a kernel library for one target."""

    compiler: str = "cc"
    target_flags: tuple[str, ...] = ()
    extra_flags: tuple[str, ...] = ()
    timeout_s: float = 600.0
    vectorize: bool = True  # blocked layout + vector kernels; False: the scalar NCHW kernels
    _version: str | None = field(default=None, init=False, repr=False)
    common_flags: ClassVar[tuple[str, ...]] = COMMON_FLAGS

    @property
    def flags(self) -> tuple[str, ...]:
        return (*self.common_flags, *self.target_flags, *self.extra_flags)

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

    def isa(self) -> VectorIsa | None:
        """The vector ISA the kernels are written for (from the target's features); None when
        ``vectorize`` is off."""
        if not self.vectorize:
            return None
        t = self.target()
        return isa_for(t.arch, t.features)

    def language(self) -> CStyleLanguage:
        return CLanguage(self.isa())

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
    """The machine's own ``cc`` (gcc or clang), building for the machine it runs on.

    ``precision`` "int8" writes int8 kernels where the quantization pass put int8 layers
    (``codegen/emit/c_int8.py``: AVX-512 VNNI where the CPU has avx512_vnni, else AVX2) and
    compiles with ``-ffp-contract=off``, so that the requantization rounds each float
    operation once, as ``codegen.quant`` does."""

    target_flags: tuple[str, ...] = ("-march=native",)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "int8"):
            raise CodegenError(f"host CPU precision {self.precision!r}: use 'fp32' or 'int8'")
        if self.precision == "int8" and INT8_FLAG not in self.extra_flags:
            self.extra_flags = (*self.extra_flags, INT8_FLAG)

    def target(self) -> Target:
        arch = platform.machine()
        abi = host_abi()
        features: tuple[str, ...] = ()
        if "-march=native" in self.flags:
            names = ("avx2", "fma", "avx512f", "asimd")
            if self.precision == "int8":
                names = (*names, "avx512_vnni")
            features = tuple(f for f in names if f in _cpu_flags())
        return Target(arch=arch, os="linux", abi=abi, features=features)

    def quant_isa(self) -> QuantIsa:
        """The int8 kernels' ISA (precision "int8")."""
        t = self.target()
        return quant_isa_for(t.arch, t.features)

    def isa(self) -> VectorIsa | None:
        if self.precision == "int8":
            if not self.vectorize:
                raise CodegenError("precision 'int8' needs the vector kernels (vectorize=True)")
            return self.quant_isa().fp32
        return super().isa()

    def language(self) -> CStyleLanguage:
        if self.precision == "int8":
            return Int8CLanguage(self.quant_isa())
        return super().language()


INT8_FLAG = "-ffp-contract=off"


def host_abi() -> str:
    """This machine's ABI in Android's spelling (x86_64, arm64-v8a)."""
    arch = platform.machine()
    return {"x86_64": "x86_64", "aarch64": "arm64-v8a"}.get(arch, arch)


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


ARM64_ABI = "arm64-v8a"
ARM64_BASE_MARCH = "-march=armv8-a"
# ARMv8.2 dot product + half precision, chosen only when the device reports both (the names
# are the kernel's /proc/cpuinfo "Features", which DeviceInfo.cpu_features reports).
ARM64_DOTPROD_FP16_MARCH = "-march=armv8.2-a+fp16+dotprod"
NDK_CLANG = Path("toolchains/llvm/prebuilt/linux-x86_64/bin/clang")


def find_ndk(env: Mapping[str, str] | None = None) -> Path | None:
    """The Android NDK named by ``ANDROID_NDK_HOME`` or ``ANDROID_NDK_ROOT`` (in ``env``,
    default ``os.environ``), if it holds a clang; else None."""
    env = os.environ if env is None else env
    for var in ("ANDROID_NDK_HOME", "ANDROID_NDK_ROOT"):
        root = env.get(var)
        if root and (Path(root) / NDK_CLANG).is_file():
            return Path(root)
    return None


ARM64_FP16_MARCH = "-march=armv8.2-a+fp16"
ARM64_DOTPROD_MARCH = "-march=armv8.2-a+dotprod"  # int8 (SDOT) on a core without FP16


def arm64_march(features: tuple[str, ...] | list[str], precision: str = "fp32") -> str:
    """-march for a device's CPU features: armv8.2-a+fp16+dotprod needs asimddp and
    fphp/asimdhp; anything less gets the armv8-a baseline every arm64-v8a phone runs. At
    ``precision`` "fp16" the kernels compute in FP16, so +fp16 is required: armv8.2-a+fp16
    (with +dotprod when the device has it too); no features at all (``compile --abi
    arm64-v8a``, no device) means the caller asked for fp16 and gets it; a device whose
    features lack fphp/asimdhp is refused."""
    f = set(features)
    fp16 = bool(f & FP16_FEATURES)
    if "asimddp" in f and fp16:
        return ARM64_DOTPROD_FP16_MARCH
    if precision == "int8":
        if f and "asimddp" not in f:
            raise CodegenError(f"precision 'int8': this arm64 device has no dot product (its "
                               f"features {sorted(f)} lack asimddp); use fp32")
        return ARM64_DOTPROD_MARCH if f else ARM64_DOTPROD_FP16_MARCH
    if precision == "fp16":
        if f and not fp16:
            raise CodegenError(f"precision 'fp16': this arm64 device has no FP16 arithmetic "
                               f"(its features {sorted(f)} lack fphp/asimdhp); use fp32")
        return ARM64_FP16_MARCH
    return ARM64_BASE_MARCH


@dataclass
class Arm64AndroidToolchain(CToolchain):
    """arm64-v8a Android kernels: clang ``--target=aarch64-linux-android<api_level>``, lld.

    ``compiler`` empty (the default) picks the NDK's clang when ``ndk`` (or, if that is None,
    ``ANDROID_NDK_HOME``/``ANDROID_NDK_ROOT`` at construction) names an NDK, else ``clang`` on
    PATH (Debian: apt-get install clang lld). ``features`` are the device's CPU features
    (DeviceInfo.cpu_features); they choose ``-march`` (see ``arm64_march``). ``precision``
    "fp16" writes the kernels in ``_Float16`` (``NEON_FP16``: 8 lanes, FP16 arithmetic; see
    ``codegen/emit/cpu/__init__.py``), "fp32" (the default) in float. The kernels link against
    nothing, so one library runs on Android and on arm64 Linux (the runner under
    qemu-aarch64)."""

    compiler: str = ""
    features: tuple[str, ...] = ()
    api_level: int = 24
    ndk: Path | None = None
    precision: str = "fp32"
    common_flags: ClassVar[tuple[str, ...]] = CLANG_ANDROID_FLAGS

    def __post_init__(self) -> None:
        self.features = tuple(self.features)
        if self.precision not in ("fp32", "fp16", "int8"):
            raise CodegenError(f"arm64 precision {self.precision!r}: use 'fp32', 'fp16' or "
                               "'int8'")
        if self.precision == "int8" and INT8_FLAG not in self.extra_flags:
            self.extra_flags = (*self.extra_flags, INT8_FLAG)
        if not self.compiler:
            ndk = Path(self.ndk) if self.ndk else find_ndk()
            self.compiler = str(ndk / NDK_CLANG) if ndk else "clang"
        if not self.target_flags:
            self.target_flags = (f"--target=aarch64-linux-android{self.api_level}",
                                 arm64_march(self.features, self.precision))

    def compiler_path(self) -> str:
        path = shutil.which(self.compiler)
        if path is None:
            raise CompileError(f"clang {self.compiler!r} not found; arm64 kernels need clang and "
                               "lld (apt-get install clang lld) or an NDK in ANDROID_NDK_HOME")
        return path

    def target(self) -> Target:
        features = ["asimd"]
        if ARM64_DOTPROD_FP16_MARCH in self.flags:
            features += ["asimddp", "asimdhp", "fphp"]
        elif ARM64_FP16_MARCH in self.flags:
            features += ["asimdhp", "fphp"]
        elif ARM64_DOTPROD_MARCH in self.flags:
            features += ["asimddp"]
        return Target(arch="aarch64", os="android", abi=ARM64_ABI, features=tuple(features))

    def language(self) -> CStyleLanguage:
        if self.precision == "int8":
            t = self.target()
            return Int8CLanguage(quant_isa_for(t.arch, t.features))
        return super().language()

    def isa(self) -> VectorIsa | None:
        if self.precision == "int8":
            if not self.vectorize:
                raise CodegenError("precision 'int8' needs the vector kernels (vectorize=True)")
            t = self.target()
            return quant_isa_for(t.arch, t.features).fp32
        if not self.vectorize:
            if self.precision == "fp16":
                raise CodegenError("precision 'fp16' needs the vector kernels (vectorize=True)")
            return None
        t = self.target()
        return isa_for(t.arch, t.features, self.precision)


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

    def isa(self) -> None:
        """GPU bundles keep plain NCHW: no CPU vector ISA."""
        return None

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


def toolchain_for(target: str = "cpu", precision: str = "fp32", abi: str | None = None,
                  features: tuple[str, ...] = ()) -> CToolchain | OpenClToolchain:
    """The default toolchain for a target name: "cpu" or "gpu" (OpenCL).

    For "cpu", ``abi`` is the device's ABI (DeviceInfo.abi): None or the host's own ABI gives
    the host cc, "arm64-v8a" gives ``Arm64AndroidToolchain(features=features)`` (also on an
    arm64 host: a phone wants Android's flags, and the kernels run on arm64 Linux too)."""
    if target == "gpu":
        return OpenClToolchain(precision=precision)
    if target == "cpu":
        if precision not in ("fp32", "fp16", "int8"):
            raise CodegenError(f"precision {precision!r}: CPU bundles are fp32, fp16 on "
                               "arm64, or int8 on x86-64")
        if precision == "int8" and abi != ARM64_ABI:
            if abi not in (None, host_abi()) or host_abi() != "x86_64":
                raise CodegenError(f"precision 'int8': int8 CPU kernels are for x86-64 (AVX-512 "
                                   f"VNNI or AVX2) and arm64 (SDOT), not {abi or host_abi()!r}; "
                                   "use --precision fp32")
            return HostToolchain(precision="int8")
        if abi == ARM64_ABI:
            return Arm64AndroidToolchain(features=tuple(features), precision=precision)
        if abi is None or abi == host_abi():
            if precision != "fp32":
                raise CodegenError(f"precision {precision!r}: CPU bundles are fp32 only on "
                                   f"this {host_abi()} host; FP16 CPU kernels are for arm64 "
                                   "(NEON FP16: --abi arm64-v8a or an arm64 device)")
            return HostToolchain()
        raise CodegenError(f"abi {abi!r}: CPU kernels can be built for {ARM64_ABI!r} or this "
                           f"machine's {host_abi()!r}")
    raise CodegenError(f"target {target!r}: use \"cpu\" or \"gpu\"")
