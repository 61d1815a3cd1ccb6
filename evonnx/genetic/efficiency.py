"""Efficiency of a generation against the first: A-E, C-E, MAC and parameter ratios.

:func:`efficiency` is the one definition every command and report uses (``evolve``'s lineage,
the ``prune`` summary): synapses and clusters are counted *live* on both
sides, so weights that were already zero in the input never count as removed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)


class SizeMetrics(Protocol):
    """What :func:`efficiency` reads (satisfied by :class:`evonnx.pruning.metrics.ModelMetrics`)."""

    @property
    def params(self) -> int: ...

    @property
    def synapses(self) -> int: ...

    @property
    def nonzero_synapses(self) -> int: ...

    @property
    def clusters(self) -> int: ...

    @property
    def live_clusters(self) -> int: ...

    @property
    def macs(self) -> int: ...


@dataclass(frozen=True)
class Efficiency:
    """Efficiency of a generation relative to the first-generation ancestor (×, higher is better).

    Attributes:
        architectural: A-E: gen-1 nonzero synapses / nonzero synapses now.
        cluster: C-E: gen-1 live clusters (filters/neurons with a nonzero weight) / live
            clusters now.
        macs: Gen-1 MACs / MACs now.
        params: Gen-1 parameters / parameters now.
    """

    architectural: float
    cluster: float
    macs: float
    params: float


def _ratio(first: int, now: int) -> float:
    if now:
        return first / now
    return math.inf if first else 1.0


def efficiency(gen1: SizeMetrics, now: SizeMetrics) -> Efficiency:
    """A-E, C-E, MAC and parameter ratios of ``now`` against the first generation ``gen1``.

    Live counts on both sides: an input that already has zero weights (an earlier pruning,
    a sparse export) starts at A-E 1.0, and only what was removed since counts.
    """
    return Efficiency(
        architectural=_ratio(gen1.nonzero_synapses, now.nonzero_synapses),
        cluster=_ratio(gen1.live_clusters, now.live_clusters),
        macs=_ratio(gen1.macs, now.macs),
        params=_ratio(gen1.params, now.params),
    )
