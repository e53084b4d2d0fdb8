"""The Bundle: what the code generator hands to everything downstream.

A bundle is a folder: ``manifest.json`` plus the files it names (a kernel library, a weight
blob, optionally the generated source for people to read). The manifest references every
artifact by sha256, so the runner can cache artifacts by content and the host can skip uploads.
The records here are frozen; ``proto/npas/runner/v1/runner.proto`` mirrors them (message
``Manifest``) and ``host/rpc/convert.py`` is the only place that converts.

Format 2 ships weights compactly: the weight blob holds only what cannot be recomputed (a
Winograd layer's raw 3x3 weights, not its transformed ones), and the manifest's ``prepare``
steps build the weight buffer the kernels read (``weights_bytes``, larger than the blob) at
load time: a copy of a blob range, or a kernel of the bundle's own library run once over its
work items (``args->params[0]``: the blob range, ``args->output``: the buffer range). Step
params point into that buffer. A bundle with no prepare steps reads the blob as the buffer.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

FORMAT_VERSION = 2  # 2: weights_bytes and prepare steps (compact weight blobs)
KERNEL_ABI_VERSION = 1  # android_app/src/main/cpp/core/npas_kernel_abi.h
MANIFEST_NAME = "manifest.json"
ARTIFACT_KINDS = ("kernel_library", "weights", "opencl_source")
ROLE_KINDS = {"kernels": "kernel_library", "weights": "weights", "opencl": "opencl_source"}
DTYPE_BYTES = {"float32": 4, "float16": 2}  # float16: GPU (OpenCL) bundles only
OPENCL_ARCH = "opencl"  # target.arch of a GPU bundle

# What the runner accepts (ManifestLimits and the alignments in core/manifest.h); the host
# refuses the same, before anything is read or uploaded.
U32_MAX, U64_MAX = (1 << 32) - 1, (1 << 64) - 1
MAX_ARENA_BYTES = 2 << 30
MAX_SCRATCH_BYTES_PER_THREAD = 256 << 20
MAX_STEPS, MAX_TENSORS, MAX_MODEL_IO = 100_000, 1_000_000, 1024
MAX_STEP_INPUTS, MAX_STEP_PARAMS, MAX_RANK = 64, 1024, 8
MAX_WORK_ITEMS = 1 << 40
MAX_BUILD_FLAGS, MAX_BUILD_OPTIONS_BYTES = 256, 4096
TENSOR_ALIGNMENT, PARAM_ALIGNMENT = 16, 64
MAX_STRING, MAX_LIST = 4096, 4096  # strings and lists the runner does not bound otherwise
MAX_MANIFEST_BYTES = 256 << 20
MAX_WEIGHTS_BYTES = 16 << 30  # the loaded weight buffer (the memory budget bounds it further)
MAX_PREPARE_STEPS = MAX_STEPS
FIX = "the bundle is damaged or was not written by npas; compile the model again"


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
class PrepareStep:
    """One load-time step building the weight buffer: ``dst`` (in the buffer) from ``src`` (in
    the shipped blob). ``symbol`` "": a byte copy (same sizes); else a kernel of the library,
    called with ``[0, work_items)``, params[0] at src and output at dst."""

    name: str  # the layer whose weights it prepares (copies: the first layer of the range)
    symbol: str
    src: ParamRef
    dst: ParamRef
    work_items: int = 1


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
    # the weight buffer step params point into, built by ``prepare`` from the blob; with no
    # prepare steps it is the blob itself (weights_bytes = the blob's size)
    weights_bytes: int = 0
    prepare: tuple[PrepareStep, ...] = ()
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

    @property
    def shipped_weights_bytes(self) -> int:
        """The weight blob's size: what an upload sends (0 without a blob)."""
        return next((a.size for a in self.artifacts if a.role == "weights"), 0)

    def canonical_json(self) -> str:
        """Key-sorted JSON without the content hash: the text the hash is taken over."""
        d = self.to_dict()
        d.pop("content_hash")
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def with_hash(self) -> Manifest:
        digest = hashlib.sha256(self.canonical_json().encode()).hexdigest()
        return replace(self, content_hash=digest)

    @staticmethod
    def from_dict(d: object, source: str = "manifest") -> Manifest:
        """The manifest a JSON object describes, checked as strictly as the runner checks it
        (``validate_manifest`` in ``android_app/src/main/cpp/core/manifest.cpp``): every
        field's type and range, indices, offsets, artifacts. Any problem is a BundleError
        naming ``source``, the field, its value and the fix."""
        m = _parse_manifest(d, source)
        _check_manifest(m, source)
        return m


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
    """Read a bundle folder and check its manifest as the runner would (``Manifest.from_dict``);
    every artifact must be a file inside the folder (a symlink out of it is refused). With
    ``verify``, also check each artifact's size and sha256 and the manifest's content hash,
    which must be there."""
    path = Path(path)
    mpath = path / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{path} is not a bundle: no {MANIFEST_NAME} in it; give the folder "
                          f"npas-host compile -o wrote")
    _inside(path, MANIFEST_NAME, mpath)
    try:
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{mpath}: {mpath.stat().st_size} bytes, over the "
                              f"{MAX_MANIFEST_BYTES} a manifest may have; {FIX}")
        d = json.loads(mpath.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BundleError(f"{mpath}: not UTF-8 text ({e.reason} at byte {e.start}); "
                          f"{FIX}") from None
    except json.JSONDecodeError as e:
        raise BundleError(f"{mpath}: not valid JSON ({e}); {FIX}") from None
    except RecursionError:
        raise BundleError(f"{mpath}: JSON nested too deeply to be a manifest; {FIX}") from None
    except OSError as e:
        raise BundleError(f"{mpath}: cannot be read ({e.strerror}); check its permissions") \
            from None
    m = Manifest.from_dict(d, str(mpath))
    for i, a in enumerate(m.artifacts):
        f = path / a.file
        if not f.is_file():
            if verify or f.exists() or f.is_symlink():
                raise BundleError(f"{path}: artifacts[{i}] ({a.role}) file {a.file} is missing "
                                  f"or not a regular file; {FIX}")
            continue
        _inside(path, f"artifacts[{i}].file = {a.file!r}", f)
        try:
            modified = verify and (f.stat().st_size != a.size or sha256_file(f) != a.sha256)
        except OSError as e:
            raise BundleError(f"{path}: artifact {a.role} ({a.file}) cannot be read "
                              f"({e.strerror}); check its permissions") from None
        if modified:
            raise BundleError(f"{path}: artifact {a.role} ({a.file}) does not match the "
                              f"manifest's size/sha256; the bundle was modified")
    if verify:
        if not m.content_hash:
            raise BundleError(f"{mpath}: content_hash is missing or empty, so the manifest "
                              f"cannot be checked; {FIX}")
        if m.with_hash().content_hash != m.content_hash:
            raise BundleError(f"{mpath}: content_hash does not match the manifest; the "
                              f"bundle was modified")
    return Bundle(path=path, manifest=m)


def _inside(folder: Path, what: str, f: Path) -> None:
    """``f``, symlinks followed, lies in ``folder``."""
    root, real = folder.resolve(), f.resolve()
    if real.parent != root:
        raise BundleError(f"{folder}: {what} is a symlink to {real}, outside the bundle "
                          f"folder; copy the file into the bundle instead")


# ---- reading a manifest someone handed us ----

def _show(v: object) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


class _Fields:
    """One JSON object of a manifest, read field by field; each failure names the field's path
    (``steps[3].params[0].offset``), its value and the fix."""

    def __init__(self, d: object, path: str, source: str, required: tuple[str, ...],
                 optional: tuple[str, ...] = ()) -> None:
        self.path, self.source = path, source
        if not isinstance(d, dict):
            raise self.bad("", d, "must be a JSON object")
        self.d = d
        for k in d:
            if k not in required and k not in optional:
                raise self.bad(str(k), d[k], f"is not a manifest field (fields here: "
                                            f"{', '.join(required + optional)})")
        for k in required:
            if k not in d:
                raise BundleError(f"{source}: {self.name(k)} is missing; {FIX}")

    def name(self, key: str) -> str:
        return ".".join(p for p in (self.path, key) if p) or "the manifest"

    def bad(self, key: str, value: object, need: str) -> BundleError:
        return BundleError(f"{self.source}: {self.name(key)} = {_show(value)} {need}; {FIX}")

    def integer(self, key: str, lo: int = 0, hi: int = U64_MAX, default: int | None = None) -> int:
        v = self.d.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.bad(key, v, "must be an integer")
        if not lo <= v <= hi:
            raise self.bad(key, v, f"must be ≥ {lo}" if hi == U64_MAX else
                           f"must be in {lo}..{hi}")
        return v

    def text(self, key: str, nonempty: bool = False) -> str:
        return _string(self.d[key], self.name(key), self.source, nonempty)

    def items(self, key: str, limit: int = MAX_LIST) -> list:
        v = self.d[key]
        if not isinstance(v, list | tuple):  # tuple: a dict from Manifest.to_dict
            raise self.bad(key, v, "must be a JSON list")
        if len(v) > limit:
            raise self.bad(key, f"<{len(v)} entries>", f"has more than {limit} entries")
        return v

    def texts(self, key: str) -> tuple[str, ...]:
        return tuple(_string(x, f"{self.name(key)}[{i}]", self.source, False)
                     for i, x in enumerate(self.items(key)))

    def integers(self, key: str, limit: int, hi: int) -> tuple[int, ...]:
        out = []
        for i, v in enumerate(self.items(key, limit)):
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= hi:
                raise self.bad(f"{key}[{i}]", v, "must be an integer ≥ 0" if hi == U64_MAX
                               else f"must be an integer in 0..{hi}")
            out.append(v)
        return tuple(out)


def _string(v: object, name: str, source: str, nonempty: bool) -> str:
    need = ""
    if not isinstance(v, str):
        need = "must be a string"
    elif nonempty and not v:
        need = "must not be empty"
    elif len(v) > MAX_STRING:
        need = f"is longer than {MAX_STRING} characters"
    elif any(ord(c) < 0x20 or ord(c) == 0x7f or 0xd800 <= ord(c) < 0xe000 for c in v):
        need = "has a control character or an unpaired surrogate"
    if need:
        raise BundleError(f"{source}: {name} = {_show(v)} {need}; {FIX}")
    return v


def _file_name(f: _Fields, key: str) -> str:
    v = f.text(key, nonempty=True)
    if v in (".", "..") or "/" in v or "\\" in v or len(v) > 255:
        raise f.bad(key, v, "must be a plain file name inside the bundle folder (no folders, "
                            "no absolute path, no '..')")
    return v


def _parse_manifest(d: object, source: str) -> Manifest:
    if not isinstance(d, dict):
        raise BundleError(f"{source}: the manifest is {type(d).__name__}, not a JSON object; "
                          f"{FIX}")
    v = d.get("format_version")
    if isinstance(v, int) and not isinstance(v, bool) and v != FORMAT_VERSION:
        raise BundleError(f"{source}: format_version {v}, this npas reads {FORMAT_VERSION}; "
                          f"recompile the model")
    top = _Fields(d, "", source, (
        "name", "target", "toolchain", "artifacts", "tensors", "inputs", "outputs",
        "arena_bytes", "scratch_bytes_per_thread", "steps", "weights_bytes", "prepare",
        "format_version", "kernel_abi_version"), ("content_hash",))
    version = top.integer("format_version", hi=U32_MAX)
    abi = top.integer("kernel_abi_version", hi=U32_MAX)
    if abi != KERNEL_ABI_VERSION:
        raise BundleError(f"{source}: kernel_abi_version {abi}, this npas and its runner "
                          f"implement {KERNEL_ABI_VERSION}; recompile the model")
    t = _Fields(d["target"], "target", source, ("arch", "os", "abi", "features"))
    tc = _Fields(d["toolchain"], "toolchain", source, ("compiler", "version", "flags"))
    content_hash = d.get("content_hash", "")
    if content_hash != "":
        content_hash = _string(content_hash, "content_hash", source, False)
        if not _is_sha256(content_hash):
            raise top.bad("content_hash", content_hash,
                          "must be 64 lowercase hex characters (a sha256)")
    return Manifest(
        name=top.text("name", nonempty=True),
        target=Target(arch=t.text("arch", nonempty=True), os=t.text("os"), abi=t.text("abi"),
                      features=t.texts("features")),
        toolchain=Toolchain(compiler=tc.text("compiler"), version=tc.text("version"),
                            flags=tc.texts("flags")),
        artifacts=tuple(_artifact(a, f"artifacts[{i}]", source)
                        for i, a in enumerate(top.items("artifacts", 16))),
        tensors=tuple(_tensor(x, f"tensors[{i}]", source)
                      for i, x in enumerate(top.items("tensors", MAX_TENSORS))),
        inputs=top.integers("inputs", MAX_MODEL_IO, U32_MAX),
        outputs=top.integers("outputs", MAX_MODEL_IO, U32_MAX),
        arena_bytes=top.integer("arena_bytes", hi=MAX_ARENA_BYTES),
        scratch_bytes_per_thread=top.integer("scratch_bytes_per_thread",
                                         hi=MAX_SCRATCH_BYTES_PER_THREAD),
        steps=tuple(_step(s, f"steps[{i}]", source)
                    for i, s in enumerate(top.items("steps", MAX_STEPS))),
        weights_bytes=top.integer("weights_bytes", hi=MAX_WEIGHTS_BYTES),
        prepare=tuple(_prepare(s, f"prepare[{i}]", source)
                      for i, s in enumerate(top.items("prepare", MAX_PREPARE_STEPS))),
        format_version=version, kernel_abi_version=abi, content_hash=content_hash)


def _is_sha256(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdef" for c in s)


def _artifact(d: object, path: str, source: str) -> ArtifactRef:
    f = _Fields(d, path, source, ("role", "kind", "file", "sha256", "size"))
    role, kind = f.text("role"), f.text("kind")
    if role not in ROLE_KINDS:
        raise f.bad("role", role, f"is not one of {tuple(ROLE_KINDS)}")
    if kind != ROLE_KINDS[role]:
        raise f.bad("kind", kind, f"must be {ROLE_KINDS[role]!r} for role {role!r} "
                                  f"(artifact kinds: {ARTIFACT_KINDS})")
    sha = f.text("sha256")
    if not _is_sha256(sha):
        raise f.bad("sha256", sha, "must be 64 lowercase hex characters")
    return ArtifactRef(role=role, kind=kind, file=_file_name(f, "file"), sha256=sha,
                       size=f.integer("size"))


def _tensor(d: object, path: str, source: str) -> TensorSpec:
    f = _Fields(d, path, source, ("name", "shape", "dtype", "arena_offset", "nbytes"))
    dtype = f.text("dtype")
    if dtype not in DTYPE_BYTES:
        raise f.bad("dtype", dtype, f"is not one of {tuple(DTYPE_BYTES)}")
    shape = f.integers("shape", MAX_RANK, (1 << 63) - 1)
    if not shape or 0 in shape:
        raise f.bad("shape", list(shape), f"must have 1..{MAX_RANK} dimensions, each ≥ 1")
    return TensorSpec(name=f.text("name"), shape=shape, dtype=dtype,
                      arena_offset=f.integer("arena_offset"), nbytes=f.integer("nbytes"))


def _step(d: object, path: str, source: str) -> Step:
    f = _Fields(d, path, source, ("name", "op", "symbol", "inputs", "output", "params",
                                  "work_items"), ("flops", "local_size"))
    params = []
    for j, p in enumerate(f.items("params", MAX_STEP_PARAMS)):
        pf = _Fields(p, f"{path}.params[{j}]", source, ("offset", "nbytes"))
        params.append(ParamRef(offset=pf.integer("offset"), nbytes=pf.integer("nbytes")))
    symbol = f.text("symbol")
    if not _is_c_identifier(symbol):
        raise f.bad("symbol", symbol, "must be a C identifier ([A-Za-z_][A-Za-z0-9_]*, at "
                                      "most 256 characters)")
    return Step(name=f.text("name"), op=f.text("op"), symbol=symbol,
                inputs=f.integers("inputs", MAX_STEP_INPUTS, U32_MAX),
                output=f.integer("output", hi=U32_MAX), params=tuple(params),
                work_items=f.integer("work_items", lo=1, hi=MAX_WORK_ITEMS),
                flops=f.integer("flops", default=0), local_size=f.integer("local_size", default=0))


def _prepare(d: object, path: str, source: str) -> PrepareStep:
    f = _Fields(d, path, source, ("name", "symbol", "src", "dst", "work_items"))
    refs = []
    for key in ("src", "dst"):
        pf = _Fields(f.d[key], f"{path}.{key}", source, ("offset", "nbytes"))
        refs.append(ParamRef(offset=pf.integer("offset"), nbytes=pf.integer("nbytes")))
    symbol = f.text("symbol")
    if symbol and not _is_c_identifier(symbol):
        raise f.bad("symbol", symbol, "must be empty (a copy) or a C identifier")
    return PrepareStep(name=f.text("name"), symbol=symbol, src=refs[0], dst=refs[1],
                       work_items=f.integer("work_items", lo=1, hi=MAX_WORK_ITEMS))


def _is_c_identifier(s: str) -> bool:
    return (0 < len(s) <= 256 and s.isascii() and (s[0].isalpha() or s[0] == "_")
            and all(c.isalnum() or c == "_" for c in s))


def _check_manifest(m: Manifest, source: str) -> None:
    """The checks across fields, in the runner's order: artifacts for the backend, tensors
    within the arena, indices in range, params within the weight blob, GPU work sizes."""
    def fail(what: str) -> BundleError:
        return BundleError(f"{source}: {what}; {FIX}")

    gpu = m.target.arch == OPENCL_ARCH
    seen: dict[str, ArtifactRef] = {}
    for i, a in enumerate(m.artifacts):
        if a.role in seen:
            raise fail(f"artifacts[{i}].role = {a.role!r} appears twice (one artifact per role)")
        seen[a.role] = a
    need, other = ("opencl", "kernels") if gpu else ("kernels", "opencl")
    if need not in seen:
        raise fail(f"artifacts has no role {need!r} ({ROLE_KINDS[need]}), which a "
                   f"{'GPU' if gpu else 'CPU'} bundle (target.arch = {m.target.arch!r}) needs")
    if other in seen:
        raise fail(f"artifacts has role {other!r}, which a {'GPU' if gpu else 'CPU'} bundle "
                   f"(target.arch = {m.target.arch!r}) does not carry")
    if gpu:
        _check_build_flags(m.toolchain.flags, fail)
    for i, t in enumerate(m.tensors):
        who = f"tensors[{i}] ({t.name!r})"
        if t.dtype == "float16" and not gpu:
            raise fail(f"{who}.dtype = 'float16' is for GPU (OpenCL) bundles only")
        need_bytes = DTYPE_BYTES[t.dtype]
        for dim in t.shape:
            need_bytes *= dim
        if t.nbytes != need_bytes:
            raise fail(f"{who}.nbytes = {t.nbytes}, but shape {list(t.shape)} of {t.dtype} "
                       f"needs {need_bytes}")
        if t.arena_offset % TENSOR_ALIGNMENT:
            raise fail(f"{who}.arena_offset = {t.arena_offset} is not a multiple of "
                       f"{TENSOR_ALIGNMENT}")
        if t.arena_offset + t.nbytes > m.arena_bytes:
            raise fail(f"{who}.arena_offset {t.arena_offset} + nbytes {t.nbytes} is past "
                       f"arena_bytes {m.arena_bytes}")
    n = len(m.tensors)
    for what, idx in (("inputs", m.inputs), ("outputs", m.outputs)):
        for j, v in enumerate(idx):
            if v >= n:
                raise fail(f"{what}[{j}] = {v} is out of range; the manifest has {n} tensors")
    if not m.outputs:
        raise fail("outputs = [] (a model has at least one output)")
    blob = seen["weights"].size if "weights" in seen else 0
    buffer = _check_prepare(m, blob, gpu, fail)
    for i, s in enumerate(m.steps):
        who = f"steps[{i}] ({s.name!r})"
        for j, v in enumerate((*s.inputs, s.output)):
            if v >= n:
                field_ = f"inputs[{j}]" if j < len(s.inputs) else "output"
                raise fail(f"{who}.{field_} = {v} is out of range; the manifest has {n} "
                           f"tensors")
        for j, p in enumerate(s.params):
            if p.offset % PARAM_ALIGNMENT:
                raise fail(f"{who}.params[{j}].offset = {p.offset} is not a multiple of "
                           f"{PARAM_ALIGNMENT}")
            if p.offset + p.nbytes > m.weights_bytes:
                raise fail(f"{who}.params[{j}].offset {p.offset} + nbytes {p.nbytes} is past "
                           f"weights_bytes {m.weights_bytes}"
                           + ("" if "weights" in seen else " (no weights artifact)"))
            if m.prepare and not _covered(buffer, p):
                raise fail(f"{who}.params[{j}] (offset {p.offset}, nbytes {p.nbytes}) is not "
                           f"inside one prepare step's dst: nothing would write those bytes")
        if gpu and s.local_size > 0 and s.work_items % s.local_size:
            raise fail(f"{who}.work_items = {s.work_items} is not a multiple of local_size "
                       f"{s.local_size}")


def _check_prepare(m: Manifest, blob: int, gpu: bool, fail) -> list[tuple[int, int]]:
    """The prepare steps against the blob and the buffer; returns the buffer ranges they write,
    sorted (empty: no prepare steps, the blob is the buffer)."""
    if not m.prepare:
        if m.weights_bytes != blob:
            raise fail(f"weights_bytes = {m.weights_bytes}, but with no prepare steps the "
                       f"weight buffer is the blob, {blob} bytes")
        return []
    if blob == 0 and m.weights_bytes > 0:
        raise fail(f"prepare has {len(m.prepare)} steps but there is no weight blob (no "
                   f"weights artifact) to prepare the weights from")
    if gpu:
        raise fail(f"prepare has {len(m.prepare)} steps; a GPU bundle ships its weights as "
                   f"they are used (prepare steps are for CPU bundles)")
    ranges = []
    for i, p in enumerate(m.prepare):
        who = f"prepare[{i}] ({p.name!r})"
        for key, ref, limit, what in (("src", p.src, blob, "the weight blob's"),
                                      ("dst", p.dst, m.weights_bytes, "weights_bytes")):
            if ref.offset % PARAM_ALIGNMENT:
                raise fail(f"{who}.{key}.offset = {ref.offset} is not a multiple of "
                           f"{PARAM_ALIGNMENT}")
            if ref.offset + ref.nbytes > limit:
                raise fail(f"{who}.{key}.offset {ref.offset} + nbytes {ref.nbytes} is past "
                           f"{what} {limit} bytes")
        if not p.symbol and (p.src.nbytes != p.dst.nbytes or p.work_items != 1):
            raise fail(f"{who} is a copy (no symbol) of src.nbytes {p.src.nbytes} into "
                       f"dst.nbytes {p.dst.nbytes} with work_items {p.work_items}; a copy "
                       f"needs equal sizes and work_items 1")
        ranges.append((p.dst.offset, p.dst.offset + p.dst.nbytes, i))
    ranges.sort()
    for (_, e0, i0), (b1, _, i1) in zip(ranges, ranges[1:], strict=False):
        if b1 < e0:
            raise fail(f"prepare[{i1}].dst overlaps prepare[{i0}].dst (each byte of the weight "
                       f"buffer is written by one step)")
    return [(b, e) for b, e, _ in ranges]


def _covered(ranges: list[tuple[int, int]], p: ParamRef) -> bool:
    """``p`` lies inside one of the sorted, disjoint ``ranges``."""
    if p.nbytes == 0:
        return True
    k = bisect.bisect_right(ranges, (p.offset, U64_MAX)) - 1
    return k >= 0 and ranges[k][0] <= p.offset and p.offset + p.nbytes <= ranges[k][1]


def _check_build_flags(flags: tuple[str, ...], fail) -> None:
    """A GPU bundle's flags become clBuildProgram's options, joined with spaces."""
    if len(flags) > MAX_BUILD_FLAGS:
        raise fail(f"toolchain.flags has {len(flags)} entries, the runner takes at most "
                   f"{MAX_BUILD_FLAGS}")
    for i, f in enumerate(flags):
        if len(f) < 2 or f[0] != "-" or not all(0x21 <= ord(c) <= 0x7e for c in f):
            raise fail(f"toolchain.flags[{i}] = {_show(f)} is not a build option (printable "
                       f"ASCII without spaces, starting with '-')")
    total = sum(map(len, flags)) + max(len(flags) - 1, 0)
    if total > MAX_BUILD_OPTIONS_BYTES:
        raise fail(f"toolchain.flags join to {total} bytes, the runner takes at most "
                   f"{MAX_BUILD_OPTIONS_BYTES}")
