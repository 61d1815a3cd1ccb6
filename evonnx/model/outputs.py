"""Does a rewritten graph keep its input's outputs? One onnxruntime run of each, compared.

Every writer that rewrites a graph checks its result here before writing: ``export`` (the
simplifier step and the final file), the load-time normalization, and ``prune``. Both
models run once on the same seeded random inputs (:func:`input_feed`: the right dtype, the
given shapes, symbolic dimensions 1 for the batch and :data:`DEFAULT_DIM` elsewhere), with
onnxruntime's graph optimizations off. The outputs must have the same names, ranks and
shapes, and (when values are compared) the same values within ``rtol`` relative to the
largest magnitude of each output: :data:`RTOL` (1e-4) for float32 rewrites,
:data:`FP16_RTOL` for an fp16 export.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from evonnx.errors import OutputMismatchError
from evonnx.model.graph import graph_inputs
from evonnx.model.session import make_session

logger = logging.getLogger(__name__)

__all__ = ["OutputCheck", "OutputMismatchError", "compare_outputs", "require_same_outputs"]

RTOL = 1e-4
"""Largest relative output difference a float32 rewrite may make."""

FP16_RTOL = 1e-2
"""Largest relative output difference of an fp16 export: float16 keeps about 3 decimal digits
and rounds at every layer (measured at most 7e-4 on the test zoo's graphs, so 1e-2 leaves
room for deeper networks while still catching a changed computation)."""

DEFAULT_DIM = 32
"""Size given to a symbolic non-batch dimension when no shape is given."""

_TINY = 1e-6  # absolute floor of an output's scale (an all-zero output)
_DTYPES: dict[int, type] = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.BOOL: np.bool_,
}


@dataclass(frozen=True)
class OutputCheck:
    """Result of comparing two models' outputs.

    Attributes:
        checked: Both models ran and were compared (``False``: see ``skipped``).
        difference: The first difference found, one line; ``None`` when the outputs match.
        max_rel_error: Largest relative value difference seen (0 when values were not compared).
        skipped: Why nothing was compared (the reference cannot run here), or ``None``.
        shapes: Input shapes the models ran at.
    """

    checked: bool
    difference: str | None = None
    max_rel_error: float = 0.0
    skipped: str | None = None
    shapes: Mapping[str, tuple[int, ...]] | None = None

    @property
    def ok(self) -> bool:
        """No difference was found (also when nothing could be compared)."""
        return self.difference is None


def feed_shapes(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes: static dimensions as declared, symbolic ones from ``shapes``
    (by input name) or 1 for the batch axis and :data:`DEFAULT_DIM` elsewhere."""
    out = {}
    for vi in graph_inputs(model):
        given = tuple(shapes.get(vi.name, ())) if shapes else ()
        dims = vi.type.tensor_type.shape.dim
        if not dims and given:
            out[vi.name] = tuple(int(d) for d in given)
            continue
        concrete = []
        for ax, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                concrete.append(int(d.dim_value))
            elif ax < len(given) and len(given) == len(dims):
                concrete.append(int(given[ax]))
            else:
                concrete.append(1 if ax == 0 else DEFAULT_DIM)
        out[vi.name] = tuple(concrete)
    return out


def input_feed(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded random inputs of the right dtype at :func:`feed_shapes` (floats: standard
    normal; integers and booleans: zeros, valid as indices)."""
    rng = np.random.default_rng(seed)
    sizes = feed_shapes(model, shapes)
    feed = {}
    for vi in graph_inputs(model):
        dtype = np.dtype(_DTYPES.get(int(vi.type.tensor_type.elem_type), np.float32))
        dims = sizes[vi.name]
        if dtype.kind == "f":
            feed[vi.name] = rng.normal(size=dims).astype(dtype)
        else:
            feed[vi.name] = np.zeros(dims, dtype=dtype)
    return feed


def run(model: onnx.ModelProto, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Outputs of ``model`` by name, from one onnxruntime CPU run without graph optimization."""
    sess = make_session(model, optimize=False)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, (np.asarray(v) for v in sess.run(None, dict(feed))), strict=True))


def _declared(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...] | None]:
    out: dict[str, tuple[int | str, ...] | None] = {}
    for vi in model.graph.output:
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            out[vi.name] = None
            continue
        out[vi.name] = tuple(
            int(d.dim_value) if d.HasField("dim_value") else d.dim_param for d in tt.shape.dim
        )
    return out


