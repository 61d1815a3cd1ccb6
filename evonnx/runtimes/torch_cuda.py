"""``torch-cuda``: the ONNX->torch module on a CUDA GPU, timed by CUDA-graph replay.

Each model is specialized at its input shape (:func:`~evonnx.runtimes.specialize.specialize`)
so that no shape computation runs on CPU tensors, converted with
:func:`~evonnx.converters.to_torch`, moved to the GPU in channels-last layout (and fp16 with
``fp16=True``), warmed up on a side stream and captured into one CUDA graph. Timed rounds
replay the graphs of all models interleaved; CUDA events time ``_REPLAYS`` replays per round.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx

from evonnx.errors import DeployError, RuntimeUnavailableError
from evonnx.model.batch import rebatch
from evonnx.model.graph import graph_inputs
from evonnx.runtimes.base import Runtime, RuntimeSettings
from evonnx.runtimes.specialize import specialize

logger = logging.getLogger(__name__)

_REPLAYS = 10  # graph replays per timed round (CUDA events resolve about 0.5 us)


class TorchCudaRuntime(Runtime):
    """Latency of the converted torch module on ``cuda:0``.

    Raises:
        RuntimeUnavailableError: torch has no usable CUDA device here.
    """

    def __init__(self, settings: RuntimeSettings) -> None:
        super().__init__(settings)
        import torch

        if not torch.cuda.is_available():
            raise RuntimeUnavailableError(
                f"torch-cuda needs a CUDA GPU and a CUDA build of torch (torch {torch.__version__}"
                f" sees none); use --runtime ort-cpu"
            )
        self._torch = torch

    def device(self) -> str:
        """GPU name, torch and CUDA versions, precision."""
        t = self._torch
        return (
            f"{t.cuda.get_device_name(0)}|torch {t.__version__}|cuda {t.version.cuda}"
            f"|{'fp16' if self.settings.fp16 else 'fp32'}"
        )

    def latencies(self, models: Sequence[onnx.ModelProto], batch: int) -> list[float]:
        """Median ms per model of one CUDA-graph replay at ``batch``."""
        reduce = np.min if self.settings.statistic == "min" else np.median
        return [float(reduce(s)) for s in self.rounds(models, batch)]

    def rounds(self, models: Sequence[onnx.ModelProto], batch: int) -> np.ndarray:
        """Ms of one CUDA-graph replay per model and timed round, ``[model, round]``."""
        if not models:
            raise DeployError("no model to measure")
        graphs = [self._capture(m, batch, i) for i, m in enumerate(models)]
        return _interleaved(self._torch, graphs, self.settings.warmup, self.settings.runs)

    def _capture(self, model: onnx.ModelProto, batch: int, index: int) -> Any:
        torch = self._torch
        from evonnx.converters.torch_module import to_torch

        spec = specialize(rebatch(model, batch))
        dtype = torch.float16 if self.settings.fp16 else torch.float32
        module = to_torch(spec).eval().to("cuda", dtype=dtype)
        module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        rng = np.random.default_rng(self.settings.seed)
        inputs = [_input(torch, vi, rng, dtype) for vi in graph_inputs(spec)]
        try:
            with torch.inference_mode():
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    for _ in range(3):
                        module(*inputs)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    module(*inputs)
        except RuntimeError as exc:
            raise DeployError(f"model {index}: CUDA-graph capture failed: {exc}") from exc
        return graph


def _input(torch: Any, vi: onnx.ValueInfoProto, rng: np.random.Generator, dtype: Any) -> Any:
    shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    elem = vi.type.tensor_type.elem_type
    if elem == onnx.TensorProto.FLOAT:
        x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to("cuda", dtype)
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    np_type = onnx.helper.tensor_dtype_to_np_dtype(elem)
    return torch.from_numpy(np.zeros(shape, dtype=np_type)).to("cuda")


def _interleaved(torch: Any, graphs: Sequence[Any], warmup: int, runs: int) -> np.ndarray:
    for _ in range(warmup):
        for g in graphs:
            g.replay()
    torch.cuda.synchronize()
    samples = np.zeros((len(graphs), runs))
    order = list(range(len(graphs)))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for r in range(runs):
        for i in order if r % 2 == 0 else order[::-1]:
            start.record()
            for _ in range(_REPLAYS):
                graphs[i].replay()
            end.record()
            end.synchronize()
            samples[i, r] = start.elapsed_time(end) / _REPLAYS
    return samples
