"""One offspring being sampled: its mutable draft, constraints, dead channels, census."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from evonnx.genetic.environments import LayerCensus
from evonnx.genetic.genome import Gene, Genome, _axis_values
from evonnx.pruning.plan import allowed_channels, floor_channels, round_channels

if TYPE_CHECKING:
    from evonnx.pruning.groups import ChannelGroup

logger = logging.getLogger(__name__)

_DEAD_PASSES = 8


@dataclass(eq=False)
class _Draft:
    """Mutable state of one sampling run.

    ``alive`` is each group's survival mask over its channels (bool, one per channel);
    ``kernels`` the surviving kernels of each weight (kernel mode, else ``None``);
    ``masks`` are float32 0/1 arrays in canonical layout; ``counts`` the live synapses per
    kernel (``None`` when a weight has one entry per kernel: the mask is the count);
    ``masked`` whether a weight lost any nonzero synapse to its mask.
    """

    alive: dict[int, np.ndarray]
    kernels: list[np.ndarray | None]
    masks: list[np.ndarray] = field(default_factory=list)
    counts: list[np.ndarray | None] = field(default_factory=list)
    masked: list[bool] = field(default_factory=list)

    def kernel_counts(self, gi: int) -> np.ndarray:
        c = self.counts[gi]
        if c is not None:
            return c
        m = self.masks[gi]
        return m.reshape(m.shape[0], m.shape[1])


def _as_float(alive: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    return {gid: k.astype(np.float64) for gid, k in alive.items()}


def _rule(genome: Genome, group: ChannelGroup) -> tuple[int | None, int, Sequence[int] | None]:
    """``round_to``, the floor (``min_channels``, ``min_fraction``) and the environment's
    widths for ``group``."""
    cfg = genome.config
    return cfg.round_to, group_floor(genome, group), cfg.env.widths(group)


def group_floor(genome: Genome, group: ChannelGroup) -> int:
    """Fewest channels ``group`` keeps (:func:`evonnx.pruning.plan.floor_channels`)."""
    cfg = genome.config
    return floor_channels(group.size, cfg.min_channels, cfg.floor)


def _valid(genome: Genome, group: ChannelGroup, k: int) -> bool:
    """Whether ``group`` may keep ``k`` channels (:func:`evonnx.pruning.plan.allowed_channels`)."""
    return allowed_channels(k, group.size, *_rule(genome, group))


def _enforce(genome: Genome, group: ChannelGroup, alive: np.ndarray) -> np.ndarray:
    """Add back the highest-probability dead channels until the constraints hold
    (:func:`evonnx.pruning.plan.round_channels`)."""
    n = int(alive.sum())
    if n == 0 and group.id in genome.branch_p:  # a removed branch (depth cluster) stays removed
        return np.zeros(0, dtype=np.int64)
    need = round_channels(n, alive.size, *_rule(genome, group))
    if need <= n:
        return np.zeros(0, dtype=np.int64)
    prob = genome.cluster_p[group.id]
    dead = np.flatnonzero(~alive)
    add = dead[np.argsort(-prob[dead], kind="stable")[: need - n]]
    alive[add] = True
    return add


def _channel_any(genome: Genome, group: ChannelGroup, rows: Sequence[np.ndarray]) -> np.ndarray:
    """Channels of ``group`` with a positive row value in any producer filter."""
    total = np.zeros(group.size, dtype=np.float64)
    for gi, c in genome.producers[group.id]:
        total += np.bincount(c.channel, weights=rows[gi][c.index], minlength=group.size)
    return total > 0


def _axes(gene: Gene, alive: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    o, i, _ = gene.synapse_p.shape
    return _axis_values(gene.out_claims, o, alive), _axis_values(gene.in_claims, i, alive)


def _live_rows(genome: Genome, draft: _Draft, kf: Mapping[int, np.ndarray]) -> list[np.ndarray]:
    """Realized synapses per output filter of every weight (removed inputs excluded).

    Exact: float32 sums of at most ``in * rest < 2**24`` ones.
    """
    return [
        np.asarray(draft.kernel_counts(gi) @ _axes(g, kf)[1].astype(np.float32), np.float64)
        for gi, g in enumerate(genome.genes)
    ]


def _census_of(
    genome: Genome, kf: Mapping[int, np.ndarray], rows: Sequence[np.ndarray] | None
) -> list[LayerCensus]:
    """Realized census for kept channels ``kf`` (synapses 0 when ``rows`` is ``None``)."""
    out: list[LayerCensus] = []
    for gi, gene in enumerate(genome.genes):
        ko, ki = _axes(gene, kf)
        syn = float(ko @ rows[gi]) if rows is not None else 0.0
        out.extend(LayerCensus(lay, syn, float(ko.mean()), float(ki.mean())) for lay in gene.layers)
    return out


def _realized_census(
    genome: Genome, alive: Mapping[int, np.ndarray], draft: _Draft, with_synapses: bool = True
) -> list[LayerCensus]:
    kf = _as_float(alive)
    return _census_of(genome, kf, _live_rows(genome, draft, kf) if with_synapses else None)


def _prune_dead(genome: Genome, draft: _Draft) -> list[np.ndarray]:
    """Remove kept channels whose producer filters have no realized synapse (constraints kept).

    Returns:
        :func:`_live_rows` for the final kept channels.
    """
    for _ in range(_DEAD_PASSES):
        rows = _live_rows(genome, draft, _as_float(draft.alive))
        changed = False
        for g in genome.groups:
            if not genome.producers[g.id]:
                continue
            alive = draft.alive[g.id]
            dead = np.flatnonzero(alive & ~_channel_any(genome, g, rows))
            if not dead.size:
                continue
            n = int(alive.sum())
            target = next((k for k in range(n - dead.size, n) if _valid(genome, g, k)), n)
            if target < n:
                order = np.argsort(genome.cluster_p[g.id][dead], kind="stable")
                alive[dead[order[: n - target]]] = False
                changed = True
        if not changed:
            return rows
    return _live_rows(genome, draft, _as_float(draft.alive))


def _settle(genome: Genome, draft: _Draft) -> list[LayerCensus]:
    """Remove dead channels, then take the realized census."""
    rows = _prune_dead(genome, draft)
    return _census_of(genome, _as_float(draft.alive), rows)
