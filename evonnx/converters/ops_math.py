"""Element-wise, activation, softmax and reduction ops."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from evonnx.converters.node import ONNX_TO_TORCH, Args, Node, OpFn, Result, arg, int_list, opt
from evonnx.errors import ConversionError

Unary = Callable[[torch.Tensor], torch.Tensor]
Binary = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def unary(fn: Unary) -> OpFn:
    """Wrap a one-tensor torch function as an op."""

    def op(node: Node, args: Args, training: bool) -> Result:
        return fn(arg(node, args, 0))

    return op


def binary(fn: Binary) -> OpFn:
    """Wrap a broadcasting two-tensor torch function as an op."""

    def op(node: Node, args: Args, training: bool) -> Result:
        return fn(arg(node, args, 0), arg(node, args, 1))

    return op


def variadic(fn: Binary) -> OpFn:
    """Fold a broadcasting two-tensor torch function over all inputs (Max, Min, Sum)."""

    def op(node: Node, args: Args, training: bool) -> Result:
        tensors = [a for a in args if a is not None]
        if not tensors:
            raise ConversionError(f"{node.where()}: no inputs")
        return functools.reduce(fn, tensors)

    return op


def div(node: Node, args: Args, training: bool) -> Result:
    """Div: true division for floats, truncating division for integers (like onnxruntime)."""
    a, b = arg(node, args, 0), arg(node, args, 1)
    if a.is_floating_point() or b.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def mod(node: Node, args: Args, training: bool) -> Result:
    """Mod: ``fmod`` (sign of dividend) or Python-style remainder (sign of divisor)."""
    a, b = arg(node, args, 0), arg(node, args, 1)
    return torch.fmod(a, b) if node.i("fmod", 0) else torch.remainder(a, b)


def mean(node: Node, args: Args, training: bool) -> Result:
    """Mean: element-wise mean of all inputs."""
    tensors = [a for a in args if a is not None]
    return functools.reduce(torch.add, tensors) / len(tensors)


def where(node: Node, args: Args, training: bool) -> Result:
    """Where: ``cond ? x : y`` with broadcasting."""
    return torch.where(arg(node, args, 0).bool(), arg(node, args, 1), arg(node, args, 2))


def cast(node: Node, args: Args, training: bool) -> Result:
    """Cast to the ONNX element type in attribute ``to``."""
    return arg(node, args, 0).to(ONNX_TO_TORCH[node.i("to", 1)])


def cast_like(node: Node, args: Args, training: bool) -> Result:
    """CastLike: cast input 0 to the dtype of input 1."""
    return arg(node, args, 0).to(arg(node, args, 1).dtype)


def identity(node: Node, args: Args, training: bool) -> Result:
    """Identity."""
    return arg(node, args, 0)


# ------------------------------------------------------------------------------ activations


def _bound(node: Node, args: Args, index: int, key: str) -> float | torch.Tensor | None:
    value = opt(args, index)
    if value is not None:
        return value
    return node.f(key, 0.0) if node.has(key) else None


def clip(node: Node, args: Args, training: bool) -> Result:
    """Clip with min/max from inputs 1/2 (opset >= 11) or attributes (older)."""
    x = arg(node, args, 0)
    lo, hi = _bound(node, args, 1, "min"), _bound(node, args, 2, "max")
    if lo is None and hi is None:
        return x
    if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor):
        lo_t = lo if lo is None or isinstance(lo, torch.Tensor) else torch.tensor(lo).to(x)
        hi_t = hi if hi is None or isinstance(hi, torch.Tensor) else torch.tensor(hi).to(x)
        return torch.clamp(x, lo_t, hi_t)
    return torch.clamp(x, lo, hi)


def leaky_relu(node: Node, args: Args, training: bool) -> Result:
    """LeakyRelu (alpha default 0.01)."""
    return F.leaky_relu(arg(node, args, 0), node.f("alpha", 0.01))


def hard_sigmoid(node: Node, args: Args, training: bool) -> Result:
    """HardSigmoid: ``clamp(alpha * x + beta, 0, 1)``."""
    x = arg(node, args, 0)
    return torch.clamp(x * node.f("alpha", 0.2) + node.f("beta", 0.5), 0.0, 1.0)


def hard_swish(node: Node, args: Args, training: bool) -> Result:
    """HardSwish: ``x * clamp(x / 6 + 0.5, 0, 1)``."""
    x = arg(node, args, 0)
    return x * torch.clamp(x * (1.0 / 6.0) + 0.5, 0.0, 1.0)


def elu(node: Node, args: Args, training: bool) -> Result:
    """Elu (alpha default 1)."""
    return F.elu(arg(node, args, 0), node.f("alpha", 1.0))


def celu(node: Node, args: Args, training: bool) -> Result:
    """Celu (alpha default 1)."""
    return F.celu(arg(node, args, 0), node.f("alpha", 1.0))


def selu(node: Node, args: Args, training: bool) -> Result:
    """Selu with the ONNX alpha/gamma attributes."""
    x = arg(node, args, 0)
    alpha = node.f("alpha", 1.67326319217681884765625)
    gamma = node.f("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


def thresholded_relu(node: Node, args: Args, training: bool) -> Result:
    """ThresholdedRelu: ``x if x > alpha else 0``."""
    x = arg(node, args, 0)
    return torch.where(x > node.f("alpha", 1.0), x, torch.zeros_like(x))


def prelu(node: Node, args: Args, training: bool) -> Result:
    """PRelu with a slope broadcast to the input."""
    x, slope = arg(node, args, 0), arg(node, args, 1)
    return torch.where(x >= 0, x, x * slope)


def gelu(node: Node, args: Args, training: bool) -> Result:
    """Gelu (approximate ``none`` or ``tanh``)."""
    return F.gelu(arg(node, args, 0), approximate=node.s("approximate", "none"))


def _softmax_like(fn: Callable[[torch.Tensor, int], torch.Tensor]) -> OpFn:
    def op(node: Node, args: Args, training: bool) -> Result:
        x = arg(node, args, 0)
        if node.opset >= 13:
            return fn(x, node.i("axis", -1))
        axis = node.i("axis", 1) % max(x.dim(), 1)
        flat = x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
        return fn(flat, 1).reshape(x.shape)

    return op


softmax = _softmax_like(lambda x, dim: torch.softmax(x, dim))
log_softmax = _softmax_like(lambda x, dim: torch.log_softmax(x, dim))


# ------------------------------------------------------------------------------- reductions


def _reduce_axes(node: Node, args: Args, x: torch.Tensor) -> list[int] | None:
    """Axes to reduce; ``None`` means all; ``[]`` means none (noop_with_empty_axes)."""
    axes = node.ints("axes")
    given = opt(args, 1)
    if axes is None and given is not None:
        axes = int_list(given)
    if not axes:
        return [] if node.i("noop_with_empty_axes", 0) else None
    return sorted({a % max(x.dim(), 1) for a in axes})


Reducer = Callable[[torch.Tensor, list[int], bool], torch.Tensor]


def reduce(fn: Reducer) -> OpFn:
    """Wrap ``fn(x, dims, keepdim)`` as a Reduce* op."""

    def op(node: Node, args: Args, training: bool) -> Result:
        x = arg(node, args, 0)
        axes = _reduce_axes(node, args, x)
        if axes == []:
            return x
        dims = list(range(x.dim())) if axes is None else axes
        return fn(x, dims, bool(node.i("keepdims", 1)))

    return op


def _prod(x: torch.Tensor, dims: list[int], keep: bool) -> torch.Tensor:
    for d in sorted(dims, reverse=True):
        x = torch.prod(x, d, keepdim=keep)
    return x


reduce_mean = reduce(lambda x, d, k: torch.mean(x, d, keepdim=k))
reduce_sum = reduce(lambda x, d, k: torch.sum(x, d, keepdim=k))
reduce_max = reduce(lambda x, d, k: torch.amax(x, d, keepdim=k))
reduce_min = reduce(lambda x, d, k: torch.amin(x, d, keepdim=k))
reduce_prod = reduce(_prod)
reduce_l2 = reduce(lambda x, d, k: torch.sqrt(torch.sum(x * x, d, keepdim=k)))
reduce_sum_square = reduce(lambda x, d, k: torch.sum(x * x, d, keepdim=k))
reduce_l1 = reduce(lambda x, d, k: torch.sum(torch.abs(x), d, keepdim=k))
reduce_log_sum = reduce(lambda x, d, k: torch.log(torch.sum(x, d, keepdim=k)))
reduce_log_sum_exp = reduce(lambda x, d, k: torch.logsumexp(x, d, keepdim=k))


def _arg_extreme(largest: bool) -> OpFn:
    def op(node: Node, args: Args, training: bool) -> Result:
        x = arg(node, args, 0)
        axis = node.i("axis", 0) % max(x.dim(), 1)
        keep = bool(node.i("keepdims", 1))
        last = bool(node.i("select_last_index", 0))
        src = torch.flip(x, [axis]) if last else x
        idx = torch.argmax(src, axis, keep) if largest else torch.argmin(src, axis, keep)
        return x.shape[axis] - 1 - idx if last else idx

    return op


arg_max = _arg_extreme(True)
arg_min = _arg_extreme(False)
