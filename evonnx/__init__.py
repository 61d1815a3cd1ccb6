"""evonnx: evolve smaller, faster neural networks from ONNX graphs."""

from __future__ import annotations

from evonnx.api import InspectReport, PruneResult, inspect, load, prune, save
from evonnx.errors import EvonnxError

__all__ = ["EvonnxError", "InspectReport", "PruneResult", "inspect", "load", "prune", "save"]
__version__ = "0.1.0"
