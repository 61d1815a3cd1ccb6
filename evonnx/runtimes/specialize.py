"""Specialize a graph at static input shapes: shape computations folded to constants.

Real graphs compute reshape targets at run time (``Shape -> Gather -> Concat -> Reshape``).
The ONNX->torch module runs those on CPU tensors, which breaks CUDA-graph capture
(``Cannot copy between CPU and CUDA tensors during CUDA graph capture``) and makes eager
timing overhead-bound. At a fixed input shape they are constants: :func:`specialize` replaces
every ``Shape`` of a statically shaped tensor, and every node computing only from constants
(small or integer results), by an initializer, then drops what became unused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from evonnx.errors import UnsupportedModelError
from evonnx.model.graph import live_nodes
from evonnx.model.shapes import static_shapes

logger = logging.getLogger(__name__)

_MAX_FOLDED_FLOATS = 1024  # float results larger than this stay in the graph (weights)


def specialize(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None
) -> onnx.ModelProto:
    """A copy of ``model`` whose shape subgraphs are folded at the given input shapes.

    Args:
        model: The model (its inputs must be static after ``shapes`` is applied).
        shapes: Static shape per graph input name (default: the inputs' declared shapes).

    Raises:
        UnsupportedModelError: An input shape is not static.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {t.name for t in m.graph.initializer}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = vi.type.tensor_type.shape.dim
        if shapes and vi.name in shapes:
            new = list(shapes[vi.name])
            del dims[:]
            for d in new:
                dims.add().dim_value = int(d)
        if any(not d.HasField("dim_value") for d in dims):
            raise UnsupportedModelError(f"input {vi.name} has no static shape to specialize at")
    static = static_shapes(m)
    known = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    opsets = {o.domain or "": o.version for o in m.opset_import}
    folded: list[onnx.TensorProto] = []
    keep: list[onnx.NodeProto] = []
    for node in m.graph.node:
        values = _fold(node, known, static, opsets)
        if values is None:
            keep.append(node)
            continue
        for name, v in zip(node.output, values, strict=True):
            known[name] = v
            folded.append(numpy_helper.from_array(np.asarray(v), name))
    del m.graph.node[:]
    m.graph.node.extend(keep)
    m.graph.initializer.extend(folded)
    _drop_unused(m)
    logger.debug("specialized: %d nodes folded", len(folded))
    return shape_inference.infer_shapes(m)


def _fold(
    node: onnx.NodeProto,
    known: Mapping[str, np.ndarray],
    static: Mapping[str, tuple[int, ...]],
    opsets: Mapping[str, int],
) -> list[np.ndarray] | None:
    """The node's outputs when they are constants at the static shapes, else ``None``."""
    if node.domain not in ("", "ai.onnx") or any(a.type == a.GRAPH for a in node.attribute):
        return None
    if node.op_type == "Shape" and node.input[0] in static:
        shape = np.asarray(static[node.input[0]], dtype=np.int64)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end")
        return [shape[start:end]]
    if node.op_type == "Size" and node.input[0] in static:
        return [np.asarray(int(np.prod(static[node.input[0]])), dtype=np.int64)]
    if node.op_type in ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"):
        return None
    if not all(i == "" or i in known for i in node.input):
        return None
    try:
        ref = ReferenceEvaluator(node, opsets=dict(opsets))
        feeds = {i: known[i] for i in node.input if i}
        values = [np.asarray(v) for v in ref.run(None, feeds)]
    except Exception as exc:  # the reference runtime raises many types; keep the node then
        logger.debug("cannot fold %s (%s): %s", node.name, node.op_type, exc)
        return None
    if any(v.dtype.kind == "f" and v.size > _MAX_FOLDED_FLOATS for v in values):
        return None
    return values


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove nodes and initializers that no graph output depends on."""
    g = model.graph
    kept, needed = live_nodes(g)
    del g.node[:]
    g.node.extend(kept)
    dropped = {t.name for t in g.initializer if t.name not in needed}
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    inputs = [i for i in g.input if i.name not in dropped]
    del g.input[:]
    g.input.extend(inputs)
    vis = [v for v in g.value_info if v.name in needed]
    del g.value_info[:]
    g.value_info.extend(vis)
