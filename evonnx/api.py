"""Python API for deployment pipelines: load, inspect, prune, benchmark, export, evolve.

The ``evonnx`` command line is a thin layer over this module: each command turns its options
into arguments, calls one function here and prints the result.
"""

from __future__ import annotations

import gc
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import onnx

from evonnx.data.dataset import Dataset
from evonnx.data.formats import load_dataset
from evonnx.deploy.bench import BenchResult
from evonnx.deploy.bench import benchmark as benchmark_models
from evonnx.deploy.export import ExportResult
from evonnx.deploy.export import export as export_model
from evonnx.errors import ConfigError, DeployError, PlanError, require
from evonnx.evolution.lineage import GenerationRecord, Lineage
from evonnx.evolution.settings import EvolveConfig
from evonnx.evolution.validate import (
    check_finite_weights,
    check_round_to,
    zero_layers,
    zero_layers_text,
)
from evonnx.genetic.config import EncodingConfig, floor_fraction
from evonnx.genetic.environments import MacBudget, SynapseBudget
from evonnx.genetic.sample import Offspring
from evonnx.genetic.sample import synthesize as sample_offspring
from evonnx.latency.budget import check_reachable, latency_offspring, latency_target
from evonnx.latency.inputs import check_inputs
from evonnx.latency.settings import SPEEDUP_RULE, LatencySettings
from evonnx.model.external import EXTERNAL_THRESHOLD, needs_external
from evonnx.model.files import keeps_external_data, load_model, save_model
from evonnx.model.graph import constant_values
from evonnx.model.inputs import InputShapes, apply_input_shapes
from evonnx.model.memory import check_batch_fits
from evonnx.model.normalize import NormalizeReport
from evonnx.model.normalize import normalize as normalize_model
from evonnx.model.outputs import require_same_outputs
from evonnx.model.shapes import require_runs, shaped_graph
from evonnx.pruning.analysis.driver import analyze_graph
from evonnx.pruning.fold import FoldPlan
from evonnx.pruning.groups import Analysis
from evonnx.pruning.importance import deviation_strength, reader_deviation, synthetic_inputs
from evonnx.pruning.metrics import (
    Efficiency,
    LayerShrink,
    ModelMetrics,
    efficiency,
    metrics_of_graph,
    shrunk_layers,
)
from evonnx.pruning.plan import PrunePlan, branch_plan, magnitude_plan
from evonnx.pruning.surgery import apply_plan_report
from evonnx.retrain.task import Task
from evonnx.runtimes.registry import make_runtime

logger = logging.getLogger(__name__)

__all__ = [
    "BenchResult",
    "EvolveConfig",
    "ExportResult",
    "GeneticOptions",
    "InspectReport",
    "Lineage",
    "MeasuredLatency",
    "PruneResult",
    "benchmark",
    "evolve",
    "export",
    "inspect",
    "load",
    "measure",
    "prune",
    "save",
    "synthesize",
    "synthesize_latency",
]

ModelSource: TypeAlias = onnx.ModelProto | str | Path
"""A model, or the ONNX file it is read from."""


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
    model: ModelSource,
    input_shapes: InputShapes | None = None,
    normalize: bool = True,
) -> InspectReport:
    """Analyse ``model`` (a ModelProto or a path).

    Args:
        model: The model or its file.
        input_shapes: Static shapes for symbolic graph inputs (``{"images": (1, 3, 640, 640)}``).
        normalize: Normalize exporter quirks first (reported in the result).
    """
    proto = _read(model, normalize=False)
    report = None
    if normalize:
        proto, report = normalize_model(proto, input_shapes=input_shapes)
    graph, resolved = shaped_graph(proto, input_shapes)
    analysis = analyze_graph(graph, resolved.hint())
    return InspectReport(analysis, metrics_of_graph(graph, analysis), report)


NO_BRANCH = (
    "no branch whose only exit is a layer feeding an Add with a full-shape operand "
    "(a symbolic input shape can hide one: give --input-shape)"
)
"""Why a graph has no removable branch (``evonnx inspect``; ``depth=True`` is refused)."""


