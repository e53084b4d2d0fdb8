"""Host tier: the runner refuses bad input with the right status, names the problem, and keeps
serving. Each test sends something wrong, checks the status code and message, then checks the
runner still answers a good request."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import subprocess

import grpc
import numpy as np
import pytest
from zoo import small_cnn

from codegen.bundle import ParamRef, artifact_ref, load_bundle
from host.devices.local import LocalRunner, LocalRunnerConfig
from host.measure import MeasureConfig
from host.rpc.client import TOKEN_METADATA_KEY, RunnerClient, RunnerError
from host.rpc.convert import kind_to_proto, manifest_to_proto
from host.rpc.stubs import load

pytestmark = pytest.mark.host

MAX_ARTIFACT = 1 << 20
EM_AARCH64 = 183


@pytest.fixture(scope="module")
def runner(runner_binary, tmp_path_factory):
    cfg = LocalRunnerConfig(binary=runner_binary, store=tmp_path_factory.mktemp("sec-store"),
                            extra_args=("--max-artifact-bytes", str(MAX_ARTIFACT)))
    with LocalRunner(cfg) as r:
        yield r


@pytest.fixture(scope="module")
def bundle(compiled):
    return compiled("small_cnn", small_cnn, (1, 3, 32, 32))[0]


@pytest.fixture()
def client(runner):
    c = runner.client(timeout_s=20)
    yield c
    # whatever the test sent, the runner is still serving
    assert c.device_info().protocol_major == 1
    c.close()


def raw_stub(runner):
    pb, grpc_mod = load()
    channel = grpc.insecure_channel(runner.address)
    return pb, grpc_mod.RunnerStub(channel), channel


def expect(code: str, match: str, fn, *args, **kwargs) -> RunnerError:
    with pytest.raises(RunnerError) as e:
        fn(*args, **kwargs)
    assert e.value.code == code, str(e.value)
    assert match.lower() in e.value.message.lower(), str(e.value)
    return e.value


# ---- authentication ----

@pytest.mark.parametrize("token", [None, "", "wrong-token"])
def test_calls_without_the_token_are_refused(runner, token):
    pb, stub, channel = raw_stub(runner)
    md = None if token is None else ((TOKEN_METADATA_KEY, token),)
    calls = [(stub.GetDeviceInfo, pb.DeviceInfoRequest()),
             (stub.MissingArtifacts, pb.MissingArtifactsRequest(sha256=["0" * 64])),
             (stub.LoadModel, pb.LoadModelRequest()),
             (stub.Run, pb.RunRequest(handle="x")),
             (stub.Benchmark, pb.BenchmarkRequest(handle="x")),
             (stub.UnloadModel, pb.UnloadModelRequest(handle="x")),
             (stub.UploadArtifact, iter([pb.UploadChunk(data=b"x")]))]
    for method, req in calls:
        with pytest.raises(grpc.RpcError) as e:
            method(req, metadata=md, timeout=10)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    channel.close()
    assert runner.client().device_info().protocol_major == 1


def test_unauthenticated_huge_messages_do_not_grow_the_runner(runner_binary, tmp_path):
    """64 MiB (and 200 MiB) messages without the token are refused, and the runner's peak
    memory (VmHWM) grows far less than the messages: gRPC reads a whole message before the
    handler checks the token, so the receive limit and the memory quota bound it."""
    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / "store")) as r:
        before_kb = _status_kb(r.pid, "VmHWM")
        pb, grpc_mod = load()
        channel = grpc.insecure_channel(r.address, options=[
            ("grpc.max_send_message_length", 256 << 20)])
        stub = grpc_mod.RunnerStub(channel)
        blob = b"\x01" * (64 << 20)
        calls = [(stub.Run, pb.RunRequest(handle="x", inputs=[pb.Tensor(name="x", data=blob)])),
                 (stub.LoadModel, pb.LoadModelRequest(manifest=pb.Manifest(name="n" * len(blob)))),
                 (stub.UploadArtifact, iter([pb.UploadChunk(data=blob)])),
                 (stub.Run, pb.RunRequest(inputs=[pb.Tensor(data=b"\x02" * (200 << 20))]))]
        del blob
        for method, req in calls:
            with pytest.raises(grpc.RpcError) as e:
                method(req, timeout=60)
            assert e.value.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                      grpc.StatusCode.UNAUTHENTICATED), e.value
        del calls
        channel.close()
        grown_mb = (_status_kb(r.pid, "VmHWM") - before_kb) / 1024
        assert r.client().device_info().protocol_major == 1
    print(f"VmHWM grew by {grown_mb:.0f} MB")
    assert grown_mb < 100


def test_client_with_wrong_token_gets_clear_error(runner):
    with RunnerClient(runner.address, "not-the-token") as c:
        err = expect("UNAUTHENTICATED", "token", c.device_info)
        assert runner.address in str(err)


# ---- uploads ----

def _upload_raw(client, chunks):
    try:
        return client._stub.UploadArtifact(iter(chunks), metadata=client._metadata, timeout=20)
    except grpc.RpcError as e:
        raise client._error("UploadArtifact", e) from None


def _header(client, data: bytes, size=None, sha=None, kind="weights"):
    pb = client._pb
    return pb.UploadChunk(header=pb.ArtifactHeader(
        kind=kind_to_proto(kind) if kind else 0,
        size=len(data) if size is None else size,
        sha256=sha or hashlib.sha256(data).hexdigest()))


@pytest.mark.parametrize("bad", ["xyz", "../../etc/passwd", "A" * 64, "0" * 63])
def test_malformed_sha_is_invalid_argument(client, bad):
    expect("INVALID_ARGUMENT", "sha256", client.missing, [bad])
    pb = client._pb
    data = b"abc"
    expect("INVALID_ARGUMENT", "sha256", _upload_raw, client,
           [_header(client, data, sha=bad), pb.UploadChunk(data=data)])


def test_upload_hash_mismatch_is_data_loss_and_not_stored(client):
    pb = client._pb
    data = b"some weights" * 100
    wrong = hashlib.sha256(b"other").hexdigest()
    expect("DATA_LOSS", "sha256", _upload_raw, client,
           [_header(client, data, sha=wrong), pb.UploadChunk(data=data)])
    assert client.missing([wrong]) == [wrong]


def test_upload_short_is_data_loss(client):
    pb = client._pb
    data = b"0123456789" * 10
    expect("DATA_LOSS", "declared 100 bytes", _upload_raw, client,
           [_header(client, data), pb.UploadChunk(data=data[:50])])
    assert client.missing([hashlib.sha256(data).hexdigest()])


def test_upload_longer_than_declared_is_data_loss(client):
    pb = client._pb
    data = b"0123456789" * 10
    expect("DATA_LOSS", "10 bytes the header declared", _upload_raw, client,
           [_header(client, data, size=10), pb.UploadChunk(data=data)])


def test_upload_over_the_limit_is_resource_exhausted(client):
    data = b"x" * 16
    expect("RESOURCE_EXHAUSTED", str(MAX_ARTIFACT), _upload_raw, client,
           [_header(client, data, size=MAX_ARTIFACT + 1)])


def test_upload_without_header_or_kind_is_invalid(client):
    pb = client._pb
    expect("INVALID_ARGUMENT", "header", _upload_raw, client, [pb.UploadChunk(data=b"abc")])
    expect("INVALID_ARGUMENT", "kind", _upload_raw, client,
           [_header(client, b"abc", kind=None), pb.UploadChunk(data=b"abc")])


# ---- loading ----

def _load(client, manifest):
    return client.load_model(manifest, MeasureConfig(threads=1))


def test_load_with_missing_artifact_is_not_found(runner, bundle, tmp_path):
    c = runner.client()
    arts = list(bundle.manifest.artifacts)
    ghost = dataclasses.replace(arts[0], sha256=hashlib.sha256(b"never uploaded").hexdigest())
    m = dataclasses.replace(bundle.manifest, artifacts=(ghost, *arts[1:]))
    expect("NOT_FOUND", ghost.sha256[:16], _load, c, m)


def _mutated(bundle, **changes):
    return dataclasses.replace(bundle.manifest, **changes)


def test_load_validates_offsets_and_indices(client, bundle):
    client.ensure_artifacts(bundle)
    m = bundle.manifest
    t0 = m.tensors[0]
    steps = list(m.steps)
    bad_tensor = dataclasses.replace(t0, arena_offset=m.arena_bytes)
    expect("INVALID_ARGUMENT", "arena", _load, client,
           _mutated(bundle, tensors=(bad_tensor, *m.tensors[1:])))
    wsize = m.artifact("weights").size
    with_params = next(i for i, s in enumerate(steps) if s.params)
    s = steps[with_params]
    beyond = ParamRef(offset=wsize // 64 * 64, nbytes=128)
    bad_step = dataclasses.replace(s, params=(beyond, *s.params[1:]))
    expect("INVALID_ARGUMENT", "weight", _load, client,
           _mutated(bundle, steps=(*steps[:with_params], bad_step, *steps[with_params + 1:])))
    bad_idx = dataclasses.replace(steps[0], inputs=(len(m.tensors) + 5,))
    expect("INVALID_ARGUMENT", "tensor", _load, client,
           _mutated(bundle, steps=(bad_idx, *steps[1:])))
    bad_shape = dataclasses.replace(t0, nbytes=t0.nbytes + 4)
    expect("INVALID_ARGUMENT", t0.name, _load, client,
           _mutated(bundle, tensors=(bad_shape, *m.tensors[1:])))
    expect("RESOURCE_EXHAUSTED", "arena", _load, client, _mutated(bundle, arena_bytes=1 << 50))


def test_load_checks_symbols(client, bundle):
    client.ensure_artifacts(bundle)
    steps = list(bundle.manifest.steps)
    missing = dataclasses.replace(steps[0], symbol="npas_no_such_kernel")
    expect("NOT_FOUND", "npas_no_such_kernel", _load, client,
           _mutated(bundle, steps=(missing, *steps[1:])))
    evil = dataclasses.replace(steps[0], symbol="../lib; rm")
    expect("INVALID_ARGUMENT", "symbol", _load, client, _mutated(bundle, steps=(evil, *steps[1:])))


def test_library_for_another_architecture_is_failed_precondition(client, bundle, tmp_path):
    copy = tmp_path / "arm"
    shutil.copytree(bundle.path, copy)
    lib = copy / bundle.manifest.artifact("kernels").file
    data = bytearray(lib.read_bytes())
    data[18:20] = EM_AARCH64.to_bytes(2, "little")  # ELF e_machine
    lib.write_bytes(bytes(data))
    arts = tuple(artifact_ref(copy, a.role, a.kind, a.file) for a in bundle.manifest.artifacts)
    arm = load_bundle(copy, verify=False)
    arm = dataclasses.replace(arm, manifest=dataclasses.replace(arm.manifest, artifacts=arts))
    client.ensure_artifacts(arm)
    expect("FAILED_PRECONDITION", "aarch64", _load, client, arm.manifest)


def _with_library(client, bundle, tmp_path, lib_bytes: bytes):
    """The bundle with its kernel library replaced, uploaded."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    lib = copy / bundle.manifest.artifact("kernels").file
    lib.chmod(0o644)
    lib.write_bytes(lib_bytes)
    arts = tuple(artifact_ref(copy, a.role, a.kind, a.file) for a in bundle.manifest.artifacts)
    b = load_bundle(copy, verify=False)
    b = dataclasses.replace(b, manifest=dataclasses.replace(b.manifest, artifacts=arts))
    client.ensure_artifacts(b)
    return b


