"""Shape and data-movement ops: Reshape, Slice, Gather, Pad, Resize, Upsample, Constant, ..."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from evonnx.converters.node import Args, Node, Result, arg, int_list, opt, torch_pads
from evonnx.errors import ConversionError


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _ints_from(node: Node, args: Args, key: str, index: int) -> list[int] | None:
    """Integer list from attribute ``key`` (old opsets) or input ``index`` (new opsets)."""
    value = node.ints(key)
    if value is not None:
        return value
    given = opt(args, index)
    return None if given is None else int_list(given)


def reshape(node: Node, args: Args, training: bool) -> Result:
    """Reshape (``0`` copies the input dim unless ``allowzero``; ``-1`` is inferred)."""
    x = arg(node, args, 0)
    shape = _ints_from(node, args, "shape", 1) or []
    if not node.i("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def flatten(node: Node, args: Args, training: bool) -> Result:
    """Flatten to 2-D at ``axis``."""
    x = arg(node, args, 0)
    axis = _axis(node.i("axis", 1), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def transpose(node: Node, args: Args, training: bool) -> Result:
    """Transpose (``perm`` default: reverse the axes)."""
    x = arg(node, args, 0)
    perm = node.ints("perm") or list(reversed(range(x.dim())))
    return x.permute(perm)


def concat(node: Node, args: Args, training: bool) -> Result:
    """Concat along ``axis``."""
    tensors = [a for a in args if a is not None]
    return torch.cat(tensors, dim=node.i("axis", 0))


def split(node: Node, args: Args, training: bool) -> Result:
    """Split by the ``split`` input/attribute, or into ``num_outputs`` (near-)equal parts."""
    x = arg(node, args, 0)
    axis = _axis(node.i("axis", 0), x.dim())
    sizes = _ints_from(node, args, "split", 1)
    if not sizes:
        parts = node.i("num_outputs", len(node.outputs))
        dim = x.shape[axis]
        chunk = -(-dim // parts)
        sizes = [chunk] * (parts - 1) + [dim - chunk * (parts - 1)]
    return tuple(torch.split(x, sizes, dim=axis))


def _slice_axis(x: torch.Tensor, axis: int, start: int, end: int, step: int) -> torch.Tensor:
    dim = x.shape[axis]
    start = start + dim if start < 0 else start
    end = end + dim if end < 0 else end
    if step > 0:
        start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        index: list[slice] = [slice(None)] * axis + [slice(start, end, step)]
        return x[tuple(index)]
    start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
    positions = torch.arange(start, end, step, device=x.device)
    return x.index_select(axis, positions)


def slice_(node: Node, args: Args, training: bool) -> Result:
    """Slice with starts/ends/axes/steps from inputs (opset >= 10) or attributes."""
    x = arg(node, args, 0)
    starts = _ints_from(node, args, "starts", 1) or []
    ends = _ints_from(node, args, "ends", 2) or []
    axes = _ints_from(node, args, "axes", 3) or list(range(len(starts)))
    steps_t = opt(args, 4)
    steps = int_list(steps_t) if steps_t is not None else [1] * len(starts)
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        if step == 0:
            raise ConversionError(f"{node.where()}: slice step 0")
        x = _slice_axis(x, _axis(axis, x.dim()), start, end, step)
    return x


def squeeze(node: Node, args: Args, training: bool) -> Result:
    """Squeeze the given axes (all size-1 axes when none are given)."""
    x = arg(node, args, 0)
    axes = _ints_from(node, args, "axes", 1)
    if not axes:
        return x.squeeze()
    return torch.squeeze(x, tuple(_axis(a, x.dim()) for a in axes))


def unsqueeze(node: Node, args: Args, training: bool) -> Result:
    """Unsqueeze: insert size-1 axes at the given output positions."""
    x = arg(node, args, 0)
    axes = _ints_from(node, args, "axes", 1) or []
    rank = x.dim() + len(axes)
    for axis in sorted(_axis(a, rank) for a in axes):
        x = x.unsqueeze(axis)
    return x


def gather(node: Node, args: Args, training: bool) -> Result:
    """Gather along ``axis`` (negative indices allowed)."""
    x, idx = arg(node, args, 0), arg(node, args, 1)
    axis = _axis(node.i("axis", 0), x.dim())
    idx = torch.where(idx < 0, idx + x.shape[axis], idx).long()
    out = x.index_select(axis, idx.reshape(-1))
    return out.reshape(list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1 :]))


def gather_elements(node: Node, args: Args, training: bool) -> Result:
    """GatherElements along ``axis``."""
    x, idx = arg(node, args, 0), arg(node, args, 1)
    axis = _axis(node.i("axis", 0), x.dim())
    return torch.gather(x, axis, torch.where(idx < 0, idx + x.shape[axis], idx).long())


def shape(node: Node, args: Args, training: bool) -> Result:
    """Shape (with opset-15 ``start``/``end``) as an int64 tensor."""
    x = arg(node, args, 0)
    dims = list(x.shape)
    end = node.i("end", len(dims)) if node.has("end") else len(dims)
    return torch.tensor(dims[node.i("start", 0) : end], dtype=torch.int64, device=x.device)


def size(node: Node, args: Args, training: bool) -> Result:
    """Size: number of elements as an int64 scalar."""
    x = arg(node, args, 0)
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


def constant(node: Node, args: Args, training: bool) -> Result:
    """Constant (normally lifted to a buffer and never run)."""
    return constant_value(node)


def constant_value(node: Node) -> torch.Tensor:
    """The tensor a Constant node produces.

    Raises:
        ConversionError: The node has no supported value attribute.
    """
    value = node.tensor("value")
    if value is not None:
        return value
    if node.has("value_float"):
        return torch.tensor(node.f("value_float", 0.0), dtype=torch.float32)
    if node.has("value_floats"):
        return torch.tensor(node.floats("value_floats"), dtype=torch.float32)
    if node.has("value_int"):
        return torch.tensor(node.i("value_int", 0), dtype=torch.int64)
    if node.has("value_ints"):
        return torch.tensor(node.ints("value_ints"), dtype=torch.int64)
    raise ConversionError(f"{node.where()}: unsupported Constant value attribute")


def constant_of_shape(node: Node, args: Args, training: bool) -> Result:
    """ConstantOfShape (``value`` default float32 zero)."""
    dims = arg(node, args, 0)
    value = node.tensor("value")
    if value is None:
        value = torch.zeros(1, dtype=torch.float32)
    return torch.full(
        int_list(dims), value.reshape(-1)[0].item(), dtype=value.dtype, device=dims.device
    )


def expand(node: Node, args: Args, training: bool) -> Result:
    """Expand with two-way broadcasting."""
    x = arg(node, args, 0)
    target = torch.broadcast_shapes(tuple(x.shape), tuple(int_list(arg(node, args, 1))))
    return x.expand(target)


def tile(node: Node, args: Args, training: bool) -> Result:
    """Tile."""
    return arg(node, args, 0).repeat(int_list(arg(node, args, 1)))


def range_(node: Node, args: Args, training: bool) -> Result:
    """Range(start, limit, delta)."""
    start, limit, delta = arg(node, args, 0), arg(node, args, 1), arg(node, args, 2)
    return torch.arange(
        start.item(), limit.item(), delta.item(), dtype=start.dtype, device=start.device
    )


# -------------------------------------------------------------------------------------- pad


def _pad_indices(size: int, begin: int, end: int, mode: str, device: torch.device) -> torch.Tensor:
    pos = torch.arange(-begin, size + end, device=device)
    if mode == "edge":
        return pos.clamp(0, size - 1)
    if mode == "wrap":
        return pos.remainder(size)
    if size == 1:  # reflect
        return torch.zeros_like(pos)
    period = 2 * (size - 1)
    pos = pos.remainder(period)
    return torch.where(pos >= size, period - pos, pos)


def pad(node: Node, args: Args, training: bool) -> Result:
    """Pad (constant, reflect, edge, wrap; pads/value/axes from inputs or attributes)."""
    x = arg(node, args, 0)
    pads = _ints_from(node, args, "pads", 1) or []
    value_t = opt(args, 2)
    value = node.f("value", 0.0) if value_t is None or value_t.numel() == 0 else value_t.item()
    axes_t = opt(args, 3)
    axes = [_axis(a, x.dim()) for a in int_list(axes_t)] if axes_t is not None else None
    n = len(pads) // 2
    axes = axes if axes is not None else list(range(n))
    full = [0] * (2 * x.dim())
    for k, axis in enumerate(axes):
        full[axis], full[axis + x.dim()] = pads[k], pads[k + n]
    mode = node.s("mode", "constant")
    if mode == "constant":
        return F.pad(x, torch_pads(full), value=float(value))
    for axis in range(x.dim()):
        begin, end = full[axis], full[axis + x.dim()]
        if begin or end:
            idx = _pad_indices(x.shape[axis], begin, end, mode, x.device)
            x = x.index_select(axis, idx)
    return x


# ----------------------------------------------------------------------------------- resize


def _source_coords(
    mode: str, out_size: int, in_size: int, scale: float, device: torch.device
) -> torch.Tensor:
    """ONNX ``coordinate_transformation_mode``: output index -> input coordinate (float32)."""
    x = torch.arange(out_size, dtype=torch.float32, device=device)
    # Divide by a float32 tensor, not a Python float: torch turns division by a scalar into
    # multiplication by its reciprocal, which rounds differently from onnxruntime.
    # A 0-d tensor still counts as a scalar there, hence the full tensor.
    s = torch.full_like(x, scale)
    if mode == "align_corners":
        return x * ((in_size - 1) / (out_size - 1)) if out_size > 1 else torch.zeros_like(x)
    if mode == "asymmetric":
        return x / s
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / s
    if mode == "pytorch_half_pixel" and out_size <= 1:
        return torch.zeros_like(x)
    if mode == "half_pixel_symmetric":
        adjustment = out_size / (s * in_size)
        offset = in_size / 2 * (1 - adjustment)
        return offset + (x + 0.5) / s - 0.5
    return (x + 0.5) / s - 0.5  # half_pixel, pytorch_half_pixel


def _nearest(coords: torch.Tensor, mode: str) -> torch.Tensor:
    """Nearest source index as onnxruntime rounds it (``coords + 0.5`` would round in float32)."""
    if mode == "floor":
        return torch.floor(coords)
    if mode == "ceil":
        return torch.ceil(coords)
    low = torch.floor(coords)
    frac = coords - low  # exact in float32
    if mode == "round_prefer_ceil":
        return low + (frac >= 0.5).to(low.dtype)
    return low + (frac > 0.5).to(low.dtype)  # round_prefer_floor


def _resize_axis(
    x: torch.Tensor, node: Node, axis: int, out_size: int, scale: float
) -> torch.Tensor:
    in_size = x.shape[axis]
    legacy = node.opset < 11  # Resize-10: asymmetric coordinates, floor (ceil if shrinking)
    coords = _source_coords(
        node.s("coordinate_transformation_mode", "asymmetric" if legacy else "half_pixel"),
        out_size,
        in_size,
        scale,
        x.device,
    )
    if node.s("mode", "nearest") == "nearest":
        default = ("ceil" if scale < 1 else "floor") if legacy else "round_prefer_floor"
        idx = _nearest(coords, node.s("nearest_mode", default))
        return x.index_select(axis, idx.clamp(0, in_size - 1).long())
    coords = coords.clamp(0, in_size - 1)
    lo = coords.floor().long().clamp(max=in_size - 1)
    hi = (lo + 1).clamp(max=in_size - 1)
    shape = [1] * x.dim()
    shape[axis] = out_size
    frac = (coords - lo.to(coords.dtype)).to(x.dtype).reshape(shape)
    return x.index_select(axis, lo) * (1 - frac) + x.index_select(axis, hi) * frac


def _resize_targets(
    node: Node, args: Args, x: torch.Tensor
) -> tuple[list[int], list[int], list[float]]:
    """Axes, output sizes and scales of a Resize node."""
    if node.opset < 11:
        scales_t, sizes_t = opt(args, 1), None
    else:
        scales_t, sizes_t = opt(args, 2), opt(args, 3)
    axes = [_axis(a, x.dim()) for a in node.ints("axes") or range(x.dim())]
    in_sizes = [x.shape[a] for a in axes]
    if sizes_t is not None and sizes_t.numel() > 0:
        outs = int_list(sizes_t)
        return axes, outs, [o / i for o, i in zip(outs, in_sizes, strict=True)]
    if scales_t is None or scales_t.numel() == 0:
        raise ConversionError(f"{node.where()}: Resize needs scales or sizes")
    scales = [float(s) for s in scales_t.float().reshape(-1).tolist()]
    # float32 product, as onnxruntime computes it (5 * float32(9 / 5) is 9, not 8.99...)
    outs = [
        math.floor(np.float32(i) * np.float32(s)) for i, s in zip(in_sizes, scales, strict=True)
    ]
    return axes, outs, scales


def resize(node: Node, args: Args, training: bool) -> Result:
    """Resize, nearest or (multi-)linear, separably per axis, matching onnxruntime."""
    x = arg(node, args, 0)
    axes, outs, scales = _resize_targets(node, args, x)
    for axis, out_size, scale in zip(axes, outs, scales, strict=True):
        if out_size != x.shape[axis] or scale != 1.0:
            x = _resize_axis(x, node, axis, out_size, scale)
    return x


def upsample(node: Node, args: Args, training: bool) -> Result:
    """Upsample (opset 9): Resize-10 semantics, the scales as input 1."""
    if opt(args, 1) is None:
        raise ConversionError(f"{node.where()}: Upsample needs its scales as input 1")
    return resize(node, args, training)
