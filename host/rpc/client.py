"""RunnerClient: the host's typed wrapper over the runner's gRPC service.

Every call carries the session token and a deadline, so a dead or hung runner turns into a
RunnerError after at most the deadline instead of a hang. Uploads send only what the runner is
missing, in chunks (1 MiB: the runner's per-message limit), with size and sha256 declared up
front; one that the transport resets midway is sent once more. Records become requests and
answers become records in host/rpc/convert.py only; this module makes the calls.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np

from codegen import Bundle, Manifest

from ..measure import BenchmarkResult, MeasureConfig
from .convert import (
    LoadedModel,
    arrays_from_proto,
    benchmark_request,
    benchmark_result,
    inputs_to_proto,
    kind_to_proto,
    load_request,
    loaded_model,
)
from .stubs import load

__all__ = ["LoadedModel", "ProgressFn", "RunnerClient", "RunnerError",
           "transient_upload_failure"]

TOKEN_METADATA_KEY = "x-npas-token"
CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 256 << 20
PROTOCOL_MAJOR = 1


class RunnerError(RuntimeError):
    """A runner call failed. ``code`` is the gRPC status name (e.g. "INVALID_ARGUMENT")."""

    def __init__(self, rpc: str, code: str, message: str, address: str = ""):
        self.rpc, self.code, self.message, self.address = rpc, code, message, address
        where = f" at {address}" if address else ""
        super().__init__(f"runner{where}: {rpc} failed: {code}: {message}")

    @property
    def unreachable(self) -> bool:
        """The runner is gone or not answering (as opposed to refusing a request)."""
        return self.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED")


ProgressFn = Callable[[int, int], None]  # (bytes done, bytes total)

# What a stream reset by the transport says (gRPC's RST_STREAM, e.g. a runner under memory
# pressure resetting a call), as opposed to a refusal by the runner itself.
_RESET_MARKS = ("Stream removed", "RST_STREAM")


def transient_upload_failure(e: RunnerError) -> bool:
    """An upload the transport reset midway: the runner keeps nothing of a failed upload (no
    half-written artifact), so sending it again from the start is safe. A refusal by the
    runner (store full, hash mismatch, a wrong token) or a runner that is gone is not one."""
    return e.code in ("RESOURCE_EXHAUSTED", "INTERNAL", "UNKNOWN") and any(
        m in e.message for m in _RESET_MARKS)


class RunnerClient:
    def __init__(self, address: str, token: str, timeout_s: float = 60.0):
        self.address = address
        self.timeout_s = timeout_s
        self._metadata = ((TOKEN_METADATA_KEY, token),)
        self._pb, grpc_mod = load()
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ])
        self._stub = grpc_mod.RunnerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> RunnerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- plumbing --
    def _call(self, rpc: str, request, timeout_s: float | None = None):
        method = getattr(self._stub, rpc)
        try:
            return method(request, metadata=self._metadata,
                          timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as e:
            raise self._error(rpc, e) from None

    def _error(self, rpc: str, e: grpc.RpcError) -> RunnerError:
        code = e.code().name if e.code() else "UNKNOWN"
        msg = e.details() or ""
        if code == "UNAVAILABLE":
            msg = f"runner not reachable ({msg}); is it running?"
        return RunnerError(rpc, code, msg, self.address)

    # -- calls --
    def device_info(self, timeout_s: float = 10.0):
        info = self._call("GetDeviceInfo", self._pb.DeviceInfoRequest(), timeout_s)
        if info.protocol_major != PROTOCOL_MAJOR:
            raise RunnerError("GetDeviceInfo", "FAILED_PRECONDITION",
                              f"runner speaks protocol v{info.protocol_major}, this host "
                              f"speaks v{PROTOCOL_MAJOR}; update the runner", self.address)
        return info

    def wait_ready(self, timeout_s: float) -> None:
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise RunnerError("connect", "UNAVAILABLE",
                              f"no answer within {timeout_s:.0f} s", self.address) from None

    def missing(self, sha256s: Sequence[str]) -> list[str]:
        r = self._call("MissingArtifacts", self._pb.MissingArtifactsRequest(sha256=sha256s))
        return list(r.missing)

    def upload(self, path: Path, kind: str, sha256: str, size: int,
               progress: ProgressFn | None = None, chunk_bytes: int = CHUNK_BYTES,
               retries: int = 1):
        """Send one artifact. An upload the transport reset midway is sent again from the
        start, up to ``retries`` times (progress counts the bytes again); a second reset, or
        any refusal by the runner, raises RunnerError."""
        first: RunnerError | None = None
        for attempt in range(retries + 1):
            try:
                return self._upload_once(path, kind, sha256, size, progress, chunk_bytes)
            except RunnerError as e:
                if not transient_upload_failure(e):
                    raise
                if attempt == retries:
                    again = (f"; sent {attempt + 1} times, reset each time (first: "
                             f"{first.message})") if first else ""
                    raise RunnerError("UploadArtifact", e.code,
                                      f"{e.message}{again}", self.address) from None
                first = first or e
                print(f"npas-host: upload of {sha256[:12]} ({size} bytes) to {self.address} "
                      f"was reset by the transport ({e.code}: {e.message}); sending it again",
                      file=sys.stderr)
        raise AssertionError("unreachable")

    def _upload_once(self, path: Path, kind: str, sha256: str, size: int,
                     progress: ProgressFn | None, chunk_bytes: int):
        pb = self._pb

        def chunks() -> Iterator:
            yield pb.UploadChunk(header=pb.ArtifactHeader(kind=kind_to_proto(kind), size=size,
                                                          sha256=sha256))
            done = 0
            with open(path, "rb") as f:
                while block := f.read(chunk_bytes):
                    done += len(block)
                    yield pb.UploadChunk(data=block)
                    if progress:
                        progress(len(block), size)

        # Large artifacts over slow links (adb forward) need more than the default deadline.
        timeout = max(self.timeout_s, size / (2 << 20))
        return self._call("UploadArtifact", chunks(), timeout)

    def ensure_artifacts(self, bundle: Bundle, progress: ProgressFn | None = None) -> int:
        """Upload the bundle's artifacts the runner lacks; return the bytes sent."""
        arts = bundle.manifest.artifacts
        missing = set(self.missing([a.sha256 for a in arts]))
        sent = 0
        for a in arts:
            if a.sha256 in missing:
                self.upload(bundle.path / a.file, a.kind, a.sha256, a.size, progress)
                sent += a.size
        return sent

    def load_model(self, manifest: Manifest,
                   measure: MeasureConfig | None = None) -> LoadedModel:
        """Load with ``measure``'s threads, affinity, pinning and backend."""
        return loaded_model(self._call("LoadModel",
                                       load_request(manifest, measure or MeasureConfig())))

    def run(self, handle: str, manifest: Manifest,
            inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        r = self._call("Run", self._pb.RunRequest(handle=handle,
                                                  inputs=inputs_to_proto(manifest, inputs)))
        return arrays_from_proto(r.outputs)

    def benchmark(self, handle: str, measure: MeasureConfig | None = None,
                  timeout_s: float = 600.0) -> BenchmarkResult:
        """Time a loaded model with ``measure``'s runs, warm-up and per-layer setting."""
        r = self._call("Benchmark", benchmark_request(handle, measure or MeasureConfig()),
                       timeout_s)
        return benchmark_result(r)

    def unload(self, handle: str) -> None:
        self._call("UnloadModel", self._pb.UnloadModelRequest(handle=handle))