def test_truncated_64_bit_elf_is_called_truncated(client, bundle, tmp_path):
    head = (bundle.path / bundle.manifest.artifact("kernels").file).read_bytes()[:40]
    err = expect("FAILED_PRECONDITION", "truncated", _load, client,
                 _with_library(client, bundle, tmp_path, head).manifest)
    assert "32-bit" not in err.message


@pytest.mark.parametrize("abi", [2, 1])
def test_kernel_abi_version_is_checked_before_the_library_is_loaded(client, bundle, tmp_path,
                                                                   cc, abi):
    """A library with another ABI version is refused without being loaded: its constructor
    (which writes a marker file) never runs. The right version is loaded (and then lacks the
    bundle's kernels), which shows the constructor does run when the library is loaded."""
    marker = tmp_path / "constructor-ran"
    src = tmp_path / "lib.c"
    src.write_text(
        "#include <stdint.h>\n#include <stdio.h>\n"
        f"__attribute__((visibility(\"default\"))) const uint32_t npas_kernel_abi_version = "
        f"{abi}u;\n"
        "__attribute__((constructor)) static void mark(void) {\n"
        f"  FILE *f = fopen(\"{marker}\", \"w\"); if (f) fclose(f);\n}}\n")
    so = tmp_path / "lib.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(so), str(src)], check=True)
    b = _with_library(client, bundle, tmp_path, so.read_bytes())
    if abi == 2:
        expect("FAILED_PRECONDITION", "kernel ABI version 2", _load, client, b.manifest)
        assert not marker.exists()
    else:
        expect("NOT_FOUND", "is not exported", _load, client, b.manifest)
        assert marker.exists()


