"""Convert ONNX graphs to trainable torch modules and write trained weights back."""

from __future__ import annotations

from evonnx.converters.ops import SUPPORTED_OPS
from evonnx.converters.torch_module import (
    OnnxModule,
    mangle_name,
    to_torch,
    unmangle_name,
    write_back,
)

__all__ = ["SUPPORTED_OPS", "OnnxModule", "mangle_name", "to_torch", "unmangle_name", "write_back"]
