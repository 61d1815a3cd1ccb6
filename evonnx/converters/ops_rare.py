"""Less common ops the channel analysis prunes through: tests, Lp pooling, Hardmax, ...

Their rare reductions (ReduceL1, ReduceLogSum, ReduceLogSumExp) sit with the other
reductions in :mod:`evonnx.converters.ops_math`, Upsample with Resize in
:mod:`evonnx.converters.ops_shape`.
"""

from __future__ import annotations

import math

import torch

from evonnx.converters.node import Args, Node, Result, arg


def is_nan(node: Node, args: Args, training: bool) -> Result:
    """IsNaN."""
    return torch.isnan(arg(node, args, 0))


def is_inf(node: Node, args: Args, training: bool) -> Result:
    """IsInf (``detect_negative`` / ``detect_positive``, both on by default)."""
    x = arg(node, args, 0)
    neg, pos = node.i("detect_negative", 1), node.i("detect_positive", 1)
    if neg and pos:
        return torch.isinf(x)
    if neg:
        return torch.isneginf(x)
    if pos:
        return torch.isposinf(x)
    return torch.zeros_like(x, dtype=torch.bool)


def shrink(node: Node, args: Args, training: bool) -> Result:
    """Shrink: ``x + bias`` below ``-lambd``, ``x - bias`` above ``lambd``, else 0."""
    x = arg(node, args, 0)
    lambd, bias = node.f("lambd", 0.5), node.f("bias", 0.0)
    zero = torch.zeros_like(x)
    return torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero))


def hardmax(node: Node, args: Args, training: bool) -> Result:
    """Hardmax: one-hot of the first maximum along ``axis`` (opset 13: default -1)."""
    x = arg(node, args, 0)
    axis = node.i("axis", -1 if node.opset >= 13 else 1) % max(x.dim(), 1)
    if node.opset < 13:  # coerced to 2-D: [prod(dims[:axis]), prod(dims[axis:])]
        flat = x.reshape(math.prod(x.shape[:axis]), -1)
        return hardmax_2d(flat).reshape(x.shape)
    moved = x.movedim(axis, -1)
    return hardmax_2d(moved.reshape(-1, moved.shape[-1])).reshape(moved.shape).movedim(-1, axis)


def hardmax_2d(x: torch.Tensor) -> torch.Tensor:
    """One-hot of the first maximum of each row."""
    out = torch.zeros_like(x)
    return out.scatter_(1, torch.argmax(x, dim=1, keepdim=True), 1.0)


def global_lp_pool(node: Node, args: Args, training: bool) -> Result:
    """GlobalLpPool: ``(sum |x|^p)^(1/p)`` over the spatial axes (p default 2)."""
    x = arg(node, args, 0)
    p = float(node.i("p", 2))
    dims = tuple(range(2, x.dim()))
    return torch.sum(torch.abs(x) ** p, dim=dims, keepdim=True) ** (1.0 / p)


def swish(node: Node, args: Args, training: bool) -> Result:
    """Swish (opset 24): ``x * sigmoid(alpha * x)``."""
    x = arg(node, args, 0)
    return x * torch.sigmoid(x * node.f("alpha", 1.0))


def bit_shift(node: Node, args: Args, training: bool) -> Result:
    """BitShift on unsigned integers (``direction`` LEFT or RIGHT)."""
    x, y = arg(node, args, 0), arg(node, args, 1)
    if node.s("direction", "LEFT") == "LEFT":
        return torch.bitwise_left_shift(x, y)
    return torch.bitwise_right_shift(x, y)


def rms_normalization(node: Node, args: Args, training: bool) -> Result:
    """RMSNormalization (opset 23) over the axes from ``axis`` on, times ``scale``."""
    x, scale = arg(node, args, 0), arg(node, args, 1)
    axis = node.i("axis", -1) % x.dim()
    dims = tuple(range(axis, x.dim()))
    xf = x.float()
    rms = torch.sqrt(torch.mean(xf * xf, dim=dims, keepdim=True) + node.f("epsilon", 1e-5))
    return (xf / rms).to(x.dtype) * scale
