"""Latency-budgeted offspring: the environment built for a parent, sampled, then measured."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from evonnx.environments import LatencyBudget
from evonnx.errors import ConfigError
from evonnx.genetic import EncodingConfig, Offspring, encode, model_weights, sample
from evonnx.groups import Analysis
from evonnx.latency.fit import MeasuredFit, fit_measured
from evonnx.latency.model import LatencyModel, build_latency_model
from evonnx.latency.table import LatencyTable
from evonnx.runtimes import Runtime, RuntimeSettings, make_runtime

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencySettings:
    """Where and how latency is measured.

    Attributes:
        runtime: The runtime and its measurement settings.
        batch: Batch size measured.
        step: Width step of the table's grid (``None``: the runtime's default).
        snap: Snap channel counts to the widths where latency drops.
        table: Latency table file (``None``: one per runtime and device in the cache dir).
    """

    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    batch: int = 1
    step: int | None = None
    snap: bool = True
    table: Path | None = None

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"batch must be at least 1, got {self.batch}")
        if self.step is not None and self.step < 1:
            raise ConfigError(f"step must be at least 1, got {self.step}")


@dataclass(frozen=True)
class Target:
    """A measured runtime and the latency model of one parent on it."""

    runtime: Runtime
    model: LatencyModel
    settings: LatencySettings


def latency_target(
    model: onnx.ModelProto,
    analysis: Analysis,
    settings: LatencySettings,
    runtime: Runtime | None = None,
) -> Target:
    """Build (or reuse) the runtime and fit ``model``'s latency model from the table.

    Raises:
        RuntimeUnavailableError, ProviderError: The runtime cannot run here.
    """
    rt = runtime or make_runtime(settings.runtime)
    table = LatencyTable(rt, settings.batch, settings.table)
    return Target(rt, build_latency_model(model, analysis, table, settings.step), settings)


def latency_offspring(
    model: onnx.ModelProto,
    analysis: Analysis,
    config: EncodingConfig,
    target: Target,
    keep: float,
    rng: np.random.Generator,
    floor_ms: float | None = None,
) -> tuple[Offspring, MeasuredFit]:
    """Sample an offspring under :class:`~evonnx.environments.LatencyBudget` and trim it
    until its measured latency is at most ``keep`` times its parent's (not below
    ``floor_ms``).

    Raises:
        ConfigError: ``config`` asks for something a latency budget cannot do.
        PlanError: The budget cannot be met.
    """
    if config.cluster_keep is not None:
        raise ConfigError("cluster_keep needs a synapse budget; a latency budget removes clusters")
    env = LatencyBudget(target.model, keep, floor_ms, target.settings.snap)
    cfg = replace(config, environment=env)
    weights = model_weights(model, {lay.weight for lay in analysis.layers})
    off = sample(encode(analysis, weights, cfg), rng)
    fit = fit_measured(
        model, analysis, off.plan, weights, target.runtime, target.model, keep, floor_ms,
        off.masks, cfg.round_to, cfg.min_channels, min_fraction=cfg.min_fraction,
    )  # fmt: skip
    logger.info(
        "latency offspring: predicted %.4g ms, measured %.4g ms (parent %.4g ms), %d rounds",
        fit.predicted_ms, fit.child_ms, fit.parent_ms, fit.rounds,
    )  # fmt: skip
    return off, fit
