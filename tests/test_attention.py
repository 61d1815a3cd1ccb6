"""Fused-QKV attention and recurrent readers (LSTM, GRU, RNN): tiny hand-built graphs.

Checked by structure, the ONNX checker, the dead-channel invariant (the removed filters'
weights zeroed in the ancestor give the pruned graph's outputs) and onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import check_function_kept, make_model, random_plan
from onnx import TensorProto, helper, numpy_helper

from evonnx.pruning.analysis import analyze
from evonnx.pruning.groups import Role
from evonnx.pruning.plan import PrunePlan
from evonnx.pruning.surgery import apply_plan_report

L, D, HEADS, HD = 6, 8, 2, 4


def _init(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def fused_qkv(scores: str = "softmax", seed: int = 0, pad: int = 0) -> onnx.ModelProto:
    """x [1, L, D] -> fused QKV MatMul + bias -> Reshape [1, L, 3, heads, head_dim] ->
    Transpose -> Split -> q, k, v -> Softmax(q k^T * s + mask) v -> merge heads -> proj.

    ``scores``: ``softmax`` (as above), ``sigmoid`` (scores not normalized over keys);
    ``pad``: zero positions padded in front of the sequence after the QKV bias (there the
    removed channels are 0, elsewhere their bias: not constant along the positions)."""
    rng = np.random.default_rng(seed)
    n = L + pad
    inits = [
        _init(rng, "wqkv", (D, 3 * D)),
        _init(rng, "bqkv", (3 * D,)),
        _init(rng, "wp", (D, D)),
        _init(rng, "bp", (D,)),
        _init(rng, "mask", (n, n)),
        numpy_helper.from_array(np.array(0.5, np.float32), "scale"),
        _ints("split_shape", [1, n, 3, HEADS, HD]),
        _ints("merge_shape", [1, n, D]),
        _ints("pads", [0, pad, 0, 0, 0, 0]),
        _ints("ones", [1, 1, 1]),
        _ints("ax0", [0]),
    ]
    act = helper.make_node("Softmax", ["sm"], ["att"], axis=-1)
    if scores == "sigmoid":
        act = helper.make_node("Sigmoid", ["sm"], ["att"])
    nodes = [
        helper.make_node("MatMul", ["x", "wqkv"], ["qkv0"]),
        helper.make_node("Add", ["bqkv", "qkv0"], ["qkv1"]),  # bias first, as torch exports
        helper.make_node("Pad", ["qkv1", "pads"], ["qkv"]),
        helper.make_node("Reshape", ["qkv", "split_shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 3, 1, 4]),
        helper.make_node("Split", ["t", "ones"], ["q5", "k5", "v5"], axis=0),
        helper.make_node("Squeeze", ["q5", "ax0"], ["q"]),
        helper.make_node("Squeeze", ["k5", "ax0"], ["k"]),
        helper.make_node("Squeeze", ["v5", "ax0"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Add", ["ss", "mask"], ["sm"]),
        act,
        helper.make_node("MatMul", ["att", "v"], ["o"]),
        helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ot", "merge_shape"], ["m"]),
        helper.make_node("MatMul", ["m", "wp"], ["p0"]),
        helper.make_node("Add", ["p0", "bp"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fused_qkv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, L, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n, D])],
        inits,
    )
    model = make_model(graph)
    onnx.checker.check_model(model, full_check=True)
    return model


def _feed_x(shape: tuple[int, ...], seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=shape).astype(np.float32)}


def test_fused_qkv_groups_head_dims_across_q_k_v_and_heads() -> None:
    model = fused_qkv()
    a = analyze(model)
    (g,) = [g for g in a.groups if any(m.name == "wqkv" for m in g.producers)]
    assert g.prunable and g.size == HD
    assert sorted(m.start for m in g.producers) == [i * HD for i in range(3 * HEADS)]
    assert {m.name for m in g.by_role(Role.CONSUMER)} == {"wp"}
    assert sorted(m.start for m in g.by_role(Role.CONSUMER)) == [0, HD]
    shapes = {(m.name, m.axis) for m in g.by_role(Role.SHAPE)}
    assert shapes == {("split_shape", 4), ("merge_shape", 2)}


@pytest.mark.parametrize("keep", [(0,), (1, 3), (0, 1, 2)])
def test_fused_qkv_pruned_equals_dead_channels(keep: tuple[int, ...]) -> None:
    model = fused_qkv()
    a = analyze(model)
    (g,) = [g for g in a.groups if any(m.name == "wqkv" for m in g.producers)]
    plan = PrunePlan({g.id: keep})
    pruned, folds = apply_plan_report(model, a, plan, exact_border=True)
    assert folds.exact and any(f.weight == "wp" for f in folds.layers)
    check_function_kept(model, a, plan, _feed_x((1, L, D)))
    w = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    width = HEADS * len(keep)
    assert w["wqkv"].shape == (D, 3 * width) and w["wp"].shape == (width, D)
    assert w["split_shape"].tolist() == [1, L, 3, HEADS, len(keep)]
    assert w["merge_shape"].tolist() == [1, L, HEADS * len(keep)]


def test_fused_qkv_random_plans() -> None:
    model = fused_qkv(seed=4)
    a = analyze(model)
    for seed in range(3):
        plan = random_plan(a, 0.5, np.random.default_rng(seed))
        check_function_kept(model, a, plan, _feed_x((1, L, D), seed))


def test_scores_without_softmax_freeze_the_head_dims() -> None:
    a = analyze(fused_qkv("sigmoid"))
    (g,) = [g for g in a.groups if any(m.name == "wqkv" for m in g.producers)]
    assert g.frozen and "attention" in g.frozen


def test_keys_not_constant_along_positions_freeze_the_head_dims() -> None:
    """Zero-padded positions: a removed key channel is 0 there and its bias elsewhere, which
    would shift the scores unevenly along the keys; the group freezes with that reason."""
    a = analyze(fused_qkv(pad=1))
    (g,) = [g for g in a.groups if any(m.name == "wqkv" for m in g.producers)]
    assert g.frozen and "key positions" in g.frozen


# --------------------------------------------------------------------------- LSTM, GRU, RNN

C, HID, SEQ = 6, 3, 5


def conv_rnn(
    op: str = "LSTM",
    direction: str = "bidirectional",
    bias: bool = True,
    via: str = "Squeeze",
    seed: int = 0,
    **attrs: int,
) -> onnx.ModelProto:
    """x [1, 3, 1, SEQ] -> Conv + Relu (C channels) -> ``via`` to [1, C, SEQ] -> Transpose
    to [SEQ, 1, C] -> ``op`` (hidden HID) -> Tanh."""
    rng = np.random.default_rng(seed)
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    dirs = 2 if direction == "bidirectional" else 1
    inits = [
        _init(rng, "wc", (C, 3, 1, 1)),
        numpy_helper.from_array(np.abs(rng.normal(size=C)).astype(np.float32), "bc"),
        _init(rng, "w", (dirs, gates * HID, C)),
        _init(rng, "r", (dirs, gates * HID, HID)),
        _ints("ax2", [2]),
        _ints("flat", [1, C, SEQ]),
    ]
    ins = ["t", "w", "r"]
    if bias:
        inits.append(_init(rng, "b", (dirs, 2 * gates * HID)))
        ins.append("b")
    squeeze = helper.make_node("Squeeze", ["c", "ax2"], ["s"])
    if via == "Reshape":
        squeeze = helper.make_node("Reshape", ["c", "flat"], ["s"])
    nodes = [
        helper.make_node("Conv", ["x", "wc", "bc"], ["c0"]),
        helper.make_node("Relu", ["c0"], ["c"]),
        squeeze,
        helper.make_node("Transpose", ["s"], ["t"], perm=[2, 0, 1]),
        helper.make_node(op, ins, ["y"], hidden_size=HID, direction=direction, **attrs),
        helper.make_node("Tanh", ["y"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_rnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 1, SEQ])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [SEQ, dirs, 1, HID])],
        inits,
    )
    model = make_model(graph)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize(
    ("op", "attrs"), [("LSTM", {}), ("GRU", {}), ("GRU", {"linear_before_reset": 1}), ("RNN", {})]
)
def test_rnn_reader_prunes_w_columns_and_folds_into_wb(
    op: str, attrs: dict[str, int], direction: str
) -> None:
    model = conv_rnn(op, direction, **attrs)
    a = analyze(model)
    (g,) = [g for g in a.groups if any(m.name == "wc" for m in g.producers)]
    assert g.prunable and g.size == C
    assert {(m.name, m.axis) for m in g.by_role(Role.CONSUMER)} == {("w", 2)}
    hidden = [x for x in a.groups if f"{op} hidden units are not pruned" in (x.frozen or "")]
    assert hidden and all(x.size == HID for x in hidden)
    plan = PrunePlan({g.id: (1, 4)})
    pruned, folds = apply_plan_report(model, a, plan)
    (f,) = folds.layers
    assert f.kind.value == "exact" and np.any(f.delta)
    w = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    assert w["wc"].shape == (2, 3, 1, 1) and w["w"].shape[2] == 2
    check_function_kept(model, a, plan, _feed_x((1, 3, 1, SEQ)))


@pytest.mark.parametrize("via", ["Squeeze", "Reshape"])
def test_lstm_without_b_gets_one(via: str) -> None:
    model = conv_rnn("LSTM", "bidirectional", bias=False, via=via, seed=2)
    a = analyze(model)
    (g,) = [g for g in a.groups if any(m.name == "wc" for m in g.producers)]
    plan = PrunePlan({g.id: (0, 2, 5)})
    pruned = check_function_kept(model, a, plan, _feed_x((1, 3, 1, SEQ), 3))
    lstm = next(n for n in pruned.graph.node if n.op_type == "LSTM")
    assert len(lstm.input) > 3 and lstm.input[3]
    for seed in range(2):
        plan = random_plan(a, 0.5, np.random.default_rng(seed))
        check_function_kept(model, a, plan, _feed_x((1, 3, 1, SEQ), seed))


def test_rnn_reading_a_non_constant_w_freezes() -> None:
    model = conv_rnn("LSTM", "forward")
    w = next(t for t in model.graph.initializer if t.name == "w")
    model.graph.initializer.remove(w)
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 4 * HID, C])
    model.graph.input.append(w_in)
    a = analyze(model)
    (g,) = [g for g in a.groups if any(m.name == "wc" for m in g.producers)]
    assert g.frozen and "W is not a constant" in g.frozen
