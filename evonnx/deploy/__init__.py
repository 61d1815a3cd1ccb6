"""Deployment: interleaved onnxruntime benchmarks and TensorRT-ready export.

* :func:`~evonnx.deploy.bench.benchmark` measures two or more models side by side and reports
  speed-up, MAC ratio and ``realized = speed-up / MAC ratio``.
* :func:`evonnx.deploy.export.export` writes a folded, simplified, optionally fp16 and
  fixed-batch copy of a model, with a TensorRT compatibility report and ``trtexec`` line.
* :func:`~evonnx.model.batch.rebatch` fixes the batch dimension of a model.
"""

from __future__ import annotations

from evonnx.deploy.bench import (
    PROVIDERS,
    BenchResult,
    ModelTiming,
    Speedup,
    Timing,
    benchmark,
    resolve_provider,
)
from evonnx.deploy.export import (
    TENSORRT_OPSETS,
    TENSORRT_SUPPORTED_OPS,
    ExportResult,
    InputSpec,
    UnsupportedOp,
    tensorrt_compatibility,
)
from evonnx.errors import DeployError, ProviderError, RebatchError
from evonnx.model.batch import rebatch

__all__ = [
    "PROVIDERS",
    "TENSORRT_OPSETS",
    "TENSORRT_SUPPORTED_OPS",
    "BenchResult",
    "DeployError",
    "ExportResult",
    "InputSpec",
    "ModelTiming",
    "ProviderError",
    "RebatchError",
    "Speedup",
    "Timing",
    "UnsupportedOp",
    "benchmark",
    "rebatch",
    "resolve_provider",
    "tensorrt_compatibility",
]
