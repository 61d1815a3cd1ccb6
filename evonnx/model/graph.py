"""ONNX graphs in memory: checks, shape inference, onnx-graphsurgeon views, constants and the
one filter of graph inputs (:func:`graph_inputs`). Files on disk: :mod:`evonnx.model.files`."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from evonnx.errors import ModelLoadError, UnsupportedModelError

logger = logging.getLogger(__name__)

MIN_OPSET = 9
MAX_OPSET = onnx.defs.onnx_opset_version()


def graph_inputs(model: onnx.ModelProto | onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are not initializers: the tensors a caller feeds."""
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    inits = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in inits]


FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
)
"""Floating-point ONNX element types."""


def non_finite_weights(model: onnx.ModelProto) -> list[str]:
    """Names of the floating-point initializers holding a NaN or an infinity."""
    bad = []
    for t in model.graph.initializer:
        if t.data_type not in FLOAT_TYPES or t.data_location == onnx.TensorProto.EXTERNAL:
            continue
        values = numpy_helper.to_array(t)
        if not np.isfinite(values.astype(np.float32, copy=False)).all():
            bad.append(t.name)
    return bad


def opset_of(model: onnx.ModelProto, default: int | None = None) -> int:
    """Default-domain opset version of ``model`` (``default``, if given, when it has none).

    Raises:
        UnsupportedModelError: The model imports no default-domain opset and no ``default``
            is given.
    """
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    if default is not None:
        return default
    raise UnsupportedModelError("model imports no default-domain (ai.onnx) opset")


def check_model(model: onnx.ModelProto, what: str = "model") -> None:
    """Validate the opset and structure of an in-memory model.

    Raises:
        UnsupportedModelError: The opset is unsupported.
        ModelLoadError: The ONNX checker rejects the model.
    """
    opset = opset_of(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedModelError(
            f"{what} uses opset {opset}; evonnx supports opsets {MIN_OPSET} to {MAX_OPSET}"
        )
    try:
        onnx.checker.check_model(_checkable(model))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ModelLoadError(f"{what} fails the ONNX checker: {first}") from exc


def _checkable(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or, past protobuf's 2 GB limit (the checker serializes its input), a copy
    whose large weights are one-element stand-ins: structure and types are still checked."""
    from evonnx.model.external import (
        MIN_EXTERNAL_BYTES,
        needs_external,
        tensor_bytes,
        without_initializers,
    )

    if not needs_external(model):
        return model
    light = without_initializers(model)
    for t in model.graph.initializer:
        if tensor_bytes(t) < MIN_EXTERNAL_BYTES:
            light.graph.initializer.append(t)
            continue
        item = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        light.graph.initializer.add(name=t.name, data_type=t.data_type, dims=[1]).raw_data = bytes(
            item
        )
    return light


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of ``graph`` and of its subgraphs (``If``/``Loop`` bodies), at any depth."""
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                nodes += all_nodes(sub)
    return nodes


def live_nodes(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes of ``graph`` that some graph output depends on, in order, and every name
    they or the graph outputs read (a subgraph's reads from the outer scope included)."""
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:
                for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else attr.graphs:
                    needed.update(i for n in all_nodes(sub) for i in n.input if i)
    kept.reverse()
    return kept, needed


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape-inferred copy of ``model`` (best effort: failures leave shapes unknown)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    set_inferred_shapes(out)
    return out


def set_inferred_shapes(model: onnx.ModelProto) -> None:
    """Replace ``model``'s value_info by inferred shapes, in place (no copy of the weights)."""
    inferred = inferred_skeleton(model)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """``model`` in onnx-graphsurgeon with inferred shapes; weights are read lazily."""
    graph = gs.import_onnx(model)
    _annotate(graph, inferred_skeleton(model))
    return graph


def inferred_skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference on a copy whose large float weights carry dims but no data.

    Shapes never depend on the values of float weights, and skipping them makes inference on
    a 100 MB model several times faster.
    """
    light = onnx.ModelProto()
    for field in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(light, field, getattr(model, field))
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g = light.graph
    g.name = model.graph.name
    for name in ("node", "input", "output", "value_info", "sparse_initializer"):
        getattr(g, name).extend(getattr(model.graph, name))
    for t in model.graph.initializer:
        if t.data_type in FLOAT_TYPES and _numel(t) > 64:
            g.initializer.add(name=t.name, dims=t.dims, data_type=t.data_type)
        else:
            g.initializer.append(t)
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several unrelated types here
        logger.warning("shape inference failed: %s", exc)
        return light


def _numel(t: onnx.TensorProto) -> int:
    n = 1
    for d in t.dims:
        n *= int(d)
    return n


def _annotate(graph: gs.Graph, inferred: onnx.ModelProto) -> None:
    """Copy inferred dtypes and shapes onto the graph's variables."""
    tensors = graph.tensors()
    for vi in inferred.graph.value_info:
        t = tensors.get(vi.name)
        if not isinstance(t, gs.Variable) or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        t.dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type) if tt.elem_type else t.dtype
        if tt.HasField("shape"):
            t.shape = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tt.shape.dim
            ]


def node_name(node: gs.Node) -> str:
    """Stable name of ``node``: its own, or its op and first output when unnamed."""
    return node.name or f"{node.op}:{node.outputs[0].name if node.outputs else '?'}"


def to_graph(model: onnx.ModelProto, infer: bool = True) -> gs.Graph:
    """Import ``model`` into onnx-graphsurgeon, shapes inferred and ``Constant`` nodes lifted.

    Lifting turns every ``Constant`` node holding a tensor into an initializer, so later passes
    see one kind of constant. Outputs of the graph keep their names.
    """
    graph = import_graph(model) if infer else gs.import_onnx(model)
    for node in list(graph.nodes):
        if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
            out = node.outputs[0]
            if out in graph.outputs:
                continue
            values = np.asarray(node.attrs["value"].values)
            out.to_constant(values)
            node.outputs.clear()
    graph.cleanup(remove_unused_graph_inputs=False)
    return graph


def from_graph(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` keeping the metadata and opsets of ``like``."""
    model = gs.export_onnx(graph, do_type_check=True)
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    model.producer_name = like.producer_name
    model.producer_version = like.producer_version
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    return model


LARGE_CONSTANT_BYTES = 16 << 20
"""Constants above this size are read without being kept on the graph (see below)."""


def constant_array(t: gs.Constant) -> np.ndarray:
    """Values of a constant tensor.

    A large constant not read yet is loaded without being cached on the tensor, so a pass
    over a big model (analysis, metrics) holds one weight at a time rather than a second
    copy of all of them.
    """
    lazy = t._values  # onnx-graphsurgeon keeps unread data in LazyValues
    if isinstance(lazy, LazyValues) and lazy.nbytes > LARGE_CONSTANT_BYTES:
        return np.asarray(lazy.load())
    return np.asarray(t.values)


def constant_values(graph: gs.Graph) -> dict[str, np.ndarray]:
    """Values of every constant tensor of an imported graph, by name."""
    return {
        name: np.asarray(t.values)
        for name, t in graph.tensors().items()
        if isinstance(t, gs.Constant)
    }
