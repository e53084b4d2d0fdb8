"""NPAS code generator: nn.Module -> LR -> passes -> C or OpenCL C -> kernels + weights = Bundle.

Folders and files in the order a model flows through them: ``capture`` -> ``lr`` -> ``passes``
-> ``emit`` -> ``toolchain`` -> ``compile`` (which writes the ``bundle``). ``reference`` runs an
LR graph with torch ops for the compiler-free test tier.
"""

from codegen.compile import CompileReport, compile_model, read_report
from codegen.lr import CodegenError, UnsupportedOp
from codegen.toolchain import (
    Arm64AndroidToolchain,
    CompileError,
    HostToolchain,
    OpenClToolchain,
    toolchain_for,
)

__all__ = ["Arm64AndroidToolchain", "CodegenError", "CompileError", "CompileReport",
           "HostToolchain", "OpenClToolchain", "UnsupportedOp",
           "compile_model", "read_report", "toolchain_for"]
