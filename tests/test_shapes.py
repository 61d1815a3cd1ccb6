"""Shapes at the given input shape: one onnxruntime run when static inference stops.

Also the patterns those shapes unlock (flatten-then-FC, computed channel-axis Reshapes,
attention necks, LSTM readers), the message that names ``--input-shape``, and subgraph
readers (a tensor captured by an ``If`` branch freezes its group).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import check_function_kept, make_model, random_plan, run
from onnx import TensorProto, helper, numpy_helper
from zoo_real import INPUT_SHAPES, REAL_ZOO

import evonnx
from evonnx.errors import UnsupportedModelError
from evonnx.latency.geometry import layer_shapes
from evonnx.model.shapes import resolve_shapes
from evonnx.pruning.analysis import analyze
from evonnx.pruning.groups import Analysis, Role


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, onnx.ModelProto]:
    folder = tmp_path_factory.mktemp("shapes")
    out = {}
    for name in ("svtr", "crnn"):
        path = folder / f"{name}.onnx"
        onnx.save(REAL_ZOO[name](), str(path))
        out[name] = evonnx.load(path)
    return out


def _feed(shape: tuple[int, ...], seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=shape).astype(np.float32)}


def _prune_equal(model: onnx.ModelProto, a: Analysis, feed: dict[str, np.ndarray]) -> None:
    """Random plans: checker, dead-channel invariant and onnxruntime equivalence."""
    for keep, seed in ((0.5, 0), (0.25, 1)):
        check_function_kept(model, a, random_plan(a, keep, np.random.default_rng(seed)), feed)


# --------------------------------------------------------------------------- resolve_shapes


def test_resolve_shapes_runs_once_and_is_pure(zoo: dict[str, onnx.ModelProto]) -> None:
    model = zoo["svtr"]
    before = model.SerializeToString()
    static_only = resolve_shapes(model, {"x": INPUT_SHAPES["svtr"]}, run=False)
    resolved = resolve_shapes(model, {"x": INPUT_SHAPES["svtr"]})
    assert model.SerializeToString() == before  # pure: the user's model is untouched
    assert static_only.missing and not static_only.ran  # static inference stops here
    assert resolved.ran and not resolved.missing and not resolved.blocked
    assert resolved.inputs == {"x": INPUT_SHAPES["svtr"]}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = list(static_only.missing[:5])
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    values = run(probe, _feed(INPUT_SHAPES["svtr"]))[-len(names) :]
    assert [resolved.shapes[n] for n in names] == [v.shape for v in values]


def test_batch_fills_a_symbolic_batch_only(zoo: dict[str, onnx.ModelProto]) -> None:
    resolved = resolve_shapes(zoo["crnn"], batch=3)
    assert resolved.blocked == ("x (width)",) and not resolved.ran
    assert "--input-shape x=" in resolved.hint()
    at = resolve_shapes(zoo["crnn"], {"x": (2, 3, 32, 40)})
    out = zoo["crnn"].graph.output[0].name
    assert at.shapes[out] == (10, 2, 37)  # [width / 4, batch, classes]


def test_symbolic_axis_names_input_and_flag(zoo: dict[str, onnx.ModelProto]) -> None:
    blocked = analyze(zoo["svtr"])
    reasons = [g.frozen for g in blocked.groups if g.frozen and "--input-shape" in g.frozen]
    assert reasons and all("x (width)" in r for r in reasons)
    assert analyze(zoo["svtr"], {"x": INPUT_SHAPES["svtr"]}).coverage > blocked.coverage
    analysis = analyze(zoo["svtr"])
    with pytest.raises(UnsupportedModelError, match=r"--input-shape x="):
        layer_shapes(zoo["svtr"], analysis, 1)


def test_latency_shapes_at_the_given_input_shape(zoo: dict[str, onnx.ModelProto]) -> None:
    from evonnx.model.inputs import apply_input_shapes

    shaped = apply_input_shapes(zoo["svtr"], {"x": INPUT_SHAPES["svtr"]})
    analysis = analyze(shaped)
    shapes = layer_shapes(shaped, analysis, 2)
    fc1 = [lay for lay in analysis.layers if "fc1" in lay.node]
    assert fc1 and all(lay.node in shapes for lay in analysis.layers)


# --------------------------------------------------------------------------- attention, LSTM


def test_attention_neck_groups_and_only_attention_frozen(zoo: dict[str, onnx.ModelProto]) -> None:
    model = zoo["svtr"]
    a = analyze(model, {"x": INPUT_SHAPES["svtr"]})
    assert not any("rank unknown" in (g.frozen or "") for g in a.groups)
    mlp = {lay.node: lay for lay in a.layers if "blocks" in lay.node and "fc1" in lay.node}
    assert len(mlp) == 2 and all(a.group(lay.out_group).prunable for lay in mlp.values())  # type: ignore[arg-type]
    frozen = [g.frozen for g in a.groups if g.frozen]
    assert not any("Reshape" in f or "attention" in f for f in frozen)
    assert a.coverage >= 0.9
    _prune_equal(model, a, _feed(INPUT_SHAPES["svtr"]))


def test_fused_qkv_prunes_head_dims_of_q_k_v_together(zoo: dict[str, onnx.ModelProto]) -> None:
    """The [N, L, 3, heads, head_dim] Reshape of the fused QKV output: one group of head_dim
    channels, each removing that dimension from q, k and v of every head; the plan's folds
    are exact (the value constants pass the Softmax-weighted sum into proj's bias)."""
    from evonnx.pruning.surgery import apply_plan_report

    model = zoo["svtr"]
    a = analyze(model, {"x": INPUT_SHAPES["svtr"]})
    qkv = [lay for lay in a.layers if "qkv" in lay.node]
    assert len(qkv) == 2
    for lay in qkv:
        assert lay.out_group is not None
        g = a.group(lay.out_group)
        starts = sorted(m.start for m in g.producers if m.name == lay.weight)
        assert g.prunable and g.size == 16 and starts == [0, 16, 32, 48, 64, 80]
        proj = {m.node for m in g.by_role(Role.CONSUMER)}
        assert any("proj" in n for n in proj)
    plan = random_plan(a, 0.5, np.random.default_rng(3))
    _, folds = apply_plan_report(model, a, plan, exact_border=True)
    proj_folds = [f for f in folds.layers if "proj" in f.node]
    assert proj_folds and all(f.kind.value == "exact" for f in proj_folds)


def test_lstm_reader_slices_w_columns(zoo: dict[str, onnx.ModelProto]) -> None:
    """The backbone's last width is read by the bidirectional LSTM: prunable, with the LSTM's
    ``W`` input columns as consumer and exact folds into ``B``; the hidden units stay whole."""
    from evonnx.pruning.surgery import apply_plan_report

    model = zoo["crnn"]
    a = analyze(model, {"x": INPUT_SHAPES["crnn"]})
    readers = [g for g in a.groups if any("LSTM" in m.node for m in g.by_role(Role.CONSUMER))]
    assert len(readers) == 1 and readers[0].size == 128 and readers[0].prunable
    (w,) = {(m.name, m.axis) for m in readers[0].by_role(Role.CONSUMER)}
    assert w[1] == 2
    hidden = [g for g in a.groups if "LSTM hidden units" in (g.frozen or "")]
    assert hidden and hidden[0].size == 24
    assert a.coverage >= 0.9
    plan = random_plan(a, 0.5, np.random.default_rng(5))
    pruned, folds = apply_plan_report(model, a, plan, exact_border=True)
    lstm = [f for f in folds.layers if f.op == "LSTM"]
    assert lstm and all(f.kind.value == "exact" and f.delta.shape == (2, 96) for f in lstm)
    kept = len(plan.keep[readers[0].id])
    inits = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    assert inits[w[0]].shape == (2, 96, kept)
    _prune_equal(model, a, _feed(INPUT_SHAPES["crnn"]))


# --------------------------------------------------------------------------- patterns


def _shape_piece(src: str, k: int, name: str) -> list[onnx.NodeProto]:
    """``name = Unsqueeze(Gather(Shape(src), k))``, as exporters write a dynamic dim."""
    return [
        helper.make_node("Shape", [src], [f"{name}_s"]),
        helper.make_node("Gather", [f"{name}_s", f"idx{k}"], [f"{name}_g"], axis=0),
        helper.make_node("Unsqueeze", [f"{name}_g", "ax0"], [name]),
    ]


def _consts(rng: np.random.Generator, **arrays: tuple[int, ...]) -> list[onnx.TensorProto]:
    out = [numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    out += [numpy_helper.from_array(np.array(k, np.int64), f"idx{k}") for k in range(4)]
    for name, shape in arrays.items():
        out.append(numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name))
    return out


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_flatten_then_fc_slices_column_blocks(flatten: str) -> None:
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    inits = _consts(rng, w1=(6, 3, 3, 3), w2=(6 * 4 * 4, 5), b2=(5,))
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "minus1"))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
    ]
    if flatten == "Flatten":
        nodes.append(helper.make_node("Flatten", ["r"], ["f"], axis=1))
    else:
        nodes += _shape_piece("r", 0, "n")
        nodes.append(helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0))
        nodes.append(helper.make_node("Reshape", ["r", "target"], ["f"]))
    nodes += [
        helper.make_node("MatMul", ["f", "w2"], ["m"]),
        helper.make_node("Add", ["m", "b2"], ["y"]),
    ]
    model = make_model(helper.make_graph(nodes, "g", [x], [y], inits))
    blocked = analyze(model)
    assert not blocked.prunable_groups and any(
        "--input-shape x=" in (g.frozen or "") for g in blocked.groups
    )
    a = analyze(model, {"x": (2, 3, 8, 8)})
    (group,) = [g for g in a.prunable_groups if g.size == 6]
    (col,) = [m for m in group.members if m.role is Role.CONSUMER]
    assert (col.name, col.axis, col.block) == ("w2", 0, 16)  # H*W columns per channel
    _prune_equal(model, a, _feed((2, 3, 8, 8)))