def test_huge_scratch_is_resource_exhausted_naming_the_need(client, bundle):
    """256 MiB of scratch x 256 threads: with overcommit the allocation 'succeeds' and the
    runner dies on first touch, so the need is checked against available memory first."""
    client.ensure_artifacts(bundle)
    avail = _meminfo_bytes("MemAvailable")
    scratch = 256 << 20
    if scratch * 256 <= avail:
        pytest.skip(f"this machine has {avail} bytes available, more than 64 GiB")
    m = _mutated(bundle, scratch_bytes_per_thread=scratch)
    err = expect("RESOURCE_EXHAUSTED", "scratch", client.load_model, m,
                 MeasureConfig(threads=256))
    assert str(scratch) in err.message and "256 threads" in err.message
    assert "available" in err.message


def _status_kb(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _skip_under_asan(runner_binary) -> None:
    if b"__asan_init" in runner_binary.read_bytes():
        pytest.skip("an address-space limit (ulimit -v) cannot hold an ASan runner: its shadow "
                    "memory reserves terabytes of address space")


def test_thread_creation_failure_is_an_error_not_an_abort(runner_binary, bundle, tmp_path):
    """Under an address-space limit with room for a few threads' stacks but not 256, asking
    for 256 threads is RESOURCE_EXHAUSTED and the runner keeps serving."""
    _skip_under_asan(runner_binary)
    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / "s0")) as r:
        base_kb = _status_kb(r.pid, "VmSize")
    limit_kb = base_kb + (768 << 10)  # 256 threads need 2 GiB of 8 MiB stacks
    prefix = ("sh", "-c", f'ulimit -s 8192 && ulimit -v {limit_kb} && exec "$0" "$@"')
    cfg = LocalRunnerConfig(binary=runner_binary, store=tmp_path / "store",
                            command_prefix=prefix)
    with LocalRunner(cfg) as r:
        c = r.client(timeout_s=30)
        c.ensure_artifacts(bundle)
        expect("RESOURCE_EXHAUSTED", "cannot start thread", c.load_model, bundle.manifest,
               MeasureConfig(threads=256))
        assert r.alive()
        h = c.load_model(bundle.manifest, MeasureConfig(threads=2)).handle
        c.unload(h)
        c.close()


