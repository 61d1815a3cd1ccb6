"""Python API for deployment pipelines: load, inspect, prune, save."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from evonnx.analysis import analyze_graph
from evonnx.data import Dataset, load_dataset
from evonnx.encoding import EncodingConfig, Offspring
from evonnx.encoding import synthesize as sample_offspring
from evonnx.graph import constant_values, load_model, save_model, to_graph
from evonnx.groups import Analysis, PrunePlan
from evonnx.lineage import EvolveConfig, Lineage
from evonnx.metrics import ModelMetrics, metrics_of_graph
from evonnx.plan import branch_plan, magnitude_plan
from evonnx.surgery import apply_plan

logger = logging.getLogger(__name__)

__all__ = [
    "EvolveConfig",
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
    offspring: Offspring | None = None


def prune(
    model: onnx.ModelProto, keep: float, min_channels: int = 1, branches: bool = False
) -> PruneResult:
    """Remove the weakest channels of every prunable group (magnitude baseline).

    Args:
        model: The ancestor.
        keep: Fraction of channels each prunable group keeps, in (0, 1]; with ``branches``,
            the fraction of MACs to keep at most by removing whole residual branches.
        min_channels: Channels every group keeps at least.
        branches: Remove whole residual branches (depth) instead of channels (width).
    """
    graph = to_graph(model)
    analysis = analyze_graph(graph)
    weights = constant_values(graph)
    if branches:
        plan = branch_plan(analysis, weights, 1.0 / keep)
    else:
        plan = magnitude_plan(analysis, weights, keep, min_channels)
    out = apply_plan(model, analysis, plan)
    after = inspect(out).metrics
    return PruneResult(out, plan, metrics_of_graph(graph, analysis), after)


def synthesize(
    model: onnx.ModelProto, config: EncodingConfig | None = None, seed: int = 0
) -> PruneResult:
    """Sample one offspring with the genetic encoding and physically remove its dead clusters.

    Args:
        model: The ancestor.
        config: Encoding settings (default: keep at most 80% of the nonzero synapses).
        seed: Seed of the ``numpy.random.Generator`` that samples the offspring.
    """
    graph = to_graph(model)
    analysis = analyze_graph(graph)
    offspring = sample_offspring(model, analysis, config, np.random.default_rng(seed))
    out = apply_plan(model, analysis, offspring.plan, offspring.masks)
    before = metrics_of_graph(graph, analysis)
    return PruneResult(out, offspring.plan, before, inspect(out).metrics, offspring)


def evolve(
    model: onnx.ModelProto | str | Path,
    data: Dataset | str | Path,
    out_dir: str | Path,
    config: EvolveConfig | None = None,
    resume: bool = False,
    progress: bool = False,
) -> Lineage:
    """Evolve ``model`` on ``data`` (a Dataset, a path or a built-in name) into ``out_dir``.

    See :func:`evonnx.evolution.evolve`; returns the lineage of every finished generation.
    """
    from evonnx.evolution import evolve as run_evolution  # imports torch

    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    return run_evolution(model, dataset, out_dir, config or EvolveConfig(), resume, progress)
