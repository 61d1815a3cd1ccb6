"""Batch-size rewriting of ONNX graphs.

:func:`rebatch` fixes the batch dimension of every graph input (and of the outputs that carry
it) to ``N`` in a copy of the model. Constant ``Reshape`` targets that spell out the old batch
(``[1, 400]`` or ``[1, -1]`` after an export at batch 1) become ``[-1, <static rest>]``, but
only when the reshape provably keeps axis 0 as the batch: input and output both lead with the
old batch and the remaining dims hold the same number of elements. Anything else that hard-codes
the batch makes strict shape inference fail, and the model is reported as not re-batchable.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from evonnx.errors import RebatchError
from evonnx.model.graph import all_nodes, graph_inputs
from evonnx.model.inputs import BATCH_NAME
from evonnx.model.shapes import static_shapes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchInfo:
    """How a model's graph inputs spell the batch dimension.

    Attributes:
        fixed: The fixed batch size every batched input shares, or ``None`` when symbolic.
        inputs: Names of the graph inputs (initializers excluded).
    """

    fixed: int | None
    inputs: tuple[str, ...]


def _dims(vi: onnx.ValueInfoProto) -> list[onnx.TensorShapeProto.Dimension]:
    tt = vi.type.tensor_type
    return list(tt.shape.dim) if tt.HasField("shape") else []


def batch_info(model: onnx.ModelProto) -> BatchInfo:
    """Find the batch dimension (dim 0) of the model's inputs.

    Raises:
        RebatchError: The model has no inputs with a dim 0, or inputs disagree on it.
    """
    inputs = graph_inputs(model)
    batched = [vi for vi in inputs if _dims(vi)]
    if not batched:
        raise RebatchError("model has no graph input with a batch dimension")
    fixed = {int(_dims(vi)[0].dim_value) for vi in batched if _dims(vi)[0].HasField("dim_value")}
    if len(fixed) > 1:
        raise RebatchError(f"graph inputs disagree on the batch dimension: {sorted(fixed)}")
    return BatchInfo(next(iter(fixed)) if fixed else None, tuple(vi.name for vi in inputs))


def rebatch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """Copy of ``model`` whose batch dimension is fixed to ``batch``.

    Args:
        model: The model (not modified).
        batch: New batch size (>= 1).

    Returns:
        A copy with input/output dim 0 set to ``batch``, Reshape targets that hard-coded the
        old batch rewritten, and shapes re-inferred.

    Raises:
        RebatchError: ``batch`` < 1, or the graph hard-codes its batch somewhere that cannot
            be rewritten safely.
    """
    if batch < 1:
        raise RebatchError(f"batch size must be >= 1, got {batch}")
    info = batch_info(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if info.fixed == batch:
        return out
    params = _batch_params(out)
    if info.fixed is not None:
        _rewrite_reshapes(out, info.fixed)
    _set_batch(out, batch, info, params)
    return _reinfer(out, batch)


def dynamic_batch(model: onnx.ModelProto, name: str = BATCH_NAME) -> onnx.ModelProto:
    """Copy of ``model`` whose fixed batch dimension becomes the symbolic ``name``.

    Exporters that trace with one sample (torch's dynamo exporter, tf2onnx without a
    signature) hard-code the batch; training needs any batch size. Reshape targets that spell
    the old batch become ``-1``.

    Raises:
        RebatchError: The graph hard-codes its batch somewhere that cannot be rewritten.
    """
    info = batch_info(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if info.fixed is None:
        return out
    _rewrite_reshapes(out, info.fixed)
    for vi in [*graph_inputs(out), *out.graph.output]:
        dims = _dims(vi)
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == info.fixed:
            vi.type.tensor_type.shape.dim[0].dim_param = name
    del out.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(out, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError and friends
        raise RebatchError(f"the batch of this model cannot be made dynamic: {exc}") from exc


def _batch_params(model: onnx.ModelProto) -> set[str]:
    """Symbolic names the inputs use for their batch dimension."""
    names = set()
    for vi in graph_inputs(model):
        dims = _dims(vi)
        if dims and dims[0].HasField("dim_param"):
            names.add(dims[0].dim_param)
    return names


def _set_batch(model: onnx.ModelProto, batch: int, info: BatchInfo, params: set[str]) -> None:
    for vi in graph_inputs(model):
        dims = _dims(vi)
        if dims:
            vi.type.tensor_type.shape.dim[0].dim_value = batch
    for vi in model.graph.output:
        dims = _dims(vi)
        if not dims:
            continue
        d0 = dims[0]
        is_batch = (
            d0.dim_value == info.fixed
            if info.fixed is not None and d0.HasField("dim_value")
            else d0.HasField("dim_param") and d0.dim_param in params
        )
        if is_batch:
            vi.type.tensor_type.shape.dim[0].dim_value = batch
    del model.graph.value_info[:]


def _rewrite_reshapes(model: onnx.ModelProto, old: int) -> None:
    """Make constant Reshape targets that spell the old batch independent of it."""
    shapes = static_shapes(model)
    consts = _int_constants(model)
    replaced: set[str] = set()
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        target = consts[node.input[1]]
        if target.size == 0 or int(target[0]) != old:
            continue
        new = _safe_target(target, shapes.get(node.input[0]), shapes.get(node.output[0]))
        if new is None:
            raise RebatchError(
                f"model cannot be re-batched: Reshape {node.name or node.output[0]} hard-codes "
                f"batch {old} in its target {target.tolist()}"
            )
        name = _unique_name(model, f"{node.input[1]}__rebatch")
        model.graph.initializer.append(numpy_helper.from_array(new, name))
        logger.debug("Reshape %s target %s -> %s", node.name, target.tolist(), new.tolist())
        replaced.add(node.input[1])
        node.input[1] = name
    _drop_unused(model, replaced)


def _drop_unused(model: onnx.ModelProto, names: set[str]) -> None:
    """Remove the initializers in ``names`` that nothing reads any more."""
    used = {i for n in all_nodes(model.graph) for i in n.input}
    used |= {o.name for o in model.graph.output}
    used |= {i.name for i in model.graph.input}
    stale = names - used
    if stale:
        keep = [t for t in model.graph.initializer if t.name not in stale]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)


def _safe_target(
    target: np.ndarray,
    ish: tuple[int, ...] | None,
    osh: tuple[int, ...] | None,
) -> np.ndarray | None:
    """Target with a batch-free leading element, or None when axis 0 is not the batch."""
    if ish is None or osh is None or not ish or not osh:
        return None
    if ish[0] != osh[0] or osh[0] != int(target[0]):
        return None
    if math.prod(ish[1:]) != math.prod(osh[1:]) or 0 in osh[1:]:
        return None
    return np.array([-1, *osh[1:]], dtype=np.int64)


def _int_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Integer initializers and ``Constant`` node outputs, by name."""
    out = {
        t.name: numpy_helper.to_array(t).reshape(-1)
        for t in model.graph.initializer
        if t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    }
    for node in model.graph.node:
        if node.op_type != "Constant":
            continue
        for a in node.attribute:
            if a.name == "value" and a.t.data_type in (onnx.TensorProto.INT64,):
                out[node.output[0]] = numpy_helper.to_array(a.t).reshape(-1)
    return out


def _unique_name(model: onnx.ModelProto, base: str) -> str:
    used = {t.name for t in model.graph.initializer}
    used.update(o for n in model.graph.node for o in n.output)
    name, k = base, 0
    while name in used:
        k += 1
        name = f"{base}_{k}"
    return name


def _reinfer(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """Strict shape inference: a shape that still hard-codes the old batch fails here."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError and friends
        raise RebatchError(f"model cannot be re-batched to {batch}: {exc}") from exc
    return inferred