def _read(model: ModelSource, normalize: bool = True) -> onnx.ModelProto:
    """``model`` itself, or the model loaded from its file (see :func:`load`)."""
    return model if isinstance(model, onnx.ModelProto) else load_model(model, normalize=normalize)


def _external(model: ModelSource) -> bool | None:
    """How a copy of ``model`` is written: with a ``.data`` file where its file has one
    (:func:`~evonnx.model.files.keeps_external_data`), else as its size decides."""
    return None if isinstance(model, onnx.ModelProto) else keeps_external_data(model)


@dataclass(frozen=True)
class MeasuredLatency:
    """Ancestor and offspring latency measured side by side on one runtime (ms).

    Attributes:
        runtime: The runtime measured on.
        batch: Batch size measured.
        before_ms, after_ms: Latency of the ancestor and of the offspring.
        predicted_ms: Offspring latency the lookup table predicted (latency budgets only).
        budget_ms: Latency the offspring was allowed (latency budgets only).
        target_speedup: Speed-up asked for (latency budgets only).
        min_fraction: The per-layer floor in force at the end (latency budgets only; lower
            than the one asked for where the speed-up needed it).
    """

    runtime: str
    batch: int
    before_ms: float
    after_ms: float
    predicted_ms: float | None = None
    budget_ms: float | None = None
    target_speedup: float | None = None
    min_fraction: float | None = None

    @property
    def speedup(self) -> float:
        """Ancestor latency over offspring latency."""
        return self.before_ms / self.after_ms if self.after_ms > 0 else float("inf")

    @property
    def prediction_error(self) -> float | None:
        """Relative error of the predicted offspring latency (``None``: nothing predicted)."""
        if self.predicted_ms is None or self.after_ms <= 0:
            return None
        return abs(self.predicted_ms - self.after_ms) / self.after_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (with the speed-up and the prediction error)."""
        return {
            "runtime": self.runtime,
            "batch": self.batch,
            "ms": [self.before_ms, self.after_ms],
            "speedup": self.speedup,
            "predicted_ms": self.predicted_ms,
            "target_speedup": self.target_speedup,
            "min_fraction": self.min_fraction,
            "budget_ms": self.budget_ms,
            "prediction_error": self.prediction_error,
        }


@dataclass(frozen=True)
class PruneResult:
    """An offspring and the plan that made it (with its measured latency when asked).

    Attributes:
        model: The offspring.
        plan: Channels each pruned group keeps.
        before, after: Metrics of the ancestor and of the offspring.
        offspring: The sampled offspring (genetic encoding only).
        latency: Latency measured side by side (when a runtime was given).
        folds: The removed channels' constants folded into their readers.
    """

    model: onnx.ModelProto
    plan: PrunePlan
    before: ModelMetrics
    after: ModelMetrics
    offspring: Offspring | None = None
    latency: MeasuredLatency | None = None
    folds: FoldPlan | None = None

    @property
    def efficiency(self) -> Efficiency:
        """A-E, C-E, MAC and parameter ratios of the ancestor over the offspring."""
        return efficiency(self.before, self.after)

    @property
    def shrunk(self) -> tuple[LayerShrink, ...]:
        """The three layers that kept the smallest fraction of their live filters."""
        return shrunk_layers(self.before, self.after)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: sizes before and after, efficiencies, what was removed and
        zeroed, the layers that shrank most, latency and folds."""
        b, a, eff = self.before, self.after, self.efficiency
        known = b.macs_known and a.macs_known
        return {
            "params": [b.params, a.params],
            "synapses": [b.nonzero_synapses, a.nonzero_synapses],
            "clusters": [b.live_clusters, a.live_clusters],
            "macs": [b.macs, a.macs] if known else None,
            "mac_ratio": eff.macs if a.macs and known else None,
            "ae": eff.architectural if a.nonzero_synapses else None,
            "ce": eff.cluster if a.live_clusters else None,
            "groups_pruned": len(self.plan.keep),
            "removed": {"params": b.params - a.params, "macs": b.macs - a.macs if known else None},
            "zeroed": {"synapses": _zeros(a) - _zeros(b)},
            "shrunk_most": [
                {"layer": c.node, "filters": [c.before, c.after], "kept": c.kept}
                for c in self.shrunk
            ],
            "latency": self.latency.to_dict() if self.latency is not None else None,
            "folds": self.folds.summary() if self.folds is not None else None,
        }


