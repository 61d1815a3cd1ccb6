"""The MatMul of two activations: attention scores and the attention-weighted values.

``scores = q @ k^T`` contracts the channels of ``q`` (its last axis) with those of ``k^T``
(its second-to-last axis): the two are one group, and removing a channel removes it from
both. Where those channels' producers are gone, ``k`` carries a constant along the key
positions, so the removed term ``q_j * k_j`` shifts every score row by a constant; when the
scores reach a ``Softmax`` over the key axis only through such shifts and scalar scales, the
shift cancels and the channels may go (:func:`softmax_follows`). ``att @ v`` mixes positions,
not channels: ``v``'s channels (on its last axis) pass to the output, where a removed
channel's constant survives exactly when the rows of ``att`` sum to one
(:mod:`evonnx.pruning.analysis.dataflow`).
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from evonnx.model.graph import node_name
from evonnx.pruning.analysis.core import Builder, Segment, const_value, dim, freeze_inputs, rank


def activation_matmul(b: Builder, node: gs.Node) -> None:
    """Rule of a MatMul whose two operands are activations."""
    a, m = node.inputs[0], node.inputs[1]
    la, lm = b.layout(a), b.layout(m)
    ra, rm, ro = rank(a), rank(m), rank(node.outputs[0])
    if ra is not None and rm is not None and ro is not None and min(ra, rm) >= 2:
        if la is None and lm is not None and lm.axis == rm - 1:
            b.set_layout(node.outputs[0], lm.with_axis(ro - 1))
            return
        contracted = (
            la is not None
            and lm is not None
            and la.axis == ra - 1
            and lm.axis == rm - 2
            and dim(a, ra - 1) is not None
            and dim(a, ra - 1) == dim(m, rm - 2)
            and _aligned(b, la.segments, lm.segments)
        )
        if contracted and softmax_follows(node, {t.name for t in b.graph.outputs}):
            assert la is not None and lm is not None
            for s, u in zip(la.segments, lm.segments, strict=True):
                b.union(s.gid, u.gid)
            return
    freeze_inputs(
        b, node, f"{node_name(node)}: MatMul of two activations (attention) mixes channels"
    )


def _aligned(b: Builder, x: tuple[Segment, ...], y: tuple[Segment, ...]) -> bool:
    return len(x) == len(y) and all(
        s.start == t.start and s.block == t.block and b.group_size(s.gid) == b.group_size(t.gid)
        for s, t in zip(x, y, strict=True)
    )


def softmax_follows(node: gs.Node, outputs: set[str]) -> bool:
    """Whether ``node``'s output reaches only a ``Softmax`` over its last axis, through scalar
    constant ``Mul``/``Div`` and ``Add``/``Sub`` of other tensors (masks, biases), each read
    once and none a graph output (``outputs``: their names): a constant added along the last
    axis leaves the result unchanged."""
    t = node.outputs[0]
    r = rank(t)
    for _ in range(8):
        if len(t.outputs) != 1 or r is None or t.name in outputs:
            return False
        nxt = t.outputs[0]
        if nxt.op == "Softmax":
            axis = int(nxt.attrs.get("axis", -1))
            return axis % r == r - 1
        others = [i for i in nxt.inputs if i is not t]
        if len(nxt.inputs) != 2 or len(others) != 1 or rank(nxt.outputs[0]) != r:
            return False
        other = const_value(others[0])
        scale = nxt.op == "Mul" or (nxt.op == "Div" and nxt.inputs[0] is t)
        if scale and (other is None or other.size != 1):
            return False
        if not scale and nxt.op not in ("Add", "Sub"):
            return False
        t = nxt.outputs[0]
    return False
