"""Latency lookup table and predictor for hardware-aware evolution.

* :mod:`~evonnx.latency.geometry`: conv/FC layer geometry and single-layer graphs.
* :mod:`~evonnx.latency.table`: per-layer latencies measured on demand, cached on disk.
* :mod:`~evonnx.latency.model`: offspring latency predicted from the table plus a measured
  overhead, and the latency steps channel counts are snapped to.
* :mod:`~evonnx.latency.fit`: measured end-to-end, trimmed until within budget.
* :mod:`~evonnx.latency.budget`: a latency-budgeted offspring of a parent, sampled and fit.
* :mod:`~evonnx.latency.run`: measured latency and budgets across an evolution run.
"""

from __future__ import annotations

from evonnx.latency.budget import (
    Target,
    check_reachable,
    latency_offspring,
    latency_target,
)
from evonnx.latency.census import group_census
from evonnx.latency.fit import MeasuredFit, fit_measured
from evonnx.latency.geometry import LayerShape, layer_shapes
from evonnx.latency.model import (
    DEFAULT_STEP,
    LatencyModel,
    build_latency_model,
    default_step,
    latency_steps,
    width_grid,
)
from evonnx.latency.run import RunLatency
from evonnx.latency.settings import LatencySettings, MeasurementSettings
from evonnx.latency.table import LatencyTable, cache_dir

__all__ = [
    "DEFAULT_STEP",
    "LatencyModel",
    "LatencySettings",
    "LatencyTable",
    "LayerShape",
    "MeasuredFit",
    "MeasurementSettings",
    "RunLatency",
    "Target",
    "build_latency_model",
    "cache_dir",
    "check_reachable",
    "default_step",
    "fit_measured",
    "group_census",
    "latency_offspring",
    "latency_steps",
    "latency_target",
    "layer_shapes",
    "width_grid",
]
