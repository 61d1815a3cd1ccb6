"""evonnx: evolve smaller, faster neural networks from ONNX graphs."""

from __future__ import annotations

from evonnx.api import (
    EvolveConfig,
    InspectReport,
    Lineage,
    MeasuredLatency,
    PruneResult,
    evolve,
    inspect,
    load,
    measure,
    prune,
    save,
    synthesize,
    synthesize_latency,
)
from evonnx.data.unlabelled import ImagePreprocess
from evonnx.errors import EvonnxError
from evonnx.retrain.fidelity import FidelityTask
from evonnx.retrain.task import ClassificationTask, Task, load_task

__all__ = [
    "ClassificationTask",
    "EvolveConfig",
    "EvonnxError",
    "FidelityTask",
    "ImagePreprocess",
    "InspectReport",
    "Lineage",
    "MeasuredLatency",
    "PruneResult",
    "Task",
    "evolve",
    "inspect",
    "load",
    "load_task",
    "measure",
    "prune",
    "save",
    "synthesize",
    "synthesize_latency",
]
__version__ = "0.1.0"