def _zeros(m: ModelMetrics) -> int:
    """Zero weights inside the conv/FC weights that are present."""
    return m.synapses - m.nonzero_synapses


PruneMethod = Literal["genetic", "magnitude", "branches"]
PRUNE_METHODS: tuple[PruneMethod, ...] = ("genetic", "magnitude", "branches")
"""How :func:`prune` chooses what to remove. ``"genetic"``: an offspring sampled from the
cluster-driven encoding (:class:`GeneticOptions`); ``"magnitude"``: the strongest channels of
every group stay (deterministic baseline); ``"branches"``: the weakest whole residual branches
go until at most ``keep`` of the MACs remain (``round_to`` is refused there, ``min_channels``
and ``min_fraction`` do not apply: a branch goes whole)."""

CRITERIA = ("deviation", "l1")
"""Channel rankings of ``prune(method="magnitude")``. ``"deviation"``: how far a channel's
values are from the constant it is folded to, weighted by its readers' weights, on seeded
synthetic inputs (:mod:`evonnx.pruning.importance`; L1 where the ancestor cannot be run on
them); ``"l1"``: the L1 norm of its producer filters."""


@dataclass(frozen=True)
class GeneticOptions:
    """Settings of ``prune(method="genetic")``: how the genetic encoding samples the offspring.

    Attributes:
        seed: Seed of the ``numpy.random.Generator`` that samples the offspring.
        env: What ``keep`` budgets: ``"synapses"`` or ``"macs"``; ``"latency"``: the
            offspring is measured on a runtime and reaches ``speedup`` instead.
        speedup: Measured speed-up over the ancestor to reach (with ``env="latency"`` only,
            which needs it).
        cluster: Synaptic cluster: ``"filter"`` (output filter) or ``"kernel"`` (k×k slice).
        cluster_keep: Expected fraction of clusters kept (``None``: one shared factor).
        synapses: Also zero synapses inside surviving filters (default: clusters only, the
            graph just shrinks).
        depth: Removable residual branches are clusters too; ``None``: on with
            ``env="latency"`` where the graph has any; ``True`` on a graph without one is
            refused.
        frozen_synapses: With ``synapses``: zero synapses of frozen layers too.
    """

    seed: int = 0
    env: Literal["synapses", "macs", "latency"] = "synapses"
    speedup: float | None = None
    cluster: Literal["filter", "kernel"] = "filter"
    cluster_keep: float | None = None
    synapses: bool = False
    depth: bool | None = None
    frozen_synapses: bool = False

    def __post_init__(self) -> None:
        env, speedup = self.env, self.speedup
        require(
            [
                (self.seed >= 0, "seed must be >= 0"),
                (env in ("synapses", "macs", "latency"), "env must be synapses, macs or latency"),
                (self.cluster in ("filter", "kernel"), "cluster must be 'filter' or 'kernel'"),
                (speedup is not None or env != "latency", "env='latency' needs a speedup"),
                (speedup is None or env == "latency", "speedup needs env='latency'"),
                (self.cluster_keep is None or env != "macs", "cluster_keep needs --env synapses"),
                (self.synapses or not self.frozen_synapses, "frozen_synapses needs synapses=True"),
            ]
        )


