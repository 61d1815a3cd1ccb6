"""The surgery pass: the one place where graphs are mutated.

Given an :class:`~evonnx.pruning.groups.Analysis` and a :class:`~evonnx.pruning.plan.PrunePlan`,
it physically removes every channel a group does not keep: producer filters, biases,
per-channel parameters, consumer input slices, depthwise ``group`` attributes and the
constant shape elements (Reshape targets, Resize sizes) that spell out channel extents.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from evonnx.errors import PlanError
from evonnx.model.external import initializer_bytes
from evonnx.model.graph import (
    LARGE_CONSTANT_BYTES,
    check_model,
    from_graph,
    node_name,
    set_inferred_shapes,
    to_graph,
)
from evonnx.pruning.branches import (
    add_into,
    border_correction,
    drop_branches,
    dtype_of,
    own_input,
)
from evonnx.pruning.fold import RECURRENT, FoldKind, FoldPlan, LayerFold, plan_folds
from evonnx.pruning.groups import Analysis, ChannelGroup, Member, Role
from evonnx.pruning.plan import PrunePlan, unique_members

logger = logging.getLogger(__name__)

COLLECT_BYTES = 256 << 20
"""Models with more initializer bytes than this free the surgery's copy of the weights at
once (counted from the dims: external data too)."""

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
    exact_border: bool = False,
) -> onnx.ModelProto:
    """Write the offspring of ``model`` that keeps only the planned channels.

    See :func:`apply_plan_report`, which also returns how the removed channels' constants
    were folded.
    """
    return apply_plan_report(model, analysis, plan, masks, exact_border)[0]


def apply_plan_report(
    model: onnx.ModelProto,
    analysis: Analysis,
    plan: PrunePlan,
    masks: Mapping[str, np.ndarray] | None = None,
    exact_border: bool = False,
) -> tuple[onnx.ModelProto, FoldPlan]:
    """Write the offspring of ``model`` that keeps only the planned channels.

    The constant every removed channel still emitted (its bias through BatchNorm and
    activations) is folded into the layers that read it (:mod:`evonnx.pruning.fold`), and an emptied
    branch becomes the constant it contributes to its residual join.

    Args:
        model: The ancestor (not modified).
        analysis: ``analyze(model)``.
        plan: Kept channels per group; unlisted groups keep everything.
        masks: Optional 0/1 arrays in the original weight shapes, multiplied into the weights
            before channels are removed (synapses that die inside surviving clusters).
        exact_border: Also correct the border of zero-padded convs that read removed
            channels, exactly, with a constant map added to their output (one ``Add`` each;
            static input sizes needed). Off: the border error is measured and reported.

    Returns:
        A new model that passes the ONNX checker, with stale shapes re-inferred, and the folds.

    Raises:
        PlanError: The plan or masks do not fit the analysis or the model.
    """
    graph = to_graph(model, infer=False)
    consts = {n: t for n, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    _apply_masks(consts, masks or {})
    edits = _collect(analysis, plan)
    folds = plan_folds(analysis, plan, _LazyValues(consts), exact_border)
    _slice_constants(consts, edits.slices)
    _edit_shapes(consts, edits.shape_deltas)
    _edit_groups(graph, edits.group_deltas)
    _apply_folds(graph, folds, edits.slices)
    drop_branches(graph, analysis, plan, folds, edits.slices)
    graph.toposort()  # a fold may have appended an Add
    out = _export(graph, model)
    del graph, consts  # the sliced weights now live in ``out`` only (models over 2 GB): the
    if initializer_bytes(model) > COLLECT_BYTES:  # graph's node/tensor cycles would keep its
        gc.collect()  # copy alive until then (a collection costs 0.1-0.3 s: large models only)
    set_inferred_shapes(out)
    check_model(out, "pruned model")
    return out, folds


class _LazyValues(Mapping[str, np.ndarray]):
    """The graph's constants as arrays, read only when a fold needs them."""

    def __init__(self, consts: dict[str, gs.Constant]) -> None:
        self._consts = consts

    def __getitem__(self, name: str) -> np.ndarray:
        return np.asarray(self._consts[name].values)

    def __iter__(self) -> Iterator[str]:
        return iter(self._consts)

    def __len__(self) -> int:
        return len(self._consts)