def test_out_of_memory_inside_a_call_is_an_error_not_an_abort(runner_binary, bundle, tmp_path):
    """Under an address-space limit, a Benchmark whose default inputs (512 MiB, built per
    call) cannot be allocated is RESOURCE_EXHAUSTED, and the runner keeps serving. The input
    is only declared bigger: the call fails before any kernel runs."""
    _skip_under_asan(runner_binary)
    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / "s0")) as r:
        base_kb = _status_kb(r.pid, "VmSize")
    prefix = ("sh", "-c", f'ulimit -v {base_kb + (768 << 10)} && exec "$0" "$@"')
    cfg = LocalRunnerConfig(binary=runner_binary, store=tmp_path / "store",
                            command_prefix=prefix)
    m = bundle.manifest
    i = m.inputs[0]
    big = dataclasses.replace(m.tensors[i], shape=(1, 8, 4096, 4096), arena_offset=0,
                              nbytes=4 * 8 * 4096 * 4096)
    tensors = (*m.tensors[:i], big, *m.tensors[i + 1:])
    huge = dataclasses.replace(m, tensors=tensors, arena_bytes=max(m.arena_bytes, big.nbytes))
    with LocalRunner(cfg) as r:
        c = r.client(timeout_s=60)
        c.ensure_artifacts(bundle)
        h = c.load_model(huge, MeasureConfig(threads=1)).handle
        expect("RESOURCE_EXHAUSTED", "out of memory", c.benchmark, h, MeasureConfig(runs=1))
        assert r.alive()
        c.unload(h)
        assert c.device_info().protocol_major == 1
        c.close()


def _meminfo_bytes(key: str) -> int:
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def test_unsupported_format_version_is_refused(client, bundle):
    client.ensure_artifacts(bundle)
    expect("FAILED_PRECONDITION", "format_version 99", _load, client,
           _mutated(bundle, format_version=99))


# ---- running ----

