"""The latency layer's settings: :class:`LatencySettings` (where and how one latency is
measured) and :class:`MeasurementSettings` (the run's latency section: what a run measures,
and the speed-up it aims at)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from evonnx.errors import ConfigError, require
from evonnx.runtimes.base import RuntimeSettings

SPEEDUP_RULE = "a speed-up is a finite number above 1 (1.5: 1.5 times as fast as the ancestor)"
"""What a speed-up target (``--speedup``, ``--target-speedup``) may be."""


@dataclass(frozen=True)
class LatencySettings:
    """Where and how latency is measured.

    Attributes:
        runtime: The runtime and its measurement settings.
        batch: Batch size measured.
        step: Width step of the table's grid (``None``: the runtime's default).
        snap: Snap channel counts to the widths where latency drops.
        table: Latency table file (``None``: one per runtime and device in the cache dir).
    """

    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    batch: int = 1
    step: int | None = None
    snap: bool = True
    table: Path | None = None

    def __post_init__(self) -> None:
        if self.batch < 1:
            raise ConfigError(f"batch must be at least 1, got {self.batch}")
        if self.step is not None and self.step < 1:
            raise ConfigError(f"step must be at least 1, got {self.step}")


@dataclass(frozen=True)
class MeasurementSettings:
    """What a run measures, and on what: the run's latency section.

    Attributes:
        runtime: Where latency is measured (``env="latency"``: default ``ort-cpu``; with the
            other environments a runtime adds measured latency to every lineage row).
        latency_batch: Batch size latency is measured at.
        latency_statistic: A model's latency: the ``"min"`` (default: robust on machines
            shared with other jobs) or the ``"median"`` of its timed runs.
        runtime_threads: ``ort-cpu`` intra-op threads (0: onnxruntime's default).
        fp16: Measure in fp16 (``torch-cuda``, ``tensorrt``).
        target_speedup: ``env="latency"``: the budget stops shrinking at this speed-up over
            the ancestor.
        measure: Measure every generation's speed-up on ``ort-cpu`` beside generation 1
            (the speed report) when no runtime is given.
    """

    runtime: str | None = None
    latency_batch: int = 1
    latency_statistic: Literal["median", "min"] = "min"
    runtime_threads: int = 0
    fp16: bool = False
    target_speedup: float | None = None
    measure: bool = True

    def __post_init__(self) -> None:
        checks = [
            (
                self.target_speedup is None or 1.0 < self.target_speedup < math.inf,
                f"target_speedup {self.target_speedup} is not allowed: {SPEEDUP_RULE}",
            ),
            (self.latency_batch >= 1, "latency_batch must be at least 1"),
            (self.runtime_threads >= 0, "runtime_threads must be >= 0"),
        ]
        require(checks)

    @property
    def tuned(self) -> bool:
        """Whether any measurement option differs from its default (they need a runtime)."""
        return (
            self.latency_batch != 1
            or bool(self.runtime_threads)
            or self.fp16
            or self.latency_statistic != "min"
        )

    def latency(self, budgeted: bool) -> LatencySettings | None:
        """Latency measurement settings, or ``None`` when nothing is measured.

        Args:
            budgeted: The run's environment is a latency budget (``env="latency"``).
        """
        if self.runtime is None and not budgeted:
            return None
        rt = RuntimeSettings(
            self.runtime or "ort-cpu",
            self.runtime_threads,
            self.fp16,
            statistic=self.latency_statistic,
        )
        return LatencySettings(rt, batch=self.latency_batch)
