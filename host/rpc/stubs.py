"""Generated gRPC stubs for proto/npas/runner/v1/runner.proto, made on first use.

The Python code is generated with grpcio-tools (so it always matches the installed protobuf
runtime) into host/rpc/_gen, which git ignores, and regenerated when the .proto changes.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path
from types import ModuleType

PROTO_ROOT = Path(__file__).resolve().parents[2] / "proto"
PROTO_FILE = "npas/runner/v1/runner.proto"
GEN_DIR = Path(__file__).resolve().parent / "_gen"

_modules: tuple[ModuleType, ModuleType] | None = None


def _generate() -> None:
    from grpc_tools import protoc  # grpcio-tools is a dependency

    src = PROTO_ROOT / PROTO_FILE
    if not src.is_file():
        raise RuntimeError(f"the runner protocol {src} is missing; is this a full checkout?")
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    stamp = GEN_DIR / "proto.sha256"
    if stamp.is_file() and stamp.read_text() == digest:
        return
    GEN_DIR.mkdir(exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={GEN_DIR}",
                      f"--grpc_python_out={GEN_DIR}", str(src)])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {src}")
    stamp.write_text(digest)


def load() -> tuple[ModuleType, ModuleType]:
    """Return (runner_pb2, runner_pb2_grpc)."""
    global _modules
    if _modules is None:
        _generate()
        if str(GEN_DIR) not in sys.path:
            sys.path.insert(0, str(GEN_DIR))
        pb2 = importlib.import_module("npas.runner.v1.runner_pb2")
        grpc_mod = importlib.import_module("npas.runner.v1.runner_pb2_grpc")
        _modules = (pb2, grpc_mod)
    return _modules