def _apply_folds(
    graph: gs.Graph, folds: FoldPlan, slices: dict[tuple[str, int], np.ndarray]
) -> None:
    """Add every layer's fold (its removed outputs dropped like the weight's) to its bias."""
    by_name = {node_name(n): n for n in graph.nodes}
    for f in folds.layers:
        removed = slices.get((f.weight, f.out_axis))
        delta = f.delta if removed is None else np.delete(f.delta, removed)
        if not delta.size or not np.any(delta):
            continue
        node = by_name[f.node]
        if f.kind is FoldKind.BORDER_MAP:
            _add_border_map(graph, node, f, removed)
        if f.op in ("Conv", "ConvTranspose"):
            add_into(node, delta)
        elif f.op in RECURRENT:
            _add_recurrent(node, f.delta)
        elif f.op == "Gemm":
            _add_gemm(node, delta)
        else:
            _add_after(graph, node, delta)


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
        for m in unique_members(group.members):
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


def _add_gemm(node: gs.Node, delta: np.ndarray) -> None:
    """``Gemm``: ``C`` becomes ``beta * C + delta`` and ``beta`` 1 (``delta`` has ``alpha``)."""
    dtype = dtype_of(node)
    beta = float(node.attrs.get("beta", 1.0))
    own_input(node, 2, np.zeros(delta.size, dtype))
    c = node.inputs[2]
    if not isinstance(c, gs.Constant):
        raise PlanError(f"{node_name(node)}: C is not a constant; cannot fold the removed inputs")
    c.values = (beta * np.asarray(c.values, np.float64) + delta).astype(dtype)
    node.attrs["beta"] = 1.0


def _add_recurrent(node: gs.Node, delta: np.ndarray) -> None:
    """LSTM/GRU/RNN: ``delta`` (``[directions, gates * hidden]``) joins the ``Wb`` half of ``B``
    (created as zeros when absent, copied when shared)."""
    dirs, width = delta.shape
    own_input(node, 3, np.zeros((dirs, 2 * width), dtype_of(node)))
    b = node.inputs[3]
    if not isinstance(b, gs.Constant):
        raise PlanError(f"{node_name(node)}: B is not a constant; cannot fold the removed inputs")
    values = np.array(b.values, dtype=np.float64)
    values[:, :width] += delta
    b.values = values.astype(np.asarray(b.values).dtype)


def _add_border_map(
    graph: gs.Graph, node: gs.Node, fold: LayerFold, removed: np.ndarray | None
) -> None:
    """Add the exact border correction of a padded conv (the constant map less its interior
    value, which goes into the bias) after it."""
    corr = border_correction(fold, removed)
    assert corr is not None
    if np.any(corr):
        _add_after(graph, node, corr[None], "border")


def _add_after(graph: gs.Graph, node: gs.Node, delta: np.ndarray, what: str = "folded") -> None:
    """Add ``delta`` after ``node`` (``MatMul``: per feature), into the constant of an ``Add``
    that only it feeds when there is one and ``delta`` is per feature, else with a new
    ``Add``."""
    out = node.outputs[0]
    readers = list(out.outputs)
    outputs = {id(t) for t in graph.outputs}
    if delta.ndim == 1 and len(readers) == 1 and readers[0].op == "Add" and id(out) not in outputs:
        other = next((t for t in readers[0].inputs if t is not out), None)
        if (
            isinstance(other, gs.Constant)
            and len(other.outputs) == 1
            and np.shape(other.values)[-1:] == delta.shape
        ):
            add_into(other, np.broadcast_to(delta, np.shape(other.values)).copy())
            return
    const = gs.Constant(f"{node_name(node)}__folded", delta.astype(dtype_of(node)))
    inner = gs.Variable(f"{out.name}__unfolded", dtype=out.dtype)
    node.outputs[0] = inner
    graph.nodes.append(
        gs.Node("Add", f"{node_name(node)}__fold", inputs=[inner, const], outputs=[out])
    )


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
