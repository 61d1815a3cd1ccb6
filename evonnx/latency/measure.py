"""A parent and an offspring measured side by side, with a check that the reading is stable.

Protocol (what holds on a machine shared with other jobs, see ``docs/benchmarks.md``,
section *Latency estimators under contention*): interleaved rounds (every round runs both
models, in alternating order), the runtime's statistic of each model's rounds (default: the
fastest; a CPU-bound neighbour only ever adds time, and the median of a slow model is inflated
by preemptions far more than that of a fast one), the parent measured again in every
comparison (a parent measured during a load spike must not set the budget), and a
confidence check: the speed-up read from the even rounds and from the odd rounds must agree
within ``tolerance``; if not, the comparison is measured again and the rounds pooled.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

if TYPE_CHECKING:
    from evonnx.runtimes.base import Runtime


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Comparison:
    """A side-by-side reading.

    Attributes:
        parent_ms: The parent's latency (the runtime's statistic of its rounds).
        child_ms: The offspring's latency.
        disagreement: Relative difference between the speed-ups of the even and the odd
            rounds (0 with a single round).
        rounds: Timed rounds per model.
    """

    parent_ms: float
    child_ms: float
    disagreement: float
    rounds: int
    tolerance: float = 0.1

    @property
    def stable(self) -> bool:
        """Whether the even and odd rounds agree within the tolerance."""
        return self.disagreement <= self.tolerance

    @property
    def speedup(self) -> float:
        """Parent latency over offspring latency."""
        return self.parent_ms / self.child_ms if self.child_ms > 0 else float("inf")


def _reduce(samples: np.ndarray, statistic: str) -> float:
    return float(np.min(samples) if statistic == "min" else np.median(samples))


def _read(rounds: np.ndarray, statistic: str, tolerance: float) -> Comparison:
    parent, offspring = (_reduce(r, statistic) for r in rounds)
    n = rounds.shape[1]
    gap = 0.0
    if n >= 4:
        halves = [rounds[:, i::2] for i in (0, 1)]
        s = [_reduce(h[0], statistic) / max(_reduce(h[1], statistic), 1e-12) for h in halves]
        gap = abs(s[0] - s[1]) / min(s)
    return Comparison(parent, offspring, gap, n, tolerance)


def compare(
    runtime: Runtime,
    parent: onnx.ModelProto,
    offspring: onnx.ModelProto,
    batch: int,
    tolerance: float = 0.1,
    retries: int = 1,
) -> Comparison:
    """``parent`` and ``offspring`` measured side by side (see the module doc).

    Raises:
        DeployError: A model cannot be run.
    """
    statistic = runtime.settings.statistic
    rounds = runtime.rounds([parent, offspring], batch)
    got = _read(rounds, statistic, tolerance)
    for _ in range(retries):
        if got.stable:
            break
        logger.info(
            "unstable reading (even and odd rounds differ by %.0f%%): measuring again",
            100 * got.disagreement,
        )
        rounds = np.concatenate([rounds, runtime.rounds([parent, offspring], batch)], axis=1)
        got = _read(rounds, statistic, tolerance)
    return got


SETTLE_READINGS = 3
"""Readings whose median settles a verdict that refuses (see :func:`settled`)."""


def settled(
    runtime: Runtime,
    parent: onnx.ModelProto,
    offspring: onnx.ModelProto,
    batch: int,
    readings: Sequence[Comparison] = (),
    count: int = SETTLE_READINGS,
) -> Comparison:
    """The reading with the median speed-up of ``count`` comparisons: ``readings`` already
    taken, and fresh ones for the rest.

    A refusal ("out of reach", "nothing left to remove") rests on one offspring being too
    slow; on a shared machine one reading can be a load spike's, so the verdict is taken on
    the median of several.

    Raises:
        DeployError: A model cannot be run.
    """
    got = list(readings)
    while len(got) < count:
        got.append(compare(runtime, parent, offspring, batch))
    ranked = sorted(got, key=lambda c: c.speedup)
    logger.info(
        "settled on the median of %d readings: %s",
        len(ranked), ", ".join(f"{c.speedup:.3g}x" for c in ranked),
    )  # fmt: skip
    return ranked[(len(ranked) - 1) // 2]
