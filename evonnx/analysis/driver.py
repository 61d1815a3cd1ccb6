"""The analysis driver: walk the graph, apply the rules, check sharing, freeze results."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from evonnx.analysis.core import (
    RULES,
    Builder,
    Layout,
    Segment,
    dim,
    freeze_inputs,
    inputs_with_layout,
    rank,
    static_shape,
)
from evonnx.graph import node_name
from evonnx.groups import Analysis, ChannelGroup, Layer, Role
from evonnx.inputs import InputShapes
from evonnx.shapes import shaped_graph


def analyze(
    model: onnx.ModelProto, input_shapes: InputShapes | None = None, batch: int = 1
) -> Analysis:
    """Find the channel groups and prunable layers of ``model`` (pure: the model is untouched).

    Args:
        model: Any ONNX model; shapes are resolved internally at the given input shapes
            (see :func:`evonnx.shapes.resolve_shapes`).
        input_shapes: Static shape per graph input (``--input-shape``).
        batch: Size of a symbolic batch dimension of the other inputs.

    Returns:
        The frozen analysis: groups (with members and frozen reasons) and conv/FC layers.
    """
    graph, resolved = shaped_graph(model, input_shapes, batch)
    return analyze_graph(graph, resolved.hint())


def analyze_graph(graph: gs.Graph, hint: str = "") -> Analysis:
    """Analysis of an imported (and constant-lifted) graphsurgeon graph.

    ``hint`` is added to the reasons of groups frozen because a shape is unknown (what
    input shape to give).
    """
    graph.toposort()
    b = Builder(graph, hint)
    for t in graph.inputs:
        r = rank(t)
        d = dim(t, 1) if r and r >= 2 else None
        if d:
            gid = b.new_group(d, f"input channels of the network ({t.name})")
            b.set_layout(t, Layout(1, (Segment(gid, 0, 1),)))
    for node in graph.nodes:
        _freeze_captured(b, node)
        fn = RULES.get(node.op) if node.domain in (None, "", "ai.onnx") else None
        if fn is not None:
            fn(b, node)
        elif inputs_with_layout(b, node):
            freeze_inputs(b, node, f"unsupported op {node.op} ({node_name(node)})")
    for t in graph.outputs:
        b.freeze_layout(b.layout(t), f"channels reach the graph output {t.name}")
    _check_shared(b, graph)
    return _finish(b, _removable_roots(b, graph))


def _freeze_captured(b: Builder, node: gs.Node) -> None:
    """Freeze the groups of outer-scope tensors read inside ``node``'s subgraphs (If/Loop/Scan)."""
    for name in captured_names(node):
        reason = f"{name} is read inside a subgraph of {node_name(node)} ({node.op})"
        b.freeze_layout(b.layouts.get(name), reason)


def captured_names(node: gs.Node) -> set[str]:
    """Names a node's subgraphs read from the outer scope (nested subgraphs included)."""
    out: set[str] = set()
    for value in node.attrs.values():
        subs = value if isinstance(value, list) else [value]
        for sub in subs:
            if isinstance(sub, gs.Graph):
                out |= _outer_reads(sub)
    return out


def _outer_reads(graph: gs.Graph) -> set[str]:
    local = {t.name for t in graph.inputs}
    local |= {o.name for n in graph.nodes for o in n.outputs}
    reads: set[str] = set()
    for n in graph.nodes:
        reads |= {t.name for t in n.inputs if t.name and not isinstance(t, gs.Constant)}
        reads |= captured_names(n)
    return reads - local