def _declared_difference(ref: onnx.ModelProto, new: onnx.ModelProto) -> str | None:
    """Names, ranks and static sizes of the declared outputs."""
    a, b = _declared(ref), _declared(new)
    if list(a) != list(b):
        return f"output names {list(a)} became {list(b)}"
    for name, da in a.items():
        db = b[name]
        if da is None or db is None:
            continue
        if len(da) != len(db):
            return f"output {name!r} has rank {len(db)} instead of {len(da)}"
        for x, y in zip(da, db, strict=True):
            if isinstance(x, int) and isinstance(y, int) and x != y:
                return f"output {name!r} is declared {_dims(db)} instead of {_dims(da)}"
    return None


def _dims(d: Sequence[int | str]) -> str:
    return "[" + ",".join(str(x) or "?" for x in d) + "]"


def _value_error(x: np.ndarray, y: np.ndarray) -> float:
    """Largest ``|x - y|`` over the largest ``|x|`` (inf where non-finite entries differ)."""
    if x.dtype.kind not in "fc" or y.dtype.kind not in "fc":
        return 0.0 if np.array_equal(x, y) else np.inf
    x, y = x.astype(np.float64), y.astype(np.float64)
    fx, fy = np.isfinite(x), np.isfinite(y)
    if not np.array_equal(fx, fy) or not np.array_equal(x[~fx], y[~fy]):
        return np.inf
    if not fx.any():
        return 0.0
    scale = max(float(np.max(np.abs(x[fx]))), _TINY)
    return float(np.max(np.abs(x[fx] - y[fx]))) / scale


def compare_outputs(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    shapes: Mapping[str, Sequence[int]] | None = None,
    rtol: float = RTOL,
    values: bool = True,
) -> OutputCheck:
    """Compare ``candidate``'s outputs with ``reference``'s on one seeded random input.

    Args:
        reference: The model as it was before the rewrite.
        candidate: The rewritten model.
        shapes: Shapes of symbolic inputs (see :func:`feed_shapes`; the candidate's static
            dimensions, e.g. a fixed batch, win).
        rtol: Largest relative value difference (:func:`_value_error`).
        values: Compare values; ``False`` compares names and shapes only (a pruned model).
    """
    declared = _declared_difference(reference, candidate)
    if declared is not None:
        return OutputCheck(True, declared)
    feed = input_feed(candidate, shapes)
    sizes = {k: tuple(v.shape) for k, v in feed.items()}
    try:
        ya = run(reference, feed)
    except Exception as exc:  # onnxruntime raises its own unrelated types
        logger.info("outputs not checked: the reference does not run here (%s)", exc)
        return OutputCheck(False, skipped=f"the input model does not run here: {_first(exc)}")
    try:
        yb = run(candidate, feed)
    except Exception as exc:
        return OutputCheck(True, f"the rewritten model does not run: {_first(exc)}", shapes=sizes)
    return _compare_runs(ya, yb, rtol, values, sizes)


def _compare_runs(
    ya: Mapping[str, np.ndarray],
    yb: Mapping[str, np.ndarray],
    rtol: float,
    values: bool,
    sizes: Mapping[str, tuple[int, ...]],
) -> OutputCheck:
    if list(ya) != list(yb):
        return OutputCheck(True, f"output names {list(ya)} became {list(yb)}", shapes=sizes)
    worst = 0.0
    for name, x in ya.items():
        y = yb[name]
        if x.shape != y.shape:
            diff = f"output {name!r} has shape {_dims(y.shape)} instead of {_dims(x.shape)}"
            return OutputCheck(True, diff, shapes=sizes)
        if not values:
            continue
        err = _value_error(x, y)
        worst = max(worst, err)
        if err > rtol:
            diff = f"output {name!r} differs by {err:.2e} relative (tolerance {rtol:.0e})"
            return OutputCheck(True, diff, err, shapes=sizes)
    return OutputCheck(True, None, worst, shapes=sizes)


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def require_same_outputs(
    reference: onnx.ModelProto,
    candidate: onnx.ModelProto,
    what: str,
    shapes: Mapping[str, Sequence[int]] | None = None,
    rtol: float = RTOL,
    values: bool = True,
) -> OutputCheck:
    """:func:`compare_outputs`, refusing a difference.

    Raises:
        OutputMismatchError: One line naming ``what`` and the difference.
    """
    check = compare_outputs(reference, candidate, shapes, rtol, values)
    if check.difference is not None:
        raise OutputMismatchError(
            f"{what} changed the outputs: {check.difference}; nothing written"
        )
    return check
