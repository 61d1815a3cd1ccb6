"""The runtime interface and the factory that builds a runtime from its name."""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnx

from evonnx.errors import ConfigError

logger = logging.getLogger(__name__)

Statistic = Literal["median", "min"]
RUNTIMES = ("ort-cpu", "ort-cuda", "ort-trt", "torch-cuda", "tensorrt")
"""Runtime names accepted by :func:`make_runtime`."""


@dataclass(frozen=True)
class RuntimeSettings:
    """How a runtime measures.

    Attributes:
        name: One of :data:`RUNTIMES`.
        threads: CPU intra-op threads (``ort-cpu``; 0: onnxruntime's default).
        fp16: Half precision (``torch-cuda``, ``tensorrt``; the ONNX model stays fp32).
        warmup: Untimed rounds.
        runs: Timed rounds.
        seed: Seed of the random inputs.
        statistic: What a latency is: the ``"min"`` of the timed rounds (default), or the
            ``"median"`` (on a machine shared with other jobs, a run longer than the
            scheduler's time slice is often preempted, which inflates the median of slow
            models far more than that of fast ones; the fastest run is the model's own cost:
            see ``docs/benchmarks.md``, *Latency estimators under contention*).
    """

    name: str = "ort-cpu"
    threads: int = 0
    fp16: bool = False
    warmup: int = 5
    runs: int = 30
    seed: int = 0
    statistic: Statistic = "min"

    def __post_init__(self) -> None:
        if self.name not in RUNTIMES:
            raise ConfigError(f"unknown runtime {self.name!r}; choose one of {', '.join(RUNTIMES)}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")
        if self.warmup < 0 or self.runs < 1:
            raise ConfigError(f"need warmup >= 0 and runs >= 1, got {self.warmup}, {self.runs}")
        if self.statistic not in ("median", "min"):
            raise ConfigError(f"statistic must be 'median' or 'min', got {self.statistic!r}")
        if self.fp16 and self.name.startswith("ort-"):
            raise ConfigError(
                f"fp16 is a torch-cuda/tensorrt setting; {self.name} runs the graph as it is "
                "(export it with `evonnx export --fp16` first)"
            )


class Runtime(ABC):
    """Measures ONNX models on one target.

    Subclasses check in ``__init__`` that the target is usable and raise
    :class:`~evonnx.errors.RuntimeUnavailableError` (or ``ProviderError``) when it is not.
    """

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings

    @property
    def name(self) -> str:
        """The runtime's name (``ort-cpu``, ...)."""
        return self.settings.name

    @abstractmethod
    def device(self) -> str:
        """Human-readable description of the device and software that run the models."""

    def fingerprint(self) -> str:
        """Short hash of everything that changes latencies: device, software, settings."""
        s = self.settings
        text = f"{self.device()}|{s.name}|threads={s.threads}|fp16={s.fp16}|{s.statistic}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @abstractmethod
    def latencies(self, models: Sequence[onnx.ModelProto], batch: int) -> list[float]:
        """Latency in milliseconds (``settings.statistic`` of the timed rounds) of each model
        at ``batch``, measured interleaved.

        Raises:
            DeployError: A model cannot be re-batched or run.
        """

    def rounds(self, models: Sequence[onnx.ModelProto], batch: int) -> np.ndarray:
        """Every timed round (ms) of each model, ``[model, round]``, measured interleaved
        (round ``r`` ran every model once, so ``[:, r]`` saw one machine state).

        Runtimes that only report a statistic return it as a single round.

        Raises:
            DeployError: A model cannot be re-batched or run.
        """
        return np.asarray(self.latencies(models, batch), dtype=np.float64)[:, None]


def cpu_name() -> str:
    """The CPU's model name and logical core count."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} x{os.cpu_count()}"
