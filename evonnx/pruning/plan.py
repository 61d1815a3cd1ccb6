"""Pruning plans: :class:`PrunePlan`, channel strength, the rounding rule, simple planners.

:class:`PrunePlan` is what every planner (these, the genetic encoding of
:mod:`evonnx.genetic`) hands to the surgery. :func:`channel_strength` and
:func:`round_channels` are shared by all of them.

:func:`magnitude_plan` keeps the strongest channels of every prunable group by the L1 norm
of their producer filters. It is a deterministic baseline next to the genetic encoding
(:mod:`evonnx.genetic`), which samples offspring instead. :func:`mac_target_plan` picks the
one keep fraction that reaches a MAC reduction, optionally with channel counts rounded to
multiples of 8 (:func:`round_channels`) and small groups left alone; :func:`estimate_macs`
predicts a plan's MACs without running the surgery.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from evonnx.errors import PlanError
from evonnx.pruning.groups import Analysis, ChannelGroup, Member, Role


@dataclass(frozen=True)
class PrunePlan:
    """Which channels each group keeps (sorted indices); groups not listed keep all."""

    keep: dict[int, tuple[int, ...]]

    def kept(self, group: ChannelGroup) -> np.ndarray:
        """Sorted kept channel indices of ``group``."""
        idx = self.keep.get(group.id)
        if idx is None:
            return np.arange(group.size, dtype=np.int64)
        return np.asarray(idx, dtype=np.int64)


class Threshold(Protocol):
    """A truncation rule (e.g. :class:`evonnx.genetic.Truncation`)."""

    def threshold(self, magnitudes: np.ndarray, nonzero: int | None = None) -> float:
        """Magnitude under which a weight counts as zero."""
        ...


def magnitudes(w: np.ndarray, truncation: Threshold | None = None) -> np.ndarray:
    """``|w|`` as a new float32 array, entries below ``truncation``'s threshold set to zero."""
    arr = np.asarray(w)
    a = np.abs(arr if arr.dtype == np.float32 else arr.astype(np.float32))
    tau = truncation.threshold(a) if truncation is not None else 0.0
    if tau > 0:
        a *= a >= tau
    return a


def unique_members(members: Sequence[Member]) -> list[Member]:
    """Members deduplicated by what they slice (role, tensor, axis, start, block)."""
    seen: set[tuple[Role, str, int, int, int]] = set()
    out = []
    for m in members:
        key = (m.role, m.name, m.axis, m.start, m.block)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


def channel_strength(
    group: ChannelGroup, weights: Mapping[str, np.ndarray], truncation: Threshold | None = None
) -> np.ndarray:
    """Strength of each channel of ``group``: ``|w|`` (truncated) summed over every producer
    filter writing it. The genetic encoding's eq. 4 numerator and the L1 rank of the plans."""
    strength = np.zeros(group.size, dtype=np.float64)
    channels = np.arange(group.size)
    for m in unique_members(group.by_role(Role.PRODUCER)):
        moved = np.moveaxis(magnitudes(weights[m.name], truncation), m.axis, 0)
        rows = moved.reshape(moved.shape[0], -1).sum(axis=1, dtype=np.float64)
        strength += rows[m.indices(channels)].reshape(group.size, m.block).sum(axis=1)
    return strength


