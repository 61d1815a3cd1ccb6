"""Rules of ops that pass channels through: activations, pooling, norms, layout ops."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from evonnx.model.graph import node_name
from evonnx.pruning.analysis.core import (
    Builder,
    const_value,
    freeze_inputs,
    int_list,
    optional_input,
    rank,
    ranked_layout,
    rule,
)
from evonnx.pruning.groups import Role

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
def _unary(b: Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    if lay is None:
        return
    for t in node.inputs[1:]:
        if b.layout(t) is not None:
            freeze_inputs(b, node, f"{node_name(node)}: channels reach a parameter input")
            return
    if node.op == "MaxPool" and len(node.outputs) > 1 and node.outputs[1].outputs:
        b.freeze_layout(lay, f"{node_name(node)}: MaxPool indices are used")
        return
    b.set_layout(node.outputs[0], lay)


@rule("Shape", "Size")
def _sink(b: Builder, node: gs.Node) -> None:
    """Shape-reading ops adapt to the new channel count at run time."""


@rule("BatchNormalization", "InstanceNormalization")
def _norm(b: Builder, node: gs.Node) -> None:
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


@rule("LayerNormalization", "GroupNormalization", "RMSNormalization")
def _layer_norm(b: Builder, node: gs.Node) -> None:
    """Norms over trailing axes: channels pass when they lie before the normalized axes."""
    found = ranked_layout(b, node)
    if found is None:
        return
    lay, r = found
    first = 1 if node.op == "GroupNormalization" else int(node.attrs.get("axis", -1)) % r
    if lay.axis >= first:
        b.freeze_layout(lay, f"{node_name(node)} normalizes over the channel axis")
        return
    b.set_layout(node.outputs[0], lay)


@rule("Transpose")
def _transpose(b: Builder, node: gs.Node) -> None:
    found = ranked_layout(b, node)
    if found is None:
        return
    lay, r = found
    perm = [int(p) for p in node.attrs.get("perm", list(range(r))[::-1])]
    b.set_layout(node.outputs[0], lay.with_axis(perm.index(lay.axis)))


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
def _reduce(b: Builder, node: gs.Node) -> None:
    lay = b.layout(node.inputs[0])
    r = rank(node.inputs[0])
    if lay is None:
        return
    axes = int_list(node, "axes", 1)
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


def _pass_unless_axis(b: Builder, node: gs.Node, default: int, coerced: bool, why: str) -> None:
    """Pass channels through all outputs unless the op's ``axis`` touches the channel axis.

    ``coerced``: the op flattens every axis from ``axis`` on (Softmax before opset 13).
    """
    found = ranked_layout(b, node)
    if found is None:
        return
    lay, r = found
    axis = int(node.attrs.get("axis", default)) % r
    if axis == lay.axis or (coerced and lay.axis >= axis):
        b.freeze_layout(lay, f"{node_name(node)} {why}")
        return
    for out in node.outputs:
        b.set_layout(out, lay)


@rule("Softmax", "LogSoftmax", "Hardmax")
def _softmax(b: Builder, node: gs.Node) -> None:
    old = int(b.graph.opset) < 13
    _pass_unless_axis(b, node, 1 if old else -1, old, "normalizes over the channel axis")


@rule("Slice")
def _slice(b: Builder, node: gs.Node) -> None:
    found = ranked_layout(b, node)
    if found is None:
        return
    lay, r = found
    axes = int_list(node, "axes", 3)
    if axes is not None and not axes:
        starts = int_list(node, "starts", 1)
        axes = None if starts is None else list(range(len(starts)))
    if axes is None or lay.axis in [a % r for a in axes]:
        b.freeze_layout(lay, f"{node_name(node)} may slice the channel axis")
        return
    b.set_layout(node.outputs[0], lay)


@rule("Pad")
def _pad(b: Builder, node: gs.Node) -> None:
    found = ranked_layout(b, node)
    if found is None:
        return
    lay, r = found
    pads = int_list(node, "pads", 1)
    axes = int_list(node, "axes", 3) or list(range(r))
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
def _resize(b: Builder, node: gs.Node) -> None:
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
