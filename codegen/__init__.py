"""NPAS code generator: nn.Module -> LR -> passes -> C or OpenCL C -> kernels + weights = Bundle.

Folders and files in the order a model flows through them: ``frontend`` (capture) -> ``lr``
(the records and the op, activation and storage-format tables) -> ``passes`` (deciding with
``cost``, the cost model) -> ``emit`` -> ``toolchain`` -> ``compile`` (which writes the
``bundle``); ``autotune`` searches the cost model's space on a device. ``reference`` runs an
LR graph with torch ops for the compiler-free test tier.

This module is the whole face of the compiler: ``host`` imports only the names below
(``from codegen import X``; ``tests/test_boundaries.py`` checks it). codegen never imports the
host, gRPC or generated proto code: the Bundle, the tuning database and the ``Measurer``
protocol are what cross.
"""

from codegen.autotune import (
    DbLookup,
    Entry,
    GaConfig,
    MeasureError,
    Measurement,
    Measurer,
    SignatureStatus,
    TuneConfig,
    TuneProgress,
    TuneReport,
    TuningDB,
    TuningDbError,
    default_db_path,
    default_point,
    describe_key,
    key_string,
    layer_key,
    tunable_space,
    tune_model,
)
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
from codegen.compile import CompileReport, compile_model, read_report
from codegen.frontend import capture
from codegen.int8_eval import int8_layer_names, int8_offers, quantized_graph, run_quantized
from codegen.lr import (
    ACTIVATIONS,
    OPS,
    SPARSE_FORMATS,
    Activation,
    CodegenError,
    OpDef,
    SparseFormat,
    UnsupportedOp,
)
from codegen.passes.sparse import SPARSE_POLICIES, SPARSE_SCHEMES
from codegen.toolchain import (
    Arm64AndroidToolchain,
    CompileError,
    CToolchain,
    HostToolchain,
    OpenClToolchain,
    toolchain_for,
)

__all__ = ["ACTIVATIONS", "OPS", "SPARSE_FORMATS", "SPARSE_POLICIES", "SPARSE_SCHEMES",
           "Activation", "Arm64AndroidToolchain", "ArtifactRef", "Bundle", "BundleError",
           "CToolchain", "CodegenError", "CompileError", "CompileReport", "DbLookup", "Entry",
           "GaConfig", "HostToolchain", "Manifest", "MeasureError", "Measurement", "Measurer",
           "OpDef", "OpenClToolchain", "SignatureStatus", "SparseFormat", "Step", "Target",
           "TensorSpec", "TuneConfig", "TuneProgress", "TuneReport", "TuningDB", "TuningDbError",
           "UnsupportedOp", "capture", "compile_model", "default_db_path", "default_point",
           "describe_key", "int8_layer_names", "int8_offers", "key_string", "layer_key",
           "load_bundle", "quantized_graph", "run_quantized", "read_report", "toolchain_for",
           "tunable_space", "tune_model"]