def prune(
    model: ModelSource,
    keep: float,
    min_channels: int = 1,
    branches: bool = False,
    input_shapes: InputShapes | None = None,
    round_to: int | None = None,
    min_fraction: float | None = None,
    criterion: str = "deviation",
    *,
    method: PruneMethod = "magnitude",
    genetic: GeneticOptions | None = None,
    latency: LatencySettings | None = None,
    output: str | Path | None = None,
    normalize: bool = True,
) -> PruneResult:
    """Prune ``model``: the weakest channels or residual branches, or a sampled offspring.

    Args:
        model: The ancestor, or its file (loaded as :func:`load` does).
        keep: Fraction of channels each group keeps (``"magnitude"``), of MACs kept at most
            (``"branches"``), or the synapse or MAC budget (``"genetic"``), in (0, 1].
        min_channels: Channels every group keeps at least.
        branches: ``method="branches"`` (for older callers).
        input_shapes: Static shapes for symbolic inputs, for MACs only (not written to it).
        round_to: Round channel counts up to multiples of this.
        min_fraction: Floor: every channel group keeps at least this fraction of its channels
            (``None``: 0.25, which a latency budget lowers only as far as its speed-up needs).
        criterion: How ``"magnitude"`` ranks channels: one of :data:`CRITERIA`.
        method: What is removed: one of :data:`PRUNE_METHODS`.
        genetic: Settings of ``"genetic"`` (default :class:`GeneticOptions`).
        latency: Measure the ancestor and the offspring side by side there (with
            ``genetic.env="latency"``: reach ``genetic.speedup`` there; default ``ort-cpu``).
        output: Write the offspring there (with a ``.data`` file where ``model``'s file has
            one), refusing one that removed nothing, emptied a layer or changed the outputs.
        normalize: Normalize exporter quirks when ``model`` is a file.

    Raises:
        ConfigError: An unknown method or criterion, or an option the method cannot use.
        PlanError: ``keep`` below the floor; with ``output``: nothing pruned, a layer emptied.
        OutputMismatchError: With ``output``: the offspring's output names or shapes differ.
    """
    method = _prune_method(method, branches, genetic)
    ancestor, external = _read(model, normalize), _external(model)
    if method == "genetic":
        options = genetic or GeneticOptions()
        result = _prune_genetic(
            ancestor, keep, min_channels, round_to, min_fraction, options, latency, input_shapes
        )
    else:
        result = _prune_channels(
            ancestor, keep, min_channels, method == "branches", input_shapes, round_to,
            floor_fraction(min_fraction), criterion,
        )  # fmt: skip
    if latency is not None and result.latency is None:
        result = replace(result, latency=measure(ancestor, result.model, latency, input_shapes))
    if output is not None:
        sparse = genetic is not None and genetic.synapses
        _write_checked(ancestor, result, output, method, keep, sparse, input_shapes, external)
    return result


def _prune_method(
    method: PruneMethod, branches: bool, genetic: GeneticOptions | None
) -> PruneMethod:
    """The method :func:`prune` runs (``branches=True``: ``"branches"``).

    Raises:
        ConfigError: An unknown method, ``branches`` or ``genetic`` with another method.
    """
    if method not in PRUNE_METHODS:
        raise ConfigError(f"method must be one of {list(PRUNE_METHODS)}, got {method!r}")
    if branches and method == "genetic":
        raise ConfigError("branches=True is method='branches', not method='genetic'")
    if genetic is not None and method != "genetic":
        raise ConfigError(f"genetic options need method='genetic', not {method!r}")
    return "branches" if branches else method


def _prune_channels(
    model: onnx.ModelProto,
    keep: float,
    min_channels: int,
    branches: bool,
    input_shapes: InputShapes | None,
    round_to: int | None,
    min_fraction: float,
    criterion: str,
) -> PruneResult:
    """``method="magnitude"`` or ``"branches"`` (see :func:`prune`)."""
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


def _prune_genetic(
    model: onnx.ModelProto,
    keep: float,
    min_channels: int,
    round_to: int | None,
    min_fraction: float | None,
    options: GeneticOptions,
    latency: LatencySettings | None,
    input_shapes: InputShapes | None,
) -> PruneResult:
    """``method="genetic"`` (see :func:`prune`)."""
    encoding = EncodingConfig(
        keep=keep,
        environment=MacBudget(keep) if options.env == "macs" else SynapseBudget(keep),
        cluster_mode=options.cluster,
        round_to=round_to,
        min_channels=min_channels,
        min_fraction=min_fraction,
        cluster_keep=options.cluster_keep,
        synapse_level=options.synapses,
        depth=_depth(model, input_shapes, options.depth, options.env == "latency"),
        frozen_synapses=options.frozen_synapses,
    )
    if options.speedup is not None:
        return synthesize_latency(
            model, options.speedup, latency or LatencySettings(), encoding, options.seed,
            input_shapes,
        )  # fmt: skip
    return synthesize(model, encoding, options.seed, input_shapes)