def round_channels(
    n: int,
    size: int,
    round_to: int | None = None,
    min_channels: int = 1,
    widths: Sequence[int] | None = None,
) -> int:
    """The channel count a group keeps when it needs ``n``: the smallest allowed count ``>= n``.

    The one rounding rule of the plans and the genetic encoding. Allowed counts are at least
    ``min_channels`` (or the whole group when smaller) and at most ``size``; with ``widths``
    (e.g. the latency steps of :mod:`evonnx.latency`) only those and ``size``; with
    ``round_to``, multiples of it or ``size``: multiples of 8 (or 16) let CPU kernels
    (onnxruntime's NCHWc convolutions) and tensor cores use their full vector width, and a
    layer of 12 channels often runs no faster than one of 16. A group smaller than
    ``round_to`` is not rounded.
    """
    k = min(size, max(n, min(min_channels, size), 1 if size else 0))
    if widths:
        return min((w for w in widths if k <= w <= size), default=size)
    if not round_to or round_to <= 1 or size < round_to:
        return k
    return min(size, -(-k // round_to) * round_to)


def floor_channels(size: int, min_channels: int = 1, min_fraction: float = 0.0) -> int:
    """Fewest channels a group of ``size`` may keep: ``ceil(min_fraction * size)``, at least
    ``min_channels`` (the floor, one per channel group; the whole group when it is smaller)."""
    return min(size, max(min_channels, math.ceil(min_fraction * size - 1e-9)))


def allowed_channels(
    k: int,
    size: int,
    round_to: int | None = None,
    min_channels: int = 1,
    widths: Sequence[int] | None = None,
) -> bool:
    """Whether a group of ``size`` may keep exactly ``k >= 1`` channels (see
    :func:`round_channels`)."""
    return k >= 1 and round_channels(k, size, round_to, min_channels, widths) == k


def magnitude_plan(
    analysis: Analysis,
    weights: Mapping[str, np.ndarray],
    keep: float,
    min_channels: int = 1,
    round_to: int | None = None,
    min_fraction: float = 0.0,
    strength: Mapping[int, np.ndarray] | None = None,
) -> PrunePlan:
    """Keep ``ceil(keep * size)`` strongest channels (at least ``min_channels`` and the floor
    ``ceil(min_fraction * size)``) per group.

    With ``round_to``, each count is rounded up to a multiple (:func:`round_channels`).
    Channels are ranked by ``strength[group id]`` where given (e.g.
    :func:`evonnx.pruning.importance.deviation_strength`), else by :func:`channel_strength` (L1).

    Raises:
        PlanError: ``keep`` is not in (0, 1].
    """
    if not 0.0 < keep <= 1.0:
        raise PlanError(f"keep must be in (0, 1], got {keep}")
    plan: dict[int, tuple[int, ...]] = {}
    for g in analysis.prunable_groups:
        least = floor_channels(g.size, min_channels, min_fraction)
        n = min(g.size, max(least, math.ceil(keep * g.size - 1e-9)))
        n = round_channels(n, g.size, round_to, least)
        score = strength.get(g.id) if strength is not None else None
        score = channel_strength(g, weights) if score is None else score
        order = np.argsort(-score, kind="stable")
        plan[g.id] = tuple(sorted(int(i) for i in order[:n]))
    return PrunePlan(plan)


def magnitude_plan_counts(
    analysis: Analysis, weights: Mapping[str, np.ndarray], counts: Mapping[int, int]
) -> PrunePlan:
    """Keep the ``counts[g]`` strongest channels (L1) of each listed group.

    Raises:
        PlanError: A count is not in ``[1, size]`` or names an unknown or frozen group.
    """
    prunable = {g.id: g for g in analysis.prunable_groups}
    plan: dict[int, tuple[int, ...]] = {}
    for gid, n in counts.items():
        g = prunable.get(gid)
        if g is None:
            raise PlanError(f"group {gid} is not a prunable group of the analysis")
        if not 1 <= n <= g.size:
            raise PlanError(f"group {gid} has {g.size} channels; cannot keep {n}")
        order = np.argsort(-channel_strength(g, weights), kind="stable")
        plan[gid] = tuple(sorted(int(i) for i in order[:n]))
    return PrunePlan(plan)


def estimate_macs(
    analysis: Analysis, weights: Mapping[str, np.ndarray], counts: Mapping[int, int]
) -> int:
    """MACs after keeping ``counts[g]`` channels of each listed group (others keep all).

    Each layer's MACs scale with the surviving fraction of its weight's output and input axes;
    which channels survive does not matter.
    """
    removed: dict[tuple[str, int], int] = {}
    for g in analysis.groups:
        n = counts.get(g.id)
        if n is None or n >= g.size:
            continue
        seen: set[tuple[str, int, int, int]] = set()
        for m in g.members:
            key = (m.name, m.axis, m.start, m.block)
            if m.role in (Role.PRODUCER, Role.CONSUMER) and key not in seen:
                seen.add(key)
                removed[(m.name, m.axis)] = (
                    removed.get((m.name, m.axis), 0) + (g.size - n) * m.block
                )
    total = 0.0
    for lay in analysis.layers:
        shape = np.shape(weights[lay.weight])
        frac = 1.0
        for axis in {lay.out_axis, lay.in_axis}:
            if shape[axis]:
                frac *= 1.0 - removed.get((lay.weight, axis), 0) / shape[axis]
        total += lay.macs * frac
    return round(total)


def group_mac_share(analysis: Analysis, weights: Mapping[str, np.ndarray]) -> dict[int, float]:
    """Fraction of the model's MACs that pruning each prunable group to one channel removes."""
    base = estimate_macs(analysis, weights, {})
    if base <= 0:
        return {g.id: 0.0 for g in analysis.prunable_groups}
    return {
        g.id: (base - estimate_macs(analysis, weights, {g.id: 1})) / base
        for g in analysis.prunable_groups
    }


def mac_target_counts(
    analysis: Analysis,
    weights: Mapping[str, np.ndarray],
    mac_ratio: float,
    round_to: int | None = None,
    min_channels: int = 1,
    min_share: float = 0.0,
) -> dict[int, int]:
    """Channel counts per group, one keep fraction for all, whose MACs come closest to the target.

    The keep fraction is found by bisection; every group keeps ``ceil(keep * size)`` channels,
    rounded by :func:`round_channels`. Groups whose layers hold less than ``min_share`` of the
    MACs (:func:`group_mac_share`) keep all their channels: pruning them saves little compute
    but adds small, slow layers.

    Args:
        analysis: Analysis of the model.
        weights: Constant values of the model.
        mac_ratio: Wanted ``MACs before / MACs after`` (>= 1).
        round_to: Round channel counts to multiples of this (None: no rounding).
        min_channels: Channels every group keeps at least.
        min_share: Leave groups below this MAC share unpruned.

    Raises:
        PlanError: ``mac_ratio`` < 1, or the target is out of reach.
    """
    if mac_ratio < 1.0:
        raise PlanError(f"mac_ratio must be >= 1, got {mac_ratio}")
    share = group_mac_share(analysis, weights)
    groups = [g for g in analysis.prunable_groups if share[g.id] >= min_share]
    base = estimate_macs(analysis, weights, {})
    goal = base / mac_ratio

    def counts_at(keep: float) -> dict[int, int]:
        return {
            g.id: round_channels(math.ceil(keep * g.size - 1e-9), g.size, round_to, min_channels)
            for g in groups
        }

    lo, hi = 0.0, 1.0  # estimate(counts_at(lo)) <= goal < estimate(counts_at(hi)) once started
    if estimate_macs(analysis, weights, counts_at(lo)) > goal:
        raise PlanError(
            f"a MAC ratio of {mac_ratio} is out of reach (the fewest channels allowed give "
            f"{base / max(1, estimate_macs(analysis, weights, counts_at(lo))):.2f})"
        )
    if estimate_macs(analysis, weights, counts_at(hi)) <= goal:
        return counts_at(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        if estimate_macs(analysis, weights, counts_at(mid)) <= goal:
            lo = mid
        else:
            hi = mid
    below, above = counts_at(lo), counts_at(hi)
    err_below = abs(math.log(base / max(1, estimate_macs(analysis, weights, below)) / mac_ratio))
    err_above = abs(math.log(base / max(1, estimate_macs(analysis, weights, above)) / mac_ratio))
    return below if err_below <= err_above else above


def mac_target_plan(
    analysis: Analysis,
    weights: Mapping[str, np.ndarray],
    mac_ratio: float,
    round_to: int | None = None,
    min_channels: int = 1,
    min_share: float = 0.0,
) -> PrunePlan:
    """L1-magnitude plan with about ``mac_ratio`` times fewer MACs (see :func:`mac_target_counts`).

    Raises:
        PlanError: ``mac_ratio`` < 1, or the target is out of reach.
    """
    counts = mac_target_counts(analysis, weights, mac_ratio, round_to, min_channels, min_share)
    return magnitude_plan_counts(
        analysis, weights, {g: n for g, n in counts.items() if n < _size(analysis, g)}
    )


def _size(analysis: Analysis, gid: int) -> int:
    return analysis.group(gid).size


def branch_plan(
    analysis: Analysis, weights: Mapping[str, np.ndarray], mac_ratio: float
) -> PrunePlan:
    """Remove whole branches (removable groups emptied), weakest first, until about
    ``mac_ratio`` times fewer MACs.

    Branches are ranked by the mean L1 norm of their producer filters; depth pruning keeps
    every remaining layer at full width, which suits kernels tuned for wide channels.

    Raises:
        PlanError: ``mac_ratio`` is below 1.
    """
    if mac_ratio < 1.0:
        raise PlanError(f"mac_ratio must be at least 1, got {mac_ratio}")
    target = estimate_macs(analysis, weights, {}) / mac_ratio
    ranked = sorted(
        (g for g in analysis.groups if g.removable),
        key=lambda g: float(channel_strength(g, weights).mean()),
    )
    counts: dict[int, int] = {}
    for g in ranked:
        if estimate_macs(analysis, weights, counts) <= target:
            break
        counts[g.id] = 0
    return PrunePlan({gid: () for gid in counts})
