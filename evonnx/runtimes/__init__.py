"""Latency runtimes: measure what a model costs on the target it is deployed to.

A :class:`~evonnx.runtimes.base.Runtime` measures the median latency of one or more ONNX
models at a batch size, interleaved (every round runs every model once, in alternating order)
so that drifts of the machine hit all models alike. :func:`make_runtime` builds one by name:

=============  ==========================================================================
``ort-cpu``    onnxruntime, CPU execution provider (``threads``; 0: onnxruntime's default)
``ort-cuda``   onnxruntime, CUDA execution provider (needs ``onnxruntime-gpu``)
``ort-trt``    onnxruntime, TensorRT execution provider (needs ``onnxruntime-gpu`` + TensorRT)
``torch-cuda`` the project's ONNX->torch module on CUDA, CUDA-graph replay, fp32 or fp16,
               channels-last; the graph is specialized at the input shape first
``tensorrt``   TensorRT through ``trtexec`` (engine built per model, GPU compute time)
=============  ==========================================================================

An unavailable runtime raises :class:`~evonnx.errors.RuntimeUnavailableError` (or
:class:`~evonnx.errors.ProviderError` for onnxruntime providers); there is no silent fallback.
"""

from __future__ import annotations

from evonnx.runtimes.base import RUNTIMES, Runtime, RuntimeSettings
from evonnx.runtimes.registry import make_runtime
from evonnx.runtimes.specialize import specialize

__all__ = ["RUNTIMES", "Runtime", "RuntimeSettings", "make_runtime", "specialize"]