def test_run_validates_handle_and_inputs(client, bundle):
    client.ensure_artifacts(bundle)
    h = _load(client, bundle.manifest).handle
    m = bundle.manifest
    spec = m.tensors[m.inputs[0]]
    pb = client._pb

    def run_raw(tensors, handle=h):
        try:
            return client._stub.Run(pb.RunRequest(handle=handle, inputs=tensors),
                                    metadata=client._metadata, timeout=20)
        except grpc.RpcError as e:
            raise client._error("Run", e) from None

    good = np.zeros(spec.shape, dtype="<f4")
    tensor = pb.Tensor(name=spec.name, shape=list(spec.shape), dtype="float32",
                       data=good.tobytes())
    expect("NOT_FOUND", "handle", run_raw, [tensor], "no-such-handle")
    expect("INVALID_ARGUMENT", "input", run_raw, [])
    wrong_shape = pb.Tensor(name=spec.name, shape=[1, 3, 31, 32], dtype="float32",
                            data=good.tobytes())
    expect("INVALID_ARGUMENT", "shape", run_raw, [wrong_shape])
    short = pb.Tensor(name=spec.name, shape=list(spec.shape), dtype="float32",
                      data=good.tobytes()[:-4])
    expect("INVALID_ARGUMENT", "bytes", run_raw, [short])
    wrong_dtype = pb.Tensor(name=spec.name, shape=list(spec.shape), dtype="float16",
                            data=good.tobytes())
    expect("INVALID_ARGUMENT", "dtype", run_raw, [wrong_dtype])
    expect("INVALID_ARGUMENT", "runs", client.benchmark, h, MeasureConfig(runs=10_000_000))
    # and the model still runs correctly afterwards
    (out,) = client.run(h, m, [good])
    assert out.shape == tuple(m.tensors[m.outputs[0]].shape)
    client.unload(h)
    expect("NOT_FOUND", "handle", client.unload, h)


# ---- echoed values ----

LONG = 15_000


def _long_name_error(err: RunnerError) -> None:
    assert f"({LONG} chars)" in err.message, err.message[:300]
    assert len(err.message) < 1500


def test_huge_names_are_clipped_in_errors_and_keep_their_status(client, bundle):
    """A 15,000-character name must come back as its status, not as a transport error
    (gRPC caps the trailing metadata that carries the message)."""
    client.ensure_artifacts(bundle)
    name = "n" * LONG
    _long_name_error(expect("FAILED_PRECONDITION", "format_version 99", _load, client,
                            _mutated(bundle, name=name, format_version=99)))
    steps = list(bundle.manifest.steps)
    step = dataclasses.replace(steps[0], name="s" * LONG, symbol="npas_no_such_kernel")
    _long_name_error(expect("NOT_FOUND", "npas_no_such_kernel", _load, client,
                            _mutated(bundle, steps=(step, *steps[1:]))))
    t0 = bundle.manifest.tensors[0]
    tensor = dataclasses.replace(t0, name="t" * LONG, nbytes=t0.nbytes + 4)
    _long_name_error(expect("INVALID_ARGUMENT", "nbytes", _load, client,
                            _mutated(bundle, tensors=(tensor, *bundle.manifest.tensors[1:]))))
    pb = client._pb
    _long_name_error(expect("INVALID_ARGUMENT", "sha256", _upload_raw, client,
                            [_header(client, b"abc", sha="a" * LONG), pb.UploadChunk(data=b"abc")]))

    h = _load(client, bundle.manifest).handle
    spec = bundle.manifest.tensors[bundle.manifest.inputs[0]]
    data = np.zeros(spec.shape, dtype="<f4").tobytes()
    wrong = pb.Tensor(name="x" * LONG, shape=list(spec.shape), dtype="float32", data=data)
    try:
        with pytest.raises(grpc.RpcError) as e:
            client._stub.Run(pb.RunRequest(handle=h, inputs=[wrong]), metadata=client._metadata,
                             timeout=20)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()[:300]
        assert f"({LONG} chars)" in e.value.details()
        expect("NOT_FOUND", "handle", client.unload, "h" * LONG)
    finally:
        client.unload(h)


def test_load_manifest_as_proto_round_trips(bundle):
    p = manifest_to_proto(bundle.manifest)
    assert p.content_hash == bundle.manifest.content_hash
    assert [s.symbol for s in p.steps] == [s.symbol for s in bundle.manifest.steps]
    assert sum(a.size for a in p.artifacts) == sum(a.size for a in bundle.manifest.artifacts)
