"""The Bundle: what the code generator hands to everything downstream.

A bundle is a folder: ``manifest.json`` plus the files it names (a kernel library, a weight
blob, optionally the generated source for people to read). The manifest references every
artifact by sha256, so the runner can cache artifacts by content and the host can skip uploads.
The records here are frozen; ``proto/npas/runner/v1/runner.proto`` mirrors them (message
``Manifest``) and ``host/rpc/convert.py`` is the only place that converts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

FORMAT_VERSION = 1
KERNEL_ABI_VERSION = 1  # android_app/src/main/cpp/core/npas_kernel_abi.h
MANIFEST_NAME = "manifest.json"
ARTIFACT_KINDS = ("kernel_library", "weights", "opencl_source")


class BundleError(ValueError):
    """A bundle on disk is missing, malformed or does not match its manifest."""


@dataclass(frozen=True)
class ArtifactRef:
    role: str  # "kernels", "weights", "opencl"
    kind: str  # one of ARTIFACT_KINDS
    file: str  # relative to the bundle folder
    sha256: str
    size: int


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str
    arena_offset: int
    nbytes: int


@dataclass(frozen=True)
class ParamRef:
    offset: int  # bytes into the weight blob, 64-byte aligned
    nbytes: int


@dataclass(frozen=True)
class Step:
    name: str
    op: str
    symbol: str
    inputs: tuple[int, ...]
    output: int
    params: tuple[ParamRef, ...]
    work_items: int  # CPU: [begin, end) range of the kernel; GPU: 1-D global work size
    flops: int = 0
    local_size: int = 0  # GPU only: work-group size; 0 lets the driver choose


@dataclass(frozen=True)
class Target:
    arch: str  # "x86_64", "aarch64"
    os: str  # "linux", "android"
    abi: str  # "x86_64", "arm64-v8a"
    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class Toolchain:
    compiler: str
    version: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    name: str
    target: Target
    toolchain: Toolchain
    artifacts: tuple[ArtifactRef, ...]
    tensors: tuple[TensorSpec, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    arena_bytes: int
    scratch_bytes_per_thread: int
    steps: tuple[Step, ...]
    format_version: int = FORMAT_VERSION
    kernel_abi_version: int = KERNEL_ABI_VERSION
    content_hash: str = field(default="", compare=False)

    def artifact(self, role: str) -> ArtifactRef:
        for a in self.artifacts:
            if a.role == role:
                return a
        raise BundleError(f"manifest {self.name!r} has no artifact with role {role!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    def canonical_json(self) -> str:
        """Key-sorted JSON without the content hash: the text the hash is taken over."""
        d = self.to_dict()
        d.pop("content_hash")
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def with_hash(self) -> Manifest:
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()
        return replace(self, content_hash=digest)

    @staticmethod
    def from_dict(d: dict) -> Manifest:
        try:
            return Manifest(
                name=d["name"],
                target=Target(**{**d["target"], "features": tuple(d["target"]["features"])}),
                toolchain=Toolchain(
                    **{**d["toolchain"], "flags": tuple(d["toolchain"]["flags"])}),
                artifacts=tuple(ArtifactRef(**a) for a in d["artifacts"]),
                tensors=tuple(TensorSpec(**{**t, "shape": tuple(t["shape"])})
                              for t in d["tensors"]),
                inputs=tuple(d["inputs"]),
                outputs=tuple(d["outputs"]),
                arena_bytes=d["arena_bytes"],
                scratch_bytes_per_thread=d["scratch_bytes_per_thread"],
                steps=tuple(
                    Step(**{**s, "inputs": tuple(s["inputs"]),
                            "params": tuple(ParamRef(**p) for p in s["params"])})
                    for s in d["steps"]),
                format_version=d["format_version"],
                kernel_abi_version=d["kernel_abi_version"],
                content_hash=d.get("content_hash", ""),
            )
        except (KeyError, TypeError) as e:
            raise BundleError(f"malformed manifest: {e!r}") from e


@dataclass(frozen=True)
class Bundle:
    """A bundle folder and its manifest."""

    path: Path
    manifest: Manifest

    def file(self, role: str) -> Path:
        return self.path / self.manifest.artifact(role).file

    def save_manifest(self) -> None:
        text = json.dumps(self.manifest.to_dict(), indent=1, sort_keys=True)
        tmp = self.path / (MANIFEST_NAME + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(self.path / MANIFEST_NAME)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_ref(bundle_dir: Path, role: str, kind: str, file: str) -> ArtifactRef:
    """Describe a file already written into ``bundle_dir`` as an artifact."""
    if kind not in ARTIFACT_KINDS:
        raise BundleError(f"artifact kind {kind!r} is not one of {ARTIFACT_KINDS}")
    p = bundle_dir / file
    return ArtifactRef(role=role, kind=kind, file=file, sha256=sha256_file(p),
                       size=p.stat().st_size)


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle folder; with ``verify``, check every artifact's size and sha256."""
    path = Path(path)
    mpath = path / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{path} is not a bundle: no {MANIFEST_NAME} in it")
    try:
        d = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath}: not valid JSON ({e})") from e
    m = Manifest.from_dict(d)
    if m.format_version != FORMAT_VERSION:
        raise BundleError(f"{mpath}: format_version {m.format_version}, this npas reads "
                          f"{FORMAT_VERSION}; recompile the model")
    if verify:
        for a in m.artifacts:
            f = path / a.file
            if not f.is_file():
                raise BundleError(f"{path}: artifact {a.role} file {a.file} is missing")
            if f.stat().st_size != a.size or sha256_file(f) != a.sha256:
                raise BundleError(f"{path}: artifact {a.role} ({a.file}) does not match the "
                                  f"manifest's size/sha256; the bundle was modified")
        if m.content_hash and m.with_hash().content_hash != m.content_hash:
            raise BundleError(f"{mpath}: content_hash does not match the manifest")
    return Bundle(path=path, manifest=m)
