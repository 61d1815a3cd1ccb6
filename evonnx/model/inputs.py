"""Input shapes given by the user: ``NAME=1x3x640x640`` (CLI ``--input-shape``, Python API).

Most detection and OCR exports leave height and width symbolic, which leaves MACs unknown.
:func:`parse_input_shapes` reads the option values once; :func:`apply_input_shapes` writes
the dimensions into a copy of the model's graph inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import onnx

from evonnx.errors import ConfigError
from evonnx.model.graph import graph_inputs

logger = logging.getLogger(__name__)

BATCH_NAME = "batch"
"""The name a batch axis gets when it is made symbolic (:func:`~evonnx.model.batch.dynamic_batch`)
or stays symbolic without a name of its own (-1, or unset)."""

InputShapes = Mapping[str, Sequence[int]]


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``"images=1x3x640x640"`` -> ``("images", (1, 3, 640, 640))``.

    Raises:
        ConfigError: The text is not ``NAME=D1xD2x...`` with positive integer dimensions.
    """
    name, sep, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise ConfigError(f"input shape {text!r} is not NAME=D1xD2x... (e.g. images=1x3x640x640)")
    return name, shape


def parse_input_shapes(texts: Iterable[str]) -> dict[str, tuple[int, ...]]:
    """Parse repeated ``NAME=SHAPE`` values; a name given twice is an error."""
    out: dict[str, tuple[int, ...]] = {}
    for text in texts:
        name, shape = parse_input_shape(text)
        if name in out:
            raise ConfigError(f"input shape for {name!r} given twice")
        out[name] = shape
    return out


def apply_input_shapes(
    model: onnx.ModelProto, shapes: InputShapes, keep_batch: bool = False
) -> onnx.ModelProto:
    """Copy of ``model`` whose named graph inputs have the given static shapes.

    Args:
        model: The model (not modified).
        shapes: Shape per input name.
        keep_batch: Leave a batch dimension (axis 0) that is not fixed symbolic (for
            training): a name stays; -1, as paddle2onnx writes it, or an unset one is named
            ``batch``.

    Raises:
        ConfigError: A name is not a graph input, or a rank or fixed dimension disagrees.
    """
    if not shapes:
        return model
    inputs = {i.name: i for i in graph_inputs(model)}
    unknown = sorted(set(shapes) - set(inputs))
    if unknown:
        raise ConfigError(
            f"--input-shape names {unknown}, not inputs of the model (inputs: {sorted(inputs)})"
        )
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for inp in out.graph.input:
        if inp.name not in shapes:
            continue
        shape = shapes[inp.name]
        dims = inp.type.tensor_type.shape.dim
        if len(dims) and len(dims) != len(shape):
            raise ConfigError(
                f"input {inp.name} has rank {len(dims)}, --input-shape gives {len(shape)}"
            )
        for i, (d, v) in enumerate(zip(dims, shape, strict=False)):
            if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != v:
                raise ConfigError(
                    f"input {inp.name} has dimension {i} fixed at {d.dim_value}, not {v}"
                )
        keep = bool(len(dims)) and keep_batch and not dims[0].dim_value > 0  # name, -1, unset
        batch = (dims[0].dim_param or BATCH_NAME) if keep else ""
        inp.type.tensor_type.shape.Clear()
        for v in shape:
            inp.type.tensor_type.shape.dim.add().dim_value = int(v)
        if batch:
            inp.type.tensor_type.shape.dim[0].dim_param = batch
    del out.graph.value_info[:]
    logger.debug("input shapes set: %s", dict(shapes))
    return out


def fill_symbolic_dims(model: onnx.ModelProto, samples: Sequence[Sequence[int]]) -> onnx.ModelProto:
    """Copy of ``model`` whose symbolic non-batch input dimensions take the samples' sizes.

    ``samples`` holds one batch shape per graph input (in order); the batch axis (0) keeps
    its symbolic name and fixed dimensions are left alone, so a mismatch is still reported
    by whoever checks the data against the model. Inputs whose rank differs are untouched.
    """
    inputs = graph_inputs(model)
    shapes: dict[str, tuple[int, ...]] = {}
    for inp, sample in zip(inputs, samples, strict=False):
        dims = inp.type.tensor_type.shape.dim
        if len(dims) != len(sample) or all(d.HasField("dim_value") for d in dims[1:]):
            continue
        shapes[inp.name] = tuple(int(v) for v in sample)
    if not shapes:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for inp in out.graph.input:
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if inp.name in shapes and i > 0 and not d.HasField("dim_value"):
                d.dim_value = shapes[inp.name][i]
    del out.graph.value_info[:]
    logger.info("symbolic input dimensions set from the data: %s", shapes)
    return out


def sample_shapes(batches: object) -> list[tuple[int, ...]]:
    """Per-input shapes of the training data: a Dataset's ``x_train``, else the first batch.

    ``batches`` is what :meth:`evonnx.retrain.task.Task.train_batches` returns; an empty or
    unrecognized one gives ``[]``.
    """
    x_train = getattr(batches, "x_train", None)  # a Dataset: its training array
    if x_train is not None:
        return [tuple(int(d) for d in x_train.shape)]
    try:
        inputs = next(iter(batches))[0]  # type: ignore[call-overload]
    except (TypeError, StopIteration, IndexError, KeyError):
        return []
    tensors = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return [tuple(int(d) for d in getattr(t, "shape", ())) for t in tensors]
