"""Rules of ops that reshape the channel axis: Reshape, Flatten, Squeeze, Unsqueeze."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from evonnx.analysis.core import (
    Builder,
    Layout,
    batch1,
    const_value,
    dim,
    prod,
    rule,
    static_shape,
)
from evonnx.graph import node_name
from evonnx.groups import Role


def _map_reshape(ish: tuple[int, ...], osh: tuple[int, ...], axis: int) -> tuple[int, int] | None:
    """(output axis, block factor) carrying input channel ``axis``, or None."""
    lead = prod(list(ish[:axis]))
    inner = prod(list(ish[axis + 1 :]))
    for oax in range(len(osh)):
        if prod(list(osh[:oax])) != lead:
            continue
        tail = prod(list(osh[oax + 1 :]))
        if osh[oax] == ish[axis] and tail == inner:
            return oax, 1
        if osh[oax] == ish[axis] * inner and tail == 1:
            return oax, inner
    return None


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(b: Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    if lay is None:
        return
    ish = static_shape(node.inputs[0]) or batch1(node.inputs[0])
    osh = static_shape(node.outputs[0]) or batch1(node.outputs[0])
    if osh is None and ish is not None and node.op == "Reshape":
        osh = _resolve_target(node, ish)
    mapped = _map_reshape(ish, osh, lay.axis) if ish and osh else None
    if mapped is None:
        b.freeze_layout(
            lay, f"{node_name(node)} reshapes the channel axis in a way evonnx cannot map"
        )
        return
    oax, factor = mapped
    out_lay = lay.scaled(factor, oax)
    if node.op == "Reshape" and not _reshape_target(b, node, out_lay):
        return
    b.set_layout(node.outputs[0], out_lay)


def _reshape_target(b: Builder, node: gs.Node, out_lay: Layout) -> bool:
    """Record the constant element of a Reshape target that holds the channel extent."""
    target = node.inputs[1]
    v = const_value(target)
    if v is not None:
        val = int(v.reshape(-1)[out_lay.axis])
        if val > 0 or (val == 0 and int(node.attrs.get("allowzero", 0))):
            for s in out_lay.segments:
                b.add(s, Role.SHAPE, target.name, node_name(node), out_lay.axis)
        return True
    piece = _concat_piece(target, out_lay.axis)
    if piece is not None:
        pv = const_value(piece)
        if pv is not None and int(pv.reshape(-1)[0]) == -1:
            return True
    b.freeze_layout(out_lay, f"{node_name(node)}: computed target shape evonnx cannot rewrite")
    return False


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
        dim = _shape_dim_source(piece)
        if dim is None or dim >= len(ish):
            return None
        out.append(ish[dim])
    return out


def _shape_dim_source(t: gs.Tensor) -> int | None:
    """``k`` when ``t`` is ``Unsqueeze(Gather(Shape(data), k))`` of the reshaped tensor."""
    if len(t.inputs) != 1 or t.inputs[0].op != "Unsqueeze":
        return None
    g = t.inputs[0].inputs[0]
    if len(g.inputs) != 1 or g.inputs[0].op != "Gather":
        return None
    idx = const_value(g.inputs[0].inputs[1])
    shp = g.inputs[0].inputs[0]
    if idx is None or idx.size != 1 or len(shp.inputs) != 1 or shp.inputs[0].op != "Shape":
        return None
    return int(idx.reshape(-1)[0])


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


def _concat_piece(t: gs.Tensor, index: int) -> gs.Tensor | None:
    """The 1-element input of a shape-building Concat that gives element ``index``."""
    if len(t.inputs) != 1 or t.inputs[0].op != "Concat":
        return None
    pos = 0
    for piece in t.inputs[0].inputs:
        n = dim(piece, 0)
        if n is None:
            return None
        if pos == index and n == 1:
            return piece
        pos += n
        if pos > index:
            return None
    return None
