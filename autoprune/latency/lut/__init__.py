"""Latency lookup tables: profile a device's kernels, predict models from the table, validate.

* :func:`profile` measures every kernel a search space can produce for a model and
  calibrates whole-model latency (``autoprune profile``);
* :class:`LUTEstimator` predicts a pruned model's latency from the table (used by the
  search when a device has a table, see :func:`autoprune.latency.estimator_for`);
* :func:`validate` compares predictions with real measurements (``autoprune lut validate``).
"""
from autoprune.latency.lut.estimator import LUTEstimator
from autoprune.latency.lut.kernel_key import Kernel, KernelKey
from autoprune.latency.lut.keys import extract_kernels
from autoprune.latency.lut.profiler import ProfileReport, profile
from autoprune.latency.lut.table import (
    LatencyTable,
    LatencyTableWarning,
    TableMeta,
    has_table,
    load_table,
)

__all__ = [
    "Kernel",
    "KernelKey",
    "LUTEstimator",
    "LatencyTable",
    "LatencyTableWarning",
    "ProfileReport",
    "TableMeta",
    "extract_kernels",
    "has_table",
    "load_table",
    "profile",
]
