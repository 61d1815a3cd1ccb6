"""Graph outputs that end in Softmax, LogSoftmax or Sigmoid, and the graph that trains on
their input.

A network that ends in ``Softmax`` returns probabilities; training on them (a logarithm of a
probability that underflowed to 0) loses the gradient or gives NaNs. :func:`softmax_heads`
finds every graph output produced by a terminal ``Softmax``/``LogSoftmax`` (and
:func:`sigmoid_heads` every one produced by a terminal ``Sigmoid``: per-element
probabilities, such as a DB text detector's map or an objectness score), also where
``Identity`` nodes stand between the head and the graph output (paddle2onnx ends its graphs
so), and
:func:`logits_view` returns a copy of the model whose outputs are those nodes' inputs (the
logits), with every initializer unchanged, so weights trained on the view write back into the
original graph. Shared by every task that trains on class scores.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

import onnx

from evonnx.model.graph import live_nodes, opset_of

logger = logging.getLogger(__name__)

SOFTMAX_OPS = ("Softmax", "LogSoftmax")
PASS_THROUGH_OPS = ("Identity",)
"""Ops between a head and its graph output that leave the head's values as they are."""


@dataclass(frozen=True)
class SoftmaxHead:
    """A graph output produced by a terminal Softmax or LogSoftmax.

    Attributes:
        output: The graph output (probabilities or log-probabilities).
        logits: The node's input, which training uses instead.
        axis: The class axis (non-negative when the rank is known, else as written).
        log: ``True`` for LogSoftmax.
        rank: Rank of the output, ``None`` when unknown.
    """

    output: str
    logits: str
    axis: int
    log: bool
    rank: int | None


def softmax_heads(model: onnx.ModelProto) -> dict[str, SoftmaxHead]:
    """Every graph output produced by a Softmax/LogSoftmax node, keyed by output name.

    Before opset 13 Softmax flattens every axis from ``axis`` on; such a node counts as a
    head only when ``axis`` is the last axis (then both definitions agree).
    """
    opset = opset_of(model, default=13)
    producer = _producers(model)
    ranks = _output_ranks(model)
    heads: dict[str, SoftmaxHead] = {}
    for out in model.graph.output:
        node = _head_node(producer, out.name)
        if node is None or node.op_type not in SOFTMAX_OPS or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axis = int(attrs.get("axis", -1 if opset >= 13 else 1))
        rank = ranks.get(out.name)
        if rank is not None and axis < 0:
            axis += rank
        if opset < 13 and (rank is None or axis != rank - 1):
            logger.info("%s: opset-%d %s over flattened axes; not a class head", out.name,
                        opset, node.op_type)  # fmt: skip
            continue
        heads[out.name] = SoftmaxHead(
            out.name, node.input[0], axis, node.op_type != "Softmax", rank
        )
    return heads


def sigmoid_heads(model: onnx.ModelProto) -> dict[str, str]:
    """Every graph output produced by a Sigmoid node: its input (the logits), by output name."""
    producer = _producers(model)
    return {
        out.name: node.input[0]
        for out in model.graph.output
        if (node := _head_node(producer, out.name)) is not None
        and node.op_type == "Sigmoid"
        and node.domain in ("", "ai.onnx")
    }


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def _head_node(producer: dict[str, onnx.NodeProto], name: str) -> onnx.NodeProto | None:
    """The node that computes graph output ``name``, looking through pass-through ops."""
    node = producer.get(name)
    while node is not None and node.op_type in PASS_THROUGH_OPS and node.domain in ("", "ai.onnx"):
        node = producer.get(node.input[0])
    return node


def logits_view(model: onnx.ModelProto, outputs: Collection[str] | None = None) -> onnx.ModelProto:
    """Copy of ``model`` whose Softmax/LogSoftmax-ended outputs (and Sigmoid-ended ones named
    in ``outputs``) are the logits before them.

    Args:
        model: The model (not modified).
        outputs: Only these outputs (``None``: every head of :func:`softmax_heads`).

    The graph outputs keep their order; the replaced ones are renamed to the logits tensor
    and keep their type. Initializers are untouched, so a module trained on the view writes
    its weights back into ``model`` (:func:`evonnx.converters.write_back`).
    """
    heads = {
        k: h.logits for k, h in softmax_heads(model).items() if outputs is None or k in set(outputs)
    }
    heads |= {k: x for k, x in sigmoid_heads(model).items() if outputs is not None and k in outputs}
    if not heads:
        return model
    view = onnx.ModelProto()
    view.CopyFrom(model)
    for out in view.graph.output:
        head = heads.get(out.name)
        if head is not None:
            out.name = head
    nodes, _ = live_nodes(view.graph)  # the heads (and what passed them through) are dead
    del view.graph.node[:]
    view.graph.node.extend(nodes)
    return view


def _output_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of each graph output (declared, else inferred), where known."""
    ranks = {
        o.name: len(o.type.tensor_type.shape.dim)
        for o in model.graph.output
        if o.type.tensor_type.HasField("shape")
    }
    missing = [o.name for o in model.graph.output if o.name not in ranks]
    if missing:
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # shape inference is best effort here
            return ranks
        for vi in (*inferred.graph.value_info, *inferred.graph.output):
            if vi.name in missing and vi.type.tensor_type.HasField("shape"):
                ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
    return ranks
