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
    _ancestor_ms: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.runtime = (self.launch or make_runtime)(self.settings.runtime)

    def measure(self, model: onnx.ModelProto) -> tuple[float, float]:
        """``(latency ms, speed-up over the ancestor)`` measured side by side (the ancestor
        itself: alone, speed-up 1)."""
        if model is self.ancestor:
            self._ancestor_ms = self.runtime.latencies([model], self.settings.batch)[0]
            return self._ancestor_ms, 1.0
        ref, ms = self.runtime.latencies([self.ancestor, model], self.settings.batch)
        if self._ancestor_ms is None:
            self._ancestor_ms = ref
        return ms, ref / ms if ms > 0 else float("inf")

    @property
    def floor_ms(self) -> float | None:
        """The ancestor's latency over the target speed-up (``None``: no target)."""
        if self.target_speedup is None:
            return None
        if self._ancestor_ms is None:
            self._ancestor_ms = self.runtime.latencies([self.ancestor], self.settings.batch)[0]
        return self._ancestor_ms / self.target_speedup

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
    ) -> onnx.ModelProto:
        """A sampled offspring within the measured latency budget (built, with its masks)."""
        _, fit = latency_offspring(parent, analysis, config, target, self.keep, rng, self.floor_ms)
        return fit.model
