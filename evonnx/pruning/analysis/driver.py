"""The analysis driver: walk the graph, apply the rules, check sharing, freeze results."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from evonnx.model.graph import node_name
from evonnx.model.inputs import InputShapes
from evonnx.model.shapes import shaped_graph
from evonnx.pruning.analysis.constants import LAYERS, exit_chain
from evonnx.pruning.analysis.core import (
    RULES,
    Builder,
    Layout,
    Segment,
    dim,
    freeze_inputs,
    inputs_with_layout,
    rank,
)
from evonnx.pruning.analysis.dataflow import channel_constants
from evonnx.pruning.groups import Analysis, ChannelConstant, ChannelGroup, Layer, Role


def analyze(
    model: onnx.ModelProto, input_shapes: InputShapes | None = None, batch: int = 1
) -> Analysis:
    """Find the channel groups and prunable layers of ``model`` (pure: the model is untouched).

    Args:
        model: Any ONNX model; shapes are resolved internally at the given input shapes
            (see :func:`evonnx.model.shapes.resolve_shapes`).
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
    constants = channel_constants(b, graph)  # may freeze attention scores' channels
    return _finish(b, _removable_roots(b, graph), constants)


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
    outputs = {t.name for t in graph.outputs}
    out = set()
    for r in {b.root(g) for g in range(len(b.parent))}:
        if r in b.frozen or not b.members[r]:
            continue
        consumers = _whole_consumers(b, r, tensors)
        producers = {m.node for m in b.members[r] if m.role is Role.PRODUCER}
        exits = {c for c in consumers if not _internal(nodes[c], producers, outputs)}
        if (
            exits
            and _closed_branch(set(b.tensors[r]), consumers, tensors)
            and all(_exits_into_add(nodes[c], outputs) for c in exits)
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


def _exits_into_add(layer: gs.Node, outputs: set[str]) -> bool:
    """The layer's output reaches only ``Add``/``Sub`` nodes whose other operand has the full
    shape, directly or through per-channel elementwise ops (BatchNorm, activations, SiLU's
    ``x * Sigmoid(x)``, constant scales) read nowhere else
    (:func:`~evonnx.pruning.analysis.constants.exit_chain`): emptied, the
    branch is a constant there. Shapes match when every dimension is the same number or the
    same symbol (a dynamic batch axis)."""
    if layer.op not in ("Conv", "Gemm"):
        return False
    chain = exit_chain(layer, outputs)
    if chain is None:
        return False
    tail = chain[0]
    return all(
        _same_shape(next(i for i in r.inputs if i is not tail).shape, tail.shape)
        for r in tail.outputs
    )


def _internal(layer: gs.Node, producers: set[str], outputs: set[str]) -> bool:
    """Whether ``layer``'s output flows only back into the group's own producers (the
    squeeze of a squeeze-excite block inside a branch), never to another layer or output."""
    work, seen = [layer.outputs[0]], 0
    while work:
        t = work.pop()
        seen += 1
        if t.name in outputs or seen > 64:
            return False
        for r in t.outputs:
            if node_name(r) in producers:
                continue
            if r.op in LAYERS:
                return False
            work.extend(r.outputs)
    return True


def _same_shape(a: object, b: object) -> bool:
    """Shapes with equal ranks whose dims are equal numbers or the same symbol."""
    if not isinstance(a, (list, tuple)) or not isinstance(b, (list, tuple)) or len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if x is None or y is None or x != y:
            return False
        if isinstance(x, int) and x < 0:
            return False
    return True


def _finish(b: Builder, removable: set[int], constants: tuple[ChannelConstant, ...]) -> Analysis:
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
    return Analysis(tuple(groups), layers, constants)


def _single(b: Builder, gid: int | None) -> int | None:
    """The one live group ``gid`` became, or None when it was split."""
    if gid is None:
        return None
    leaves = set(b.leaves(gid))
    return leaves.pop() if len(leaves) == 1 else None
