"""onnxruntime execution providers as latency runtimes (``evonnx bench``'s measurement)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort

from evonnx.runtimes.base import Runtime, RuntimeSettings, cpu_name
from evonnx.runtimes.ort_timing import latency_rounds, median_latencies, resolve_provider
from evonnx.runtimes.worker import Worker

_PROVIDER = {"ort-cpu": "cpu", "ort-cuda": "cuda", "ort-trt": "tensorrt"}


class OrtRuntime(Runtime):
    """``ort-cpu``, ``ort-cuda`` or ``ort-trt``: interleaved rounds, one shared thread pool.

    Every measurement runs in one worker process the runtime keeps (started on the first,
    stopped with :meth:`close` or when the runtime is collected): a fresh interpreter per
    measurement would cost more than timing a small model.

    Raises:
        ProviderError: The execution provider is not in this onnxruntime build.
    """

    def __init__(self, settings: RuntimeSettings) -> None:
        super().__init__(settings)
        self.provider = _PROVIDER[settings.name]
        resolve_provider(self.provider)
        self._worker = Worker()

    def close(self) -> None:
        """Stop the worker process (a later measurement starts a new one)."""
        self._worker.close()

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_worker": None}  # a process does not travel

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._worker = Worker()

    def device(self) -> str:
        """CPU model (and GPU providers' name), onnxruntime version."""
        return f"{cpu_name()}|onnxruntime {ort.__version__}|{self.provider}"

    def latencies(self, models: Sequence[onnx.ModelProto], batch: int) -> list[float]:
        """Ms per model (see :func:`evonnx.runtimes.ort_timing.median_latencies`)."""
        s = self.settings
        return median_latencies(
            models, batch, self.provider, s.threads, s.warmup, s.runs, s.seed, s.statistic,
            self._worker,
        )  # fmt: skip

    def rounds(self, models: Sequence[onnx.ModelProto], batch: int) -> np.ndarray:
        """Ms of every timed round (see :func:`evonnx.runtimes.ort_timing.latency_rounds`)."""
        s = self.settings
        return latency_rounds(
            models, batch, self.provider, s.threads, s.warmup, s.runs, s.seed, self._worker
        )
