"""Latency-budgeted offspring: the environment built for a parent, sampled, then measured."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from evonnx.errors import ConfigError, LatencyBudgetError
from evonnx.genetic.config import floor_ladder
from evonnx.genetic.environments import LatencyBudget
from evonnx.genetic.genome import encode, model_weights
from evonnx.genetic.sample import Offspring, sample
from evonnx.latency.census import group_census
from evonnx.latency.fit import MeasuredFit, fit_measured
from evonnx.latency.measure import compare, settled
from evonnx.latency.model import LatencyModel, build_latency_model
from evonnx.latency.table import LatencyTable
from evonnx.pruning.plan import PrunePlan, floor_channels
from evonnx.pruning.surgery import apply_plan
from evonnx.runtimes.registry import make_runtime

if TYPE_CHECKING:
    from evonnx.genetic.config import EncodingConfig
    from evonnx.latency.settings import LatencySettings
    from evonnx.pruning.groups import Analysis
    from evonnx.runtimes.base import Runtime

logger = logging.getLogger(__name__)


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
    """Sample an offspring under :class:`~evonnx.genetic.environments.LatencyBudget` and trim it
    until its measured latency is at most ``keep`` times its parent's (not below
    ``floor_ms``); the default per-layer floor (``config.min_fraction`` ``None``) is lowered
    where the budget needs it.

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
        off.masks, cfg.round_to, cfg.min_channels, min_fraction=cfg.floor,
        lower_floors=floor_ladder(cfg.min_fraction)[1:],
    )  # fmt: skip
    logger.info(
        "latency offspring: predicted %.4g ms, measured %.4g ms (parent %.4g ms), %d rounds",
        fit.predicted_ms, fit.child_ms, fit.parent_ms, fit.rounds,
    )  # fmt: skip
    return off, fit


def check_reachable(
    model: onnx.ModelProto,
    analysis: Analysis,
    target: Target,
    speedup: float,
    min_channels: int = 1,
    margin: float = 3.0,
    min_fraction: float | None = 0.0,
) -> float | None:
    """Refuse a speed-up past what the smallest offspring (every removable branch gone,
    every other group at its floor: ``min_channels``, at least ``min_fraction`` of its
    channels; or, when faster, at its narrowest latency step above the floor) gives; returns
    its measured speed-up (``None``: the prediction puts it past ``margin`` times ``speedup``,
    nothing was measured). ``min_fraction=None``: the default floor, and where it cannot reach
    ``speedup`` the lower ones of :func:`~evonnx.genetic.config.floor_ladder`.

    Raises:
        LatencyBudgetError: ``speedup`` is out of reach at the lowest floor allowed.
    """
    ladder = floor_ladder(min_fraction)
    reach: float | None = 0.0
    for fraction in ladder:
        reach = _smallest_speedup(model, analysis, target, speedup, min_channels, margin, fraction)
        if reach is None or reach >= speedup:
            if fraction != ladder[0]:
                logger.info("reachable with the per-layer floor lowered to %g", fraction)
            return reach
    assert reach is not None
    floor = (
        f"its floor, --min-channels {min_channels} and --min-fraction {ladder[-1]:g}"
        if len(ladder) == 1
        else f"--min-channels {min_channels}, the default floor {ladder[0]:g} lowered as far as "
        f"{ladder[-1]:g}"
    )
    lower = "" if ladder[-1] == 0.0 else " a lower --min-fraction,"
    raise LatencyBudgetError(
        f"a {speedup:g}x speed-up is out of reach on {target.runtime.name} at batch "
        f"{target.settings.batch}: removing every removable cluster (every channel group at "
        f"{floor}, every removable branch) measures {reach:.2f}x; ask for at most that,{lower} "
        "or a larger batch (less per-run overhead)"
    )


def _smallest_speedup(
    model: onnx.ModelProto,
    analysis: Analysis,
    target: Target,
    speedup: float,
    min_channels: int,
    margin: float,
    min_fraction: float,
) -> float | None:
    """Measured speed-up of the smallest offspring at one floor (see :func:`check_reachable`;
    ``None``: predicted past ``margin`` times ``speedup``)."""
    groups = analysis.prunable_groups
    lm = target.model
    floors = {g.id: floor_channels(g.size, min_channels, min_fraction) for g in groups}
    smallest = {g.id: 0 if g.removable else floors[g.id] for g in groups}
    stepped = {  # each group at its narrowest latency step above its floor: a narrower width
        g.id: 0  # off the runtime's blocked layout can be slower (onnxruntime's NCHWc)
        if g.removable
        else min((w for w in lm.widths(g.id) or () if w >= floors[g.id]), default=floors[g.id])
        for g in groups
    }
    full = lm.predict(group_census(analysis, {}))
    predicted = full / max(lm.predict(group_census(analysis, smallest)), 1e-12)
    if predicted >= margin * speedup:
        return None
    reach = 0.0
    batch = target.settings.batch
    for widths in [smallest] if stepped == smallest else [smallest, stepped]:
        plan = PrunePlan({gid: tuple(range(n)) for gid, n in widths.items()})
        offspring = apply_plan(model, analysis, plan)
        m = compare(target.runtime, model, offspring, batch)
        if m.speedup < speedup:  # a refusal rests on the median of several readings
            m = settled(target.runtime, model, offspring, batch, [m])
        reach = max(reach, m.speedup)
        if reach >= speedup:
            break
    logger.info(
        "smallest offspring at floor %g: %.2fx (predicted %.2fx)", min_fraction, reach, predicted
    )
    return reach
