"""Retraining offspring networks in torch and scoring them with onnxruntime."""

from __future__ import annotations

from evonnx.retrain.evaluate import (
    DEFAULT_PROVIDERS,
    Metric,
    evaluate_onnx,
    evaluate_torch,
    make_session,
    top1_accuracy,
)
from evonnx.retrain.train import (
    AfterStep,
    LossFn,
    TrainConfig,
    TrainResult,
    resolve_device,
    train,
)

__all__ = [
    "DEFAULT_PROVIDERS",
    "AfterStep",
    "LossFn",
    "Metric",
    "TrainConfig",
    "TrainResult",
    "evaluate_onnx",
    "evaluate_torch",
    "make_session",
    "resolve_device",
    "top1_accuracy",
    "train",
]