def _depth(
    model: onnx.ModelProto, input_shapes: InputShapes | None, asked: bool | None, latency: bool
) -> bool:
    """Whether depth clusters are on: as asked (``True`` refused on a graph without a
    removable branch), else with the latency environment.

    Raises:
        ConfigError: ``depth=True`` on a graph without a removable branch.
    """
    if asked is False or (asked is None and not latency):
        return False
    analysis = inspect(model, input_shapes, normalize=False).analysis
    if any(g.removable for g in analysis.groups):
        return True
    if asked:
        raise ConfigError(f"--depth has no effect: this graph has {NO_BRANCH}")
    return False


def _write_checked(
    ancestor: onnx.ModelProto,
    result: PruneResult,
    output: str | Path,
    method: str,
    keep: float,
    sparse: bool,
    input_shapes: InputShapes | None,
    external: bool | None,
) -> None:
    """Write ``result``'s offspring to ``output`` unless :func:`_check_pruned` refuses it or
    it changed the names or shapes of ``ancestor``'s outputs."""
    _check_pruned(result, method, keep, sparse)
    # values change by design; names and shapes of the outputs must not
    require_same_outputs(ancestor, result.model, "pruning", input_shapes, values=False)
    save_model(result.model, output, external_data=external)


def _check_pruned(result: PruneResult, method: str, keep: float, sparse: bool) -> None:
    """Refuse an offspring with a layer without any weight, or with nothing removed.

    Nothing is removed when params and MACs are unchanged (and, when ``sparse`` synapses
    inside kept clusters count, no synapse was zeroed either).

    Raises:
        PlanError: The ancestor or the offspring has a layer without weights, or nothing
            was removed.
    """
    b, a = result.before, result.after
    zero = zero_layers(b)
    if zero:
        raise PlanError(
            f"{zero_layers_text(zero)} in the input model: it computes a constant from there "
            "on, whatever is pruned; give a model whose layers have weights"
        )
    dead = [m.node for m in a.layers if m.nonzero_synapses == 0]
    if dead:
        raise PlanError(
            f"--keep {keep:g} zeroes every weight of {', '.join(dead[:4])}"
            f"{', ...' if len(dead) > 4 else ''}: the offspring would compute a constant; "
            "raise --keep"
        )
    same = (a.params, a.macs) == (b.params, b.macs)
    if same and (not sparse or a.nonzero_synapses == b.nonzero_synapses):
        why = {
            "branches": "no residual branch can be removed (see `evonnx inspect`)",
            "magnitude": "every channel group is frozen (see `evonnx inspect`) or --keep is 1",
        }.get(method, "no cluster died; lower --keep (frozen groups: see `evonnx inspect`)")
        raise PlanError(f"nothing was pruned: {why}; no file written")


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
        fit.budget_ms, speedup, fit.min_fraction,
    )  # fmt: skip
    return PruneResult(out, fit.plan, before, after, off, measured, folds)


def benchmark(
    models: Sequence[ModelSource],
    batches: Sequence[int] = (1,),
    provider: str = "cpu",
    threads: int = 0,
    warmup: int = 10,
    runs: int = 50,
    input_shapes: InputShapes | None = None,
    names: Sequence[str] | None = None,
) -> BenchResult:
    """Interleaved onnxruntime latency of ``models`` against their MACs.

    Files are measured as written (no load-time normalization).

    Args:
        models: Two or more models or files; the first is the reference (the ancestor).
        batches: Batch sizes to measure.
        provider: onnxruntime execution provider (``cpu``, ``cuda`` or ``tensorrt``); an
            unavailable one is an error, never CPU.
        threads: Intra-op threads (0: onnxruntime's default).
        warmup: Untimed rounds per batch size.
        runs: Timed, interleaved rounds per batch size.
        input_shapes: Static shapes of symbolic inputs; ``batches`` sets the batch dimension.
        names: Labels (default: the file names, made unique; ``model<i>`` for a ModelProto).

    Raises:
        DeployError: Fewer than two models, bad sizes, a model that cannot be re-batched or run.
        ConfigError: onnxruntime cannot run a model at ``input_shapes``.
        ProviderError: The provider is not available.
    """
    if len(models) < 2:
        raise DeployError("bench needs at least two models (the ancestor first)")
    shapes = input_shapes or {}
    protos = [_read(m, normalize=False) for m in models]
    protos = [apply_input_shapes(proto, shapes, keep_batch=True) for proto in protos]
    for proto in protos:
        require_runs(proto, shapes, min(batches, default=1))
    return benchmark_models(
        protos, names if names is not None else _model_names(models), batches=batches,
        provider=provider, threads=threads, warmup=warmup, runs=runs,
    )  # fmt: skip


