"""evonnx: evolve smaller, faster neural networks from ONNX graphs."""

from __future__ import annotations

from evonnx.api import (
    BenchResult,
    EvolveConfig,
    ExportResult,
    GeneticOptions,
    InspectReport,
    Lineage,
    MeasuredLatency,
    PruneResult,
    benchmark,
    evolve,
    export,
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
    "BenchResult",
    "ClassificationTask",
    "EvolveConfig",
    "EvonnxError",
    "ExportResult",
    "FidelityTask",
    "GeneticOptions",
    "ImagePreprocess",
    "InspectReport",
    "Lineage",
    "MeasuredLatency",
    "PruneResult",
    "Task",
    "benchmark",
    "evolve",
    "export",
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
