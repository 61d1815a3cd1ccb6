"""Channel-dependency analysis of an ONNX graph.

Walks the graph in topological order, tracking for every activation tensor which channel
groups its channel axis carries (a *layout*: axis plus segments). Per-op rules live in
:data:`RULES`, keyed by ``op_type``; an op without a rule freezes every group reaching it.
The result is a pure, frozen :class:`~evonnx.groups.Analysis`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from evonnx.graph import node_name, to_graph
from evonnx.groups import Analysis, ChannelGroup, Layer, Member, Role

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """Channels of group ``gid`` occupy ``start + i * block + j`` along a tensor's axis."""

    gid: int
    start: int
    block: int


@dataclass(frozen=True)
class Layout:
    """Channel axis of a tensor and the group segments along it."""

    axis: int
    segments: tuple[Segment, ...]

    def with_axis(self, axis: int) -> Layout:
        return Layout(axis, self.segments)

    def scaled(self, factor: int, axis: int | None = None) -> Layout:
        """Layout after each index expands into ``factor`` consecutive indices."""
        segs = tuple(Segment(s.gid, s.start * factor, s.block * factor) for s in self.segments)
        return Layout(self.axis if axis is None else axis, segs)


class _Builder:
    """Mutable state of one analysis run (private; results are frozen)."""

    def __init__(self, graph: gs.Graph) -> None:
        self.graph = graph
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: dict[int, str] = {}
        self.members: list[list[Member]] = []
        self.tensors: list[list[str]] = []
        self.layouts: dict[str, Layout] = {}
        self.layers: list[Layer] = []

    # ---- groups
    def new_group(self, size: int, frozen: str | None = None) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.size.append(size)
        self.members.append([])
        self.tensors.append([])
        if frozen:
            self.frozen[gid] = frozen
        return gid

    def root(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def union(self, a: int, b: int) -> None:
        ra, rb = self.root(a), self.root(b)
        if ra == rb:
            return
        if self.size[ra] != self.size[rb]:
            self.freeze(ra, "coupled with a group of another size")
            self.freeze(rb, "coupled with a group of another size")
            return
        lo, hi = min(ra, rb), max(ra, rb)
        self.parent[hi] = lo
        self.members[lo].extend(self.members[hi])
        self.tensors[lo].extend(self.tensors[hi])
        if hi in self.frozen:
            self.frozen.setdefault(lo, self.frozen.pop(hi))

    def freeze(self, gid: int, reason: str) -> None:
        r = self.root(gid)
        if r not in self.frozen:
            logger.debug("group %d frozen: %s", r, reason)
            self.frozen[r] = reason

    def freeze_layout(self, layout: Layout | None, reason: str) -> None:
        if layout is not None:
            for s in layout.segments:
                self.freeze(s.gid, reason)

    def add(self, seg: Segment, role: Role, name: str, node: str, axis: int) -> None:
        self.members[self.root(seg.gid)].append(
            Member(role, name, node, axis, seg.start, seg.block)
        )

    # ---- layouts
    def set_layout(self, tensor: gs.Tensor, layout: Layout) -> None:
        self.layouts[tensor.name] = layout
        for s in layout.segments:
            self.tensors[self.root(s.gid)].append(tensor.name)

    def layout(self, tensor: gs.Tensor) -> Layout | None:
        return self.layouts.get(tensor.name) if tensor.name else None

    def group_size(self, gid: int) -> int:
        return self.size[self.root(gid)]


# --------------------------------------------------------------------------- tensor helpers


def const_value(t: gs.Tensor) -> np.ndarray | None:
    """Value of a constant tensor, or None for activations and empty (omitted) inputs."""
    if isinstance(t, gs.Constant):
        return np.asarray(t.values)
    return None


def static_shape(t: gs.Tensor) -> tuple[int, ...] | None:
    """Fully static shape of ``t`` or None."""
    if isinstance(t, gs.Constant):
        return tuple(int(d) for d in t.shape)
    if t.shape is None or any(not isinstance(d, int) or d < 0 for d in t.shape):
        return None
    return tuple(int(d) for d in t.shape)


def rank(t: gs.Tensor) -> int | None:
    if t.shape is None:
        return None
    return len(t.shape)


def _dim(t: gs.Tensor, axis: int) -> int | None:
    if t.shape is None or axis >= len(t.shape):
        return None
    d = t.shape[axis]
    return int(d) if isinstance(d, int) and d >= 0 else None


def _prod(xs: tuple[int, ...] | list[int]) -> int:
    return int(math.prod(xs))


def optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    """Input ``index`` of ``node``, or None when absent or omitted (empty name)."""
    if len(node.inputs) > index and node.inputs[index].name:
        return node.inputs[index]
    return None


def _inputs_with_layout(b: _Builder, node: gs.Node) -> list[tuple[int, Layout]]:
    out = []
    for i, t in enumerate(node.inputs):
        lay = b.layout(t)
        if lay is not None:
            out.append((i, lay))
    return out


def _freeze_inputs(b: _Builder, node: gs.Node, reason: str) -> None:
    for _, lay in _inputs_with_layout(b, node):
        b.freeze_layout(lay, reason)


def _new_output_group(
    b: _Builder, node: gs.Node, size: int, axis: int, frozen: str | None = None
) -> int:
    gid = b.new_group(size, frozen)
    b.set_layout(node.outputs[0], Layout(axis, (Segment(gid, 0, 1),)))
    return gid


Rule = Callable[[_Builder, gs.Node], None]
RULES: dict[str, Rule] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    """Register a channel rule for the given op types."""

    def deco(fn: Rule) -> Rule:
        for op in ops:
            RULES[op] = fn
        return fn

    return deco


# --------------------------------------------------------------------------- layers


def _macs(node: gs.Node, w_shape: tuple[int, ...], group: int) -> int:
    out = node.outputs[0]
    if node.op == "Conv":
        osh = static_shape(out) or _batch1(out)
        return _prod(osh) * _prod(list(w_shape[1:])) if osh else 0
    if node.op == "ConvTranspose":
        ish = static_shape(node.inputs[0]) or _batch1(node.inputs[0])
        return _prod(ish) * _prod(list(w_shape[1:])) if ish else 0
    osh = static_shape(out) or _batch1(out)
    if not osh:
        return 0
    k = w_shape[1] if node.op == "Gemm" and node.attrs.get("transB", 0) else w_shape[0]
    return _prod(osh) * int(k)


def _batch1(t: gs.Tensor) -> tuple[int, ...] | None:
    """Shape with a symbolic leading batch dimension read as 1."""
    if t.shape is None or not t.shape:
        return None
    dims = [1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(t.shape)]
    if any(not isinstance(d, int) or d < 0 for d in dims):
        return None
    return tuple(int(d) for d in dims)


def _record_layer(
    b: _Builder,
    node: gs.Node,
    w: gs.Tensor,
    out_axis: int,
    in_axis: int,
    out_gid: int | None,
    in_layout: Layout | None,
) -> None:
    group = int(node.attrs.get("group", 1))
    in_groups = tuple(sorted({s.gid for s in in_layout.segments})) if in_layout else ()
    b.layers.append(
        Layer(
            node_name(node),
            node.op,
            w.name,
            out_axis,
            in_axis,
            out_gid,
            in_groups,
            _macs(node, tuple(int(d) for d in w.shape), group),
        )
    )


def _consume(b: _Builder, node: gs.Node, lay: Layout | None, w: gs.Tensor, axis: int) -> None:
    if lay is not None:
        for s in lay.segments:
            b.add(s, Role.CONSUMER, w.name, node_name(node), axis)


def _produce(
    b: _Builder, node: gs.Node, gid: int, w: gs.Tensor, axis: int, bias: gs.Tensor | None
) -> None:
    seg = Segment(gid, 0, 1)
    b.add(seg, Role.PRODUCER, w.name, node_name(node), axis)
    if bias is not None and const_value(bias) is not None and bias.shape and len(bias.shape) == 1:
        b.add(seg, Role.BIAS, bias.name, node_name(node), 0)


@rule("Conv")
def _conv(b: _Builder, node: gs.Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias = optional_input(node, 2)
    lay = b.layout(x)
    wv = const_value(w)
    if wv is None:
        _freeze_inputs(b, node, f"weight of {node_name(node)} is not a constant initializer")
        cout = _dim(node.outputs[0], 1) or 0
        _new_output_group(b, node, cout, 1, f"weight of {node_name(node)} is not a constant")
        return
    group = int(node.attrs.get("group", 1))
    cout, cin_g = int(wv.shape[0]), int(wv.shape[1])
    cin = cin_g * group
    if lay is not None and lay.axis != 1:
        b.freeze_layout(lay, f"{node_name(node)} reads channels on axis {lay.axis}")
        lay = None
    if group == 1:
        _consume(b, node, lay, w, 1)
        gid = _new_output_group(b, node, cout, 1)
        _produce(b, node, gid, w, 0, bias)
        _record_layer(b, node, w, 0, 1, gid, lay)
    elif group == cin and cin_g == 1 and lay is not None:
        _depthwise(b, node, lay, w, bias, cout // cin)
    else:
        reason = f"grouped conv {node_name(node)} (group={group}) ties channels across groups"
        b.freeze_layout(lay, reason)
        gid = _new_output_group(b, node, cout, 1, reason)
        _produce(b, node, gid, w, 0, bias)
        _record_layer(b, node, w, 0, 1, gid, lay)


def _depthwise(
    b: _Builder, node: gs.Node, lay: Layout, w: gs.Tensor, bias: gs.Tensor | None, mult: int
) -> None:
    """Depthwise conv: output channel ``c * mult + k`` belongs to input channel ``c``."""
    out_lay = lay.scaled(mult)
    for s_in, s_out in zip(lay.segments, out_lay.segments, strict=True):
        b.add(s_out, Role.PRODUCER, w.name, node_name(node), 0)
        if bias is not None and const_value(bias) is not None:
            b.add(s_out, Role.BIAS, bias.name, node_name(node), 0)
        b.add(s_in, Role.GROUP_ATTR, node_name(node), node_name(node), 0)
    b.set_layout(node.outputs[0], out_lay)
    gid = lay.segments[0].gid if len(lay.segments) == 1 else None
    _record_layer(b, node, w, 0, 1, gid, lay)


@rule("ConvTranspose")
def _conv_transpose(b: _Builder, node: gs.Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias = optional_input(node, 2)
    lay = b.layout(x)
    wv = const_value(w)
    group = int(node.attrs.get("group", 1))
    cout = _dim(node.outputs[0], 1) or (int(wv.shape[1]) * group if wv is not None else 0)
    if wv is None or group != 1 or (lay is not None and lay.axis != 1):
        reason = (
            f"{node_name(node)}: only ConvTranspose with group=1 and a constant weight is pruned"
        )
        b.freeze_layout(lay, reason)
        gid = _new_output_group(b, node, cout, 1, reason)
        if wv is not None:
            _record_layer(b, node, w, 1, 0, gid, lay)
        return
    _consume(b, node, lay, w, 0)
    gid = _new_output_group(b, node, int(wv.shape[1]), 1)
    _produce(b, node, gid, w, 1, bias)
    _record_layer(b, node, w, 1, 0, gid, lay)


@rule("Gemm")
def _gemm(b: _Builder, node: gs.Node) -> None:
    a, w = node.inputs[0], node.inputs[1]
    bias = optional_input(node, 2)
    lay = b.layout(a)
    wv = const_value(w)
    trans_b = int(node.attrs.get("transB", 0))
    if wv is None or int(node.attrs.get("transA", 0)) or const_value(a) is not None:
        reason = f"{node_name(node)}: Gemm needs a constant B, an activation A and transA=0"
        _freeze_inputs(b, node, reason)
        _new_output_group(b, node, _dim(node.outputs[0], 1) or 0, 1, reason)
        return
    out_axis, in_axis = (0, 1) if trans_b else (1, 0)
    if lay is not None and lay.axis != 1:
        b.freeze_layout(lay, f"{node_name(node)} reads features on axis {lay.axis}")
        lay = None
    _consume(b, node, lay, w, in_axis)
    gid = _new_output_group(b, node, int(wv.shape[out_axis]), 1)
    seg = Segment(gid, 0, 1)
    b.add(seg, Role.PRODUCER, w.name, node_name(node), out_axis)
    bv = const_value(bias) if bias is not None else None
    if bias is not None and bv is not None and bv.ndim >= 1 and bv.shape[-1] == wv.shape[out_axis]:
        if bv.size == bv.shape[-1]:
            b.add(seg, Role.BIAS, bias.name, node_name(node), bv.ndim - 1)
    elif bias is not None and (bv is None or bv.size != 1):
        b.freeze(gid, f"{node_name(node)}: bias is not per-neuron")
    _record_layer(b, node, w, out_axis, in_axis, gid, lay)


@rule("MatMul")
def _matmul(b: _Builder, node: gs.Node) -> None:
    a, w = node.inputs
    lay = b.layout(a)
    wv = const_value(w)
    r = rank(a)
    ok = wv is not None and wv.ndim == 2 and const_value(a) is None and r is not None and r >= 2
    if not ok:
        reason = f"{node_name(node)}: MatMul needs an activation times a 2-D constant weight"
        _freeze_inputs(b, node, reason)
        ro = rank(node.outputs[0])
        d = _dim(node.outputs[0], ro - 1) if ro else None
        _new_output_group(b, node, d or 0, (ro or 1) - 1, reason)
        return
    assert wv is not None and r is not None
    if lay is not None and lay.axis != r - 1:
        b.freeze_layout(lay, f"{node_name(node)} reads features on axis {lay.axis}, not the last")
        lay = None
    _consume(b, node, lay, w, 0)
    gid = _new_output_group(b, node, int(wv.shape[1]), r - 1)
    b.add(Segment(gid, 0, 1), Role.PRODUCER, w.name, node_name(node), 1)
    _record_layer(b, node, w, 1, 0, gid, lay)


# --------------------------------------------------------------------------- pass-through ops

UNARY = (
    "Relu",
    "Clip",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Erf",
    "Gelu",
    "Mish",
    "Floor",
    "Ceil",
    "Round",
    "Reciprocal",
    "Sin",
    "Cos",
    "ThresholdedRelu",
    "Shrink",
    "Sign",
    "Identity",
    "Cast",
    "Dropout",
    "Not",
    "IsNaN",
    "IsInf",
    "Swish",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "LpPool",
    "GlobalLpPool",
)


@rule(*UNARY)
def _unary(b: _Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    if lay is None:
        return
    for t in node.inputs[1:]:
        if b.layout(t) is not None:
            _freeze_inputs(b, node, f"{node_name(node)}: channels reach a parameter input")
            return
    if node.op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].outputs:
        b.freeze_layout(lay, f"{node_name(node)}: MaxPool indices are used")
        return
    b.set_layout(node.outputs[0], lay)


@rule("Shape", "Size")
def _sink(b: _Builder, node: gs.Node) -> None:
    """Shape-reading ops adapt to the new channel count at run time."""


@rule("BatchNormalization", "InstanceNormalization")
def _norm(b: _Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    if lay is None:
        return
    if lay.axis != 1:
        b.freeze_layout(lay, f"{node_name(node)} normalizes axis 1 but channels are on {lay.axis}")
        return
    for t in node.inputs[1:]:
        if const_value(t) is None:
            b.freeze_layout(lay, f"{node_name(node)}: parameter {t.name} is not constant")
            return
    for t in node.inputs[1:]:
        for s in lay.segments:
            b.add(s, Role.PARAM, t.name, node_name(node), 0)
    b.set_layout(node.outputs[0], lay)


def _aligned(x: Layout, y: Layout) -> bool:
    if len(x.segments) != len(y.segments):
        return False
    return all(
        s.start == t.start and s.block == t.block
        for s, t in zip(x.segments, y.segments, strict=True)
    )


def _broadcast_const(
    b: _Builder, node: gs.Node, t: gs.Tensor, lay: Layout, out_rank: int, channels: int
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
def _elementwise(b: _Builder, node: gs.Node) -> None:
    laid = _inputs_with_layout(b, node)
    if not laid:
        return
    out_rank = rank(node.outputs[0])
    if out_rank is None:
        _freeze_inputs(b, node, f"{node_name(node)}: output rank unknown")
        return
    ref_i, ref = max(laid, key=lambda il: _dim(node.inputs[il[0]], il[1].axis) or 0)
    ref_t = node.inputs[ref_i]
    ref_rank = rank(ref_t) or out_rank
    out_axis = ref.axis + out_rank - ref_rank
    channels = _dim(ref_t, ref.axis)
    ok = channels is not None
    for i, t in enumerate(node.inputs):
        if i == ref_i or not t.name:
            continue
        ok = ok and _merge_operand(b, node, t, ref, out_axis, out_rank, channels or 0)
    if not ok:
        _freeze_inputs(b, node, f"{node_name(node)}: operands' channels cannot be matched")
    b.set_layout(node.outputs[0], ref.with_axis(out_axis))


def _merge_operand(
    b: _Builder,
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
    d = _dim(t, cax) if cax >= 0 else 1
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
def _concat(b: _Builder, node: gs.Node) -> None:
    laid = _inputs_with_layout(b, node)
    if not laid:
        return
    r = rank(node.outputs[0])
    axis = int(node.attrs.get("axis", 0))
    if r is None:
        _freeze_inputs(b, node, f"{node_name(node)}: output rank unknown")
        return
    axis %= r
    if any(lay.axis != laid[0][1].axis for _, lay in laid):
        _freeze_inputs(b, node, f"{node_name(node)}: inputs carry channels on different axes")
        return
    if axis != laid[0][1].axis:
        _elementwise(b, node)
        return
    segs: list[Segment] = []
    offset = 0
    for t in node.inputs:
        lay = b.layout(t)
        d = _dim(t, axis)
        if d is None:
            _freeze_inputs(
                b, node, f"{node_name(node)}: input {t.name} has an unknown channel count"
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


@rule("Transpose")
def _transpose(b: _Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    r = rank(node.inputs[0])
    if lay is None or r is None:
        return
    perm = [int(p) for p in node.attrs.get("perm", list(range(r))[::-1])]
    b.set_layout(node.outputs[0], lay.with_axis(perm.index(lay.axis)))


def _int_list(node: gs.Node, attr: str, input_index: int) -> list[int] | None:
    if attr in node.attrs:
        return [int(v) for v in node.attrs[attr]]
    t = optional_input(node, input_index)
    if t is None:
        return []
    v = const_value(t)
    return None if v is None else [int(x) for x in v.reshape(-1)]


@rule(
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceSumSquare",
    "ReduceLogSum",
)
def _reduce(b: _Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    r = rank(node.inputs[0])
    if lay is None:
        return
    axes = _int_list(node, "axes", 1)
    if axes is None or r is None:
        b.freeze_layout(lay, f"{node_name(node)}: reduction axes unknown")
        return
    if not axes and not int(node.attrs.get("noop_with_empty_axes", 0)):
        axes = list(range(r))
    axes = [a % r for a in axes]
    if lay.axis in axes:
        b.freeze_layout(lay, f"{node_name(node)} reduces over the channel axis")
        return
    keep = int(node.attrs.get("keepdims", 1))
    axis = lay.axis if keep else lay.axis - sum(a < lay.axis for a in axes)
    b.set_layout(node.outputs[0], lay.with_axis(axis))


def _pass_unless_axis(b: _Builder, node: gs.Node, default: int, coerced: bool, why: str) -> None:
    """Pass channels through all outputs unless the op's ``axis`` touches the channel axis.

    ``coerced``: the op flattens every axis from ``axis`` on (Softmax before opset 13).
    """
    lay = b.layout(node.inputs[0])
    r = rank(node.inputs[0])
    if lay is None or r is None:
        return
    axis = int(node.attrs.get("axis", default)) % r
    if axis == lay.axis or (coerced and lay.axis >= axis):
        b.freeze_layout(lay, f"{node_name(node)} {why}")
        return
    for out in node.outputs:
        b.set_layout(out, lay)


@rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(b: _Builder, node: gs.Node) -> None:
    old = int(b.graph.opset) < 13
    _pass_unless_axis(b, node, 1 if old else -1, old, "normalizes over the channel axis")


@rule("Split")
def _split(b: _Builder, node: gs.Node) -> None:
    _pass_unless_axis(b, node, 0, False, "splits the channel axis")


@rule("Slice")
def _slice(b: _Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    r = rank(node.inputs[0])
    if lay is None or r is None:
        return
    axes = _int_list(node, "axes", 3)
    if axes is not None and not axes:
        starts = _int_list(node, "starts", 1)
        axes = None if starts is None else list(range(len(starts)))
    if axes is None or lay.axis in [a % r for a in axes]:
        b.freeze_layout(lay, f"{node_name(node)} may slice the channel axis")
        return
    b.set_layout(node.outputs[0], lay)


@rule("Pad")
def _pad(b: _Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    r = rank(node.inputs[0])
    if lay is None or r is None:
        return
    pads = _int_list(node, "pads", 1)
    axes = _int_list(node, "axes", 3) or list(range(r))
    if pads is None:
        b.freeze_layout(lay, f"{node_name(node)}: pads are not constant")
        return
    n = len(axes)
    axes = [a % r for a in axes]
    if lay.axis in axes:
        i = axes.index(lay.axis)
        if pads[i] != 0 or pads[i + n] != 0:
            b.freeze_layout(lay, f"{node_name(node)} pads the channel axis")
            return
    b.set_layout(node.outputs[0], lay)


@rule("Resize", "Upsample")
def _resize(b: _Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    if lay is None:
        return
    scales_t = optional_input(node, 1 if node.op == "Upsample" or len(node.inputs) == 2 else 2)
    scales = const_value(scales_t) if scales_t is not None else None
    sizes_t = optional_input(node, 3) if node.op == "Resize" else None
    sizes = const_value(sizes_t) if sizes_t is not None else None
    if sizes_t is not None:
        if sizes is None:
            b.freeze_layout(lay, f"{node_name(node)}: sizes are not constant")
            return
        for s in lay.segments:
            b.add(s, Role.SHAPE, sizes_t.name, node_name(node), lay.axis)
    if scales is not None and scales.size and float(scales.reshape(-1)[lay.axis]) != 1.0:
        b.freeze_layout(lay, f"{node_name(node)} rescales the channel axis")
        return
    if scales is None and sizes is None and "scales" not in node.attrs:
        b.freeze_layout(lay, f"{node_name(node)}: scales/sizes are not constant")
        return
    b.set_layout(node.outputs[0], lay)


# --------------------------------------------------------------------------- reshapes


def _map_reshape(ish: tuple[int, ...], osh: tuple[int, ...], axis: int) -> tuple[int, int] | None:
    """(output axis, block factor) carrying input channel ``axis``, or None."""
    lead = _prod(list(ish[:axis]))
    inner = _prod(list(ish[axis + 1 :]))
    for oax in range(len(osh)):
        if _prod(list(osh[:oax])) != lead:
            continue
        tail = _prod(list(osh[oax + 1 :]))
        if osh[oax] == ish[axis] and tail == inner:
            return oax, 1
        if osh[oax] == ish[axis] * inner and tail == 1:
            return oax, inner
    return None


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(b: _Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    if lay is None:
        return
    ish = static_shape(node.inputs[0]) or _batch1(node.inputs[0])
    osh = static_shape(node.outputs[0]) or _batch1(node.outputs[0])
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


def _reshape_target(b: _Builder, node: gs.Node, out_lay: Layout) -> bool:
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
        known = _prod([d for d in dims if d != -1])
        if known <= 0 or _prod(list(ish)) % known:
            return None
        dims[dims.index(-1)] = _prod(list(ish)) // known
    return tuple(dims) if all(d > 0 for d in dims) else None


def _concat_piece(t: gs.Tensor, index: int) -> gs.Tensor | None:
    """The 1-element input of a shape-building Concat that gives element ``index``."""
    if len(t.inputs) != 1 or t.inputs[0].op != "Concat":
        return None
    pos = 0
    for piece in t.inputs[0].inputs:
        n = _dim(piece, 0)
        if n is None:
            return None
        if pos == index and n == 1:
            return piece
        pos += n
        if pos > index:
            return None
    return None


# --------------------------------------------------------------------------- driver


def analyze(model: onnx.ModelProto) -> Analysis:
    """Find the channel groups and prunable layers of ``model`` (pure: the model is untouched).

    Args:
        model: Any ONNX model; shapes are inferred internally.

    Returns:
        The frozen analysis: groups (with members and frozen reasons) and conv/FC layers.
    """
    return analyze_graph(to_graph(model))


def analyze_graph(graph: gs.Graph) -> Analysis:
    """Analysis of an imported (and constant-lifted) graphsurgeon graph."""
    graph.toposort()
    b = _Builder(graph)
    for t in graph.inputs:
        r = rank(t)
        d = _dim(t, 1) if r and r >= 2 else None
        if d:
            gid = b.new_group(d, f"input channels of the network ({t.name})")
            b.set_layout(t, Layout(1, (Segment(gid, 0, 1),)))
    for node in graph.nodes:
        fn = RULES.get(node.op) if node.domain in (None, "", "ai.onnx") else None
        if fn is not None:
            fn(b, node)
        elif _inputs_with_layout(b, node):
            _freeze_inputs(b, node, f"unsupported op {node.op} ({node_name(node)})")
    for t in graph.outputs:
        b.freeze_layout(b.layout(t), f"channels reach the graph output {t.name}")
    _check_shared(b, graph)
    return _finish(b, _removable_roots(b, graph))


def _check_shared(b: _Builder, graph: gs.Graph) -> None:
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


def _removable_roots(b: _Builder, graph: gs.Graph) -> set[int]:
    """Prunable groups that may be emptied: see :attr:`ChannelGroup.removable`."""
    tensors = graph.tensors()
    nodes = {node_name(n): n for n in graph.nodes}
    out = set()
    for r in {b.root(g) for g in range(len(b.parent))}:
        if r in b.frozen or not b.members[r]:
            continue
        consumers = _whole_consumers(b, r, tensors)
        names = set(b.tensors[r])
        if consumers and _closed_branch(names, consumers, tensors) and all(
            _exits_into_add(nodes[c]) for c in consumers
        ):
            out.add(r)
    return out


def _whole_consumers(b: _Builder, r: int, tensors: dict[str, gs.Tensor]) -> set[str]:
    """Names of the layers reading the group, if each reads nothing else; else empty."""
    consumers = set()
    for m in b.members[r]:
        if m.role in (Role.SHAPE, Role.GROUP_ATTR):
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


def _finish(b: _Builder, removable: set[int]) -> Analysis:
    roots = sorted({b.root(g) for g in range(len(b.parent))})
    groups = []
    for r in roots:
        members = tuple(dict.fromkeys(b.members[r]))
        tensors = tuple(dict.fromkeys(b.tensors[r]))
        groups.append(
            ChannelGroup(r, b.size[r], members, b.frozen.get(r), tensors, r in removable)
        )
    layers = tuple(
        Layer(
            lay.node,
            lay.op_type,
            lay.weight,
            lay.out_axis,
            lay.in_axis,
            None if lay.out_group is None else b.root(lay.out_group),
            tuple(sorted({b.root(g) for g in lay.in_groups})),
            lay.macs,
        )
        for lay in b.layers
    )
    return Analysis(tuple(groups), layers)
