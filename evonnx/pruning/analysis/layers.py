"""Rules of the layers with constant weights: Conv, ConvTranspose, Gemm, MatMul, LSTM, GRU, RNN."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from evonnx.model.graph import node_name
from evonnx.pruning.analysis.attention import activation_matmul
from evonnx.pruning.analysis.core import (
    Builder,
    Layout,
    Segment,
    const_value,
    dim,
    freeze_inputs,
    known_shape,
    new_output_group,
    optional_input,
    prod,
    rank,
    rule,
)
from evonnx.pruning.groups import Layer, Role


def _macs(node: gs.Node, w_shape: tuple[int, ...], group: int) -> int:
    out = node.outputs[0]
    if node.op == "Conv":
        osh = known_shape(out)
        return prod(osh) * prod(list(w_shape[1:])) if osh else 0
    if node.op == "ConvTranspose":
        ish = known_shape(node.inputs[0])
        return prod(ish) * prod(list(w_shape[1:])) if ish else 0
    osh = known_shape(out)
    if not osh:
        return 0
    k = w_shape[1] if node.op == "Gemm" and node.attrs.get("transB", 0) else w_shape[0]
    return prod(osh) * int(k)


def _record_layer(
    b: Builder,
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


def _consume(b: Builder, node: gs.Node, lay: Layout | None, w: gs.Tensor, axis: int) -> None:
    if lay is not None:
        for s in lay.segments:
            b.add(s, Role.CONSUMER, w.name, node_name(node), axis)


def _produce(
    b: Builder, node: gs.Node, gid: int, w: gs.Tensor, axis: int, bias: gs.Tensor | None
) -> None:
    seg = Segment(gid, 0, 1)
    b.add(seg, Role.PRODUCER, w.name, node_name(node), axis)
    if bias is not None and const_value(bias) is not None and bias.shape and len(bias.shape) == 1:
        b.add(seg, Role.BIAS, bias.name, node_name(node), 0)


def _layer_inputs(
    b: Builder, node: gs.Node, bias_index: int = 2
) -> tuple[Layout | None, gs.Tensor, np.ndarray | None, gs.Tensor | None]:
    """Layout of a layer's input, its weight (input 1) and the weight's value, and its bias."""
    w = node.inputs[1]
    return b.layout(node.inputs[0]), w, const_value(w), optional_input(node, bias_index)


def _new_layer(
    b: Builder,
    node: gs.Node,
    w: gs.Tensor,
    bias: gs.Tensor | None,
    lay: Layout | None,
    cout: int,
    out_axis: int,
    frozen: str | None = None,
) -> None:
    """Record a layer that reads ``lay`` and writes a new group of ``cout`` channels along
    ``out_axis`` of its weight (the input channels lie on the other of axes 0 and 1)."""
    gid = new_output_group(b, node, cout, 1, frozen)
    _produce(b, node, gid, w, out_axis, bias)
    _record_layer(b, node, w, out_axis, 1 - out_axis, gid, lay)


@rule("Conv")
def _conv(b: Builder, node: gs.Node) -> None:
    lay, w, wv, bias = _layer_inputs(b, node)
    if wv is None:
        freeze_inputs(b, node, f"weight of {node_name(node)} is not a constant initializer")
        cout = dim(node.outputs[0], 1) or 0
        new_output_group(b, node, cout, 1, f"weight of {node_name(node)} is not a constant")
        return
    group = int(node.attrs.get("group", 1))
    cout, cin_g = int(wv.shape[0]), int(wv.shape[1])
    cin = cin_g * group
    if lay is not None and lay.axis != 1:
        b.freeze_layout(lay, f"{node_name(node)} reads channels on axis {lay.axis}")
        lay = None
    if group == 1:
        _consume(b, node, lay, w, 1)
        _new_layer(b, node, w, bias, lay, cout, 0)
    elif group == cin and cin_g == 1 and lay is not None:
        _depthwise(b, node, lay, w, bias, cout // cin)
    else:
        reason = f"grouped conv {node_name(node)} (group={group}) ties channels across groups"
        b.freeze_layout(lay, reason)
        _new_layer(b, node, w, bias, lay, cout, 0, reason)


def _depthwise(
    b: Builder, node: gs.Node, lay: Layout, w: gs.Tensor, bias: gs.Tensor | None, mult: int
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
def _conv_transpose(b: Builder, node: gs.Node) -> None:
    lay, w, wv, bias = _layer_inputs(b, node)
    group = int(node.attrs.get("group", 1))
    cout = dim(node.outputs[0], 1) or (int(wv.shape[1]) * group if wv is not None else 0)
    if wv is None or group != 1 or (lay is not None and lay.axis != 1):
        reason = (
            f"{node_name(node)}: only ConvTranspose with group=1 and a constant weight is pruned"
        )
        b.freeze_layout(lay, reason)
        gid = new_output_group(b, node, cout, 1, reason)
        if wv is not None:
            _record_layer(b, node, w, 1, 0, gid, lay)
        return
    _consume(b, node, lay, w, 0)
    _new_layer(b, node, w, bias, lay, int(wv.shape[1]), 1)


@rule("Gemm")
def _gemm(b: Builder, node: gs.Node) -> None:
    lay, w, wv, bias = _layer_inputs(b, node)
    trans_b = int(node.attrs.get("transB", 0))
    if wv is None or int(node.attrs.get("transA", 0)) or const_value(node.inputs[0]) is not None:
        reason = f"{node_name(node)}: Gemm needs a constant B, an activation A and transA=0"
        freeze_inputs(b, node, reason)
        new_output_group(b, node, dim(node.outputs[0], 1) or 0, 1, reason)
        return
    out_axis, in_axis = (0, 1) if trans_b else (1, 0)
    if lay is not None and lay.axis != 1:
        b.freeze_layout(lay, f"{node_name(node)} reads features on axis {lay.axis}")
        lay = None
    _consume(b, node, lay, w, in_axis)
    gid = new_output_group(b, node, int(wv.shape[out_axis]), 1)
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
def _matmul(b: Builder, node: gs.Node) -> None:
    a, w = node.inputs
    lay = b.layout(a)
    wv = const_value(w)
    r = rank(a)
    ok = wv is not None and wv.ndim == 2 and const_value(a) is None and r is not None and r >= 2
    if wv is None and const_value(a) is None:
        activation_matmul(b, node)  # attention: scores and attention-weighted values
        return
    if not ok:
        reason = f"{node_name(node)}: MatMul needs an activation times a 2-D constant weight"
        if r is None:
            reason = b.unknown(f"{node_name(node)}: rank of the MatMul input unknown")
        freeze_inputs(b, node, reason)
        ro = rank(node.outputs[0])
        d = dim(node.outputs[0], ro - 1) if ro else None
        new_output_group(b, node, d or 0, (ro or 1) - 1, reason)
        return
    assert wv is not None and r is not None
    if lay is not None and lay.axis != r - 1:
        b.freeze_layout(lay, f"{node_name(node)} reads features on axis {lay.axis}, not the last")
        lay = None
    _consume(b, node, lay, w, 0)
    gid = new_output_group(b, node, int(wv.shape[1]), r - 1)
    b.add(Segment(gid, 0, 1), Role.PRODUCER, w.name, node_name(node), 1)
    _record_layer(b, node, w, 1, 0, gid, lay)


GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
"""Gate blocks of a recurrent layer's ``W`` (``[directions, gates * hidden, input]``)."""


