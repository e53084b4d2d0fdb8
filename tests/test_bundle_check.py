"""Compiler-free tier: the host checks a bundle someone handed it as strictly as the runner
does, before reading or uploading anything; every bad manifest is a BundleError naming the
field, the value and the fix, and `npas-host profile` prints it on one line and exits 2."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from codegen.bundle import (
    MANIFEST_NAME,
    Bundle,
    BundleError,
    Manifest,
    ParamRef,
    Step,
    Target,
    TensorSpec,
    Toolchain,
    artifact_ref,
    load_bundle,
)
from host.cli import main


def write_bundle(folder: Path) -> Bundle:
    """A small, valid CPU bundle on disk (the kernel library is not a real ELF: the host does
    not open it)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "libm.so").write_bytes(b"\x7fELF not really" * 4)
    (folder / "weights.bin").write_bytes(bytes(range(256)))
    m = Manifest(
        name="m", target=Target("x86_64", "linux", "x86_64", ("avx2",)),
        toolchain=Toolchain("/usr/bin/cc", "cc 12", ("-O3",)),
        artifacts=(artifact_ref(folder, "kernels", "kernel_library", "libm.so"),
                   artifact_ref(folder, "weights", "weights", "weights.bin")),
        tensors=(TensorSpec("x", (1, 3, 4, 4), "float32", 0, 192),
                 TensorSpec("y", (1, 48), "float32", 192, 192)),
        inputs=(0,), outputs=(1,), arena_bytes=384, scratch_bytes_per_thread=0,
        steps=(Step("conv", "conv2d", "npas_step_0_conv2d", (0,), 1,
                    (ParamRef(0, 64), ParamRef(64, 4)), 3, 100),),
        weights_bytes=256).with_hash()
    b = Bundle(path=folder, manifest=m)
    b.save_manifest()
    return b


@pytest.fixture()
def bundle(tmp_path) -> Bundle:
    return write_bundle(tmp_path / "b")


def _edit(folder: Path, change: Callable[[dict], object]) -> None:
    d = json.loads((folder / MANIFEST_NAME).read_text())
    change(d)
    (folder / MANIFEST_NAME).write_text(json.dumps(d))


def _set(path: str, value: object) -> Callable[[dict], None]:
    """A change that sets one field, ``steps.0.params.1.offset`` style."""
    *parents, last = path.split(".")

    def change(d: dict) -> None:
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        if isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return change


def _drop(path: str) -> Callable[[dict], None]:
    *parents, last = path.split(".")

    def change(d: dict) -> None:
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        del d[last]
    return change


BAD = [  # (id, change, what the message must name)
    ("negative size", _set("artifacts.0.size", -1), "artifacts[0].size = -1"),
    ("negative offset", _set("tensors.0.arena_offset", -16), "tensors[0].arena_offset = -16"),
    ("negative param", _set("steps.0.params.0.offset", -64), "steps[0].params[0].offset = -64"),
    ("unknown kind", _set("artifacts.0.kind", "elf"), "artifacts[0].kind = 'elf'"),
    ("unknown role", _set("artifacts.1.role", "source"), "artifacts[1].role = 'source'"),
    ("wrong kind", _set("artifacts.1.kind", "kernel_library"), "must be 'weights'"),
    ("dotdot", _set("artifacts.1.file", "../outside.bin"), "plain file name"),
    ("absolute", _set("artifacts.1.file", "/etc/passwd"), "plain file name"),
    ("subfolder", _set("artifacts.1.file", "sub/weights.bin"), "plain file name"),
    ("dot", _set("artifacts.1.file", "."), "plain file name"),
    ("bad sha", _set("artifacts.0.sha256", "xyz"), "artifacts[0].sha256"),
    ("missing hash", _drop("content_hash"), "content_hash is missing"),
    ("empty hash", _set("content_hash", ""), "content_hash is missing"),
    ("bad hash", _set("content_hash", "ab" * 32), "content_hash does not match"),
    ("hash type", _set("content_hash", 7), "content_hash = 7"),
    ("step input", _set("steps.0.inputs", [99]), "steps[0] ('conv').inputs[0] = 99"),
    ("step output", _set("steps.0.output", 2), "output = 2 is out of range"),
    ("model output", _set("outputs", [5]), "outputs[0] = 5"),
    ("no outputs", _set("outputs", []), "outputs = []"),
    ("zero dim", _set("tensors.0.shape", [1, 0, 4, 4]), "tensors[0].shape"),
    ("negative dim", _set("tensors.0.shape", [1, -3, 4, 4]), "tensors[0].shape[1] = -3"),
    ("no dims", _set("tensors.0.shape", []), "tensors[0].shape = []"),
    ("rank", _set("tensors.0.shape", [1] * 9), "more than 8"),
    ("dtype", _set("tensors.0.dtype", "int8"), "tensors[0].dtype = 'int8'"),
    ("fp16 on cpu", _set("tensors.0.dtype", "float16"), "GPU (OpenCL) bundles only"),
    ("nbytes", _set("tensors.0.nbytes", 196), "needs 192"),
    ("past arena", _set("tensors.1.arena_offset", 208), "past arena_bytes 384"),
    ("misaligned", _set("tensors.1.arena_offset", 200), "multiple of 16"),
    ("arena limit", _set("arena_bytes", 1 << 50), "arena_bytes"),
    ("symbol", _set("steps.0.symbol", "../lib; rm"), "steps[0].symbol = '../lib; rm'"),
    ("param past blob", _set("steps.0.params.1.offset", 256), "past weights_bytes 256"),
    ("param align", _set("steps.0.params.1.offset", 65), "multiple of 64"),
    ("work items", _set("steps.0.work_items", 0), "steps[0].work_items = 0"),
    ("bool", _set("arena_bytes", True), "arena_bytes = True must be an integer"),
    ("float", _set("arena_bytes", 384.0), "arena_bytes = 384.0 must be an integer"),
    ("nan", _set("arena_bytes", float("nan")), "arena_bytes = nan must be an integer"),
    ("string int", _set("steps.0.output", "1"), "steps[0].output = '1'"),
    ("no kernels", lambda d: d["artifacts"].pop(0), "no role 'kernels'"),
    ("two weights", lambda d: d["artifacts"].append(d["artifacts"][1]), "appears twice"),
    ("gpu with kernels", _set("target.arch", "opencl"), "no role 'opencl'"),
    ("unknown field", _set("steps.0.extra", 1), "steps[0].extra"),
    ("missing field", _drop("tensors"), "tensors is missing"),
    ("missing nested", _drop("target.abi"), "target.abi is missing"),
    ("not an object", lambda d: d["steps"].__setitem__(0, [1, 2]), "steps[0] = [1, 2]"),
    ("list type", _set("inputs", {"0": 0}), "inputs = {'0': 0} must be a JSON list"),
    ("format", _set("format_version", 1), "format_version 1"),
    ("weights_bytes", _set("weights_bytes", 512), "weights_bytes = 512"),
    ("abi", _set("kernel_abi_version", 9), "kernel_abi_version 9"),
    ("control char", _set("name", "m\n"), "control character"),
    ("surrogate", _set("steps.0.name", "\ud800"), "surrogate"),
    ("empty name", _set("name", ""), "name = '' must not be empty"),
]


