"""Shared test helpers: the dead-channel invariant and onnxruntime runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from evonnx.data import Dataset
from evonnx.groups import Analysis, Role
from evonnx.plan import PrunePlan
from evonnx.surgery import removed_channels


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
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values = {t.name: numpy_helper.to_array(t).copy() for t in out.graph.initializer}
    for name, mask in (masks or {}).items():
        values[name] = values[name] * mask.astype(values[name].dtype)
    for g in analysis.groups:
        removed = removed_channels(g, plan)
        if not removed.size:
            continue
        for m in g.by_role(Role.CONSUMER):
            idx = m.indices(removed)
            arr = np.moveaxis(values[m.name], m.axis, 0)
            arr[idx] = 0
    for t in out.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    return out


def zero_producers(
    model: onnx.ModelProto,
    analysis: Analysis,
    plan: PrunePlan,
    masks: dict[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Copy of ``model`` with the producer filter *weights* of every removed channel set to
    zero (their biases, BatchNorm and activations stay): what a pruned graph must equal
    wherever the removed channels' constants fold exactly."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    values = {t.name: numpy_helper.to_array(t).copy() for t in out.graph.initializer}
    for name, mask in (masks or {}).items():
        values[name] = values[name] * mask.astype(values[name].dtype)
    for g in analysis.groups:
        removed = removed_channels(g, plan)
        if not removed.size:
            continue
        for m in g.by_role(Role.PRODUCER):
            arr = np.moveaxis(values[m.name], m.axis, 0)
            arr[m.indices(removed)] = 0
    for t in out.graph.initializer:
        t.CopyFrom(numpy_helper.from_array(values[t.name], t.name))
    return out


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
