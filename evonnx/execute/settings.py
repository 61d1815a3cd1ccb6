"""The execution layer's settings: where a run's offspring jobs run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from evonnx.errors import require


@dataclass(frozen=True)
class ExecutionSettings:
    """Where offspring are retrained: the run's execution section.

    Attributes:
        executor: ``"local"`` (one after another in this process), ``"process"`` (a pool of
            processes on this machine) or ``"ray"`` (see :mod:`evonnx.execute.executors`).
            The lineage does not depend on it on CPU when the training ``threads`` are set.
        ray_address: Ray cluster address (``"auto"``: a running cluster); ``None`` starts a
            local one.
        gpus_per_offspring: Data-parallel ranks (torch DDP) retraining each offspring: one
            GPU each, or on CPU one process each (gloo); see :mod:`evonnx.execute.ddp`.
    """

    executor: Literal["local", "process", "ray"] = "local"
    ray_address: str | None = None
    gpus_per_offspring: int = 1

    def __post_init__(self) -> None:
        checks = [
            (
                self.executor in ("local", "process", "ray"),
                "executor must be 'local', 'process' or 'ray'",
            ),
            (
                self.ray_address is None or self.executor == "ray",
                "ray_address needs --executor ray",
            ),
            (self.gpus_per_offspring >= 1, "gpus_per_offspring must be at least 1"),
        ]
        require(checks)
