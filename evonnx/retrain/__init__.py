"""Retraining offspring networks in torch and scoring them with onnxruntime."""

from __future__ import annotations

from evonnx.retrain.evaluate import (
    DEFAULT_PROVIDERS,
    Metric,
    evaluate_onnx,
    evaluate_torch,
    make_session,
    predict_onnx,
    top1_accuracy,
)
from evonnx.retrain.train import (
    AfterStep,
    LossFn,
    TrainConfig,
    TrainResult,
    deterministic_mode,
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
    "deterministic_mode",
    "evaluate_onnx",
    "evaluate_torch",
    "make_session",
    "predict_onnx",
    "resolve_device",
    "top1_accuracy",
    "train",
]
