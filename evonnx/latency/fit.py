"""Measured end to end: bring an offspring within budget and near its target.

The genetic encoding samples an offspring whose *expected* predicted latency meets the budget.
:func:`fit_measured` steps its channel counts (:mod:`~evonnx.latency.steps`): down, least
strength per predicted latency saved first (latency steps, then finer widths when the steps are
exhausted), or up again, most strength per predicted latency added first, when it overshoots.
First until its predicted latency is near the budget; then it builds the offspring and measures
it side by side with its parent (:func:`~evonnx.latency.measure.compare`: interleaved rounds, a
robust statistic, a stability check) and, while it is over budget, takes steps until the
predicted saving covers most of the measured excess and measures again; while it is faster
than ``overshoot`` times its target speed-up it gives channels back (an over-pruned offspring
throws score away). An offspring within budget is measured once more, and accepted only if
that run agrees: within budget, and not so fast that the two readings together put it past
``overshoot`` times the target (then it gets channels back too). Each measurement
recalibrates the predictor (:meth:`~evonnx.latency.model.LatencyModel.recalibrated`) after
the offspring's prediction was recorded, so the reported prediction is always out of sample.
The budget is never exceeded: when every group is at its floor and no branch is left, the
floor goes down to the next of ``lower_floors`` where there is one (the default floor,
lowered only as far as the budget needs), else :class:`~evonnx.errors.LatencyBudgetError`
says what was reached.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import onnx

from evonnx.errors import LatencyBudgetError, PlanError
from evonnx.latency.census import group_census
from evonnx.latency.measure import Comparison, compare, settled
from evonnx.latency.steps import Widths, grow, trim
from evonnx.pruning.plan import PrunePlan, channel_strength, floor_channels
from evonnx.pruning.surgery import apply_plan

if TYPE_CHECKING:
    from evonnx.latency.model import LatencyModel
    from evonnx.pruning.groups import Analysis, ChannelGroup
    from evonnx.runtimes.base import Runtime

logger = logging.getLogger(__name__)

OVERSHOOT = 1.10
"""An offspring measured faster than this times its target speed-up gets channels back
(the goal is at most 1.25 in an independent measurement; at 1.15, offspring fitted on a
shared 2-core machine read up to 1.33 there)."""
MAX_STEP = 0.3
"""Most of the predicted latency one measurement may trim (a reading can be wrong)."""
AIM = 1.04
"""Steps aim at this times the target speed-up (a little past it: the measurement is noisy)."""


@dataclass(frozen=True)
class MeasuredFit:
    """An offspring whose measured latency is within budget.

    Attributes:
        model: The offspring.
        plan: Its plan (the sampled one, possibly trimmed or grown).
        parent_ms: The parent's latency, measured side by side with the final offspring.
        child_ms: The offspring's measured latency.
        predicted_ms: The offspring's latency predicted before it was measured (by the model
            recalibrated on every earlier measurement), as a fraction of the parent's reference
            latency times the parent's latency measured side by side with the offspring.
        budget_ms: ``keep * parent_ms`` (or the floor).
        rounds: Measurement rounds (1: the sampled offspring already fit); each round within
            budget is confirmed by a second run.
        trimmed: Steps down (a group to a smaller width, or a branch removed) from the
            sampled offspring.
        grown: Steps up (the offspring overshot).
        min_fraction: The per-layer floor in force at the end (lowered from the one asked
            for where the budget needed it).
    """

    model: onnx.ModelProto
    plan: PrunePlan
    parent_ms: float
    child_ms: float
    predicted_ms: float
    budget_ms: float
    rounds: int
    trimmed: int
    grown: int = 0
    min_fraction: float = 0.0

    @property
    def speedup(self) -> float:
        """Parent latency over offspring latency (measured)."""
        return self.parent_ms / self.child_ms if self.child_ms > 0 else float("inf")


def fit_measured(
    parent: onnx.ModelProto,
    analysis: Analysis,
    plan: PrunePlan,
    weights: Mapping[str, np.ndarray],
    runtime: Runtime,
    lm: LatencyModel,
    keep: float,
    floor_ms: float | None = None,
    masks: Mapping[str, np.ndarray] | None = None,
    round_to: int | None = None,
    min_channels: int = 1,
    max_rounds: int = 10,
    min_fraction: float = 0.0,
    lower_floors: Sequence[float] = (),
    strength: Mapping[int, np.ndarray] | None = None,
) -> MeasuredFit:
    """Step ``plan`` until the offspring's measured latency is at most ``keep`` times the
    parent's (not below ``floor_ms``) and not far below it.

    Args:
        parent: The parent model.
        analysis: ``analyze(parent)``.
        plan: The sampled offspring's plan.
        weights: The parent's weights (channel strengths).
        runtime: Measures parent and offspring, side by side.
        lm: The parent's latency model (prediction, latency steps).
        keep: Budget as a fraction of the parent's measured latency.
        floor_ms: Lowest budget in ms (the ancestor's latency over a target speed-up).
        masks: Synapse masks of the offspring (kept as they are).
        round_to: Channel counts multiples of this.
        min_channels: Fewest channels a group keeps (a removable branch may still go).
        max_rounds: Most measurements (one more for each lowering of the floor).
        min_fraction: Floor per channel group: a group keeps at least this fraction of its channels
            (a removable branch may still go).
        lower_floors: Floors to lower ``min_fraction`` to, in order, when every group is at
            its floor and the offspring is still over budget (each lowering is logged as a
            warning; empty: the floor holds).
        strength: Per group id, each channel's strength, what the steps rank channels and
            groups by (default, and for a group not in it:
            :func:`~evonnx.pruning.plan.channel_strength`, the L1 norm of its filters; e.g.
            :func:`~evonnx.pruning.importance.deviation_strength`).

    Raises:
        LatencyBudgetError: Every group is at its lowest floor, no branch is left, and the
            offspring is still over budget.
    """
    floor = _Floor(min_fraction, list(lower_floors))
    w = _widths(analysis, plan, weights, lm, round_to, min_channels, floor, strength)
    full = lm.predict(group_census(analysis, {}))
    lowest = full * floor_ms / lm.measured_ms if floor_ms is not None else 0.0
    trimmed = grown = 0
    try:  # predicted first: near the budget before measuring (the measurement decides)
        trimmed, grown = _steer(w, w.predict(), max(keep * full, lowest) / AIM)
    except PlanError:
        logger.info("predicted over the budget with nothing left to remove")
    setup = _FitSetup(parent, analysis, runtime, keep, floor_ms, masks, min_channels, max_rounds)
    return _measured_rounds(setup, w, trimmed, grown, floor)


@dataclass
class _Floor:
    """The per-layer floor in force while fitting, and the lower ones it may go to."""

    fraction: float
    lower: list[float] = field(default_factory=list)
    lowerings: int = 0

    def least(self, groups: Mapping[int, ChannelGroup], min_channels: int) -> dict[int, int]:
        """Fewest channels each of ``groups`` keeps at this floor."""
        f = self.fraction
        return {gid: floor_channels(g.size, min_channels, f) for gid, g in groups.items()}

    def lowered(self, w: Widths) -> bool:
        """Lower ``w``'s floors to the next fraction; ``False``: none is left."""
        if not self.lower:
            return False
        was, self.fraction = self.fraction, self.lower.pop(0)
        self.lowerings += 1
        w.least = self.least(w.groups, w.min_channels)
        logger.warning(
            "every channel group is at the per-layer floor %g and the offspring is over its "
            "latency budget: lowering the floor to %g (give --min-fraction to hold one)",
            was, self.fraction,
        )  # fmt: skip
        return True


@dataclass(frozen=True)
class _FitSetup:
    """What stays fixed while an offspring is measured and stepped."""

    parent: onnx.ModelProto
    analysis: Analysis
    runtime: Runtime
    keep: float
    floor_ms: float | None
    masks: Mapping[str, np.ndarray] | None
    min_channels: int
    max_rounds: int

    def budget(self, parent_ms: float) -> float:
        """The budget (ms) against a parent measured at ``parent_ms``."""
        return max(self.keep * parent_ms, self.floor_ms or 0.0)


@dataclass(frozen=True)
class _Round:
    """One measurement of an offspring side by side with its parent.

    Attributes:
        plan: The offspring's plan.
        offspring: The offspring.
        ratio: Its predicted latency before the measurement, over the parent's reference.
        m: The measurement.
        budget: The budget (ms) against the parent measured beside it.
        now: Its predicted latency (ms) by the model recalibrated on the measurement.
    """

    plan: PrunePlan
    offspring: onnx.ModelProto
    ratio: float
    m: Comparison
    budget: float
    now: float

    def want(self, ratio: float | None = None) -> float:
        """Predicted ms to aim at, for an offspring whose latency over its budget is ``ratio``
        (default: this reading's)."""
        ratio = self.m.child_ms / self.budget if ratio is None else ratio
        return self.now / (AIM * max(ratio, 1e-12))


def _widths(
    analysis: Analysis,
    plan: PrunePlan,
    weights: Mapping[str, np.ndarray],
    lm: LatencyModel,
    round_to: int | None,
    min_channels: int,
    floor: _Floor,
    strength: Mapping[int, np.ndarray] | None = None,
) -> Widths:
    """The prunable groups' channels that ``plan`` keeps, ready to step, at ``floor``, ranked
    by ``strength`` (default: L1)."""
    prunable = {g.id: g for g in analysis.prunable_groups}
    given = strength or {}
    return Widths(
        analysis, prunable, {gid: plan.kept(g) for gid, g in prunable.items()},
        {
            gid: np.asarray(given[gid], np.float64) if gid in given
            else channel_strength(g, weights)
            for gid, g in prunable.items()
        },
        lm, round_to, min_channels, floor.least(prunable, min_channels),
    )  # fmt: skip


def _measured_rounds(
    setup: _FitSetup, w: Widths, trimmed: int, grown: int, floor: _Floor
) -> MeasuredFit:
    """Measure the offspring and step it (down, or up when it overshoots) until a measurement
    within budget is confirmed; ``trimmed`` and ``grown`` count the steps taken before; at
    ``floor``, lowered where it must be.

    Raises:
        LatencyBudgetError: Nothing is left to remove, or no measurement fit the budget.
    """
    spare: MeasuredFit | None = None  # within budget but overshooting: better than nothing
    rounds = 0
    while rounds < (last := setup.max_rounds + floor.lowerings):  # a lowering costs a round
        rounds += 1
        r = _measure(setup, w, rounds)
        m, budget = r.m, r.budget
        if m.child_ms * OVERSHOOT < budget:  # far past the target: give channels back
            spare = _least_overshoot(spare, r, rounds, trimmed, grown)
            if rounds < last and (added := _give_back(w, r)):
                grown += added
                continue
        if m.child_ms <= budget:
            fit, m = _confirm(setup, r, w.lm.batch)
            if fit is not None:
                pair = _pair_ratio(setup, r, m)  # both readings far past the target:
                if rounds < last and pair * OVERSHOOT < 1:
                    spare = _least_overshoot(spare, r, rounds, trimmed, grown)
                    if added := _give_back(w, r, pair):
                        grown += added
                        continue
                return _done(fit, rounds, trimmed, grown, floor.fraction)
            budget = setup.budget(m.parent_ms)
        try:  # (after the last round too: a lowered floor gives its round back)
            trimmed += _trim(w, _excess(r, m, budget), floor)
        except PlanError as exc:
            if spare is not None:
                return _done(spare, rounds, trimmed, grown, floor.fraction)
            fit, m = _last_chance(setup, r, m, w.lm.batch)
            if fit is not None:
                return _done(fit, rounds, trimmed, grown, floor.fraction)
            budget = setup.budget(m.parent_ms)
            raise _nothing_left(
                m.child_ms, m.parent_ms, budget, setup.min_channels, floor.fraction
            ) from exc
    if spare is not None:
        return _done(spare, rounds, trimmed, grown, floor.fraction)
    raise LatencyBudgetError(
        f"the offspring stays over its latency budget after {rounds} measurements "
        f"({m.child_ms:.4g} ms > {budget:.4g} ms)"
    )


def _trim(w: Widths, need: float, floor: _Floor) -> int:
    """:func:`~evonnx.latency.steps.trim`, lowering ``floor`` while nothing is left above it.

    Raises:
        PlanError: Nothing is left to remove at the lowest floor.
    """
    while True:
        try:
            return trim(w, need)
        except PlanError:
            if not floor.lowered(w):
                raise


def _measure(setup: _FitSetup, w: Widths, rounds: int) -> _Round:
    """Build the offspring ``w`` describes, measure it beside its parent, recalibrate ``w.lm``."""
    plan = _plan(w.kept, w.groups)
    offspring = apply_plan(setup.parent, setup.analysis, plan, setup.masks)
    census = group_census(setup.analysis, w.counts())
    ratio = w.lm.predict(census) / w.lm.measured_ms  # before measuring; points are relative
    m = compare(setup.runtime, setup.parent, offspring, w.lm.batch)
    if m.stable:  # an unstable reading (a busy machine) must not skew the predictor
        w.lm = w.lm.recalibrated(census, m.child_ms, m.parent_ms)
    budget = setup.budget(m.parent_ms)
    logger.info(
        "round %d: offspring %.4g ms, parent %.4g ms, budget %.4g ms (predicted %.4g)",
        rounds, m.child_ms, m.parent_ms, budget, ratio * m.parent_ms,
    )  # fmt: skip
    return _Round(plan, offspring, ratio, m, budget, w.lm.predict(census))


def _least_overshoot(
    spare: MeasuredFit | None, r: _Round, rounds: int, trimmed: int, grown: int
) -> MeasuredFit:
    """``spare``, or the overshooting offspring of ``r`` when it overshoots less."""
    m = r.m
    if spare is None or m.speedup < spare.speedup:
        return MeasuredFit(
            r.offspring, r.plan, m.parent_ms, m.child_ms, r.ratio * m.parent_ms, r.budget,
            rounds, trimmed, grown,
        )  # fmt: skip
    return spare


def _give_back(w: Widths, r: _Round, ratio: float | None = None) -> int:
    """Grow an offspring that overshot toward what ``r`` aims at (or, given ``ratio``, its
    latency over budget on several readings, toward what that aims at); returns the steps up."""
    add = (r.want(ratio) - r.now) * (1.0 if r.m.stable else 0.5)
    return grow(w, add, ceiling=r.now + add) if add > 0 else 0


def _pair_ratio(setup: _FitSetup, r: _Round, m: Comparison) -> float:
    """The offspring's latency over its budget on the readings ``r.m`` and its confirmation
    ``m`` together (their geometric mean)."""
    return float(np.sqrt(r.m.child_ms / r.budget * m.child_ms / setup.budget(m.parent_ms)))


def _excess(r: _Round, m: Comparison, budget: float) -> float:
    """Predicted ms to trim after reading ``m`` (``r``'s, or its confirmation) over ``budget``."""
    need = max(r.now - r.want(), r.now * (1.0 - budget / m.child_ms))  # at least the excess
    return min(need, MAX_STEP * r.now) * (1.0 if m.stable else 0.5)  # one reading may lie


def _steer(w: Widths, now: float, want: float) -> tuple[int, int]:
    """Trim (predicted ``now`` above ``want`` ms) or grow (far below it) toward ``want``;
    returns the steps down and up."""
    if now > want:
        return trim(w, now - want), 0
    if now * OVERSHOOT < want:
        return 0, grow(w, want - now, ceiling=want)
    return 0, 0


def _confirm(setup: _FitSetup, r: _Round, batch: int) -> tuple[MeasuredFit | None, Comparison]:
    """A second reading of an offspring that measured within budget: the fit if it agrees.

    Trimming stops at the first measurement within budget, so that one is biased low (the
    winner's curse): a fresh measurement of an offspring accepted on it alone often came out
    over budget.
    """
    m = compare(setup.runtime, setup.parent, r.offspring, batch)
    logger.info(
        "confirmed: offspring %.4g ms, parent %.4g ms, budget %.4g ms",
        m.child_ms, m.parent_ms, setup.budget(m.parent_ms),
    )  # fmt: skip
    return _within_budget(setup, r, m), m


def _last_chance(
    setup: _FitSetup, r: _Round, m: Comparison, batch: int
) -> tuple[MeasuredFit | None, Comparison]:
    """The smallest offspring, over budget by its readings ``r.m`` and ``m``, settled on the
    median of several (:func:`~evonnx.latency.measure.settled`) before a refusal: the fit
    if that median is within budget, and the reading the verdict rests on."""
    taken = [r.m] if m is r.m else [r.m, m]
    m = settled(setup.runtime, setup.parent, r.offspring, batch, taken)
    fit = _within_budget(setup, r, m)
    if fit is not None:
        logger.info("the smallest offspring is within budget on the median of its readings")
    return fit, m


def _within_budget(setup: _FitSetup, r: _Round, m: Comparison) -> MeasuredFit | None:
    """The offspring of ``r`` as the fit, if the reading ``m`` puts it within budget."""
    budget = setup.budget(m.parent_ms)
    if m.child_ms > budget:
        return None
    return MeasuredFit(
        r.offspring, r.plan, m.parent_ms, m.child_ms, r.ratio * m.parent_ms, budget, 0, 0
    )


def _done(
    fit: MeasuredFit, rounds: int, trimmed: int, grown: int, min_fraction: float
) -> MeasuredFit:
    return replace(fit, rounds=rounds, trimmed=trimmed, grown=grown, min_fraction=min_fraction)


def _nothing_left(
    offspring_ms: float, parent_ms: float, budget: float, least: int, fraction: float
) -> Exception:
    return LatencyBudgetError(
        f"every channel group is at its floor (--min-channels {least}, --min-fraction "
        f"{fraction:g}) and no branch is left to remove: the offspring reached "
        f"{parent_ms / offspring_ms:.2f}x ({offspring_ms:.4g} ms, parent {parent_ms:.4g} ms) "
        f"against a budget of {budget:.4g} ms; a smaller speed-up, a lower "
        f"{'--min-fraction or ' if fraction > 0 else ''}--min-channels, or a larger batch "
        "(less per-run overhead) may fit"
    )


def _plan(kept: Mapping[int, np.ndarray], groups: Mapping[int, ChannelGroup]) -> PrunePlan:
    return PrunePlan(
        {gid: tuple(int(c) for c in k) for gid, k in kept.items() if k.size < groups[gid].size}
    )
