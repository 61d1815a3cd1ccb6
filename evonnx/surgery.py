"""The surgery pass: the one place where graphs are mutated.

Given an :class:`~evonnx.groups.Analysis` and a :class:`~evonnx.groups.PrunePlan`, it
physically removes every channel a group does not keep: producer filters, biases,
per-channel parameters, consumer input slices, depthwise ``group`` attributes and the
constant shape elements (Reshape targets, Resize sizes) that spell out channel extents.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from evonnx.errors import PlanError
from evonnx.graph import (
    LARGE_CONSTANT_BYTES,
    check_model,
    from_graph,
    node_name,
    set_inferred_shapes,
    to_graph,
)
from evonnx.groups import Analysis, ChannelGroup, Member, Role
from evonnx.plan import PrunePlan

logger = logging.getLogger(__name__)

_SLICED = (Role.PRODUCER, Role.BIAS, Role.PARAM, Role.CONSUMER)


@dataclass(frozen=True)
class _Edits:
    """Everything one plan changes, keyed for de-duplication."""

    slices: dict[tuple[str, int], np.ndarray]
    shape_deltas: dict[tuple[str, int], int]
    group_deltas: dict[str, int]


def apply_plan(
    model: onnx.ModelProto,
    analysis: Analysis,
    plan: PrunePlan,
    masks: Mapping[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Write the offspring of ``model`` that keeps only the planned channels.

    Args:
        model: The ancestor (not modified).
        analysis: ``analyze(model)``.
        plan: Kept channels per group; unlisted groups keep everything.
        masks: Optional 0/1 arrays in the original weight shapes, multiplied into the weights
            before channels are removed (synapses that die inside surviving clusters).

    Returns:
        A new model that passes the ONNX checker, with stale shapes re-inferred.

    Raises:
        PlanError: The plan or masks do not fit the analysis or the model.
    """
    graph = to_graph(model, infer=False)
    consts = {n: t for n, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    _apply_masks(consts, masks or {})
    edits = _collect(analysis, plan)
    _slice_constants(consts, edits.slices)
    _edit_shapes(consts, edits.shape_deltas)
    _edit_groups(graph, edits.group_deltas)
    _drop_branches(graph, analysis, plan)
    out = _export(graph, model)
    del graph, consts  # the sliced weights now live in ``out`` only (models over 2 GB):
    gc.collect()  # the graph's node/tensor cycles would keep its copy alive until then
    set_inferred_shapes(out)
    check_model(out, "pruned model")
    return out


def _apply_masks(consts: dict[str, gs.Constant], masks: Mapping[str, np.ndarray]) -> None:
    for name, mask in masks.items():
        t = consts.get(name)
        if t is None:
            raise PlanError(f"mask given for {name}, which is not a constant of the model")
        values = np.asarray(t.values)
        if mask.shape != values.shape:
            raise PlanError(f"mask for {name} has shape {mask.shape}, weight has {values.shape}")
        t.values = (values * mask.astype(values.dtype)).astype(values.dtype)


def removed_channels(group: ChannelGroup, plan: PrunePlan) -> np.ndarray:
    """Validated complement of the plan's kept channels for ``group``."""
    keep = plan.kept(group)
    if keep.size == group.size and group.id not in plan.keep:
        return np.zeros(0, dtype=np.int64)
    if keep.size == 0 and not group.removable:
        raise PlanError(f"plan removes every channel of group {group.id}")
    if keep.size and (np.any(np.diff(keep) <= 0) or keep[0] < 0 or keep[-1] >= group.size):
        raise PlanError(
            f"kept channels of group {group.id} must be sorted, unique and in [0, {group.size})"
        )
    removed = np.setdiff1d(np.arange(group.size, dtype=np.int64), keep)
    if removed.size and not group.prunable:
        raise PlanError(f"group {group.id} is frozen ({group.frozen}) but the plan prunes it")
    return removed


def _collect(analysis: Analysis, plan: PrunePlan) -> _Edits:
    known = {g.id for g in analysis.groups}
    unknown = set(plan.keep) - known
    if unknown:
        raise PlanError(f"plan names groups the analysis does not have: {sorted(unknown)}")
    slices: dict[tuple[str, int], set[int]] = {}
    shape_deltas: dict[tuple[str, int], int] = {}
    group_deltas: dict[str, int] = {}
    for group in analysis.groups:
        removed = removed_channels(group, plan)
        if not removed.size:
            continue
        seen: set[tuple[Role, str, int, int, int]] = set()
        for m in group.members:
            key = (m.role, m.name, m.axis, m.start, m.block)
            if key in seen:
                continue
            seen.add(key)
            _collect_member(m, removed, slices, shape_deltas, group_deltas)
    return _Edits(
        {k: np.array(sorted(v), dtype=np.int64) for k, v in slices.items()},
        shape_deltas,
        group_deltas,
    )


def _collect_member(
    m: Member,
    removed: np.ndarray,
    slices: dict[tuple[str, int], set[int]],
    shape_deltas: dict[tuple[str, int], int],
    group_deltas: dict[str, int],
) -> None:
    if m.role in _SLICED:
        slices.setdefault((m.name, m.axis), set()).update(m.indices(removed).tolist())
    elif m.role is Role.SHAPE:
        key = (m.name, m.axis)
        shape_deltas[key] = shape_deltas.get(key, 0) + int(removed.size) * m.block
    elif m.role is Role.GROUP_ATTR:
        group_deltas[m.name] = group_deltas.get(m.name, 0) + int(removed.size) * m.block


def _slice_constants(
    consts: dict[str, gs.Constant], slices: dict[tuple[str, int], np.ndarray]
) -> None:
    for (name, axis), idx in slices.items():
        t = consts.get(name)
        if t is None:
            raise PlanError(f"analysis names {name}, which is not a constant of this model")
        values = np.asarray(t.values)
        if idx.size and idx[-1] >= values.shape[axis]:
            raise PlanError(
                f"analysis does not match {name} (axis {axis} has {values.shape[axis]} entries)"
            )
        t.values = np.ascontiguousarray(np.delete(values, idx, axis=axis))


def _edit_shapes(consts: dict[str, gs.Constant], deltas: dict[tuple[str, int], int]) -> None:
    for (name, pos), delta in deltas.items():
        t = consts.get(name)
        if t is None:
            raise PlanError(f"analysis names shape constant {name}, which the model lacks")
        values = np.array(t.values, copy=True)
        flat = values.reshape(-1)
        flat[pos] -= delta
        if flat[pos] <= 0:
            raise PlanError(f"shape constant {name}[{pos}] would drop to {flat[pos]}")
        t.values = values


def _edit_groups(graph: gs.Graph, deltas: dict[str, int]) -> None:
    if not deltas:
        return
    by_name = {node_name(n): n for n in graph.nodes}
    for name, delta in deltas.items():
        node = by_name.get(name)
        if node is None:
            raise PlanError(f"analysis names node {name}, which the model lacks")
        node.attrs["group"] = int(node.attrs.get("group", 1)) - delta


def _drop_branches(graph: gs.Graph, analysis: Analysis, plan: PrunePlan) -> None:
    """Replace the exit layer of every emptied group by its (already sliced) bias.

    With no input channel left, a conv's output is its bias and a Gemm's is ``beta * C``; the
    constant broadcasts in the ``Add``/``Sub`` the layer fed, and the rest of the branch is
    dead code that the export's cleanup removes.
    """
    by_name = {node_name(n): n for n in graph.nodes}
    for group in analysis.groups:
        if group.id not in plan.keep or plan.keep[group.id]:
            continue
        for name in {m.node for m in group.by_role(Role.CONSUMER)}:
            layer = by_name[name]
            out = layer.outputs[0]
            const = gs.Constant(f"{out.name}__bias", _exit_value(layer))
            _rewire(out, const)
            layer.outputs.clear()
            if not np.any(const.values):
                _bypass_zero_adds(graph, const)
            else:
                _fold_bias_adds(graph, const)


def _rewire(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every node reading ``old`` reads ``new`` instead."""
    for reader in list(old.outputs):
        _rewire_node(reader, old, new)


def _rewire_node(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    for i, t in enumerate(list(node.inputs)):
        if t is old:
            node.inputs[i] = new


_IDEMPOTENT = frozenset({"Relu"})


def _bypass_zero_adds(graph: gs.Graph, zero: gs.Constant) -> None:
    """Drop the ``Add`` of an all-zero constant left by a removed branch (exact: ``x + 0 = x``),
    then an idempotent activation applied twice in a row (``Relu(Relu(x)) = Relu(x)``)."""
    outputs = {id(t) for t in graph.outputs}
    for add in [n for n in zero.outputs if n.op == "Add" and len(n.inputs) == 2]:
        # The other operand has the full shape (what makes a branch removable), so it is the sum.
        other = add.inputs[1] if add.inputs[0] is zero else add.inputs[0]
        out = add.outputs[0]
        if id(out) in outputs or other is zero:
            continue
        for reader in list(out.outputs):
            _rewire_node(reader, out, other)
            if (
                reader.op in _IDEMPOTENT
                and other.inputs
                and other.inputs[0].op == reader.op
                and id(reader.outputs[0]) not in outputs
            ):
                _rewire(reader.outputs[0], other)
                reader.outputs.clear()
        add.outputs.clear()


def _fold_bias_adds(graph: gs.Graph, bias: gs.Constant) -> None:
    """Drop the ``Add`` of a removed branch's constant bias ``b`` when every reader of the sum
    takes ``b`` in exactly: a conv without padding (``conv(x + b) = conv(x) + W b``, into its
    bias), or an ``Add`` of a constant or of a conv output read only there (``(x + b) + y =
    x + (y + b)``, into that constant or conv bias), as after a MobileNetV2 block whose next
    block or head starts with a 1x1 conv. Otherwise the ``Add`` stays."""
    outputs = {id(t) for t in graph.outputs}
    for add in [n for n in bias.outputs if n.op == "Add" and len(n.inputs) == 2]:
        other = add.inputs[1] if add.inputs[0] is bias else add.inputs[0]
        out = add.outputs[0]
        if id(out) in outputs or other is bias or not out.outputs:
            continue
        b = np.asarray(bias.values)
        folds = [_bias_fold(reader, out, b, outputs) for reader in out.outputs]
        if any(f is None for f in folds):
            continue
        for reader, fold in zip(list(out.outputs), folds, strict=True):
            assert fold is not None
            _add_into(*fold)
            _rewire_node(reader, out, other)
        add.outputs.clear()


def _bias_fold(
    reader: gs.Node, x: gs.Tensor, shaped: np.ndarray, outputs: set[int]
) -> tuple[gs.Node | gs.Constant, np.ndarray] | None:
    """Where ``reader`` (which reads ``x + b``; it will read ``x``) takes the per-channel
    constant ``b`` (``shaped``, as broadcast) in: a conv (its bias) or a constant, and what is
    added there; None when that is not exact (``outputs``: ids of the graph outputs)."""
    b = shaped.reshape(-1)
    if reader.op == "Conv" and reader.inputs[0] is x and x not in reader.inputs[1:]:
        pads = reader.attrs.get("pads", [0])
        if any(pads) or reader.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return None
        if not _bias_free(reader):
            return None
        wv = np.asarray(reader.inputs[1].values)
        groups = int(reader.attrs.get("group", 1))
        cout, cin_g = wv.shape[:2]
        if cin_g * groups != b.size:
            return None
        rows = (np.arange(cout) // (cout // groups))[:, None] * cin_g + np.arange(cin_g)
        taps = wv.reshape(cout, cin_g, int(np.prod(wv.shape[2:]))).sum(axis=2)
        return reader, (taps * b[rows]).sum(axis=1)
    if reader.op != "Add" or len(reader.inputs) != 2 or list(reader.inputs).count(x) != 1:
        return None
    y = reader.inputs[1] if reader.inputs[0] is x else reader.inputs[0]
    if isinstance(y, gs.Constant):
        return (y, b) if len(y.outputs) == 1 and np.shape(y.values) == shaped.shape else None
    conv = y.inputs[0] if len(y.inputs) == 1 else None
    if conv is None or conv.op != "Conv" or len(y.outputs) != 1 or id(y) in outputs:
        return None
    if not _bias_free(conv):
        return None
    return (conv, b) if np.shape(conv.inputs[1].values)[0] == b.size else None


def _bias_free(conv: gs.Node) -> bool:
    """The conv's weight is a constant and its bias absent or a constant only it reads."""
    if not isinstance(conv.inputs[1], gs.Constant):
        return False
    if len(conv.inputs) < 3 or conv.inputs[2].name == "":
        return True
    bias = conv.inputs[2]
    return isinstance(bias, gs.Constant) and len(bias.outputs) == 1


def _add_into(target: gs.Node | gs.Constant, delta: np.ndarray) -> None:
    """Add ``delta`` (per channel) to a constant or to a conv's bias (created if absent)."""
    if isinstance(target, gs.Node):
        w = target.inputs[1]
        if len(target.inputs) < 3 or target.inputs[2].name == "":
            zero = np.zeros(delta.size, np.asarray(w.values).dtype)
            new_bias = gs.Constant(f"{node_name(target)}__bias", zero)
            if len(target.inputs) < 3:
                target.inputs.append(new_bias)
            else:
                target.inputs[2] = new_bias
        target = target.inputs[2]
    assert isinstance(target, gs.Constant)
    values = np.asarray(target.values)
    target.values = (values + delta.reshape(values.shape)).astype(values.dtype)


def _exit_value(layer: gs.Node) -> np.ndarray:
    """Output of a conv/Gemm whose input has no channels, shaped to broadcast like it."""
    w = np.asarray(layer.inputs[1].values)
    rank = w.ndim if layer.op == "Conv" else 2
    out_axis = 0 if layer.op == "Conv" or layer.attrs.get("transB", 0) else 1
    cout = int(w.shape[out_axis])
    bias = np.zeros(cout, dtype=w.dtype)
    if len(layer.inputs) > 2 and isinstance(layer.inputs[2], gs.Constant):
        b = np.asarray(layer.inputs[2].values, dtype=w.dtype).reshape(-1)
        bias = bias + (b * float(layer.attrs.get("beta", 1.0)) if layer.op == "Gemm" else b)
    shape = [1] * rank
    shape[1 if layer.op == "Conv" else rank - 1] = cout
    return bias.reshape(shape)


def _export(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    io_names = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for t in graph.tensors().values():
        if isinstance(t, gs.Variable) and t.name not in io_names:
            t.shape = None
    graph.cleanup(remove_unused_graph_inputs=False)
    large = _detach_large(graph)
    out = from_graph(graph, like)
    del out.graph.value_info[:]
    for init in out.graph.initializer:
        if init.name in large:
            init.CopyFrom(numpy_helper.from_array(large.pop(init.name), init.name))
    return out


def _detach_large(graph: gs.Graph) -> dict[str, np.ndarray]:
    """Swap large constants' values for empty stand-ins; the caller writes them back.

    Exporting through onnx-graphsurgeon holds several copies of every weight at once; moving
    the large ones into the exported model one by one keeps a big model's peak memory low.
    """
    large = {}
    for name, t in graph.tensors().items():
        if (
            isinstance(t, gs.Constant)
            and t.export_dtype == t.dtype  # bfloat16/float8 are held as float32 by the graph
            and t.values.nbytes > LARGE_CONSTANT_BYTES
        ):
            large[name] = t.values
            t.values = np.zeros((0,) * t.values.ndim, dtype=t.values.dtype)
    return large
