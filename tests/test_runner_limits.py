"""Host tier: what one request may make the runner read, and uploads under load (issue 19).

Every RPC has a request size limit fitting what it carries, checked on the message's bytes after
the token and before it is parsed; a message without the token is refused before its body is
read. Several concurrent uploads of hundreds of MB all succeed (the transport's per-call
windows were unbounded, and gRPC's memory quota then reset streams: RESOURCE_EXHAUSTED "Stream
removed"); the host sends an upload the transport reset once more, saying so."""

from __future__ import annotations

import hashlib
import os
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from host.devices.local import LocalRunner, LocalRunnerConfig
from host.rpc.client import RunnerClient, RunnerError, transient_upload_failure
from host.rpc.stubs import load

pytestmark = pytest.mark.host

SERVICE = "/npas.runner.v1.Runner/"
# The runner's limits (service/runner_service.h); Run and Benchmark have the server's 16 MiB.
TINY = 64 << 10
CAPS = {"GetDeviceInfo": TINY, "UnloadModel": TINY, "MissingArtifacts": 7 << 20,
        "LoadModel": 8 << 20, "UploadArtifact": (1 << 20) + 1024, "Run": 16 << 20,
        "Benchmark": 16 << 20}


def _status_kb(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _message(size: int) -> bytes:
    """A request of exactly ``size`` bytes: one unknown length-delimited field (number 15),
    which every request message parses and ignores."""
    def varint(n: int) -> bytes:
        out = b""
        while True:
            out += bytes([(n & 0x7F) | (0x80 if n > 0x7F else 0)])
            n >>= 7
            if not n:
                return out
    body = size - 1
    while 1 + len(varint(body)) + body > size:
        body -= 1
    return b"\x7a" + varint(body) + b"\x01" * body


def _call(channel: grpc.Channel, rpc: str, payload: bytes, token: str | None):
    md = None if token is None else (("x-npas-token", token),)
    if rpc == "UploadArtifact":
        m = channel.stream_unary(SERVICE + rpc, request_serializer=None,
                                 response_deserializer=None)
        return m(iter([payload]), metadata=md, timeout=60)
    m = channel.unary_unary(SERVICE + rpc, request_serializer=None, response_deserializer=None)
    return m(payload, metadata=md, timeout=60)


@pytest.fixture(scope="module")
def runner(runner_binary, tmp_path_factory):
    cfg = LocalRunnerConfig(binary=runner_binary, store=tmp_path_factory.mktemp("limits"))
    with LocalRunner(cfg) as r:
        yield r


@pytest.fixture()
def channel(runner):
    ch = grpc.insecure_channel(runner.address, options=[
        ("grpc.max_send_message_length", 64 << 20)])
    yield ch
    ch.close()


@pytest.mark.parametrize("rpc", sorted(CAPS))
def test_each_rpc_refuses_a_request_over_its_limit_before_parsing_it(runner, channel, rpc):
    """One byte over the RPC's limit: RESOURCE_EXHAUSTED naming the RPC and the limit (Run and
    Benchmark: gRPC's own limit, the server's --max-message-bytes). A request at the limit
    is parsed (and then refused for what it says, or answered)."""
    with pytest.raises(grpc.RpcError) as e:
        _call(channel, rpc, _message(CAPS[rpc] + 1), runner.token)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
    if rpc not in ("Run", "Benchmark"):
        assert f"{rpc}: a request message of {CAPS[rpc] + 1} bytes" in e.value.details()
        assert f"limit of {CAPS[rpc]} bytes" in e.value.details()
    try:
        _call(channel, rpc, _message(CAPS[rpc] if rpc != "UploadArtifact" else 100),
              runner.token)
    except grpc.RpcError as at_limit:
        assert at_limit.code() != grpc.StatusCode.RESOURCE_EXHAUSTED, at_limit
    assert runner.client().device_info().protocol_major == 1


def test_oversized_unauthenticated_requests_are_refused_unread(runner_binary, tmp_path):
    """Each RPC, a request at twice its limit (Run and Benchmark at 15 MiB, under the server's
    limit), without the token and with a wrong one: UNAUTHENTICATED, and the runner's peak
    memory (VmHWM) grows far less than the 122 MiB sent (+1 MB measured)."""
    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / "s")) as r:
        ch = grpc.insecure_channel(r.address, options=[("grpc.max_send_message_length",
                                                        64 << 20)])
        before_kb = _status_kb(r.pid, "VmHWM")
        sent = 0
        for rpc, cap in sorted(CAPS.items()):
            size = min(2 * cap, 15 << 20)
            for token in (None, "wrong"):
                with pytest.raises(grpc.RpcError) as e:
                    _call(ch, rpc, _message(size), token)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (rpc, e.value)
                assert "token" in e.value.details()
                sent += size
        ch.close()
        grown_mb = (_status_kb(r.pid, "VmHWM") - before_kb) / 1024
        assert r.client().device_info().protocol_major == 1
    print(f"sent {sent >> 20} MiB unauthenticated; VmHWM grew by {grown_mb:.0f} MB")
    assert grown_mb < 35, f"VmHWM grew by {grown_mb:.0f} MB"


