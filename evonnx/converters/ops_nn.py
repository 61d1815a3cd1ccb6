"""Layer ops: convolutions, dense layers, normalization, pooling and dropout."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evonnx.converters.node import Args, Node, Result, arg, opt, torch_pads

ConvFn = Callable[..., torch.Tensor]
_CONV: dict[int, ConvFn] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T: dict[int, ConvFn] = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAX_POOL: dict[int, ConvFn] = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL: dict[int, ConvFn] = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _spatial(node: Node, key: str, n: int, default: int) -> list[int]:
    value = node.ints(key)
    return value if value else [default] * n


@dataclass(frozen=True)
class Window:
    """Kernel size, strides and dilations of a conv or pool node, per spatial axis."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]


def _window(node: Node, kernel: Sequence[int]) -> Window:
    """The window of ``node`` with ``kernel`` (strides and dilations default to 1)."""
    n = len(kernel)
    return Window(list(kernel), _spatial(node, "strides", n, 1), _spatial(node, "dilations", n, 1))


def _same_pads(
    sizes: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    lower: bool,
) -> list[int]:
    """Pads of ``auto_pad=SAME_UPPER/SAME_LOWER`` (output size ``ceil(in / stride)``)."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begins.append(big if lower else small)
        ends.append(small if lower else big)
    return begins + ends


def window_pads(node: Node, x: torch.Tensor, win: Window) -> list[int]:
    """Explicit ONNX pads of a conv/pool node, resolving ``auto_pad``."""
    n = len(win.kernel)
    auto = node.s("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        sizes = list(x.shape[2:])
        return _same_pads(sizes, win.kernel, win.strides, win.dilations, auto == "SAME_LOWER")
    if auto == "VALID":
        return [0] * (2 * n)
    return _spatial(node, "pads", 2 * n, 0)


def _symmetric(pads: Sequence[int]) -> bool:
    n = len(pads) // 2
    return list(pads[:n]) == list(pads[n:])


# ------------------------------------------------------------------------------- conv / fc


def conv(node: Node, args: Args, training: bool) -> Result:
    """Conv (1-3 spatial dims, groups, dilations, strides, pads, auto_pad)."""
    x, w, b = arg(node, args, 0), arg(node, args, 1), opt(args, 2)
    win = _window(node, w.shape[2:])
    n = len(win.kernel)
    pads = window_pads(node, x, win)
    if not _symmetric(pads):
        x = F.pad(x, torch_pads(pads))
        pads = [0] * (2 * n)
    return _CONV[n](x, w, b, win.strides, pads[:n], win.dilations, node.i("group", 1))


def _conv_transpose_pads(
    node: Node, x: torch.Tensor, win: Window, out_pad: Sequence[int]
) -> list[int]:
    n = len(win.kernel)
    auto = node.s("auto_pad", "NOTSET")
    out_shape = node.ints("output_shape")
    if out_shape is None and auto in ("SAME_UPPER", "SAME_LOWER"):
        out_shape = [size * s for size, s in zip(x.shape[2:], win.strides, strict=True)]
    if out_shape is None:
        return [0] * (2 * n) if auto == "VALID" else _spatial(node, "pads", 2 * n, 0)
    out_shape = out_shape[-n:]
    begins, ends = [], []
    for i in range(n):
        span = (win.kernel[i] - 1) * win.dilations[i] + 1
        full = win.strides[i] * (x.shape[2 + i] - 1) + out_pad[i] + span
        total = full - out_shape[i]
        small, big = total // 2, total - total // 2
        begins.append(small if auto == "SAME_UPPER" else big)
        ends.append(big if auto == "SAME_UPPER" else small)
    return begins + ends


def conv_transpose(node: Node, args: Args, training: bool) -> Result:
    """ConvTranspose (groups, dilations, strides, pads, output_padding, output_shape)."""
    x, w, b = arg(node, args, 0), arg(node, args, 1), opt(args, 2)
    win = _window(node, w.shape[2:])
    n = len(win.kernel)
    out_pad = _spatial(node, "output_padding", n, 0)
    pads = _conv_transpose_pads(node, x, win, out_pad)
    group = node.i("group", 1)
    native = _symmetric(pads) and all(
        p < max(s, d) for p, s, d in zip(out_pad, win.strides, win.dilations, strict=True)
    )
    if native:
        return _CONV_T[n](x, w, b, win.strides, pads[:n], out_pad, group, win.dilations)
    # General case: full transposed conv, then crop (or zero-extend) each side, then bias.
    y = _CONV_T[n](x, w, None, win.strides, 0, 0, group, win.dilations)
    crop: list[int] = []
    for i in reversed(range(n)):
        crop += [-pads[i], out_pad[i] - pads[i + n]]
    y = F.pad(y, crop)
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * n)
    return y


def gemm(node: Node, args: Args, training: bool) -> Result:
    """Gemm: ``alpha * A' @ B' + beta * C``."""
    a, b, c = arg(node, args, 0), arg(node, args, 1), opt(args, 2)
    alpha, beta = node.f("alpha", 1.0), node.f("beta", 1.0)
    trans_a, trans_b = node.i("transA", 0), node.i("transB", 0)
    if trans_b and not trans_a and alpha == 1.0 and beta == 1.0 and (c is None or c.dim() == 1):
        return F.linear(a, b, c)
    y = (a.t() if trans_a else a) @ (b.t() if trans_b else b)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c if beta == 1.0 else c * beta)
    return y


def matmul(node: Node, args: Args, training: bool) -> Result:
    """MatMul (numpy semantics)."""
    return torch.matmul(arg(node, args, 0), arg(node, args, 1))


# ---------------------------------------------------------------------------- normalization


def batch_norm(node: Node, args: Args, training: bool) -> Result:
    """BatchNormalization: batch statistics and running-stat updates in train mode.

    The torch momentum is ``1 - onnx_momentum`` (ONNX default 0.9). Extra outputs
    (running mean/var) are returned when the node asks for them.
    """
    x = arg(node, args, 0)
    scale, bias = arg(node, args, 1), arg(node, args, 2)
    mean, var = arg(node, args, 3), arg(node, args, 4)
    momentum = 1.0 - node.f("momentum", 0.9)
    y = F.batch_norm(x, mean, var, scale, bias, training, momentum, node.f("epsilon", 1e-5))
    if len(node.outputs) > 1:
        return (y, mean, var)
    return y


def instance_norm(node: Node, args: Args, training: bool) -> Result:
    """InstanceNormalization."""
    x = arg(node, args, 0)
    return F.instance_norm(
        x, weight=arg(node, args, 1), bias=arg(node, args, 2), eps=node.f("epsilon", 1e-5)
    )


def layer_norm(node: Node, args: Args, training: bool) -> Result:
    """LayerNormalization over the axes from ``axis`` on (first output only)."""
    x, scale, bias = arg(node, args, 0), arg(node, args, 1), opt(args, 2)
    axis = node.i("axis", -1) % x.dim()
    y = F.layer_norm(x, list(x.shape[axis:]), None, None, node.f("epsilon", 1e-5)) * scale
    return y if bias is None else y + bias


# ---------------------------------------------------------------------------------- pooling


def _pool_window(node: Node, x: torch.Tensor) -> tuple[Window, list[int]]:
    """Window and explicit pads of a pooling node."""
    win = _window(node, node.ints("kernel_shape") or [])
    return win, window_pads(node, x, win)


def max_pool(node: Node, args: Args, training: bool) -> Result:
    """MaxPool (kernel, strides, pads, auto_pad, ceil_mode, dilations; no Indices output)."""
    x = arg(node, args, 0)
    win, pads = _pool_window(node, x)
    kernel, dilations = win.kernel, win.dilations
    n = len(kernel)
    too_big = any(
        p > ((k - 1) * d + 1) // 2 for p, k, d in zip(pads, kernel * 2, dilations * 2, strict=True)
    )
    if not _symmetric(pads) or too_big:
        x = F.pad(x, torch_pads(pads), value=-math.inf)
        pads = [0] * (2 * n)
    ceil = bool(node.i("ceil_mode", 0))
    return _MAX_POOL[n](x, kernel, win.strides, pads[:n], dilations, ceil)


def average_pool(node: Node, args: Args, training: bool) -> Result:
    """AveragePool (count_include_pad, ceil_mode, asymmetric pads; no dilations)."""
    x = arg(node, args, 0)
    win, pads = _pool_window(node, x)
    kernel, strides = win.kernel, win.strides
    n = len(kernel)
    ceil = bool(node.i("ceil_mode", 0))
    include = bool(node.i("count_include_pad", 0))
    fits = all(p <= k // 2 for p, k in zip(pads, kernel * 2, strict=True))
    if _symmetric(pads) and fits:
        return _AVG_POOL[n](x, kernel, strides, pads[:n], ceil, include)
    padded = F.pad(x, torch_pads(pads))
    total = _AVG_POOL[n](padded, kernel, strides, 0, ceil, True)
    if include:
        return total
    ones = F.pad(torch.ones_like(x[:1, :1]), torch_pads(pads))
    return total / _AVG_POOL[n](ones, kernel, strides, 0, ceil, True)


def global_average_pool(node: Node, args: Args, training: bool) -> Result:
    """GlobalAveragePool."""
    x = arg(node, args, 0)
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


def global_max_pool(node: Node, args: Args, training: bool) -> Result:
    """GlobalMaxPool."""
    x = arg(node, args, 0)
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


# ---------------------------------------------------------------------------------- dropout


def dropout(node: Node, args: Args, training: bool) -> Result:
    """Dropout: active in train mode (ratio from input 1 or attribute), identity in eval."""
    x = arg(node, args, 0)
    given = opt(args, 1)
    ratio = float(given.item()) if given is not None else node.f("ratio", 0.5)
    want_mask = len(node.outputs) > 1 and bool(node.outputs[1])
    if not training or ratio == 0.0:
        return (x, torch.ones_like(x, dtype=torch.bool)) if want_mask else x
    if not want_mask:
        return F.dropout(x, ratio, training=True)
    mask = torch.rand_like(x) >= ratio
    return x * mask / (1.0 - ratio), mask