def _model_names(models: Sequence[ModelSource]) -> list[str]:
    """Labels of ``models``: their file names, else (two alike) their paths, each numbered
    where the name is shared; ``model<i>`` for a ModelProto."""
    paths = [None if isinstance(m, onnx.ModelProto) else Path(m) for m in models]
    names = [f"model{i}" if p is None else p.name for i, p in enumerate(paths)]
    if len(set(names)) == len(names):
        return names
    return [
        name if p is None else str(p) if names.count(name) == 1 else f"{i}:{p}"
        for i, (name, p) in enumerate(zip(names, paths, strict=True))
    ]


def export(
    model: ModelSource,
    target: str = "onnxruntime",
    fp16: bool = False,
    batch: int | None = None,
    opset: int | None = None,
    input_shapes: InputShapes | None = None,
    output: str | Path | None = None,
    normalize: bool = True,
) -> ExportResult:
    """A deployment-ready copy of ``model``: folded, simplified, optionally fp16 and fixed batch.

    The export's outputs are checked against ``model``'s on onnxruntime; a difference is
    refused (see :func:`evonnx.deploy.export.export`).

    Args:
        model: The model, or its file.
        target: ``onnxruntime`` or ``tensorrt``.
        fp16: fp16 weights and activations, fp32 inputs and outputs.
        batch: Fix the batch size to this (``None``: keep the model's).
        opset: Convert to this opset (``None``: only where the target needs it).
        input_shapes: Static shapes of symbolic inputs besides the batch (which ``batch``
            fixes).
        output: Write the export there (with a ``.data`` file where ``model``'s file has one).
        normalize: Normalize exporter quirks when ``model`` is a file.

    Raises:
        DeployError, RebatchError, OutputMismatchError: See :func:`evonnx.deploy.export.export`.
        ConfigError: onnxruntime cannot run the model at ``input_shapes``.
    """
    shapes = input_shapes or {}
    proto = apply_input_shapes(_read(model, normalize), shapes, keep_batch=True)
    require_runs(proto, shapes, batch or 1)
    external = _external(model)  # read now: the copy is gone before export peaks
    result = export_model(
        proto, target=target, fp16=fp16, batch=batch, opset=opset, input_shapes=shapes
    )
    if output is not None:
        save_model(result.model, output, external_data=external)
    return result


def evolve(
    model: ModelSource,
    data: Task | Dataset | str | Path,
    out_dir: str | Path,
    config: EvolveConfig | None = None,
    resume: bool = False,
    progress: bool = False,
    input_shapes: InputShapes | None = None,
) -> Lineage:
    """Evolve ``model`` on ``data`` into ``out_dir``.

    ``data`` is a :class:`~evonnx.retrain.task.Task`, or a Dataset, a path or a built-in name for
    the built-in classification task. Symbolic input dimensions default to the data's sample
    shape; ``input_shapes`` overrides them (the batch dimension stays symbolic). See
    :func:`evonnx.evolution.loop.evolve`; returns the lineage of every finished generation.
    ``progress`` shows progress bars on a terminal and one line per generation on stderr.
    """
    from evonnx.evolution.loop import evolve as run_evolution  # imports torch

    dataset = data if isinstance(data, (Task, Dataset)) else load_dataset(data)
    if input_shapes:
        model = apply_input_shapes(_read(model), input_shapes, keep_batch=True)
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