def test_computed_channel_reshape_yolo_head() -> None:
    """``view(n, C, -1)`` then back to ``[n, C, h, w]``: C is a constant piece of a Concat."""
    rng = np.random.default_rng(1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", "W"])
    inits = _consts(rng, w1=(8, 3, 1, 1), w2=(4, 8, 1, 1))
    inits += [
        numpy_helper.from_array(np.array([8], np.int64), "c8"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"])]
    nodes += _shape_piece("c", 0, "n")
    nodes += [
        helper.make_node("Concat", ["n", "c8", "minus1"], ["t1"], axis=0),
        helper.make_node("Reshape", ["c", "t1"], ["flat"]),
        helper.make_node("Softmax", ["flat"], ["sm"], axis=2),
        helper.make_node("Shape", ["c"], ["t2"]),
        helper.make_node("Reshape", ["sm", "t2"], ["back"]),
        helper.make_node("Conv", ["back", "w2"], ["y"]),
    ]
    model = make_model(helper.make_graph(nodes, "g", [x], [y], inits))
    a = analyze(model, {"x": (1, 3, 6, 5)})
    (group,) = a.prunable_groups
    assert ("c8", 0) in {(m.name, m.axis) for m in group.by_role(Role.SHAPE)}
    _prune_equal(model, a, _feed((1, 3, 6, 5)))


# --------------------------------------------------------------------------- subgraph readers


def _if_model() -> onnx.ModelProto:
    """Conv -> ``a``; an ``If`` branch reads ``a`` from the outer scope; ``a`` feeds a Conv."""
    rng = np.random.default_rng(2)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 1, 1, 1])
    branch = [helper.make_tensor_value_info("o", TensorProto.FLOAT, [1, 1, 1, 1])]
    then = helper.make_graph([helper.make_node("ReduceSum", ["a"], ["o"])], "then", [], branch)
    other = helper.make_graph([helper.make_node("ReduceMax", ["a"], ["o"])], "else", [], branch)
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["h"]),
        helper.make_node("Relu", ["h"], ["hr"]),
        helper.make_node("Conv", ["hr", "w1"], ["a"]),
        helper.make_node("If", ["cond"], ["z"], then_branch=then, else_branch=other),
        helper.make_node("Conv", ["a", "w2"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(size=(5, 3, 1, 1)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.normal(size=(6, 5, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(2, 6, 1, 1)).astype(np.float32), "w2"),
    ]
    return make_model(helper.make_graph(nodes, "g", [x, cond], [y, z], inits))


def test_if_subgraph_reader_freezes_its_group() -> None:
    model = _if_model()
    a = analyze(model)
    (group,) = [g for g in a.groups if g.size == 6]
    assert not group.prunable and "subgraph" in (group.frozen or "")
    assert "If" in (group.frozen or "")
    assert [g.size for g in a.prunable_groups] == [5]
    pruned = evonnx.prune(model, 0.4).model  # before: ``a`` lost channels, onnxruntime failed
    weights = {t.name: t.dims for t in pruned.graph.initializer}
    assert weights["w1"] == [6, 2, 1, 1]
    plan = random_plan(a, 0.4, np.random.default_rng(0))
    for cond in (True, False):
        feed = {**_feed((1, 3, 4, 4)), "cond": np.array(cond)}
        check_function_kept(model, a, plan, feed)


@pytest.mark.parametrize("batch", ["N", -1, None])
def test_keep_batch_leaves_a_batch_axis_that_is_not_fixed_symbolic(
    batch: str | int | None,
) -> None:
    """A named batch, paddle2onnx's -1 and an unset one stay symbolic under ``keep_batch`` (the
    model still trains and runs at any batch; a name stays, the others are named ``batch``);
    the other axes take the given shape."""
    from evonnx.model.inputs import apply_input_shapes

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, "H", "W"])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "g", [x],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )  # fmt: skip
    model = helper.make_model(graph)
    shaped = apply_input_shapes(model, {"x": (1, 3, 8, 16)}, keep_batch=True)
    dims = shaped.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == (batch if isinstance(batch, str) else "batch")
    assert [d.dim_value for d in dims[1:]] == [3, 8, 16]
    fixed = apply_input_shapes(model, {"x": (1, 3, 8, 16)})
    assert [d.dim_value for d in fixed.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 16]
    held = apply_input_shapes(shaped, {"x": (1, 3, 8, 16)}, keep_batch=True)
    assert held.graph.input[0] == shaped.graph.input[0]
