"""Simple deterministic pruning plans.

:func:`magnitude_plan` keeps the strongest channels of every prunable group by the L1 norm
of their producer filters. It is a deterministic baseline next to the genetic encoding
(:mod:`evonnx.encoding`), which samples offspring instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from evonnx.errors import PlanError
from evonnx.groups import Analysis, ChannelGroup, PrunePlan, Role


def channel_strength(group: ChannelGroup, weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """Sum of |w| over every producer filter of each channel of ``group``."""
    strength = np.zeros(group.size, dtype=np.float64)
    for m in group.by_role(Role.PRODUCER):
        w = np.moveaxis(np.abs(weights[m.name]), m.axis, 0)
        per_index = w.reshape(w.shape[0], -1).sum(axis=1)
        idx = m.indices(np.arange(group.size)).reshape(group.size, m.block)
        strength += per_index[idx].sum(axis=1)
    return strength


def magnitude_plan(
    analysis: Analysis, weights: Mapping[str, np.ndarray], keep: float, min_channels: int = 1
) -> PrunePlan:
    """Keep ``ceil(keep * size)`` strongest channels (at least ``min_channels``) per group.

    Raises:
        PlanError: ``keep`` is not in (0, 1].
    """
    if not 0.0 < keep <= 1.0:
        raise PlanError(f"keep must be in (0, 1], got {keep}")
    plan: dict[int, tuple[int, ...]] = {}
    for g in analysis.prunable_groups:
        n = min(g.size, max(min_channels, math.ceil(keep * g.size - 1e-9)))
        order = np.argsort(-channel_strength(g, weights), kind="stable")
        plan[g.id] = tuple(sorted(int(i) for i in order[:n]))
    return PrunePlan(plan)
