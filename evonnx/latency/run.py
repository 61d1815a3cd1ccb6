"""Latency across an evolution run: one runtime, the ancestor as the reference, per-parent
targets for the latency environment and measured columns of the lineage."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import onnx

from evonnx.latency.budget import Target, latency_offspring, latency_target
from evonnx.latency.measure import settled
from evonnx.runtimes.registry import make_runtime

if TYPE_CHECKING:
    from evonnx.genetic.config import EncodingConfig
    from evonnx.latency.settings import LatencySettings
    from evonnx.pruning.groups import Analysis
    from evonnx.runtimes.base import Runtime, RuntimeSettings

logger = logging.getLogger(__name__)


@dataclass
class RunLatency:
    """Measures offspring against the ancestor and budgets the latency environment.

    Args:
        settings: Runtime, batch size and table settings.
        ancestor: The run's first generation (the reference of every speed-up).
        budget: Whether the environment is the latency budget (else only measured).
        keep: Latency fraction of its parent an offspring may keep.
        target_speedup: Speed-up over the ancestor at which the budget stops shrinking.
        launch: Builds the runtime from its settings (``None``: :func:`make_runtime`, in
            the driver; the Ray executor's measures in jobs of their own, see
            :mod:`evonnx.execute.ray_latency`).
    """

    settings: LatencySettings
    ancestor: onnx.ModelProto
    budget: bool = False
    keep: float = 0.8
    target_speedup: float | None = None
    launch: Callable[[RuntimeSettings], Runtime] | None = None
    runtime: Runtime = field(init=False)

    def __post_init__(self) -> None:
        self.runtime = (self.launch or make_runtime)(self.settings.runtime)

    def measure(self, model: onnx.ModelProto) -> tuple[float, float]:
        """``(latency ms, speed-up over the ancestor)`` measured side by side (the ancestor
        itself: alone, speed-up 1)."""
        if model is self.ancestor:
            return self.runtime.latencies([model], self.settings.batch)[0], 1.0
        ref, ms = self.runtime.latencies([self.ancestor, model], self.settings.batch)
        return ms, ref / ms if ms > 0 else float("inf")

    def keep_for(self, parent: onnx.ModelProto, speedup: float | None = None) -> float:
        """The latency budget of ``parent``'s offspring, as a fraction of the parent's latency.

        ``keep``, raised near the target so that evolution stops shrinking there: to the
        parent's speed-up over the ancestor over ``target_speedup`` (at most 1). That speed-up
        is a side-by-side reading: ``speedup`` (the parent's record, measured beside the
        ancestor when it was written), else the median of several taken now
        (:func:`~evonnx.latency.measure.settled`); never an ancestor latency read earlier in
        the run. A machine whose speed drifts between generations (other jobs come and go)
        would move an absolute floor, and a floor read in a slow spell lets an offspring no
        faster than its parent through.
        """
        if self.target_speedup is None:
            return self.keep
        if speedup is None and parent is self.ancestor:
            speedup = 1.0
        elif speedup is None:
            speedup = settled(self.runtime, self.ancestor, parent, self.settings.batch).speedup
        floor = min(1.0, speedup / self.target_speedup)
        if floor > self.keep:
            logger.info(
                "parent at %.3gx of the ancestor: the budget keeps %.3g of it (target %.3gx)",
                speedup, floor, self.target_speedup,
            )  # fmt: skip
        return max(self.keep, floor)

    def target(self, parent: onnx.ModelProto, analysis: Analysis) -> Target | None:
        """The parent's latency model (table reused across generations), for the budget."""
        if not self.budget:
            return None
        return latency_target(parent, analysis, self.settings, self.runtime)

    def offspring(
        self,
        parent: onnx.ModelProto,
        analysis: Analysis,
        config: EncodingConfig,
        target: Target,
        rng: np.random.Generator,
        keep: float | None = None,
    ) -> onnx.ModelProto:
        """A sampled offspring within the measured latency budget (built, with its masks);
        ``keep``: the budget as a fraction of the parent (default :meth:`keep_for`)."""
        keep = self.keep_for(parent) if keep is None else keep
        _, fit = latency_offspring(parent, analysis, config, target, keep, rng)
        return fit.model
