"""Constants of removed channels that vary along more than the channel axis.

A Reshape that cuts the channel axis into several axes (a fused QKV projection reshaped to
``[.., 3, heads, head_dim]``) leaves on its last axis positions whose constant differs per
head; one value per channel position cannot say that. For such tensors
:func:`full_values` carries the whole constant tensor (at the analysed shape, ``nan`` where
unknown) through the layout ops and the attention-weighted sum that follow, until a Reshape
merges the axes back and one value per position describes it again. The layer-input values
are then exact per position, as the fold needs them.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from evonnx.model.graph import node_name
from evonnx.pruning.analysis.core import Builder, batch1, const_value, dim, prod, rank, static_shape
from evonnx.pruning.analysis.reshape import ReshapeMap, map_reshape

RESHAPES = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze"})
_LIMIT = 1 << 22  # elements: larger tensors fall back to one value per position (or nan)


def _shape(t: gs.Tensor) -> tuple[int, ...] | None:
    return static_shape(t) or batch1(t)


def _mapping(b: Builder, node: gs.Node, t: gs.Tensor) -> ReshapeMap | None:
    x = node.inputs[0]
    lay = b.layouts.get(x.name)
    ish, osh = _shape(x), _shape(t)
    if lay is None or ish is None or osh is None:
        return None
    return map_reshape(ish, osh, lay.axis)


def materialize(
    b: Builder, t: gs.Tensor, vals: dict[str, np.ndarray], full: dict[str, np.ndarray]
) -> np.ndarray | None:
    """The whole constant tensor of ``t`` (from its per-position values if need be)."""
    if t.name in full:
        return full[t.name]
    v, lay, shape = vals.get(t.name), b.layouts.get(t.name), _shape(t)
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
    x, op, osh = node.inputs[0], node.op, _shape(t)
    if osh is None or prod(osh) > _LIMIT:
        return None
    if op in RESHAPES:
        m = _mapping(b, node, t)
        if x.name not in full and not (m is not None and m.split):
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
        shapes = [_shape(o) for o in node.outputs]
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
    if m.split:
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