@pytest.mark.parametrize("change,names", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_a_bad_manifest_is_a_bundle_error_naming_the_field(bundle, capsys, change, names):
    _edit(bundle.path, change)
    with pytest.raises(BundleError) as e:
        load_bundle(bundle.path)
    assert names in str(e.value)
    # the CLI: one line on stderr, exit 2, no traceback; checked before any runner starts
    for arg in (bundle.path, bundle.path / MANIFEST_NAME):
        assert main(["profile", str(arg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error:") and names in err, err


def test_a_good_bundle_loads_and_round_trips(bundle):
    loaded = load_bundle(bundle.path)
    assert loaded.manifest == bundle.manifest
    assert loaded.manifest.content_hash == bundle.manifest.content_hash
    assert load_bundle(bundle.path / ".." / "b").manifest == bundle.manifest


@pytest.mark.parametrize("text,names", [
    ("{not json", "not valid JSON"),
    ("[]", "not a JSON object"),
    ("null", "not a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (b"\xff\xfe{}", "not UTF-8"),
])
def test_a_manifest_that_is_not_a_manifest(bundle, capsys, text, names):
    mpath = bundle.path / MANIFEST_NAME
    mpath.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(BundleError, match=names):
        load_bundle(bundle.path)
    assert main(["profile", str(bundle.path)]) == 2
    assert names in capsys.readouterr().err


def test_an_artifact_symlinked_out_of_the_folder_is_refused(bundle, tmp_path, capsys):
    secret = tmp_path / "secret.bin"
    secret.write_bytes((bundle.path / "weights.bin").read_bytes())
    (bundle.path / "weights.bin").unlink()
    os.symlink(secret, bundle.path / "weights.bin")
    for verify in (True, False):
        with pytest.raises(BundleError, match="outside the bundle folder"):
            load_bundle(bundle.path, verify=verify)
    assert main(["profile", str(bundle.path)]) == 2
    assert "weights.bin" in capsys.readouterr().err


def test_a_symlink_inside_the_folder_is_fine(bundle):
    (bundle.path / "weights.bin").rename(bundle.path / "w.real")
    os.symlink("w.real", bundle.path / "weights.bin")
    assert load_bundle(bundle.path).manifest == bundle.manifest


def test_a_manifest_symlinked_from_elsewhere_is_refused(bundle, tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    (bundle.path / MANIFEST_NAME).rename(elsewhere)
    os.symlink(elsewhere, bundle.path / MANIFEST_NAME)
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_bundle(bundle.path)


def test_a_missing_or_odd_artifact_file(bundle):
    (bundle.path / "weights.bin").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle.path)
    assert load_bundle(bundle.path, verify=False).manifest == bundle.manifest
    (bundle.path / "weights.bin").mkdir()
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(bundle.path, verify=False)


def test_a_folder_without_a_manifest_is_not_taken_for_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["profile", str(tmp_path / "empty")]) == 2
    assert "is not a bundle: no manifest.json" in capsys.readouterr().err


def test_from_dict_checks_what_it_is_given(bundle):
    d = bundle.manifest.to_dict()
    assert Manifest.from_dict(d) == bundle.manifest  # tuples from to_dict are fine
    with pytest.raises(BundleError, match=r"^source\.json: arena_bytes = -1 "):
        Manifest.from_dict({**d, "arena_bytes": -1}, "source.json")