def test_with_allow_remote_the_token_is_still_checked_before_parsing(runner_binary, tmp_path):
    """--allow-remote (no local credentials: gRPC's transport does not check the token): each
    RPC checks the token before it looks at the message, so a stranger's request at twice
    the RPC's limit, or one that does not parse, is UNAUTHENTICATED; with the token the same
    requests are RESOURCE_EXHAUSTED by the RPC's limit and INVALID_ARGUMENT."""
    cfg = LocalRunnerConfig(binary=runner_binary, store=tmp_path / "s",
                            extra_args=("--listen", "0.0.0.0:0", "--allow-remote"))
    with LocalRunner(cfg) as r:
        port = r.address.rsplit(":", 1)[1]
        ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
            ("grpc.max_send_message_length", 64 << 20)])
        for rpc in ("GetDeviceInfo", "MissingArtifacts", "LoadModel", "UploadArtifact",
                    "UnloadModel"):
            for token in (None, "wrong"):
                with pytest.raises(grpc.RpcError) as e:
                    _call(ch, rpc, _message(2 * CAPS[rpc]), token)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (rpc, e.value)
            with pytest.raises(grpc.RpcError) as e:
                _call(ch, rpc, _message(2 * CAPS[rpc]), r.token)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, (rpc, e.value)
            assert "over this RPC's limit" in e.value.details()
            # bytes that are no protobuf message: a stranger learns nothing of them (before,
            # gRPC parsed first and answered INTERNAL), the token holder is told
            junk = b"\x0f\xff\xff"
            with pytest.raises(grpc.RpcError) as e:
                _call(ch, rpc, junk, None)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (rpc, e.value)
            with pytest.raises(grpc.RpcError) as e:
                _call(ch, rpc, junk, r.token)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (rpc, e.value)
            assert "does not parse" in e.value.details()
        ch.close()
        assert r.client().device_info().protocol_major == 1


def _blob(path: Path, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(size >> 20):
            chunk = bytes([i & 0xFF]) + block[1:]
            f.write(chunk)
            h.update(chunk)
    return h.hexdigest()


def test_concurrent_large_uploads_all_succeed(runner_binary, tmp_path):
    """Six 64 MiB uploads at once, each on its own connection, none retried: each succeeds and
    is stored (before the fix, 4 of the 6 were reset with RESOURCE_EXHAUSTED "Stream removed
    (RST_STREAM ... error code 11)")."""
    n, size = 6, 64 << 20
    blobs = []
    for i in range(n):
        p = tmp_path / f"blob{i}"
        blobs.append((p, _blob(p, size)))
    errors: list[str] = []
    with LocalRunner(LocalRunnerConfig(binary=runner_binary, store=tmp_path / "s")) as r:
        def upload(p: Path, sha: str) -> None:
            with r.client(timeout_s=120) as c:
                try:
                    c.upload(p, "weights", sha, size, retries=0)
                except RunnerError as e:
                    errors.append(str(e))
        threads = [threading.Thread(target=upload, args=b) for b in blobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        with r.client() as c:
            assert c.missing([sha for _, sha in blobs]) == []
    stored = [p.name for p in (tmp_path / "s").iterdir() if len(p.name) == 64]
    assert sorted(stored) == sorted(sha for _, sha in blobs)


# ---- the host's retry of an upload the transport reset ----

def test_only_transport_resets_count_as_transient():
    reset = "Stream removed (RST_STREAM (Received RST_STREAM with error code 11))"
    assert transient_upload_failure(RunnerError("UploadArtifact", "RESOURCE_EXHAUSTED", reset))
    for code, msg in [("RESOURCE_EXHAUSTED", "the store is full (no space left on device)"),
                      ("DATA_LOSS", "sha256 mismatch"), ("UNAUTHENTICATED", "wrong token"),
                      ("UNAVAILABLE", "runner not reachable (Socket closed)")]:
        assert not transient_upload_failure(RunnerError("UploadArtifact", code, msg))


class _ResettingRunner:
    """A gRPC server with the Runner's UploadArtifact method that resets the first ``resets``
    uploads the way gRPC's transport does (RESOURCE_EXHAUSTED, "Stream removed"), after
    reading them, and then stores them; what the host's retry meets from a runner under
    memory pressure."""

    def __init__(self, resets: int):
        self.resets, self.attempts, self.stored = resets, 0, {}
        pb, _ = load()
        self._pb = pb

        def upload(chunks, context):
            self.attempts += 1
            header, data = None, b""
            for c in chunks:
                if c.HasField("header"):
                    header = c.header
                else:
                    data += c.data
            if self.attempts <= self.resets:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "Stream removed (RST_STREAM (Received RST_STREAM with error code "
                              "11))")
            self.stored[header.sha256] = data
            return pb.UploadResponse(sha256=header.sha256, size=len(data))

        handler = grpc.method_handlers_generic_handler("npas.runner.v1.Runner", {
            "UploadArtifact": grpc.stream_unary_rpc_method_handler(
                upload, request_deserializer=pb.UploadChunk.FromString,
                response_serializer=pb.UploadResponse.SerializeToString)})
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()


@pytest.mark.parametrize("resets", [1, 2])
def test_an_upload_reset_by_the_transport_is_sent_once_more(tmp_path, capsys, resets):
    data = os.urandom(3 << 20)
    p = tmp_path / "blob"
    p.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    srv = _ResettingRunner(resets)
    try:
        with RunnerClient(f"127.0.0.1:{srv.port}", "t") as c:
            if resets == 1:
                r = c.upload(p, "weights", sha, len(data))
                assert r.sha256 == sha and srv.stored[sha] == data
            else:
                with pytest.raises(RunnerError) as e:
                    c.upload(p, "weights", sha, len(data))
                assert e.value.code == "RESOURCE_EXHAUSTED"
                assert "sent 2 times, reset each time" in e.value.message
    finally:
        srv.server.stop(0)
    assert srv.attempts == 2
    assert "reset by the transport" in capsys.readouterr().err
