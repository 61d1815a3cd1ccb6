"""Deployment-ready ONNX export for onnxruntime and TensorRT.

:func:`export` returns a copy of a model that is

* re-batched to a fixed batch ``N`` when asked (:func:`~evonnx.model.batch.rebatch`), else
  left with its own (static or dynamic) batch dimension;
* at an opset TensorRT parses (:data:`TENSORRT_OPSETS`; converted with
  ``onnx.version_converter`` to :data:`TENSORRT_DEFAULT_OPSET` when outside), or at ``opset``;
* constant-folded and simplified by `onnxslim <https://github.com/inisis/OnnxSlim>`_, or by
  onnx-graphsurgeon's ``fold_constants`` + ``cleanup`` when onnxslim is not installed or fails;
  a simplification that changes an output (name, shape, or value beyond 1e-4 relative) is
  skipped and reported in the notes;
* optionally in float16 with float32 inputs and outputs, by onnxconverter-common's
  ``convert_float_to_float16(keep_io_types=True)`` (weights and activations in fp16, ``Cast``
  nodes at the graph's inputs and outputs);
* checked against a static list of ONNX ops TensorRT's parser supports
  (:data:`TENSORRT_SUPPORTED_OPS`), with the matching ``trtexec`` command line (shape flags
  for every input with a symbolic dimension);
* and, last, checked against the input model on onnxruntime (:mod:`evonnx.model.outputs`: same
  output names and shapes, values within :data:`~evonnx.model.outputs.RTOL`, or
  :data:`~evonnx.model.outputs.FP16_RTOL` for fp16): an export that changes an output is refused.
"""

from __future__ import annotations

import logging
import shlex
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx
import onnx_graphsurgeon as gs

from evonnx.errors import DeployError
from evonnx.model.batch import rebatch
from evonnx.model.graph import all_nodes, check_model, graph_inputs, infer_shapes, opset_of
from evonnx.model.outputs import (
    DEFAULT_DIM,
    FP16_RTOL,
    RTOL,
    OutputCheck,
    OutputMismatchError,
    compare_outputs,
    feed_shapes,
)

logger = logging.getLogger(__name__)

TARGETS = ("onnxruntime", "tensorrt")
"""Export targets."""

TENSORRT_OPSETS = (9, 20)
"""Inclusive range of default-domain opsets TensorRT 10's ONNX parser accepts."""

TENSORRT_DEFAULT_OPSET = 17
"""Opset a TensorRT export is converted to when the model's opset is outside the range."""

