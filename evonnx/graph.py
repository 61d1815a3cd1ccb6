"""Loading, validating, normalizing and saving ONNX models."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx_graphsurgeon.ir.tensor import LazyValues

from evonnx.errors import ModelLoadError, UnsupportedModelError
from evonnx.textio import atomic_path, dangling_link

logger = logging.getLogger(__name__)

MIN_OPSET = 9
MAX_OPSET = onnx.defs.onnx_opset_version()


def load_model(path: str | Path, normalize: bool = True) -> onnx.ModelProto:
    """Read and validate an ONNX file (external data included).

    Args:
        path: The ``.onnx`` file.
        normalize: Rewrite exporter quirks (see :func:`evonnx.normalize.normalize`).

    Raises:
        ModelLoadError: The file is missing, not an ONNX protobuf, or its external data is absent.
        UnsupportedModelError: Its default-domain opset is outside what evonnx supports.
    """
    p = Path(path)
    if p.is_dir():
        raise ModelLoadError(f"{p} is a folder; give the path of an .onnx model file")
    if not p.is_file():
        raise ModelLoadError(dangling_link(p) or f"model file not found: {p}")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"{p} is empty (0 bytes), not an ONNX model")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{p} is not a valid ONNX model: {exc}") from exc
    if not model.graph.node and not model.opset_import:
        raise ModelLoadError(f"{p} holds no ONNX graph; is it an .onnx model file?")
    _load_external(model, p.parent)
    check_model(model, str(p))
    if normalize:
        from evonnx.normalize import normalize as normalize_model

        model = normalize_model(model)[0]
    return model


def _load_external(model: onnx.ModelProto, base: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    from evonnx.external import check_location

    for t in model.graph.initializer:
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            check_location(loc, t.name, base)
    try:
        load_external_data_for_model(model, str(base))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot read external data: {first}") from exc


def opset_of(model: onnx.ModelProto) -> int:
    """Default-domain opset version of ``model``."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
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
    from evonnx.external import (
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
        if t.data_type in _FLOAT_TYPES and _numel(t) > 64:
            g.initializer.add(name=t.name, dims=t.dims, data_type=t.data_type)
        else:
            g.initializer.append(t)
    try:
        return onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several unrelated types here
        logger.warning("shape inference failed: %s", exc)
        return light


_FLOAT_TYPES = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
}


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


def keeps_external_data(path: str | Path) -> bool | None:
    """``True`` when the ONNX file at ``path`` keeps weights in external data files.

    Writers pass it on as ``save_model(..., external_data=...)``, so that a model given with a
    ``.data`` file is written the same way; ``None`` otherwise (the size decides).
    """
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    return True if any(uses_external_data(t) for t in model.graph.initializer) else None


def save_model(model: onnx.ModelProto, path: str | Path, external_data: bool | None = None) -> Path:
    """Write ``model`` atomically (temporary file in the same folder, then rename).

    Args:
        model: The model (not modified).
        path: The ``.onnx`` file.
        external_data: Put the weights in ``<name>.data`` beside the file; ``None`` does so
            when the weights exceed 1.8 GB (protobuf cannot hold 2 GB).
    """
    from evonnx.external import needs_external, save_external

    p = Path(path)
    if needs_external(model) if external_data is None else external_data:
        return save_external(model, p)
    with atomic_path(p) as tmp:
        onnx.save(model, str(tmp))
    return p


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
