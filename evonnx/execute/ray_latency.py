"""Latency measurements of a run on Ray: separate jobs with a device to themselves.

With the Ray executor the run's runtime (:mod:`evonnx.runtimes`) is a :class:`RayRuntime`:
every measurement (the generation's speed-up, the latency table, the trimming of the latency
environment) is a Ray task that reserves a whole device: one GPU for a GPU runtime, else the
runtime's CPU threads (all CPUs of a node for ``threads = 0``, onnxruntime's default).

Invariant: a measurement is submitted only while no training job of the run is in flight
(the driver measures between generations, and :meth:`RayExecutor.measure
<evonnx.execute.executors.RayExecutor.measure>` refuses otherwise), so a measurement never shares a
device with training. With the local executors the runtime stays in the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import onnx

from evonnx.runtimes.base import RUNTIMES, Runtime, RuntimeSettings
from evonnx.runtimes.registry import make_runtime

T = TypeVar("T")


class MeasuringExecutor(Protocol):
    """What :class:`RayRuntime` needs of its executor
    (:class:`~evonnx.execute.executors.RayExecutor`)."""

    def measure(self, settings: RuntimeSettings, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` as a measurement job with a device to itself."""
        ...


logger = logging.getLogger(__name__)

GPU_RUNTIMES = frozenset(RUNTIMES) - {"ort-cpu"}
"""Runtimes that measure on a GPU (a measurement job reserves one)."""


def device_job(settings: RuntimeSettings) -> str:
    """In a Ray worker: the runtime's device description (checks the runtime is usable)."""
    return make_runtime(settings).device()


def latency_job(settings: RuntimeSettings, models: Sequence[bytes], batch: int) -> list[float]:
    """In a Ray worker: the latencies (ms) of the serialized ``models`` at ``batch``."""
    runtime = make_runtime(settings)
    return runtime.latencies([onnx.load_from_string(m) for m in models], batch)


class RayRuntime(Runtime):
    """A runtime whose every measurement is a Ray job with a device to itself.

    Args:
        settings: The runtime and how it measures (built in each job).
        executor: The run's Ray executor (submits the jobs, keeps the invariant).

    Raises:
        RuntimeUnavailableError: The runtime cannot run on the cluster (checked at once).
    """

    def __init__(self, settings: RuntimeSettings, executor: MeasuringExecutor) -> None:
        super().__init__(settings)
        self._executor = executor
        self._device: str = executor.measure(settings, device_job, settings)
        logger.info("latency is measured on Ray jobs: %s", self._device)

    def device(self) -> str:
        """The device of the cluster's measurement jobs (asked once)."""
        return self._device

    def latencies(self, models: Sequence[onnx.ModelProto], batch: int) -> list[float]:
        """Latencies (ms) of ``models``, measured interleaved in one Ray job."""
        blobs = [m.SerializeToString() for m in models]
        result: list[float] = self._executor.measure(
            self.settings, latency_job, self.settings, blobs, batch
        )
        return result
