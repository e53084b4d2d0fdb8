"""The auto-tuner: a genetic algorithm over each layer's tuning parameters, measured on a
device through a ``Measurer``, and the tuning database that keeps what it found.

In the order a tuning run uses them: ``space`` (what a layer's kernel can be tuned over, and
the key of a layer signature: compiler knowledge, from ``codegen.cost``), ``ga`` (the pure
genetic operators), ``measurer`` (the seam to a device: the host implements it), ``tuner`` (the
measuring loop), ``db`` (the records on disk and the ``compile_model(tuning=...)`` lookup).
"""

from codegen.autotune.db import DbLookup, Entry, TuningDB, TuningDbError, default_db_path
from codegen.autotune.ga import GaConfig
from codegen.autotune.measurer import MeasureError, Measurement, Measurer
from codegen.autotune.space import (
    default_point,
    describe_key,
    key_string,
    layer_key,
    tunable_space,
)
from codegen.autotune.tuner import (
    SignatureStatus,
    TuneConfig,
    TuneProgress,
    TuneReport,
    per_run_ms,
    tune_model,
)

__all__ = ["DbLookup", "Entry", "GaConfig", "MeasureError", "Measurement", "Measurer",
           "SignatureStatus", "TuneConfig", "TuneProgress", "TuneReport", "TuningDB",
           "TuningDbError", "default_db_path", "default_point", "describe_key", "key_string",
           "layer_key", "per_run_ms", "tunable_space", "tune_model"]
