"""A deterministic stand-in device for tests of latency bookkeeping (timings are never asserted)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from evonnx.model.batch import rebatch
from evonnx.pruning.metrics import compute_metrics
from evonnx.runtimes import Runtime, RuntimeSettings
from evonnx.runtimes.specialize import static_shapes


class MacRuntime(Runtime):
    """1 µs per run plus 1 ns per MAC; with ``pad``, conv channels count as padded up to
    multiples of ``pad`` (a latency staircase like a vector unit's) and a conv whose output
    channels are not a multiple of ``pad`` costs ``off_block`` times more (a fallback kernel:
    onnxruntime's NCHWc path, ``benchmarks/nchwc_block.py``); ``per_node`` ms per graph
    node and ``per_element`` ms per output element of every non-conv/FC node (what a layer
    timed alone does not show)."""

    def __init__(
        self,
        settings: RuntimeSettings | None = None,
        device: str = "fake-device",
        pad: int = 1,
        per_node: float = 0.0,
        per_element: float = 0.0,
        off_block: float = 1.0,
    ) -> None:
        super().__init__(settings or RuntimeSettings("ort-cpu"))
        self._device = device
        self.pad = pad
        self.per_node = per_node
        self.per_element = per_element
        self.off_block = off_block
        self.measured: list[int] = []

    def device(self) -> str:
        return self._device

    def latencies(self, models: Sequence[onnx.ModelProto], batch: int) -> list[float]:
        self.measured.append(len(models))
        return [1e-3 + 1e-6 * self._macs(m) + self._extra(m, batch) for m in models]

    def _extra(self, model: onnx.ModelProto, batch: int) -> float:
        if not (self.per_node or self.per_element):
            return 0.0
        nodes = model.graph.node
        shapes = static_shapes(rebatch(model, batch)) if self.per_element else {}
        elements = sum(
            int(np.prod(shapes.get(n.output[0], (0,))))
            for n in nodes
            if n.op_type not in ("Conv", "Gemm", "MatMul")
        )
        return self.per_node * len(nodes) + self.per_element * elements

    def _macs(self, model: onnx.ModelProto) -> float:
        total = 0.0
        for lay in compute_metrics(model).layers:
            factor = 1.0
            if lay.op_type == "Conv":
                for c in lay.shape[:2]:
                    factor *= (-(-c // self.pad) * self.pad) / c
                factor *= self.off_block if lay.shape[0] % self.pad else 1.0
            total += lay.macs * factor
        return total
