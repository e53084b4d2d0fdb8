"""NPAS code generator: nn.Module -> LR -> passes -> C or OpenCL C -> kernels + weights = Bundle.

Folders and files in the order a model flows through them: ``capture`` -> ``lr`` -> ``passes``
-> ``emit`` -> ``toolchain`` -> ``compile`` (which writes the ``bundle``). ``reference`` runs an
LR graph with torch ops for the compiler-free test tier.

This module is the whole face of the compiler: ``host`` imports only the names below
(``tests/test_boundaries.py`` checks it).
"""

from codegen.bundle import (
    ArtifactRef,
    Bundle,
    BundleError,
    Manifest,
    Step,
    Target,
    TensorSpec,
    load_bundle,
)
from codegen.capture import capture
from codegen.compile import CompileReport, compile_model, read_report
from codegen.lr import CodegenError, UnsupportedOp
from codegen.toolchain import (
    Arm64AndroidToolchain,
    CompileError,
    HostToolchain,
    OpenClToolchain,
    toolchain_for,
)

__all__ = ["Arm64AndroidToolchain", "ArtifactRef", "Bundle", "BundleError", "CodegenError",
           "CompileError", "CompileReport", "HostToolchain", "Manifest", "OpenClToolchain",
           "Step", "Target", "TensorSpec", "UnsupportedOp", "capture", "compile_model",
           "load_bundle", "read_report", "toolchain_for"]
