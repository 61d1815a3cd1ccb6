"""The dataflow of removed channels' constants, from their producers to the layers reading them.

:func:`channel_constants` evaluates, for every channel position of every layer input, the
constant a channel emits once its producer filters are gone (the producer's bias carried
through BatchNorm, activations and per-channel elementwise constants; unknown where an op on
the path cannot be evaluated exactly), so the surgery can fold it into the reading layer
instead of dropping it.

One value per channel position cannot describe every tensor: a Reshape that cuts the channel
axis into several axes (a fused QKV projection reshaped to ``[.., 3, heads, head_dim]``)
leaves on its last axis positions whose constant differs per head. For such tensors
:func:`full_values` carries the whole constant tensor (at the analysed shape, ``nan`` where
unknown) through the layout ops and the attention-weighted sum that follow, until a Reshape
merges the axes back and one value per position describes it again. The layer-input values
are then exact per position, as the fold needs them.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from evonnx.model.graph import node_name
from evonnx.pruning.analysis.constants import ELEMENTWISE, LAYERS, READERS, evaluate, per_channel
from evonnx.pruning.analysis.core import (
    Builder,
    ReshapeMap,
    const_value,
    dim,
    known_shape,
    map_reshape,
    optional_input,
    prod,
    rank,
)
from evonnx.pruning.groups import ChannelConstant, Geometry

RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_LIMIT = 1 << 22  # elements: larger tensors fall back to one value per position (or nan)

# Ops that map a channel-uniform input to the same uniform value (over non-channel axes).
_UNIFORM_PASS = frozenset(
    {
        "MaxPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "Transpose",
        "Slice",
        "Resize",
        "Upsample",
    }
)


def channel_constants(b: Builder, graph: gs.Graph) -> tuple[ChannelConstant, ...]:
    """Per-position constants at the input of every layer that reads a channel layout (and
    attention scores whose keys' constants are unknown frozen: :func:`check_keys`).

    ``vals`` holds one value per position along each tensor's channel axis; ``full`` holds
    the whole constant tensor where it varies along other axes too (after a Reshape cut the
    channel axis into several, as attention heads do; :func:`full_values`).
    """
    vals: dict[str, np.ndarray] = {}
    full: dict[str, np.ndarray] = {}
    out: list[ChannelConstant] = []
    for node in graph.nodes:
        if node.op == "MatMul" and len(node.inputs) == 2 and const_value(node.inputs[1]) is None:
            check_keys(b, node, vals, full)  # may freeze the scores' channels
        if node.op in READERS and node.inputs and node.inputs[0].name in vals:
            x = node.inputs[0]
            values = tuple(None if np.isnan(v) else float(v) for v in vals[x.name])
            alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
            out.append(ChannelConstant(node_name(node), values, geometry(node), alpha, node.op))
        for t in node.outputs:
            lay = b.layouts.get(t.name)
            n = dim(t, lay.axis) if lay is not None else None
            if lay is None or not n:
                continue
            whole = full_values(b, node, t, vals, full)
            r = rank(t)
            if whole is not None and r is not None:
                full[t.name] = whole
                v = per_channel(whole, lay.axis, r, n)
            else:
                v = _node_values(b, node, t, lay.axis, n, vals)
            vals[t.name] = v if v is not None and v.shape == (n,) else np.full(n, np.nan)
    return tuple(out)


def _node_values(
    b: Builder, node: gs.Node, t: gs.Tensor, axis: int, n: int, vals: dict[str, np.ndarray]
) -> np.ndarray | None:
    """Per-position constants of output ``t`` (channel axis ``axis``, ``n`` positions)."""
    op = node.op
    if op == "MatMul" and const_value(node.inputs[1]) is None:
        return None  # attention-weighted values: see full_values
    if op in LAYERS:
        return _layer_output(node, n)
    if op in RESHAPES:
        return reshaped_values(b, node, vals)
    if op == "Concat":
        return _concat(node, axis, vals)
    if op == "Split":
        return _split(node, t, axis, n, vals)
    if op in ELEMENTWISE:  # any operand may be the tracked one (``Mul(scale, x)``)
        return _elementwise(node, t, axis, n, vals)
    src = vals.get(node.inputs[0].name)
    if op in _UNIFORM_PASS or src is None:
        return src
    if op == "Pad":
        return _padded(node, src)
    if op == "AveragePool":  # zero padding counted in the mean keeps only a zero uniform
        return src if _avgpool_keeps_uniform(node) else np.where(src == 0, src, np.nan)
    if op == "InstanceNormalization":
        bias = const_value(node.inputs[2])
        return None if bias is None else np.asarray(bias, np.float64).reshape(-1)
    return None


def _layer_output(node: gs.Node, n: int) -> np.ndarray | None:
    """A layer's output when its filters are all zero: its bias (``beta * C`` for Gemm)."""
    bias = optional_input(node, 2)
    if node.op == "MatMul" or bias is None:
        return np.zeros(n)
    v = const_value(bias)
    if v is None:
        return None
    v = np.asarray(v, np.float64)
    if node.op == "Gemm":
        v = v * float(node.attrs.get("beta", 1.0))
        if v.size == 1:
            return np.full(n, float(v.reshape(-1)[0]))
        if v.ndim == 2 and v.shape[0] != 1:
            return None
    v = v.reshape(-1)
    return v if v.size == n else None


def _operand(
    t: gs.Tensor, axis: int, out_rank: int, vals: dict[str, np.ndarray]
) -> np.ndarray | None:
    """Operand ``t`` shaped to broadcast against an output of rank ``out_rank`` whose channel
    axis is ``axis``: tracked values as ``[1, .., n, .., 1]``, constants as they are."""
    if not t.name:
        return None
    c = const_value(t)
    if c is not None:
        return np.asarray(c, np.float64)
    v = vals.get(t.name)
    r = rank(t)
    if v is None or r is None:
        return None
    cax = axis - (out_rank - r)
    if cax < 0:
        return None
    shape = [1] * r
    shape[cax] = v.size
    return v.reshape(shape)


def _elementwise(
    node: gs.Node, t: gs.Tensor, axis: int, n: int, vals: dict[str, np.ndarray]
) -> np.ndarray | None:
    r = rank(t)
    if r is None:
        return None
    res = evaluate(node, [_operand(i, axis, r, vals) for i in node.inputs])
    return None if res is None else per_channel(res, axis, r, n)


def _concat(node: gs.Node, axis: int, vals: dict[str, np.ndarray]) -> np.ndarray | None:
    r = rank(node.outputs[0])
    if r is None or int(node.attrs.get("axis", 0)) % r != axis:
        parts = [vals.get(i.name) for i in node.inputs]
        if any(p is None for p in parts) or any(p.shape != parts[0].shape for p in parts):  # type: ignore[union-attr]
            return None
        first = parts[0]
        assert first is not None
        return np.where(np.all([p == first for p in parts], axis=0), first, np.nan)
    pieces = []
    for i in node.inputs:
        d = dim(i, axis)
        if d is None:
            return None
        pieces.append(vals.get(i.name, np.full(d, np.nan)))
    return np.concatenate(pieces)


def _split(
    node: gs.Node, t: gs.Tensor, axis: int, n: int, vals: dict[str, np.ndarray]
) -> np.ndarray | None:
    src = vals.get(node.inputs[0].name)
    r = rank(node.inputs[0])
    if src is None or r is None:
        return None
    if int(node.attrs.get("axis", 0)) % r != axis:
        return src
    k = list(node.outputs).index(t)
    sizes = [dim(o, axis) for o in node.outputs]
    if any(s is None for s in sizes):
        return None
    start = sum(s for s in sizes[:k] if s is not None)
    return src[start : start + n]


def _padded(node: gs.Node, src: np.ndarray) -> np.ndarray:
    """Edge, reflect and wrap padding keep a uniform channel; constant padding keeps the
    channels equal to the pad value, or all when nothing is padded."""
    if node.attrs.get("mode", "constant") != "constant":
        return src
    pads = node.attrs.get("pads")
    if pads is None:
        p = optional_input(node, 1)
        v = const_value(p) if p is not None else None
        if v is None:
            return np.full(src.shape, np.nan)
        pads = v.reshape(-1).tolist()
    if not any(int(x) for x in pads):
        return src
    fill_t = optional_input(node, 2)
    fill = const_value(fill_t) if fill_t is not None else None
    value = float(node.attrs.get("value", 0.0)) if fill is None else float(fill.reshape(-1)[0])
    return np.where(src == value, src, np.nan)


def _avgpool_keeps_uniform(node: gs.Node) -> bool:
    """An average of a uniform channel is uniform unless zero padding enters the mean."""
    if not int(node.attrs.get("count_include_pad", 0)):
        return True
    padded = any(int(p) for p in node.attrs.get("pads", [0]))
    auto = node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")
    return not padded and not auto and not int(node.attrs.get("ceil_mode", 0))


def geometry(node: gs.Node) -> Geometry | None:
    """The window of a Conv or ConvTranspose (``auto_pad`` resolved where sizes are known)."""
    x, w = node.inputs[0], node.inputs[1]
    r = rank(x)
    if node.op not in ("Conv", "ConvTranspose") or r is None or r < 3 or w.shape is None:
        return None
    n = r - 2
    spatial = tuple(dim(x, a) for a in range(2, r))
    strides = tuple(int(v) for v in node.attrs.get("strides", [1] * n))
    dilations = tuple(int(v) for v in node.attrs.get("dilations", [1] * n))
    pads = tuple(int(v) for v in node.attrs.get("pads", [0] * 2 * n))
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        kernel = [int(k) for k in w.shape[2:]]
        total = [
            max(((s or 1) + st - 1) // st * st - st + (k - 1) * d + 1 - (s or 1), 0)
            if s is not None
            else (k - 1) * d
            for s, st, k, d in zip(spatial, strides, kernel, dilations, strict=True)
        ]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pads = tuple(small + big if auto == "SAME_UPPER" else big + small)
    return Geometry(pads, strides, dilations, spatial)


# --------------------------------------------------------------------------- whole tensors


def _mapping(b: Builder, node: gs.Node, t: gs.Tensor) -> ReshapeMap | None:
    x = node.inputs[0]
    lay = b.layouts.get(x.name)
    ish, osh = known_shape(x), known_shape(t)
    if lay is None or ish is None or osh is None:
        return None
    return map_reshape(ish, osh, lay.axis)


def materialize(
    b: Builder, t: gs.Tensor, vals: dict[str, np.ndarray], full: dict[str, np.ndarray]
) -> np.ndarray | None:
    """The whole constant tensor of ``t`` (from its per-position values if need be)."""
    if t.name in full:
        return full[t.name]
    v, lay, shape = vals.get(t.name), b.layouts.get(t.name), known_shape(t)
    if v is None or lay is None or shape is None or prod(shape) > _LIMIT:
        return None
    if shape[lay.axis] != v.size:
        return None
    bshape = [1] * len(shape)
    bshape[lay.axis] = v.size
    return np.broadcast_to(v.reshape(bshape), shape)


def full_values(
    b: Builder,
    node: gs.Node,
    t: gs.Tensor,
    vals: dict[str, np.ndarray],
    full: dict[str, np.ndarray],
) -> np.ndarray | None:
    """The whole constant tensor of output ``t`` of ``node``, or None where one value per
    channel position describes it (or nothing exact is known)."""
    if not node.inputs:
        return None
    x, op, osh = node.inputs[0], node.op, known_shape(t)
    if osh is None or prod(osh) > _LIMIT:
        return None
    if op in RESHAPES:
        m = _mapping(b, node, t)
        if x.name not in full and not (m is not None and m.cut):
            return None
        src = materialize(b, x, vals, full)
        return None if src is None or src.size != prod(osh) else np.reshape(src, osh)
    if op == "MatMul" and len(node.inputs) == 2 and const_value(node.inputs[1]) is None:
        return _weighted(b, node, osh, vals, full)
    src = full.get(x.name)
    if src is None:
        return None
    if op == "Transpose":
        perm = [int(p) for p in node.attrs.get("perm", list(range(src.ndim))[::-1])]
        return np.transpose(src, perm)
    if op == "Split":
        axis = int(node.attrs.get("axis", 0)) % src.ndim
        shapes = [known_shape(o) for o in node.outputs]
        if any(s is None for s in shapes):
            return None
        k = list(node.outputs).index(t)
        start = sum(s[axis] for s in shapes[:k] if s is not None)
        return np.take(src, np.arange(start, start + osh[axis]), axis=axis)
    if op in ("Identity", "Dropout"):
        return src
    return None


def _weighted(
    b: Builder,
    node: gs.Node,
    osh: tuple[int, ...],
    vals: dict[str, np.ndarray],
    full: dict[str, np.ndarray],
) -> np.ndarray | None:
    """``att @ v`` with ``att`` a Softmax over its last axis (rows summing to one): a value
    constant along ``v``'s positions passes unchanged; anything else is unknown."""
    att, v = node.inputs
    src = att.inputs[0] if len(att.inputs) == 1 else None
    r = rank(att)
    if src is None or src.op != "Softmax" or r is None:
        return None
    if int(src.attrs.get("axis", -1)) % r != r - 1:
        return None
    whole = materialize(b, v, vals, full)
    if whole is None or whole.ndim < 2:
        return None
    col = whole[..., :1, :]
    same = np.all(whole == col, axis=-2, keepdims=True)
    try:
        return np.broadcast_to(np.where(same, col, np.nan), osh)
    except ValueError:
        return None


def reshaped_values(b: Builder, node: gs.Node, vals: dict[str, np.ndarray]) -> np.ndarray | None:
    """Per-position values after a Reshape that keeps the channel axis whole (each channel
    repeated over the axes merged after it, the whole repeated over those merged before)."""
    x, t = node.inputs[0], node.outputs[0]
    src = vals.get(x.name)
    if src is None:
        return None
    m = _mapping(b, node, t)
    if m is None:  # shapes unknown here (a computed target): channels expand in place
        lay = b.layouts.get(t.name)
        n = dim(t, lay.axis) if lay is not None else None
        if n is None or n % src.size:
            return None
        return np.repeat(src, n // src.size)
    if m.cut:
        return None
    return np.tile(np.repeat(src, m.inner), m.outer)


def check_keys(
    b: Builder, node: gs.Node, vals: dict[str, np.ndarray], full: dict[str, np.ndarray]
) -> None:
    """Freeze the channels of attention scores ``q @ k^T`` unless ``k^T`` carries known values,
    constant along the key positions (its last axis), once their producers are gone: only
    then is what a removed channel leaves in the scores a shift the Softmax cancels
    (:mod:`evonnx.pruning.analysis.attention`)."""
    a, k = node.inputs
    lay = b.layouts.get(k.name)
    if b.layouts.get(a.name) is None or lay is None:
        return
    whole = materialize(b, k, vals, full)
    known = whole is not None and whole.ndim >= 2 and not np.isnan(whole).any()
    if known and whole is not None and bool(np.all(whole == whole[..., :1])):
        return
    b.freeze_layout(
        lay,
        f"{node_name(node)}: the keys' channels are not known constants along the key "
        "positions once their producers are gone",
    )
