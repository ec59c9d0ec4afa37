"""Latency: device profiles, runtime backends, timing, lookup tables and their estimators.

Knows nothing of the search: a (pruned) model comes in, milliseconds on a device go out.
"""
from autoprune.latency.devices import DeviceProfile, load_device
from autoprune.latency.measured import (
    LatencyEstimator,
    MeasuredLatency,
    batched,
    deployable,
)
from autoprune.latency.policy import estimator_for

__all__ = ["DeviceProfile", "LatencyEstimator", "MeasuredLatency", "batched", "deployable", "estimator_for", "load_device"]