@rule("LSTM", "GRU", "RNN")
def _recurrent(b: Builder, node: gs.Node) -> None:
    """Recurrent layer: its input features are channels its ``W`` input columns slice.

    A removed channel's constant ``c`` enters every gate linearly before the activation
    (``x W^T + Wb``), so ``W[:, :, c] * c`` folds exactly into the ``Wb`` half of ``B``
    (:mod:`evonnx.pruning.fold`). Its hidden units stay whole: its outputs carry frozen groups.
    """
    lay, w, wv, bias = _layer_inputs(b, node, 3)
    gates = GATES[node.op]
    if lay is not None:
        reason = None
        if wv is None or wv.ndim != 3:
            reason = f"{node_name(node)}: W is not a constant initializer"
        elif bias is not None and const_value(bias) is None:
            reason = f"{node_name(node)}: B is not a constant initializer"
        elif lay.axis != 2:
            reason = f"{node_name(node)} reads features on axis {lay.axis}, not the last"
        if reason is None:
            _consume(b, node, lay, w, 2)
        else:
            b.freeze_layout(lay, reason)
    hidden = int(node.attrs.get("hidden_size", 0))
    hidden = hidden or (int(wv.shape[1]) // gates if wv is not None else 0)
    reason = f"{node_name(node)}: {node.op} hidden units are not pruned"
    for i, out in enumerate(node.outputs):
        if out.name and out.outputs:
            axis = 3 if i == 0 else 2
            b.set_layout(out, Layout(axis, (Segment(b.new_group(hidden, reason), 0, 1),)))
