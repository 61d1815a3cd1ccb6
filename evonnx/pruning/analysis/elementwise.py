"""Rules that join or split channels: broadcast elementwise ops, Concat and Split."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from evonnx.model.graph import node_name
from evonnx.pruning.analysis.core import (
    Builder,
    Layout,
    Segment,
    const_value,
    dim,
    freeze_inputs,
    inputs_with_layout,
    optional_input,
    rank,
    ranked_layout,
    rule,
)
from evonnx.pruning.groups import Role


def _aligned(x: Layout, y: Layout) -> bool:
    if len(x.segments) != len(y.segments):
        return False
    return all(
        s.start == t.start and s.block == t.block
        for s, t in zip(x.segments, y.segments, strict=True)
    )


def _broadcast_const(
    b: Builder, node: gs.Node, t: gs.Tensor, lay: Layout, out_rank: int, channels: int
) -> bool:
    """Attach a broadcast constant operand; False when it mixes channels."""
    v = const_value(t)
    assert v is not None
    cax = lay.axis - (out_rank - v.ndim)
    if cax < 0 or v.shape[cax] == 1:
        return True
    if v.shape[cax] != channels:
        return False
    for s in lay.segments:
        b.add(s, Role.PARAM, t.name, node_name(node), cax)
    return True


def _laid_inputs(b: Builder, node: gs.Node) -> tuple[list[tuple[int, Layout]], int] | None:
    """The inputs carrying channels (index, layout) and the output rank.

    None when no input carries channels, or when the output rank is unknown (their groups are
    then frozen).
    """
    laid = inputs_with_layout(b, node)
    if not laid:
        return None
    out_rank = rank(node.outputs[0])
    if out_rank is None:
        freeze_inputs(b, node, b.unknown(f"{node_name(node)}: output rank unknown"))
        return None
    return laid, out_rank


@rule(
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Max",
    "Min",
    "Sum",
    "Mean",
    "Pow",
    "PRelu",
    "Equal",
    "Less",
    "Greater",
    "Where",
    "And",
    "Or",
    "BitShift",
    "Mod",
)
def _elementwise(b: Builder, node: gs.Node) -> None:
    found = _laid_inputs(b, node)
    if found is None:
        return
    laid, out_rank = found
    ref_i, ref = max(laid, key=lambda il: dim(node.inputs[il[0]], il[1].axis) or 0)
    ref_t = node.inputs[ref_i]
    ref_rank = rank(ref_t) or out_rank
    out_axis = ref.axis + out_rank - ref_rank
    channels = dim(ref_t, ref.axis)
    ok = channels is not None
    for i, t in enumerate(node.inputs):
        if i == ref_i or not t.name:
            continue
        ok = ok and _merge_operand(b, node, t, ref, out_axis, out_rank, channels or 0)
    if not ok:
        freeze_inputs(b, node, f"{node_name(node)}: operands' channels cannot be matched")
    b.set_layout(node.outputs[0], ref.with_axis(out_axis))


def _merge_operand(
    b: Builder,
    node: gs.Node,
    t: gs.Tensor,
    ref: Layout,
    out_axis: int,
    out_rank: int,
    channels: int,
) -> bool:
    lay = b.layout(t)
    out_lay = ref.with_axis(out_axis)
    if const_value(t) is not None:
        return _broadcast_const(b, node, t, out_lay, out_rank, channels)
    r = rank(t)
    if r is None:
        return False
    cax = out_axis - (out_rank - r)
    d = dim(t, cax) if cax >= 0 else 1
    if d == 1:
        if lay is not None:
            b.freeze_layout(lay, f"{node_name(node)}: broadcast against a wider channel axis")
        return True
    if lay is None or d != channels or lay.axis != cax or not _aligned(lay, ref):
        return False
    for s, u in zip(ref.segments, lay.segments, strict=True):
        b.union(s.gid, u.gid)
    return True


@rule("Concat")
def _concat(b: Builder, node: gs.Node) -> None:
    found = _laid_inputs(b, node)
    if found is None:
        return
    laid, r = found
    axis = int(node.attrs.get("axis", 0)) % r
    if any(lay.axis != laid[0][1].axis for _, lay in laid):
        freeze_inputs(b, node, f"{node_name(node)}: inputs carry channels on different axes")
        return
    if axis != laid[0][1].axis:
        _elementwise(b, node)
        return
    segs: list[Segment] = []
    offset = 0
    for t in node.inputs:
        lay = b.layout(t)
        d = dim(t, axis)
        if d is None:
            freeze_inputs(
                b,
                node,
                b.unknown(f"{node_name(node)}: input {t.name} has an unknown channel count"),
            )
            return
        if lay is None:
            gid = b.new_group(
                d, f"{node_name(node)}: concatenated with {t.name}, which has no group"
            )
            lay = Layout(axis, (Segment(gid, 0, 1),))
        segs.extend(Segment(s.gid, s.start + offset, s.block) for s in lay.segments)
        offset += d
    b.set_layout(node.outputs[0], Layout(axis, tuple(segs)))


@rule("Split")
def _split(b: Builder, node: gs.Node) -> None:
    """Split on the channel axis: the inverse of Concat, cutting groups at the boundaries.

    Each output carries the segments that fall in its range; the split sizes become SHAPE
    members so the surgery rewrites them. Splits on other axes pass channels through.
    """
    found = ranked_layout(b, node)
    if found is None:
        return
    lay, r = found
    axis = int(node.attrs.get("axis", 0)) % r
    if axis != lay.axis:
        for out in node.outputs:
            b.set_layout(out, lay)
        return
    sizes_t = optional_input(node, 1)
    sizes = const_value(sizes_t) if sizes_t is not None else None
    if sizes_t is None or sizes is None:
        b.freeze_layout(lay, f"{node_name(node)} splits the channel axis by implicit sizes")
        return
    offsets = np.cumsum([0, *(int(v) for v in sizes.reshape(-1))]).tolist()
    for p in offsets[1:-1]:
        if not _cut_at(b, b.layouts[node.inputs[0].name], p):
            b.freeze_layout(lay, f"{node_name(node)} splits inside a channel block")
            return
    lay = b.layouts[node.inputs[0].name]
    for k, out in enumerate(node.outputs):
        lo, hi = offsets[k], offsets[k + 1]
        segs = tuple(
            Segment(s.gid, s.start - lo, s.block) for s in lay.segments if lo <= s.start < hi
        )
        for s in segs:
            b.add(s, Role.SHAPE, sizes_t.name, node_name(node), k)
        b.set_layout(out, Layout(axis, segs))


def _cut_at(b: Builder, lay: Layout, p: int) -> bool:
    """Cut the group whose segment straddles index ``p`` in two; False if ``p`` is mid-block."""
    for s in lay.segments:
        if s.start < p < s.start + b.group_size(s.gid) * s.block:
            if (p - s.start) % s.block:
                return False
            b.cut(s.gid, (p - s.start) // s.block)
            return True
    return True
