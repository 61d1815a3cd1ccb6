"""Shapes of every tensor at the given input shapes: the one static-shape source.

Analysis, MACs, latency and depth clusters need static shapes. ONNX shape inference stops at
computed ``Reshape`` targets (``Shape -> Gather -> Concat``), attention and LSTM blocks of
real exports; :func:`resolve_shapes` then gets the missing shapes from ONE onnxruntime run at
the given input shapes, with the unresolved intermediate tensors exposed as outputs of a copy
of the model. It is pure: the shapes come back as data, the caller's model is untouched.

Input shapes: ``input_shapes`` (``--input-shape``) wins; otherwise a symbolic leading (batch)
dimension takes ``batch`` (``--batch``, default 1). An input with other symbolic dimensions
blocks the run; :attr:`ResolvedShapes.blocked` names it so messages can name the flag.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from evonnx.errors import ConfigError, first_line
from evonnx.model.graph import graph_inputs, infer_shapes, inferred_skeleton, to_graph
from evonnx.model.inputs import InputShapes, apply_input_shapes
from evonnx.model.session import make_session

logger = logging.getLogger(__name__)

RUN_BYTES_LIMIT = 1 << 30
"""Largest estimated output volume of the shape run; past it the run uses batch 1."""


@dataclass(frozen=True)
class ResolvedShapes:
    """Static shapes of a model's tensors at one set of input shapes.

    Attributes:
        shapes: Static shape per tensor name (graph inputs, intermediates, outputs).
        inputs: The static shape each graph input was resolved at.
        blocked: Inputs whose symbolic dimensions no given shape fixes, as
            ``"x (height, width)"``; empty when every input is static.
        ran: Whether onnxruntime ran to find shapes static inference left open.
        missing: Tensors still without a static shape (the run failed or was blocked).
    """

    shapes: Mapping[str, tuple[int, ...]]
    inputs: Mapping[str, tuple[int, ...]]
    blocked: tuple[str, ...] = ()
    ran: bool = False
    missing: tuple[str, ...] = ()

    def hint(self) -> str:
        """What the user can give to unblock the shapes (empty when nothing blocks)."""
        if not self.blocked:
            return ""
        names = ", ".join(self.blocked)
        example = self.blocked[0].split(" ")[0]
        return f"input {names} has symbolic dimensions: give --input-shape {example}=1x3xHxW"


def static_inputs(
    model: onnx.ModelProto, input_shapes: InputShapes | None = None, batch: int = 1
) -> tuple[onnx.ModelProto, tuple[str, ...]]:
    """Copy of ``model`` at static input shapes where they are known, and the blocked inputs.

    ``input_shapes`` set the named inputs; a symbolic dimension 0 of the others takes
    ``batch``. Inputs left with a symbolic dimension are returned as blocked.
    """
    shaped = apply_input_shapes(model, input_shapes or {})
    inits = {t.name for t in shaped.graph.initializer}
    if not shaped.graph.value_info and not any(
        _open_batch(vi) for vi in graph_inputs(shaped)
    ):  # nothing to set or clear: no copy of the weights (a > 2 GB model held once)
        return shaped, _blocked(shaped, inits)
    out = onnx.ModelProto()
    out.CopyFrom(shaped)
    blocked = []
    for vi in out.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = int(batch)
        open_dims = [d.dim_param or "?" for d in dims if not d.HasField("dim_value")]
        if open_dims:
            blocked.append(f"{vi.name} ({', '.join(open_dims)})")
    del out.graph.value_info[:]
    return out, tuple(blocked)


def _open_batch(vi: onnx.ValueInfoProto) -> bool:
    dims = vi.type.tensor_type.shape.dim if vi.type.HasField("tensor_type") else []
    return bool(len(dims)) and not dims[0].HasField("dim_value")


def _blocked(model: onnx.ModelProto, inits: set[str]) -> tuple[str, ...]:
    out = []
    for vi in model.graph.input:
        if vi.name in inits or not vi.type.HasField("tensor_type"):
            continue
        open_dims = [
            d.dim_param or "?" for d in vi.type.tensor_type.shape.dim if not d.HasField("dim_value")
        ]
        if open_dims:
            out.append(f"{vi.name} ({', '.join(open_dims)})")
    return tuple(out)


def resolve_shapes(
    model: onnx.ModelProto,
    input_shapes: InputShapes | None = None,
    batch: int = 1,
    run: bool = True,
) -> ResolvedShapes:
    """Static shapes of every tensor of ``model`` at the given input shapes.

    Args:
        model: The model (not modified).
        input_shapes: Static shape per graph input name (``--input-shape``).
        batch: Size of a symbolic leading dimension of the other inputs (``--batch``).
        run: Ask onnxruntime for the shapes static inference leaves open.

    Raises:
        ConfigError: ``input_shapes`` names an unknown input or disagrees with the model.
    """
    shaped, blocked = static_inputs(model, input_shapes, batch)
    inferred = _inferred_light(shaped)
    shapes = _static_of(inferred)
    inputs = {k: v for k, v in shapes.items() if k in _input_names(shaped)}
    missing = [o for n in shaped.graph.node for o in n.output if o and o not in shapes]
    missing = [m for m in missing if m not in _constant_outputs(shaped)]
    ran = False
    if missing and run and not blocked:
        found, error = _run_shapes(shaped, missing, inputs, _value_types(inferred))
        if error is not None:
            if input_shapes and not _unsupported(error):
                raise cannot_run(inputs, error)
            logger.warning("shape run with onnxruntime failed: %s", error)
        ran = found is not None
        shapes.update(found or {})
        missing = [m for m in missing if m not in shapes]
    if missing:
        logger.debug("%d tensors keep unknown shapes: %s", len(missing), missing[:5])
    return ResolvedShapes(shapes, inputs, blocked, ran, tuple(missing))


def _inferred_light(model: onnx.ModelProto) -> onnx.ModelProto:
    """What :func:`~evonnx.model.graph.infer_shapes` gives for shapes and types, without copying the
    weights: inputs and outputs as they are, inferred value_info, initializers' dims only."""
    light = onnx.ModelProto()
    g = light.graph
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    g.value_info.extend(inferred_skeleton(model).graph.value_info)
    for t in model.graph.initializer:
        g.initializer.add(name=t.name, dims=t.dims, data_type=t.data_type)
    return light


