"""Measured end to end: trim an offspring until its measured latency is within budget.

The genetic encoding samples an offspring whose *expected* predicted latency meets the budget.
:func:`fit_measured` trims it, removing clusters with the least strength per predicted latency
saved: a group steps down to its next allowed width (latency step, ``round_to``,
``min_channels``), dropping its weakest kept channels, or a removable branch goes entirely.
First until its predicted latency is within budget; then it builds the offspring, measures it
side by side with its parent (one interleaved run, so both see the same machine state) and,
while it is over budget, takes steps until the predicted saving covers half the measured excess
(a noisy measurement must not strip it) and measures again. An offspring within budget is
measured once more, and accepted only if that run agrees. Each measurement recalibrates the
predictor (:meth:`~evonnx.latency.model.LatencyModel.recalibrated`) after the offspring's
prediction was recorded, so the reported prediction is always out of sample. The budget is
never exceeded: when nothing is left to remove, :class:`~evonnx.errors.LatencyBudgetError` is
raised.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from evonnx.errors import LatencyBudgetError, PlanError
from evonnx.groups import Analysis, ChannelGroup
from evonnx.latency.model import LatencyModel, group_census
from evonnx.plan import PrunePlan, allowed_channels, channel_strength, floor_channels
from evonnx.runtimes import Runtime
from evonnx.surgery import apply_plan

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeasuredFit:
    """An offspring whose measured latency is within budget.

    Attributes:
        model: The offspring.
        plan: Its plan (the sampled one, possibly trimmed further).
        parent_ms: The parent's latency, measured side by side with the final offspring.
        child_ms: The offspring's measured latency.
        predicted_ms: The offspring's latency predicted before it was measured (by the model
            recalibrated on every earlier measurement), as a fraction of the parent's reference
            latency times the parent's latency measured side by side with the offspring.
        budget_ms: ``keep * parent_ms`` (or the floor).
        rounds: Measurement rounds (1: the sampled offspring already fit); each round within
            budget is confirmed by a second run.
        trimmed: Groups stepped down (or branches removed) after measuring.
    """

    model: onnx.ModelProto
    plan: PrunePlan
    parent_ms: float
    child_ms: float
    predicted_ms: float
    budget_ms: float
    rounds: int
    trimmed: int

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
) -> MeasuredFit:
    """Trim ``plan`` until the offspring's measured latency is at most ``keep`` times the
    parent's (not below ``floor_ms``).

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
        max_rounds: Most measurements.
        min_fraction: Per-layer floor: a group keeps at least this fraction of its channels
            (a removable branch may still go).

    Raises:
        LatencyBudgetError: Nothing is left to remove and the offspring is still over budget.
    """
    prunable = {g.id: g for g in analysis.prunable_groups}
    kept = {gid: plan.kept(g) for gid, g in prunable.items()}
    strength = {gid: channel_strength(g, weights) for gid, g in prunable.items()}
    trimmed = 0
    least = {gid: floor_channels(g.size, min_channels, min_fraction) for gid, g in prunable.items()}
    # Predicted first: the sampled offspring within the budget on the table's prediction.
    widths = {gid: int(k.size) for gid, k in kept.items()}
    full = lm.predict(group_census(analysis, {}))
    floor = full * floor_ms / lm.measured_ms if floor_ms is not None else None
    goal = keep * full if floor is None else max(keep * full, floor)
    excess = lm.predict(group_census(analysis, widths)) - goal
    if excess > 0:
        try:
            trimmed += _trim(analysis, prunable, kept, strength, lm, excess, round_to, least)
        except PlanError:  # nothing to remove: the measurement decides
            logger.info("predicted %.4g ms over the budget with nothing left to remove", excess)

    def budget_of(parent_ms: float) -> float:
        return keep * parent_ms if floor_ms is None else max(keep * parent_ms, floor_ms)

    for rounds in range(1, max_rounds + 1):
        current = _plan(kept, prunable)
        child = apply_plan(parent, analysis, current, masks)
        widths = {gid: int(k.size) for gid, k in kept.items()}
        census = group_census(analysis, widths)
        ratio = lm.predict(census) / lm.measured_ms  # before measuring; points are relative
        parent_ms, child_ms = runtime.latencies([parent, child], lm.batch)
        predicted = ratio * parent_ms
        lm = lm.recalibrated(census, child_ms, parent_ms)
        budget = budget_of(parent_ms)
        logger.info(
            "round %d: offspring %.4g ms, parent %.4g ms, budget %.4g ms (predicted %.4g)",
            rounds, child_ms, parent_ms, budget, predicted,
        )  # fmt: skip
        if child_ms <= budget:
            # Confirmed by a second interleaved run: trimming stops at the first measurement
            # within budget, so that one is biased low (the winner's curse), and a fresh
            # measurement of an offspring accepted on it alone often came out over budget.
            parent_ms, child_ms = runtime.latencies([parent, child], lm.batch)
            lm = lm.recalibrated(census, child_ms, parent_ms)
            budget = budget_of(parent_ms)
            logger.info("round %d confirmed: offspring %.4g ms, parent %.4g ms, budget %.4g ms",
                        rounds, child_ms, parent_ms, budget)  # fmt: skip
            if child_ms <= budget:
                predicted = ratio * parent_ms
                return MeasuredFit(
                    child, current, parent_ms, child_ms, predicted, budget, rounds, trimmed
                )
        if rounds == max_rounds:
            break
        # Half the excess, in predicted milliseconds (prediction and measurement may differ in
        # scale): one noisy measurement must not strip the offspring; the next one checks.
        now = lm.predict(census)
        need = 0.5 * (child_ms - budget) * now / child_ms
        try:
            trimmed += _trim(analysis, prunable, kept, strength, lm, need, round_to, least)
        except PlanError as exc:
            raise LatencyBudgetError(
                f"the offspring measures {child_ms:.4g} ms against a budget of {budget:.4g} ms "
                f"(parent {parent_ms:.4g} ms) and nothing is left to remove; a smaller speed-up, "
                "a larger keep or a larger batch (less per-run overhead) may fit"
            ) from exc
    raise LatencyBudgetError(
        f"the offspring stays over its latency budget after {max_rounds} measurements "
        f"({child_ms:.4g} ms > {budget:.4g} ms)"
    )


def _plan(kept: Mapping[int, np.ndarray], groups: Mapping[int, ChannelGroup]) -> PrunePlan:
    return PrunePlan(
        {gid: tuple(int(c) for c in k) for gid, k in kept.items() if k.size < groups[gid].size}
    )


def _trim(
    analysis: Analysis,
    prunable: Mapping[int, ChannelGroup],
    kept: dict[int, np.ndarray],
    strength: Mapping[int, np.ndarray],
    lm: LatencyModel,
    need: float,
    round_to: int | None,
    least: Mapping[int, int],
) -> int:
    """Step groups down, least strength per saved ms first, until ``need`` ms are saved
    (``least``: each group's floor)."""
    saved, steps = 0.0, 0
    while saved < need:
        widths = {gid: int(k.size) for gid, k in kept.items()}
        now = lm.predict(group_census(analysis, widths))
        best: tuple[float, int, int, float] | None = None
        for gid, g in prunable.items():
            lower = _lower(g, widths[gid], lm.widths(gid), round_to, least[gid])
            if lower is None:
                continue
            gain = now - lm.predict(group_census(analysis, {**widths, gid: lower}))
            if gain <= 0:
                continue
            order = np.argsort(strength[gid][kept[gid]], kind="stable")
            lost = float(strength[gid][kept[gid][order[: widths[gid] - lower]]].sum())
            score = lost / gain
            if best is None or score < best[0]:
                best = (score, gid, lower, gain)
        if best is None:
            if steps:
                return steps
            raise PlanError("over the latency budget with nothing left to remove")
        _, gid, lower, gain = best
        k = kept[gid]
        keep_idx = np.sort(k[np.argsort(-strength[gid][k], kind="stable")[:lower]])
        kept[gid] = keep_idx
        saved += gain
        steps += 1
    return steps


def _lower(
    g: ChannelGroup,
    n: int,
    widths: Sequence[int] | None,
    round_to: int | None,
    min_channels: int,
) -> int | None:
    """The next smaller channel count ``g`` may keep (0 for a removable branch), or None."""
    for k in range(n - 1, 0, -1):
        if allowed_channels(k, g.size, round_to, min_channels, widths):
            return k
    return 0 if g.removable and n > 0 else None
