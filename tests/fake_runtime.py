"""A deterministic stand-in device for tests of latency bookkeeping (timings are never asserted)."""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from evonnx.metrics import compute_metrics
from evonnx.runtimes import Runtime, RuntimeSettings


class MacRuntime(Runtime):
    """1 µs per run plus 1 ns per MAC; with ``pad``, conv channels count as padded up to
    multiples of ``pad`` (a latency staircase like a vector unit's)."""

    def __init__(
        self, settings: RuntimeSettings | None = None, device: str = "fake-device", pad: int = 1
    ) -> None:
        super().__init__(settings or RuntimeSettings("ort-cpu"))
        self._device = device
        self.pad = pad
        self.measured: list[int] = []

    def device(self) -> str:
        return self._device

    def latencies(self, models: Sequence[onnx.ModelProto], batch: int) -> list[float]:
        self.measured.append(len(models))
        return [1e-3 + 1e-6 * self._macs(m) for m in models]

    def _macs(self, model: onnx.ModelProto) -> float:
        total = 0.0
        for lay in compute_metrics(model).layers:
            factor = 1.0
            if lay.op_type == "Conv":
                for c in lay.shape[:2]:
                    factor *= (-(-c // self.pad) * self.pad) / c
            total += lay.macs * factor
        return total
