"""Shared test helpers: the dead-channel invariant and onnxruntime runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from evonnx.data import Dataset
from evonnx.pruning.fold import FoldPlan
from evonnx.pruning.groups import Analysis, Role
from evonnx.pruning.plan import PrunePlan
from evonnx.pruning.surgery import removed_channels


def run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feed)]


def zero_consumers(
    model: onnx.ModelProto,
    analysis: Analysis,
    plan: PrunePlan,
    masks: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Copy of ``model`` with the consumer slices of every removed channel set to zero."""
    return _zero_removed(model, analysis, plan, masks, Role.CONSUMER)


def zero_producers(
    model: onnx.ModelProto,
    analysis: Analysis,
    plan: PrunePlan,
    masks: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Copy of ``model`` with the producer filter *weights* of every removed channel set to
    zero (their biases, BatchNorm and activations stay): what a pruned graph must equal
    wherever the removed channels' constants fold exactly."""
    return _zero_removed(model, analysis, plan, masks, Role.PRODUCER)


def _zero_removed(
    model: onnx.ModelProto,
    analysis: Analysis,
    plan: PrunePlan,
    masks: dict[str, np.ndarray] | None,
    role: Role,
) -> onnx.ModelProto:
    """Copy of ``model`` with the ``role`` members' slices of every removed channel zeroed
    (after applying the synapse ``masks``)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values = {t.name: numpy_helper.to_array(t).copy() for t in out.graph.initializer}
    for name, mask in (masks or {}).items():
        values[name] = values[name] * mask.astype(values[name].dtype)
    for g in analysis.groups:
        removed = removed_channels(g, plan)
        if not removed.size:
            continue
        for m in g.by_role(role):
            arr = np.moveaxis(values[m.name], m.axis, 0)
            arr[m.indices(removed)] = 0
    for t in out.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    return out


def folded_reference(
    model: onnx.ModelProto,
    analysis: Analysis,
    plan: PrunePlan,
    folds: FoldPlan,
    masks: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """``model`` with the removed channels' consumer slices zeroed and each fold's delta added
    to its layer's output: what the surgery computes where a fold is not exact (the border of
    a padded conv, ConvTranspose, unknown constants). No emptied branches."""
    out = zero_consumers(model, analysis, plan, masks)
    nodes = {n.name or f"{n.op_type}:{n.output[0]}": n for n in out.graph.node}
    inits = {t.name: t for t in out.graph.initializer}
    for f in folds.layers:
        node = nodes[f.node]
        if f.op in ("LSTM", "GRU", "RNN"):  # the gates' input bias Wb takes the delta
            _add_to_wb(out, node, f.delta)
            continue
        rank = len(numpy_helper.to_array(inits[node.input[1]]).shape)
        shape = [1] * rank if f.op in ("Conv", "ConvTranspose") else [1, -1]
        if f.op in ("Conv", "ConvTranspose"):
            shape[1] = -1
        delta = f.delta.astype(np.float32).reshape(shape)
        if f.op == "MatMul":
            delta = f.delta.astype(np.float32)
        name = f"{f.node}__ref_delta"
        out.graph.initializer.append(numpy_helper.from_array(delta, name))
        old = node.output[0]
        node.output[0] = f"{old}__ref"
        out.graph.node.append(helper.make_node("Add", [node.output[0], name], [old]))
    from onnx import shape_inference

    del out.graph.value_info[:]
    return shape_inference.infer_shapes(_toposorted(out))


def _add_to_wb(model: onnx.ModelProto, node: onnx.NodeProto, delta: np.ndarray) -> None:
    inits = {t.name: t for t in model.graph.initializer}
    dirs, width = delta.shape
    if len(node.input) > 3 and node.input[3]:
        b = numpy_helper.to_array(inits[node.input[3]]).astype(np.float64)
        model.graph.initializer.remove(inits[node.input[3]])
    else:
        b = np.zeros((dirs, 2 * width))
        while len(node.input) < 4:
            node.input.append("")
        node.input[3] = f"{node.name}__ref_b"
    b[:, :width] += delta
    model.graph.initializer.append(numpy_helper.from_array(b.astype(np.float32), node.input[3]))


def _toposorted(model: onnx.ModelProto) -> onnx.ModelProto:
    known = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    pending, ordered = list(model.graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        assert ready, "cycle"
        for n in ready:
            ordered.append(n)
            known.update(n.output)
            pending.remove(n)
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return model


def check_function_kept(
    model: onnx.ModelProto,
    analysis: Analysis,
    plan: PrunePlan,
    feed: dict[str, np.ndarray],
    masks: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Prune with exact border maps; where every fold is exact the offspring equals the
    ancestor with the removed filters' weights zeroed (:func:`zero_producers`), else the
    default surgery equals :func:`folded_reference`. Returns the (exact-border) offspring."""
    from evonnx.pruning.surgery import apply_plan_report

    pruned, folds = apply_plan_report(model, analysis, plan, masks, exact_border=True)
    onnx.checker.check_model(pruned, full_check=True)
    if folds.exact:
        assert_same(run(zero_producers(model, analysis, plan, masks), feed), run(pruned, feed))
    else:
        default, dfolds = apply_plan_report(model, analysis, plan, masks)
        ref = folded_reference(model, analysis, plan, dfolds, masks)
        assert_same(run(ref, feed), run(default, feed))
    return pruned


def random_plan(analysis: Analysis, keep: float, rng: np.random.Generator) -> PrunePlan:
    """Keep a random ``keep`` fraction (at least one) of every prunable group."""
    plan = {}
    for g in analysis.prunable_groups:
        n = max(1, round(keep * g.size))
        plan[g.id] = tuple(sorted(rng.choice(g.size, size=n, replace=False).tolist()))
    return PrunePlan(plan)


def assert_same(a: list[np.ndarray], b: list[np.ndarray], rtol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape
        scale = max(1.0, float(np.max(np.abs(x))))
        np.testing.assert_allclose(y, x, rtol=0, atol=rtol * scale)


# IR 8 / opset 17: accepted by onnxruntime 1.18 and newer (onnx.helper defaults to its newest IR).
TEST_IR_VERSION = 8
TEST_OPSET = 17


def make_model(
    graph: onnx.GraphProto, opset: int = TEST_OPSET, ir_version: int = TEST_IR_VERSION
) -> onnx.ModelProto:
    """``onnx.helper.make_model`` at an explicit, portable IR version and opset."""
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version
    )


def save_npz(data: Dataset, path: Path) -> Path:
    """Write ``data`` as the ``.npz`` that ``--data`` reads (for CLI runs and subprocesses)."""
    np.savez(path, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test,
             y_test=data.y_test)  # fmt: skip
    return path
