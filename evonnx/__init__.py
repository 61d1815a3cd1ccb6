"""evonnx: evolve smaller, faster neural networks from ONNX graphs."""

from __future__ import annotations

from evonnx.api import (
    EvolveConfig,
    InspectReport,
    Lineage,
    PruneResult,
    evolve,
    inspect,
    load,
    prune,
    save,
    synthesize,
)
from evonnx.errors import EvonnxError

__all__ = [
    "EvolveConfig",
    "EvonnxError",
    "InspectReport",
    "Lineage",
    "PruneResult",
    "evolve",
    "inspect",
    "load",
    "prune",
    "save",
    "synthesize",
]
__version__ = "0.1.0"
