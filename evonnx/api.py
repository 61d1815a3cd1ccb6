"""Python API for deployment pipelines: load, inspect, prune, save."""

from __future__ import annotations

import gc
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from evonnx.data import Dataset, load_dataset
from evonnx.errors import ConfigError, PlanError
from evonnx.evolution.lineage import SPEEDUP_RULE, EvolveConfig, GenerationRecord, Lineage
from evonnx.evolution.validate import check_finite_weights, check_round_to
from evonnx.genetic import DEFAULT_MIN_FRACTION, EncodingConfig, Offspring
from evonnx.genetic import synthesize as sample_offspring
from evonnx.latency import LatencySettings, check_reachable, latency_offspring, latency_target
from evonnx.latency.inputs import check_inputs
from evonnx.model.external import EXTERNAL_THRESHOLD, needs_external
from evonnx.model.files import load_model, save_model
from evonnx.model.graph import constant_values
from evonnx.model.inputs import InputShapes, apply_input_shapes
from evonnx.model.memory import check_batch_fits
from evonnx.model.normalize import NormalizeReport
from evonnx.model.normalize import normalize as normalize_model
from evonnx.model.shapes import shaped_graph
from evonnx.pruning.analysis import analyze_graph
from evonnx.pruning.fold import FoldPlan
from evonnx.pruning.groups import Analysis
from evonnx.pruning.importance import deviation_strength, reader_deviation, synthetic_inputs
from evonnx.pruning.metrics import ModelMetrics, metrics_of_graph
from evonnx.pruning.plan import PrunePlan, branch_plan, magnitude_plan
from evonnx.pruning.surgery import apply_plan_report
from evonnx.retrain.task import Task
from evonnx.runtimes import make_runtime

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


def load(path: str | Path, normalize: bool = True) -> onnx.ModelProto:
    """Load, validate and (by default) normalize an ONNX model.

    See :func:`evonnx.model.files.load_model` and :func:`evonnx.model.normalize.normalize`.
    """
    return load_model(path, normalize=normalize)


def save(model: onnx.ModelProto, path: str | Path, external_data: bool | None = None) -> Path:
    """Write ``model`` atomically to ``path`` (see :func:`evonnx.model.files.save_model`).

    ``external_data``: weights in ``<name>.data`` beside the file; ``None`` does so past
    1.8 GB of weights (protobuf's limit is 2 GB).
    """
    return save_model(model, path, external_data)


