"""Rules of ops that reshape the channel axis: Reshape, Flatten, Squeeze, Unsqueeze."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from evonnx.model.graph import node_name
from evonnx.pruning.analysis.core import (
    Builder,
    Layout,
    ReshapeMap,
    Segment,
    const_value,
    dim,
    known_shape,
    map_reshape,
    prod,
    rule,
)
from evonnx.pruning.groups import Role


def _cut_layout(b: Builder, lay: Layout, d: int) -> Layout | None:
    """Layout on the last of the axes a channel axis is cut into (``d`` positions there).

    Position ``j`` there is channel ``q * d + j`` for every ``q``: each group is cut into
    pieces of ``d`` channels and all pieces are coupled into one group of ``d`` (channel
    ``j`` is kept or removed for every ``q`` at once, e.g. one head dimension in the query,
    key and value of every head). None when a segment is not made of whole pieces, or a group
    already has a shape element or a depthwise ``group`` (they count channels once each).
    """
    roots = [b.root(s.gid) for s in lay.segments]
    if len(set(roots)) < len(roots):
        return None
    whole = (Role.SHAPE, Role.GROUP_ATTR)  # one element per group: not cut into pieces
    if any(m.role in whole for r in roots for m in b.members[r]):
        return None
    if any(s.block != 1 or s.start % d or b.group_size(s.gid) % d for s in lay.segments):
        return None
    pieces: list[int] = []
    for s in lay.segments:
        rest = s.gid
        while b.group_size(rest) > d:
            lo, rest = b.cut(rest, d)
            pieces.append(lo)
        pieces.append(rest)
    for g in pieces[1:]:
        b.union(pieces[0], g)
    return Layout(0, (Segment(pieces[0], 0, 1),))


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(b: Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    if lay is None:
        return
    ish = known_shape(node.inputs[0])
    osh = known_shape(node.outputs[0])
    if osh is None and ish is not None and node.op == "Reshape":
        osh = _resolve_target(node, ish)
    mapped = map_reshape(ish, osh, lay.axis) if ish and osh else None
    reason = f"{node_name(node)} reshapes the channel axis in a way evonnx cannot map"
    if mapped is None:
        b.freeze_layout(lay, reason if ish and osh else b.unknown(f"{reason} (shape unknown)"))
        return
    if mapped.cut:
        cut = _cut_layout(b, lay, mapped.cut)
        if cut is None:
            b.freeze_layout(lay, f"{reason} (it cuts a channel block)")
            return
        out_lay = cut.with_axis(mapped.axis)
    else:
        assert ish is not None
        width = ish[lay.axis] * mapped.inner
        out_lay = _merged(lay.scaled(mapped.inner, mapped.axis), mapped.outer, width)
    if node.op == "Reshape" and not _reshape_target(b, node, out_lay, mapped):
        return
    b.set_layout(node.outputs[0], out_lay)


def _merged(lay: Layout, outer: int, width: int) -> Layout:
    """``lay`` repeated for each of ``outer`` positions (``width`` apart) merged in front of
    the channel axis."""
    if outer == 1:
        return lay
    segs = tuple(
        Segment(s.gid, o * width + s.start, s.block) for o in range(outer) for s in lay.segments
    )
    return Layout(lay.axis, segs)


def _reshape_target(b: Builder, node: gs.Node, out_lay: Layout, mapped: ReshapeMap) -> bool:
    """Record the element of a Reshape target that holds the channel extent.

    A constant target, or a computed one (``Concat`` of pieces, YOLO-head style), whose
    channel element is a constant (recorded for the surgery to rewrite), ``-1`` (inferred),
    or the input's own channel dimension read through ``Shape`` (adapts at run time).
    """
    target = node.inputs[1]
    same = mapped.inner == 1 and mapped.outer == 1 and not mapped.cut  # width unchanged
    v = const_value(target)
    if v is not None:
        val = int(v.reshape(-1)[out_lay.axis])
        if val > 0 or (val == 0 and int(node.attrs.get("allowzero", 0))):
            for s in out_lay.segments:
                b.add(s, Role.SHAPE, target.name, node_name(node), out_lay.axis)
        return True
    if same and _reads_channels(b, target, out_lay.axis, node.inputs[0]):
        return True
    found = _concat_piece(target, out_lay.axis)
    if found is not None:
        piece, index = found
        pv = const_value(piece)
        elem = int(pv.reshape(-1)[index]) if pv is not None else None
        if elem == -1:
            return True
        if elem is not None and elem > 0:  # the Concat is the constant's user
            for s in out_lay.segments:
                b.add(s, Role.SHAPE, piece.name, node_name(target.inputs[0]), index)
            return True
        if pv is None and same and _reads_channels(b, piece, index, node.inputs[0]):
            return True
    b.freeze_layout(out_lay, f"{node_name(node)}: computed target shape evonnx cannot rewrite")
    return False


def _reads_channels(b: Builder, piece: gs.Tensor, index: int, x: gs.Tensor) -> bool:
    """Element ``index`` of ``piece`` is the channel dimension of a tensor laid out like ``x``."""
    found = _shape_dim_source(piece, index)
    lay = b.layout(x)
    if found is None or lay is None:
        return False
    data, axis = found
    other = b.layout(data)
    return other is not None and other.axis == axis and _same_groups(b, other, lay)


def _same_groups(b: Builder, x: Layout, y: Layout) -> bool:
    return [(b.root(s.gid), s.start, s.block) for s in x.segments] == [
        (b.root(s.gid), s.start, s.block) for s in y.segments
    ]


def _target_elements(target: gs.Tensor, ish: tuple[int, ...]) -> list[int] | None:
    """Values of a Reshape target: constant, or a Concat of constants and input dims."""
    v = const_value(target)
    if v is not None:
        return [int(x) for x in v.reshape(-1)]
    if len(target.inputs) != 1 or target.inputs[0].op != "Concat":
        return None
    out: list[int] = []
    for piece in target.inputs[0].inputs:
        pv = const_value(piece)
        if pv is not None:
            out.extend(int(x) for x in pv.reshape(-1))
            continue
        found = _shape_dim_source(piece)
        if found is None or found[1] >= len(ish):
            return None
        out.append(ish[found[1]])
    return out


def _shape_dim_source(t: gs.Tensor, index: int = 0) -> tuple[gs.Tensor, int] | None:
    """``(data, k)`` when element ``index`` of ``t`` is dimension ``k`` of ``data``.

    Recognized: ``Unsqueeze(Gather(Shape(data), k))``, ``Slice(Shape(data), s, e)`` (element
    ``s + index``) and ``Shape(data)`` itself.
    """
    if len(t.inputs) != 1:
        return None
    node = t.inputs[0]
    if node.op == "Shape" and not node.attrs.get("start") and node.inputs:
        return node.inputs[0], index
    if node.op == "Slice" and len(node.inputs) >= 3:
        start = const_value(node.inputs[1])
        src = node.inputs[0]
        if start is None or start.size != 1 or len(src.inputs) != 1 or src.inputs[0].op != "Shape":
            return None
        if int(start.reshape(-1)[0]) < 0 or src.inputs[0].attrs.get("start"):
            return None
        return src.inputs[0].inputs[0], int(start.reshape(-1)[0]) + index
    if node.op != "Unsqueeze" or index:
        return None
    g = node.inputs[0]
    if len(g.inputs) != 1 or g.inputs[0].op != "Gather":
        return None
    idx = const_value(g.inputs[0].inputs[1])
    shp = g.inputs[0].inputs[0]
    if idx is None or idx.size != 1 or len(shp.inputs) != 1 or shp.inputs[0].op != "Shape":
        return None
    return shp.inputs[0].inputs[0], int(idx.reshape(-1)[0])


def _resolve_target(node: gs.Node, ish: tuple[int, ...]) -> tuple[int, ...] | None:
    """Output shape of a Reshape computed from its target (0 copies, -1 infers)."""
    dims = _target_elements(node.inputs[1], ish)
    if dims is None:
        return None
    allowzero = int(node.attrs.get("allowzero", 0))
    dims = [ish[i] if d == 0 and not allowzero and i < len(ish) else d for i, d in enumerate(dims)]
    if dims.count(-1) == 1:
        known = prod([d for d in dims if d != -1])
        if known <= 0 or prod(list(ish)) % known:
            return None
        dims[dims.index(-1)] = prod(list(ish)) // known
    return tuple(dims) if all(d > 0 for d in dims) else None


def _concat_piece(t: gs.Tensor, index: int) -> tuple[gs.Tensor, int] | None:
    """The input of a shape-building Concat holding element ``index``, and its position there."""
    if len(t.inputs) != 1 or t.inputs[0].op != "Concat":
        return None
    pos = 0
    for piece in t.inputs[0].inputs:
        v = const_value(piece)
        n = int(v.size) if v is not None else dim(piece, 0)
        if n is None:
            return None
        if pos <= index < pos + n:
            return piece, index - pos
        pos += n
    return None
