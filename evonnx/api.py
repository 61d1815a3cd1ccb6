"""Python API for deployment pipelines: load, inspect, prune, save."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from evonnx.analysis import analyze_graph
from evonnx.graph import constant_values, load_model, save_model, to_graph
from evonnx.groups import Analysis, PrunePlan
from evonnx.metrics import ModelMetrics, metrics_of_graph
from evonnx.plan import magnitude_plan
from evonnx.surgery import apply_plan

logger = logging.getLogger(__name__)

__all__ = ["InspectReport", "PruneResult", "inspect", "load", "prune", "save"]


def load(path: str | Path) -> onnx.ModelProto:
    """Load and validate an ONNX model (see :func:`evonnx.graph.load_model`)."""
    return load_model(path)


def save(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` atomically to ``path``."""
    return save_model(model, path)


@dataclass(frozen=True)
class InspectReport:
    """What evonnx sees in a model: channel groups, prunable layers and metrics."""

    analysis: Analysis
    metrics: ModelMetrics

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        groups = [
            {
                "id": g.id,
                "size": g.size,
                "prunable": g.prunable,
                "frozen": g.frozen,
                "producers": [m.name for m in g.producers],
                "members": [
                    {
                        "role": m.role.value,
                        "name": m.name,
                        "node": m.node,
                        "axis": m.axis,
                        "start": m.start,
                        "block": m.block,
                    }
                    for m in g.members
                ],
            }
            for g in self.analysis.groups
        ]
        metrics = asdict(self.metrics)
        layers = [
            {**asdict(lay), "out_group": a.out_group, "in_groups": list(a.in_groups)}
            for lay, a in zip(self.metrics.layers, self.analysis.layers, strict=True)
        ]
        metrics["layers"] = layers
        return {"groups": groups, "metrics": metrics}


def inspect(model: onnx.ModelProto | str | Path) -> InspectReport:
    """Analyse ``model`` (a ModelProto or a path)."""
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    graph = to_graph(proto)
    analysis = analyze_graph(graph)
    return InspectReport(analysis, metrics_of_graph(graph, analysis))


@dataclass(frozen=True)
class PruneResult:
    """An offspring and the plan that made it."""

    model: onnx.ModelProto
    plan: PrunePlan
    before: ModelMetrics
    after: ModelMetrics


def prune(model: onnx.ModelProto, keep: float, min_channels: int = 1) -> PruneResult:
    """Remove the weakest channels of every prunable group (magnitude baseline).

    Args:
        model: The ancestor.
        keep: Fraction of channels each prunable group keeps, in (0, 1].
        min_channels: Channels every group keeps at least.
    """
    graph = to_graph(model)
    analysis = analyze_graph(graph)
    plan = magnitude_plan(analysis, constant_values(graph), keep, min_channels)
    out = apply_plan(model, analysis, plan)
    after = inspect(out).metrics
    return PruneResult(out, plan, metrics_of_graph(graph, analysis), after)