# ONNX (default-domain) ops the TensorRT ONNX parser implements, from onnx-tensorrt's
# docs/operators.md (TensorRT 8.4 matrix, plus ops added up to TensorRT 10.0). Conservative: an op
# listed may still have restrictions (e.g. Conv weights must be initializers, 2-D/3-D pooling
# only), and a missing op may be handled by a plugin. Ops of any other domain are unsupported.
TENSORRT_SUPPORTED_OPS: frozenset[str] = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization
    Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh
    CumSum DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike
    Flatten Floor GRU Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool
    GlobalMaxPool Greater GreaterOrEqual GroupNormalization HardSigmoid HardSwish Identity If
    ImageScaler InstanceNormalization IsInf IsNaN LRN LSTM LayerNormalization LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LpNormalization LpPool MatMul Max MaxPool Mean Min Mod Mul
    Neg NonMaxSuppression NonZero Not OneHot Or PRelu Pad ParametricSoftplus Pow QuantizeLinear
    RNN RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum
    ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu
    Reshape Resize ReverseSequence RoiAlign Round ScaledTanh Scan Scatter ScatterElements
    ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
    SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu
    Unsqueeze Upsample Where Xor
    """.split()  # noqa: SIM905  (a compact, readable table)
)

DEFAULT_MAX_BATCH = 32
"""Largest batch of the ``trtexec`` shape range of a model whose batch stays dynamic."""


@dataclass(frozen=True)
class UnsupportedOp:
    """An op type TensorRT's ONNX parser does not implement.

    Attributes:
        op_type: Operator type.
        domain: Operator domain (``""`` for the default ONNX domain).
        nodes: Names of the nodes using it.
    """

    op_type: str
    domain: str
    nodes: tuple[str, ...]

    @property
    def reason(self) -> str:
        """Why TensorRT rejects it."""
        if self.domain not in ("", "ai.onnx"):
            return f"custom domain {self.domain!r} (needs a TensorRT plugin)"
        return "not implemented by the TensorRT ONNX parser"


@dataclass(frozen=True)
class InputSpec:
    """A graph input of the exported model.

    Attributes:
        name: Input name.
        dims: Dimensions; symbolic ones as their names (``""`` when unnamed).
    """

    name: str
    dims: tuple[int | str, ...]


@dataclass(frozen=True)
class ExportResult:
    """An exported model and what was done to it.

    Attributes:
        model: The deployment-ready model.
        target: ``onnxruntime`` or ``tensorrt``.
        fp16: True when weights and activations are float16 (inputs/outputs stay float32).
        batch: The fixed batch size, or ``None`` when the model's own batch dim was kept.
        opset_before: Default-domain opset of the input model.
        opset_after: Default-domain opset of the exported model.
        simplifier: What folded constants and simplified the graph.
        nodes_before: Node count of the input model.
        nodes_after: Node count of the exported model.
        inputs: Graph inputs of the exported model.
        unsupported: Ops TensorRT does not support (only checked for the tensorrt target).
        max_batch: Upper end of the trtexec shape range for a dynamic batch.
        notes: Warnings worth showing to a user.
        check: The final comparison of outputs with the input model's.
        shapes: Input shapes of that check (symbolic dimensions filled), which also fill the
            non-batch symbolic dimensions of the ``trtexec`` shapes.
    """

    model: onnx.ModelProto
    target: str
    fp16: bool
    batch: int | None
    opset_before: int
    opset_after: int
    simplifier: str
    nodes_before: int
    nodes_after: int
    inputs: tuple[InputSpec, ...]
    unsupported: tuple[UnsupportedOp, ...]
    max_batch: int = DEFAULT_MAX_BATCH
    notes: tuple[str, ...] = ()
    check: OutputCheck | None = None
    shapes: Mapping[str, tuple[int, ...]] | None = None

    @property
    def tensorrt_compatible(self) -> bool:
        """True when the compatibility check found no unsupported op."""
        return not self.unsupported

    def trtexec_command(self, onnx_path: str = "model.onnx", engine_path: str | None = None) -> str:
        """The ``trtexec`` line that builds a TensorRT engine from the exported file."""
        engine = engine_path or _engine_path(onnx_path)
        args = ["trtexec", f"--onnx={onnx_path}"]
        if self.fp16:
            args.append("--fp16")
        args += _shape_args(self.inputs, self.max_batch, self.shapes or {})
        args.append(f"--saveEngine={engine}")
        return " ".join(shlex.quote(a) for a in args)

    def to_dict(self, onnx_path: str = "model.onnx") -> dict[str, Any]:
        """JSON-ready summary (without the model)."""
        out: dict[str, Any] = {
            "target": self.target,
            "fp16": self.fp16,
            "batch": self.batch,
            "opset": [self.opset_before, self.opset_after],
            "simplifier": self.simplifier,
            "nodes": [self.nodes_before, self.nodes_after],
            "inputs": [{"name": i.name, "shape": list(i.dims)} for i in self.inputs],
            "notes": list(self.notes),
            "outputs_checked": _check_dict(self.check, self.fp16),
        }
        if self.target == "tensorrt":
            out["tensorrt_compatible"] = self.tensorrt_compatible
            out["unsupported_ops"] = [
                {
                    "op_type": u.op_type,
                    "domain": u.domain,
                    "nodes": list(u.nodes),
                    "reason": u.reason,
                }
                for u in self.unsupported
            ]
            out["trtexec"] = self.trtexec_command(onnx_path)
        return out


def export(
    model: onnx.ModelProto,
    target: str = "onnxruntime",
    fp16: bool = False,
    batch: int | None = None,
    opset: int | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> ExportResult:
    """Make a deployment-ready copy of ``model``.

    Args:
        model: The model (not modified).
        target: ``onnxruntime`` or ``tensorrt``.
        fp16: Convert weights and activations to float16, keeping float32 inputs/outputs.
        batch: Fix the batch dimension to this size (``None``: keep the model's).
        opset: Convert to this default-domain opset (``None``: only when TensorRT needs it).
        max_batch: Upper end of the trtexec shape range when the batch stays dynamic.
        input_shapes: Shapes of symbolic inputs for the output checks and the ``trtexec``
            shapes (default: 1 for the batch, :data:`~evonnx.model.outputs.DEFAULT_DIM` elsewhere).

    Raises:
        DeployError: Unknown target, bad sizes, a failed opset conversion or fp16 conversion.
        RebatchError: The batch cannot be fixed to ``batch``.
        OutputMismatchError: The exported model's outputs differ from the input model's.
    """
    _check_args(target, max_batch)
    before = opset_of(model)
    base = rebatch(model, batch) if batch is not None else _copy(model)
    notes: list[str] = []
    shapes = input_shapes or {}
    out, simplifier = _transform(base, shapes, _target_opset(before, target, opset), fp16, notes)
    check = _final_check(base, out, shapes, fp16, notes)  # base: at the fixed batch
    del base
    unsupported = tensorrt_compatibility(out) if target == "tensorrt" else ()
    inputs = _input_specs(out)
    filled = feed_shapes(out, shapes)
    notes += _shape_notes(inputs, target, filled)
    return ExportResult(
        model=out,
        target=target,
        fp16=fp16,
        batch=batch,
        opset_before=before,
        opset_after=opset_of(out),
        simplifier=simplifier,
        nodes_before=len(model.graph.node),
        nodes_after=len(out.graph.node),
        inputs=inputs,
        unsupported=unsupported,
        max_batch=max_batch,
        notes=tuple(notes),
        check=check,
        shapes=filled,
    )


def _check_args(target: str, max_batch: int) -> None:
    """Raise :class:`~evonnx.errors.DeployError` for an unknown target or a ``max_batch`` < 1."""
    if target not in TARGETS:
        raise DeployError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
    if max_batch < 1:
        raise DeployError(f"max_batch must be >= 1, got {max_batch}")


def _transform(
    model: onnx.ModelProto,
    shapes: Mapping[str, Sequence[int]],
    opset: int | None,
    fp16: bool,
    notes: list[str],
) -> tuple[onnx.ModelProto, str]:
    """The simplified model converted to ``opset`` (``None``: kept) and to fp16 when asked,
    shapes inferred and checked, and what simplified it."""
    out, simplifier = checked_simplify(model, shapes, notes)  # first: folded ops need no adapter
    out = _convert_opset(out, opset, notes)
    if fp16:
        out = to_fp16(out)
    out = infer_shapes(out)
    check_model(out, "exported model")
    return out, simplifier


def checked_simplify(
    model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], notes: list[str]
) -> tuple[onnx.ModelProto, str]:
    """:func:`simplify`, skipped (the model returned as it is, with a note) when it changes an
    output's name, shape, or value beyond :data:`~evonnx.model.outputs.RTOL`."""
    out, simplifier = simplify(model)
    check = compare_outputs(model, out, shapes)
    if check.difference is None:
        return out, simplifier
    note = f"{simplifier} changed the outputs ({check.difference}); simplification skipped"
    logger.warning("%s", note)
    notes.append(note)
    return model, f"none ({simplifier} skipped: it changed the outputs)"


def _final_check(
    model: onnx.ModelProto,
    out: onnx.ModelProto,
    shapes: Mapping[str, Sequence[int]],
    fp16: bool,
    notes: list[str],
) -> OutputCheck:
    """Compare the export with the input model (refused on a difference).

    Raises:
        OutputMismatchError: The outputs differ.
    """
    check = compare_outputs(model, out, shapes, FP16_RTOL if fp16 else RTOL)
    if check.difference is not None:
        raise OutputMismatchError(
            f"the export changed the outputs: {check.difference}; nothing written"
        )
    if not check.checked:
        notes.append(f"outputs not checked: {check.skipped}")
    return check


def _check_dict(check: OutputCheck | None, fp16: bool) -> dict[str, Any] | None:
    if check is None:
        return None
    return {
        "checked": check.checked,
        "max_rel_error": check.max_rel_error,
        "tolerance": FP16_RTOL if fp16 else RTOL,
        "shapes": {k: list(v) for k, v in (check.shapes or {}).items()},
        "skipped": check.skipped,
    }


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _target_opset(current: int, target: str, opset: int | None) -> int | None:
    """Opset to convert to, or ``None`` to keep ``current``."""
    if opset is not None:
        return None if opset == current else opset
    lo, hi = TENSORRT_OPSETS
    if target == "tensorrt" and not lo <= current <= hi:
        return TENSORRT_DEFAULT_OPSET
    return None


def _convert_opset(model: onnx.ModelProto, opset: int | None, notes: list[str]) -> onnx.ModelProto:
    if opset is None:
        return model
    before = opset_of(model)
    try:
        converted = onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises several unrelated types
        raise DeployError(
            f"cannot convert the model from opset {before} to {opset}: {exc}"
        ) from exc
    notes.append(f"converted from opset {before} to {opset}")
    logger.info("converted opset %d -> %d", before, opset)
    return converted


def simplify(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """Fold constants and simplify: onnxslim, else onnx-graphsurgeon (returns what was used)."""
    try:
        import onnxslim
    except ImportError:
        logger.info("onnxslim is not installed; folding constants with onnx-graphsurgeon")
        return _gs_simplify(model), "onnx-graphsurgeon"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(_copy(model))
    except Exception as exc:  # onnxslim raises whatever its passes raise
        logger.warning("onnxslim failed (%s); folding constants with onnx-graphsurgeon", exc)
        return _gs_simplify(model), "onnx-graphsurgeon"
    if not isinstance(slim, onnx.ModelProto):
        return _gs_simplify(model), "onnx-graphsurgeon"
    return slim, f"onnxslim {getattr(onnxslim, '__version__', '')}".strip()


def _gs_simplify(model: onnx.ModelProto) -> onnx.ModelProto:
    graph = gs.import_onnx(model)
    graph.fold_constants().cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    del out.opset_import[:]
    out.opset_import.extend(model.opset_import)
    return out


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Float16 weights and activations with float32 graph inputs and outputs.

    Raises:
        DeployError: onnxconverter-common is missing or fails on the model.
    """
    try:
        from onnxconverter_common import float16
    except ImportError as exc:
        raise DeployError(
            "fp16 export needs onnxconverter-common (pip install onnxconverter-common)"
        ) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one warning per clamped tiny weight
            src = _copy(model)
            # stale value_info (the simplifier's inferred types) makes the converter type a
            # blocked op's (Resize) output cast wrongly; the converter infers them again
            del src.graph.value_info[:]
            out = float16.convert_float_to_float16(src, keep_io_types=True)
    except Exception as exc:  # the converter raises whatever onnx raises
        raise DeployError(f"fp16 conversion failed: {exc}") from exc
    if not isinstance(out, onnx.ModelProto):
        raise DeployError("fp16 conversion returned no model")
    return out


def tensorrt_compatibility(model: onnx.ModelProto) -> tuple[UnsupportedOp, ...]:
    """Op types of ``model`` (subgraphs included) that TensorRT's ONNX parser does not support."""
    found: dict[tuple[str, str], list[str]] = {}
    for node in all_nodes(model.graph):
        domain = node.domain or ""
        default = domain in ("", "ai.onnx")
        if default and node.op_type in TENSORRT_SUPPORTED_OPS:
            continue
        found.setdefault((node.op_type, domain), []).append(node.name or node.output[0])
    return tuple(
        UnsupportedOp(op, domain, tuple(nodes)) for (op, domain), nodes in sorted(found.items())
    )


def _input_specs(model: onnx.ModelProto) -> tuple[InputSpec, ...]:
    specs = []
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        dims: list[int | str] = []
        for d in tt.shape.dim if tt.HasField("shape") else []:
            dims.append(int(d.dim_value) if d.HasField("dim_value") else d.dim_param)
        specs.append(InputSpec(vi.name, tuple(dims)))
    return tuple(specs)


def _shape_notes(
    inputs: tuple[InputSpec, ...], target: str, filled: Mapping[str, tuple[int, ...]]
) -> list[str]:
    if target != "tensorrt":
        return []
    notes = []
    for i in inputs:
        fill = filled[i.name]
        named = [(d, fill[ax]) for ax, d in enumerate(i.dims) if ax and isinstance(d, str)]
        if named:
            sizes = ", ".join(f"{d or '?'}={v}" for d, v in named)
            notes.append(
                f"input {i.name}: symbolic dims set to {sizes} in the trtexec shapes "
                "(choose them with --input-shape)"
            )
    return notes


def _shape_args(
    inputs: tuple[InputSpec, ...], max_batch: int, filled: Mapping[str, tuple[int, ...]]
) -> list[str]:
    """``--shapes`` for static inputs; ``--min/opt/maxShapes`` when any dim is symbolic: the
    batch over 1..max_batch, other symbolic dims at their ``filled`` size."""

    def at(i: InputSpec, batch: int) -> tuple[int | str, ...]:
        fill = filled.get(i.name, ())
        return tuple(
            d
            if isinstance(d, int)
            else batch
            if ax == 0
            else (fill[ax] if ax < len(fill) else DEFAULT_DIM)
            for ax, d in enumerate(i.dims)
        )

    if not inputs:
        return []
    if all(isinstance(d, int) for i in inputs for d in i.dims):
        return [f"--shapes={','.join(_spec(i.name, i.dims) for i in inputs)}"]
    return [
        f"{flag}={','.join(_spec(i.name, at(i, b)) for i in inputs)}"
        for flag, b in (("--minShapes", 1), ("--optShapes", max_batch), ("--maxShapes", max_batch))
    ]


def _spec(name: str, dims: tuple[int | str, ...]) -> str:
    quoted = f"'{name}'" if any(c in name for c in ":,") else name
    return f"{quoted}:{'x'.join(str(d) for d in dims)}"


def _engine_path(onnx_path: str) -> str:
    return (onnx_path[: -len(".onnx")] if onnx_path.endswith(".onnx") else onnx_path) + ".plan"
