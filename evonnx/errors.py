"""Error hierarchy: every failure a user can cause is an :class:`EvonnxError`."""

from __future__ import annotations


class EvonnxError(Exception):
    """Base class of all errors evonnx reports to users."""


class ModelLoadError(EvonnxError):
    """The ONNX file is missing, corrupt, or cannot be used."""


class UnsupportedModelError(EvonnxError):
    """The model uses something evonnx cannot handle (opset, op, structure)."""


class PlanError(EvonnxError):
    """A pruning plan does not fit the model's channel groups."""


class DataError(EvonnxError):
    """A data set is missing, malformed, or does not match the model."""


class ConversionError(EvonnxError):
    """An ONNX graph cannot be turned into a torch module."""