def _check_shared(b: Builder, graph: gs.Graph) -> None:
    """Freeze groups whose member initializers are also used in ways the groups do not cover."""
    claims: dict[str, dict[str, set[tuple[Role, int, int, int, int]]]] = {}
    for gid in range(len(b.parent)):
        r = b.root(gid)
        for m in b.members[gid]:
            if m.role is Role.GROUP_ATTR:
                continue
            spec: tuple[Role, int, int, int, int] = (m.role, m.axis, r, m.start, m.block)
            claims.setdefault(m.name, {}).setdefault(m.node, set()).add(spec)
    tensors = graph.tensors()
    for name, by_node in claims.items():
        users = {node_name(n) for n in tensors[name].outputs} if name in tensors else set()
        specs = list(by_node.values())
        if users - set(by_node) or any(s != specs[0] for s in specs):
            for spec_set in specs:
                for spec in spec_set:
                    b.freeze(spec[2], f"initializer {name} is shared with other uses")


def _removable_roots(b: Builder, graph: gs.Graph) -> set[int]:
    """Prunable groups that may be emptied: see :attr:`ChannelGroup.removable`."""
    tensors = graph.tensors()
    nodes = {node_name(n): n for n in graph.nodes}
    out = set()
    for r in {b.root(g) for g in range(len(b.parent))}:
        if r in b.frozen or not b.members[r]:
            continue
        consumers = _whole_consumers(b, r, tensors)
        names = set(b.tensors[r])
        if (
            consumers
            and _closed_branch(names, consumers, tensors)
            and all(_exits_into_add(nodes[c]) for c in consumers)
        ):
            out.add(r)
    return out


def _whole_consumers(b: Builder, r: int, tensors: dict[str, gs.Tensor]) -> set[str]:
    """Names of the layers reading the group, if each reads nothing else; else empty.

    A depthwise conv's ``group`` attribute does not stop a branch: the conv maps the group's
    channels onto themselves, so :func:`_closed_branch` finds it inside the branch (as in a
    MobileNetV2 inverted-residual block: expand, depthwise, project).
    """
    consumers = set()
    for m in b.members[r]:
        if m.role is Role.SHAPE:
            return set()
        if m.role is Role.CONSUMER:
            w = tensors.get(m.name)
            if w is None or w.shape is None or m.start or m.block != 1:
                return set()
            if int(w.shape[m.axis]) != b.size[r]:
                return set()
            consumers.add(m.node)
    return consumers


def _closed_branch(names: set[str], consumers: set[str], tensors: dict[str, gs.Tensor]) -> bool:
    """Every reader of the group's tensors is a consumer layer or stays inside the group."""
    for name in names:
        t = tensors.get(name)
        if t is None:
            return False
        for reader in t.outputs:
            inside = reader.outputs and all(o.name in names for o in reader.outputs)
            if node_name(reader) not in consumers and not inside:
                return False
    return True


def _exits_into_add(layer: gs.Node) -> bool:
    """The layer's output only feeds Add/Sub nodes whose other operand has its full shape."""
    out = layer.outputs[0]
    shape = static_shape(out)
    if shape is None or not out.outputs or layer.op not in ("Conv", "Gemm"):
        return False
    for reader in out.outputs:
        others = [t for t in reader.inputs if t is not out]
        if reader.op not in ("Add", "Sub") or len(others) != 1:
            return False
        if static_shape(others[0]) != shape:
            return False
    return True


def _finish(b: Builder, removable: set[int]) -> Analysis:
    roots = sorted({b.root(g) for g in range(len(b.parent))} - set(b.halves))
    groups = []
    for r in roots:
        members = tuple(dict.fromkeys(b.members[r]))
        tensors = tuple(dict.fromkeys(b.tensors[r]))
        groups.append(ChannelGroup(r, b.size[r], members, b.frozen.get(r), tensors, r in removable))
    layers = tuple(
        Layer(
            lay.node,
            lay.op_type,
            lay.weight,
            lay.out_axis,
            lay.in_axis,
            _single(b, lay.out_group),
            tuple(sorted({r for g in lay.in_groups for r in b.leaves(g)})),
            lay.macs,
        )
        for lay in b.layers
    )
    return Analysis(tuple(groups), layers)


def _single(b: Builder, gid: int | None) -> int | None:
    """The one live group ``gid`` became, or None when it was split."""
    if gid is None:
        return None
    leaves = b.leaves(gid)
    return leaves[0] if len(leaves) == 1 else None