@dataclass(frozen=True)
class InspectReport:
    """What evonnx sees in a model: channel groups, prunable layers and metrics."""

    analysis: Analysis
    metrics: ModelMetrics
    normalization: NormalizeReport | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        groups = [
            {
                "id": g.id,
                "size": g.size,
                "prunable": g.prunable,
                "removable": g.removable,
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
        metrics["macs_known"] = self.metrics.macs_known
        metrics["unknown_macs"] = list(self.metrics.unknown_macs)
        norm = asdict(self.normalization) if self.normalization else None
        return {
            "groups": groups,
            "metrics": metrics,
            "coverage": self.analysis.coverage,
            "removable_branches": [g.id for g in self.analysis.groups if g.removable],
            "normalization": norm,
        }


def inspect(
    model: onnx.ModelProto | str | Path,
    input_shapes: InputShapes | None = None,
    normalize: bool = True,
) -> InspectReport:
    """Analyse ``model`` (a ModelProto or a path).

    Args:
        model: The model or its file.
        input_shapes: Static shapes for symbolic graph inputs (``{"images": (1, 3, 640, 640)}``).
        normalize: Normalize exporter quirks first (reported in the result).
    """
    proto = model if isinstance(model, onnx.ModelProto) else load_model(model, normalize=False)
    report = None
    if normalize:
        proto, report = normalize_model(proto, input_shapes=input_shapes)
    graph, resolved = shaped_graph(proto, input_shapes)
    analysis = analyze_graph(graph, resolved.hint())
    return InspectReport(analysis, metrics_of_graph(graph, analysis), report)


@dataclass(frozen=True)
class MeasuredLatency:
    """Ancestor and offspring latency measured side by side on one runtime (ms)."""

    runtime: str
    batch: int
    before_ms: float
    after_ms: float
    predicted_ms: float | None = None
    budget_ms: float | None = None
    target_speedup: float | None = None

    @property
    def speedup(self) -> float:
        """Ancestor latency over offspring latency."""
        return self.before_ms / self.after_ms if self.after_ms > 0 else float("inf")


@dataclass(frozen=True)
class PruneResult:
    """An offspring and the plan that made it (with its measured latency when asked)."""

    model: onnx.ModelProto
    plan: PrunePlan
    before: ModelMetrics
    after: ModelMetrics
    offspring: Offspring | None = None
    latency: MeasuredLatency | None = None
    folds: FoldPlan | None = None


def prune(
    model: onnx.ModelProto,
    keep: float,
    min_channels: int = 1,
    branches: bool = False,
    input_shapes: InputShapes | None = None,
    round_to: int | None = None,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    criterion: str = "deviation",
) -> PruneResult:
    """Remove the weakest channels of every prunable group (magnitude baseline).

    Args:
        model: The ancestor.
        keep: Fraction of channels each prunable group keeps, in (0, 1]; with ``branches``,
            the fraction of MACs to keep at most by removing whole residual branches.
        min_channels: Channels every group keeps at least.
        branches: Remove whole residual branches (depth) instead of channels (width).
        input_shapes: Static shapes for symbolic inputs, used for MACs (the offspring keeps
            the ancestor's input shapes).
        round_to: Round channel counts up to multiples of this (not with ``branches``).
        min_fraction: Per-layer floor: every group keeps at least this fraction of its
            channels (not with ``branches``, which remove whole branches).
        criterion: How channels are ranked: ``"deviation"`` (how far a channel's values are
            from the constant it is folded to, weighted by its readers' weights, on seeded
            synthetic inputs; :mod:`evonnx.pruning.importance`; L1 where the ancestor cannot be run
            on them) or ``"l1"`` (the L1 norm of its producer filters).

    Raises:
        ConfigError: ``round_to`` with ``branches`` (branches keep all their channels or
            none), or an unknown ``criterion``.
        PlanError: ``keep`` is below the floor ``min_fraction``.
    """
    if branches and round_to is not None:
        raise ConfigError("round_to has no effect when removing whole branches")
    if criterion not in CRITERIA:
        raise ConfigError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
    if not branches and keep < min_fraction:
        raise PlanError(
            f"keep {keep:g} is below the per-layer floor: every prunable layer keeps at least "
            f"{min_fraction:g} of its channels; keep {min_fraction:g} or more, or lower the "
            "floor (--min-fraction)"
        )
    check_finite_weights(model)
    graph, resolved = shaped_graph(model, input_shapes)
    analysis = analyze_graph(graph, resolved.hint())
    check_round_to(analysis, None if branches else round_to)
    weights = constant_values(graph)
    before = metrics_of_graph(graph, analysis)
    if branches and not before.macs_known:
        raise ConfigError(
            "removing branches to a MAC budget needs known MACs; input shapes are symbolic: "
            "give them with --input-shape NAME=1x3xHxW"
        )
    if branches:
        plan = branch_plan(analysis, weights, 1.0 / keep)
    else:
        strength = _deviation(model, analysis, graph, weights) if criterion == "deviation" else None
        plan = magnitude_plan(
            analysis, weights, keep, min_channels, round_to, min_fraction, strength
        )
    del graph, weights  # the surgery reads the weights again: one copy at a time (> 2 GB
    gc.collect()  # models); the graph's node/tensor cycles would keep this copy alive
    out, folds = apply_plan_report(model, analysis, plan)
    after = inspect(out, input_shapes, normalize=False).metrics
    return PruneResult(out, plan, before, after, folds=folds)


CRITERIA = ("deviation", "l1")
"""Channel rankings of :func:`prune`."""


def _deviation(
    model: onnx.ModelProto, analysis: Analysis, graph: Any, weights: dict[str, np.ndarray]
) -> dict[int, np.ndarray] | None:
    """:func:`evonnx.pruning.importance.deviation_strength` on synthetic inputs, or None (L1) where
    the inputs cannot be synthesized or onnxruntime cannot run the ancestor."""
    if needs_external(model):  # onnxruntime would need a second, serialized copy
        logger.info("weights over %.1f GB: ranking channels by L1", EXTERNAL_THRESHOLD / 1e9)
        return None
    inputs = synthetic_inputs(graph)
    if not inputs:
        logger.info("no synthetic inputs for this graph (symbolic or non-float): ranking by L1")
        return None
    try:
        deviation = reader_deviation(model, analysis, graph, inputs)
    except Exception as exc:  # onnxruntime raises its own exception types
        logger.warning("cannot run the ancestor to rank channels (%s): ranking by L1", exc)
        return None
    return deviation_strength(analysis, weights, deviation)


def synthesize(
    model: onnx.ModelProto,
    config: EncodingConfig | None = None,
    seed: int = 0,
    input_shapes: InputShapes | None = None,
) -> PruneResult:
    """Sample one offspring with the genetic encoding and physically remove its dead clusters.

    Args:
        model: The ancestor.
        config: Encoding settings (default: keep at most 80% of the nonzero synapses).
        seed: Seed of the ``numpy.random.Generator`` that samples the offspring.
        input_shapes: Static shapes for symbolic inputs (needed for MAC budgets).
    """
    check_finite_weights(model)
    graph, resolved = shaped_graph(model, input_shapes)
    analysis = analyze_graph(graph, resolved.hint())
    check_round_to(analysis, config.round_to if config is not None else None)
    offspring = sample_offspring(model, analysis, config, np.random.default_rng(seed))
    out, folds = apply_plan_report(model, analysis, offspring.plan, offspring.masks)
    before = metrics_of_graph(graph, analysis)
    after = inspect(out, input_shapes, normalize=False).metrics
    return PruneResult(out, offspring.plan, before, after, offspring, folds=folds)


def measure(
    ancestor: onnx.ModelProto,
    offspring: onnx.ModelProto,
    latency: LatencySettings,
    input_shapes: InputShapes | None = None,
) -> MeasuredLatency:
    """Latency of ``ancestor`` and ``offspring`` measured side by side on a runtime.

    Raises:
        RuntimeUnavailableError, ProviderError: The runtime cannot run here.
    """
    runtime = make_runtime(latency.runtime)
    shapes = input_shapes or {}
    pair = [apply_input_shapes(m, shapes) for m in (ancestor, offspring)]
    check_batch_fits(pair[0], latency.batch)
    before, after = runtime.latencies(pair, latency.batch)
    return MeasuredLatency(runtime.name, latency.batch, before, after)


def synthesize_latency(
    model: onnx.ModelProto,
    speedup: float,
    latency: LatencySettings,
    config: EncodingConfig | None = None,
    seed: int = 0,
    input_shapes: InputShapes | None = None,
) -> PruneResult:
    """An offspring at least ``speedup`` times faster than ``model``, measured on a runtime.

    The genetic encoding samples it under a :class:`~evonnx.genetic.environments.LatencyBudget` of
    ``1 / speedup`` (latency predicted from the lookup table), then it is measured side by side
    with ``model`` and trimmed until the measurement is within budget.

    Args:
        model: The ancestor.
        speedup: Wanted measured speed-up (> 1).
        latency: Runtime, batch size and table settings.
        config: Encoding settings (its environment is replaced by the latency budget).
        seed: Seed of the ``numpy.random.Generator`` that samples the offspring.
        input_shapes: Static shapes for symbolic inputs (latency needs static shapes).

    Raises:
        ConfigError: ``speedup`` is not above 1.
        PlanError: The speed-up cannot be reached.
        RuntimeUnavailableError, ProviderError: The runtime cannot run here.
    """
    if not 1.0 < speedup < float("inf"):
        raise ConfigError(f"speedup {speedup} is not allowed: {SPEEDUP_RULE}")
    check_finite_weights(model)
    shaped = apply_input_shapes(model, input_shapes or {})
    check_inputs(shaped, latency.batch)
    graph, resolved = shaped_graph(shaped)
    analysis = analyze_graph(graph, resolved.hint())
    target = latency_target(shaped, analysis, latency)
    cfg = config or EncodingConfig(synapse_level=False)
    check_reachable(
        shaped, analysis, target, speedup, cfg.min_channels, min_fraction=cfg.min_fraction
    )
    off, fit = latency_offspring(
        shaped, analysis, cfg, target, 1.0 / speedup, np.random.default_rng(seed)
    )
    out, folds = apply_plan_report(model, analysis, fit.plan, off.masks)
    before = metrics_of_graph(graph, analysis)
    after = inspect(out, input_shapes, normalize=False).metrics
    measured = MeasuredLatency(
        target.runtime.name, latency.batch, fit.parent_ms, fit.child_ms, fit.predicted_ms,
        fit.budget_ms, speedup,
    )  # fmt: skip
    return PruneResult(out, fit.plan, before, after, off, measured, folds)


def evolve(
    model: onnx.ModelProto | str | Path,
    data: Task | Dataset | str | Path,
    out_dir: str | Path,
    config: EvolveConfig | None = None,
    resume: bool = False,
    progress: bool = False,
    input_shapes: InputShapes | None = None,
) -> Lineage:
    """Evolve ``model`` on ``data`` into ``out_dir``.

    ``data`` is a :class:`~evonnx.retrain.task.Task`, or a Dataset, a path or a built-in name for the
    built-in classification task. Symbolic input dimensions default to the data's sample
    shape; ``input_shapes`` overrides them (the batch dimension stays symbolic). See
    :func:`evonnx.evolution.loop.evolve`; returns the lineage of every finished generation.
    ``progress`` shows progress bars on a terminal and one line per generation on stderr.
    """
    from evonnx.evolution.loop import evolve as run_evolution  # imports torch

    dataset = data if isinstance(data, (Task, Dataset)) else load_dataset(data)
    if input_shapes:
        proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
        model = apply_input_shapes(proto, input_shapes, keep_batch=True)
    report = _print_generation if progress else None
    return run_evolution(
        model, dataset, out_dir, config or EvolveConfig(), resume, progress, report
    )


def _print_generation(record: GenerationRecord) -> None:
    """``progress=True``: one line per finished generation on stderr."""
    val = "" if record.val_accuracy is None else f", validation {record.val_accuracy:.4g}"
    print(
        f"evonnx: generation {record.generation}: test {record.accuracy:.4g}{val}, "
        f"A-E {record.ae:.2f}x, MACs {record.mac_ratio:.2f}x fewer",
        file=sys.stderr,
        flush=True,
    )