def _input_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in graph_inputs(model)}


def _constant_outputs(model: onnx.ModelProto) -> set[str]:
    return {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Fully static shapes that ONNX shape inference gives (no run; initializers included)."""
    return _static_of(infer_shapes(model))


def _static_of(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
            continue
        if all(d.HasField("dim_value") for d in t.shape.dim):
            out[vi.name] = tuple(int(d.dim_value) for d in t.shape.dim)
    for init in g.initializer:
        out.setdefault(init.name, tuple(int(d) for d in init.dims))
    return out


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    g = model.graph
    return {vi.name: vi.type for vi in [*g.input, *g.value_info, *g.output]}


def _run_shapes(
    model: onnx.ModelProto,
    names: Sequence[str],
    inputs: Mapping[str, tuple[int, ...]],
    types: Mapping[str, onnx.TypeProto],
) -> tuple[dict[str, tuple[int, ...]] | None, str | None]:
    """Shapes of ``names`` from one onnxruntime run on random inputs, or ``None`` and the
    first line of onnxruntime's error."""
    feeds_at, rescale = _run_inputs(model, inputs, len(names))
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    if rescale is not None:
        _at_run_batch(probe, feeds_at)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            vi = probe.graph.output.add(name=name)
            if name in types and types[name].HasField("tensor_type"):
                vi.type.tensor_type.elem_type = types[name].tensor_type.elem_type
    try:
        values = _ort_run(probe, random_feed(model, feeds_at))
    except Exception as exc:  # onnxruntime raises its own unrelated types
        return None, first_line(exc)
    out = {}
    for vi, value in zip(probe.graph.output, values, strict=True):
        if isinstance(value, np.ndarray) and vi.name in names:
            out[vi.name] = _scaled(tuple(int(d) for d in value.shape), rescale)
    logger.debug("onnxruntime gave %d shapes static inference left open", len(out))
    return out, None


def require_runs(model: onnx.ModelProto, input_shapes: InputShapes | None, batch: int = 1) -> None:
    """Refuse ``input_shapes`` the model cannot run at (one onnxruntime run, only when shapes
    are given and fix every input; a model onnxruntime cannot run at all is let through).

    Raises:
        ConfigError: One line naming the inputs and their shapes, and onnxruntime's reason.
    """
    if not input_shapes:
        return
    shaped, blocked = static_inputs(model, input_shapes, batch)
    if blocked:
        return
    inputs = input_dims(shaped)
    try:
        _ort_run(shaped, random_feed(shaped, inputs))
    except Exception as exc:  # onnxruntime raises its own unrelated types
        error = first_line(exc)
        if not _unsupported(error):
            raise cannot_run(inputs, error) from exc


_UNSUPPORTED = ("NOT_IMPLEMENTED", "not a registered function/op", "No Op registered")
"""onnxruntime errors that say the model cannot run here at any shape (an op it lacks)."""


def _unsupported(error: str) -> bool:
    return any(word in error for word in _UNSUPPORTED)


def input_dims(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Declared dimensions of ``model``'s graph inputs by name (a symbolic one reads 0)."""
    return {
        vi.name: tuple(int(d.dim_value) for d in vi.type.tensor_type.shape.dim)
        for vi in graph_inputs(model)
    }


def cannot_run(inputs: Mapping[str, tuple[int, ...]], reason: str) -> ConfigError:
    """The error for a model onnxruntime cannot run at the input shapes ``inputs``."""
    return ConfigError(
        f"onnxruntime cannot run the model with input {shape_text(inputs)} (give another "
        f"shape with --input-shape): {reason}"
    )


def shape_text(inputs: Mapping[str, tuple[int, ...]]) -> str:
    """``x=1x3x224x224, mask=1x224`` (inputs and their static shapes)."""
    return ", ".join(f"{name}={'x'.join(map(str, shape))}" for name, shape in inputs.items())


def _run_inputs(
    model: onnx.ModelProto, inputs: Mapping[str, tuple[int, ...]], n_outputs: int
) -> tuple[dict[str, tuple[int, ...]], tuple[int, int] | None]:
    """Input shapes of the run: batch 1 when the outputs could exceed the memory bound.

    The bound estimates every exposed tensor at four times the largest input; past
    :data:`RUN_BYTES_LIMIT` a batch above 1 runs at 1 and leading dims are scaled back.
    """
    largest = max((math.prod(s) * 4 for s in inputs.values()), default=0)
    batches = {s[0] for s in inputs.values() if s}
    if largest * 4 * n_outputs <= RUN_BYTES_LIMIT or len(batches) != 1:
        return dict(inputs), None
    (n,) = batches
    if n == 1:
        return dict(inputs), None
    logger.info("shape run at batch 1 instead of %d to bound its memory", n)
    return {k: (1, *s[1:]) if s else s for k, s in inputs.items()}, (1, n)


def _at_run_batch(probe: onnx.ModelProto, feeds_at: Mapping[str, tuple[int, ...]]) -> None:
    """Declare ``probe``'s inputs at the run's (batch 1) shapes and drop the shapes noted at
    the real batch, which onnxruntime would reject (every layer's shape then comes back
    from the run, rescaled, not only the conv layers' that static inference gave)."""
    for vi in probe.graph.input:
        shape = feeds_at.get(vi.name)
        if shape is not None and vi.type.HasField("tensor_type"):
            dims = vi.type.tensor_type.shape.dim
            for d, value in zip(dims, shape, strict=False):
                d.Clear()
                d.dim_value = value
    del probe.graph.value_info[:]
    for vi in probe.graph.output:
        if vi.type.HasField("tensor_type"):
            vi.type.tensor_type.ClearField("shape")


def _scaled(shape: tuple[int, ...], rescale: tuple[int, int] | None) -> tuple[int, ...]:
    if rescale is None or not shape or shape[0] != rescale[0]:
        return shape
    return (rescale[1], *shape[1:])


def random_feed(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]
) -> dict[str, np.ndarray]:
    """Seeded inputs of ``model`` at ``shapes``: standard normal floats, zeros otherwise."""
    rng = np.random.default_rng(0)
    out = {}
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        shape = shapes[vi.name]
        if np.issubdtype(dtype, np.floating):
            out[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            out[vi.name] = np.zeros(shape, dtype)
    return out


def _ort_run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[object]:
    sess = make_session(model, optimize=False, threads=1)
    return list(sess.run(None, dict(feeds)))


def shaped_graph(
    model: onnx.ModelProto, input_shapes: InputShapes | None = None, batch: int = 1
) -> tuple[gs.Graph, ResolvedShapes]:
    """``model`` imported at static input shapes, every resolvable tensor shape annotated.

    The graph (for analysis and MACs) has the inputs of :func:`static_inputs`; shapes static
    inference leaves open come from :func:`resolve_shapes` (one onnxruntime run).
    """
    resolved = resolve_shapes(model, input_shapes, batch)
    static, _ = static_inputs(model, input_shapes, batch)
    graph = to_graph(static)
    for name, t in graph.tensors().items():
        shape = resolved.shapes.get(name)
        if shape is not None and isinstance(t, gs.Variable):
            t.shape = list(shape)
    return graph, resolved
