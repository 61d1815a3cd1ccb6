"""Removed channels' constants are folded into their readers, not dropped.

The invariant: the pruned graph equals the ancestor with the removed filters' *weights*
zeroed (their biases, BatchNorm and activations stay), exactly where the folding is exact;
elsewhere the error is measured and reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import assert_same, make_model, run, zero_producers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from evonnx.cli.main import cli
from evonnx.pruning.analysis import analyze
from evonnx.pruning.fold import FoldKind
from evonnx.pruning.groups import Analysis
from evonnx.pruning.plan import PrunePlan
from evonnx.pruning.surgery import apply_plan_report


def _t(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _bn(rng: np.random.Generator, n: int, prefix: str) -> list[onnx.TensorProto]:
    """Trained-like BatchNorm parameters: scale, shift (large enough to matter; positive on
    even channels, negative on odd ones), mean, var."""
    sign = np.where(np.arange(n) % 2, -1.0, 1.0)
    return [
        _t(f"{prefix}_s", rng.uniform(0.5, 1.5, n)),
        _t(f"{prefix}_b", sign * rng.uniform(2.0, 3.0, n)),
        _t(f"{prefix}_m", rng.normal(size=n) * 0.3),
        _t(f"{prefix}_v", rng.uniform(0.5, 1.5, n)),
    ]


# activation name -> (nodes from "n1" to "a1", extra initializers)
def _activation(name: str, c: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    scale = np.linspace(-1.5, 2.0, c).reshape(1, c, 1, 1)
    simple = {
        "Relu": {},
        "LeakyRelu": {"alpha": 0.1},
        "Sigmoid": {},
        "HardSwish": {},
        "HardSigmoid": {"alpha": 0.25, "beta": 0.4},
        "Tanh": {},
        "Elu": {"alpha": 0.7},
        "Softplus": {},
    }
    if name in simple:
        return [helper.make_node(name, ["n1"], ["a1"], **simple[name])], []
    if name == "Clip":
        inits = [_t("lo", np.array(0.0)), _t("hi", np.array(0.8))]
        return [helper.make_node("Clip", ["n1", "lo", "hi"], ["a1"])], inits
    if name == "SiLU":
        return [
            helper.make_node("Sigmoid", ["n1"], ["sg"]),
            helper.make_node("Mul", ["n1", "sg"], ["a1"]),
        ], []
    if name == "MulAdd":  # per-channel scale and shift after a Relu
        return [
            helper.make_node("Relu", ["n1"], ["r"]),
            helper.make_node("Mul", ["r", "scale"], ["ms"]),
            helper.make_node("Add", ["ms", "shift"], ["a1"]),
        ], [_t("scale", scale), _t("shift", -scale / 3)]
    raise ValueError(name)


ACTIVATIONS = ["Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "HardSigmoid", "SiLU",
               "Tanh", "Elu", "Softplus", "MulAdd"]  # fmt: skip
READERS = ["conv1x1", "conv3", "gemm", "matmul"]


def chain_model(act: str, reader: str, side: int = 6, seed: int = 0) -> onnx.ModelProto:
    """x -> Conv(3->6, bias) -> BN -> ``act`` -> ``reader``: a bias-free 1x1 conv, an
    unpadded 3x3 conv with a bias, Flatten+Gemm (alpha, beta, scalar C) or
    GlobalAveragePool+Flatten+MatMul (the graph output)."""
    rng = np.random.default_rng(seed)
    c = 6
    inits = [_t("w1", rng.normal(size=(c, 3, 3, 3))), _t("b1", rng.normal(size=c))]
    inits += _bn(rng, c, "bn")
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"]),
    ]
    act_nodes, act_inits = _activation(act, c)
    nodes += act_nodes
    inits += act_inits
    if reader == "conv1x1":
        inits.append(_t("w2", rng.normal(size=(4, c, 1, 1))))
        nodes.append(helper.make_node("Conv", ["a1", "w2"], ["y"]))
        out = [1, 4, side, side]
    elif reader == "conv3":
        inits += [_t("w2", rng.normal(size=(4, c, 3, 3))), _t("b2", rng.normal(size=4))]
        nodes.append(helper.make_node("Conv", ["a1", "w2", "b2"], ["y"]))
        out = [1, 4, side - 2, side - 2]
    elif reader == "gemm":
        inits += [_t("wf", rng.normal(size=(5, c * side * side))), _t("cf", np.array([0.3]))]
        nodes += [
            helper.make_node("Flatten", ["a1"], ["f"]),
            helper.make_node("Gemm", ["f", "wf", "cf"], ["y"], transB=1, alpha=0.7, beta=1.3),
        ]
        out = [1, 5]
    else:
        inits.append(_t("wm", rng.normal(size=(c, 5))))
        nodes += [
            helper.make_node("GlobalAveragePool", ["a1"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("MatMul", ["f", "wm"], ["y"]),
        ]
        out = [1, 5]
    for i, n in enumerate(nodes):
        n.name = f"n{i}_{n.op_type}"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, side, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        inits,
    )
    return make_model(graph)


def _feed(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    dims = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    return {"x": np.random.default_rng(seed).normal(size=dims).astype(np.float32)}


def _plan(analysis: Analysis, weight: str, keep: tuple[int, ...]) -> PrunePlan:
    (g,) = [g for g in analysis.prunable_groups if any(m.name == weight for m in g.producers)]
    return PrunePlan({g.id: keep})


CASES = [(a, READERS[i % len(READERS)]) for i, a in enumerate(ACTIVATIONS)]
CASES += [("SiLU", r) for r in READERS if ("SiLU", r) not in CASES]


@pytest.mark.parametrize(("act", "reader"), CASES)
def test_constants_fold_exactly_through_activations(act: str, reader: str) -> None:
    model = chain_model(act, reader)
    analysis = analyze(model)
    plan = _plan(analysis, "w1", (1, 3, 5))
    pruned, folds = apply_plan_report(model, analysis, plan)
    onnx.checker.check_model(pruned, full_check=True)
    assert folds.exact and len(folds.layers) == 1
    assert folds.summary()["layers"]["exact"] == 1
    (fold,) = folds.layers
    assert np.any(fold.delta)  # the removed channels carried something
    feed = _feed(model)
    ref = run(zero_producers(model, analysis, plan), feed)
    assert_same(ref, run(pruned, feed))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    act=st.sampled_from(ACTIVATIONS),
    reader=st.sampled_from(READERS),
    side=st.integers(3, 9),
    seed=st.integers(0, 2**16),
    keep=st.sets(st.integers(0, 5), min_size=1, max_size=5),
)
def test_constants_fold_for_any_shape(
    act: str, reader: str, side: int, seed: int, keep: set[int]
) -> None:
    model = chain_model(act, reader, side, seed)
    analysis = analyze(model)
    plan = _plan(analysis, "w1", tuple(sorted(keep)))
    pruned, folds = apply_plan_report(model, analysis, plan)
    assert folds.exact
    feed = _feed(model, seed)
    assert_same(run(zero_producers(model, analysis, plan), feed), run(pruned, feed))


def _issue_model(pad: int) -> onnx.ModelProto:
    """Issue 21's reproduction: Conv(3->4) -> BN -> Relu -> Conv(4->4) as the output; filter
    0 has all-zero weights and BatchNorm beta 2, so channel 0 is the constant 2."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(4, 3, 3, 3))
    w1[0] = 0
    inits = [
        _t("w1", w1),
        _t("s", np.ones(4)),
        _t("beta", [2.0, 0.1, -0.2, 0.3]),
        _t("mean", np.zeros(4)),
        _t("var", np.ones(4)),
        _t("w2", rng.normal(size=(4, 4, 3, 3))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "s", "beta", "mean", "var"], ["n1"]),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[pad] * 4, name="conv2"),
    ]
    side = 6 + 2 * pad - 2
    graph = helper.make_graph(
        nodes,
        "issue21",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, side, side])],
        inits,
    )
    return make_model(graph)


def test_issue_reproduction_is_exact_through_the_cli(tmp_path: Path) -> None:
    model = _issue_model(pad=0)
    src, dst = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(model, str(src))
    args = ["--method", "magnitude", "--keep", "0.75", "-o", str(dst), "--json"]
    res = CliRunner().invoke(cli, ["prune", str(src), *args])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["folds"]["layers"] == {
        "exact": 1, "interior": 0, "border_map": 0, "approximate": 0, "unknown": 0,
    }  # fmt: skip
    pruned = onnx.load(str(dst))
    w1 = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}["w1"]
    assert w1.shape[0] == 3  # the all-zero filter is the one removed
    feed = _feed(model)
    before, after = run(model, feed)[0], run(pruned, feed)[0]
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5 * np.abs(before).max())


def test_padded_reader_is_exact_inside_and_reports_its_border() -> None:
    model = _issue_model(pad=1)
    analysis = analyze(model)
    plan = _plan(analysis, "w1", (1, 2, 3))
    pruned, folds = apply_plan_report(model, analysis, plan)
    (fold,) = folds.layers
    assert fold.kind is FoldKind.INTERIOR and not folds.exact
    assert folds.summary()["layers"]["interior"] == 1
    feed = _feed(model)
    before, after = run(model, feed)[0], run(pruned, feed)[0]
    diff = np.abs(after - before)[0]
    assert diff[:, 1:-1, 1:-1].max() < 1e-5 * np.abs(before).max()  # the interior is exact
    assert diff.max() == pytest.approx(fold.border_error, rel=1e-4)  # the border, as reported
    # exact_border adds the border as a constant map: exact everywhere, one Add more
    exact, efolds = apply_plan_report(model, analysis, plan, exact_border=True)
    assert efolds.exact and efolds.layers[0].kind is FoldKind.BORDER_MAP
    assert_same([before], run(exact, feed))
    assert [n.op_type for n in exact.graph.node].count("Add") == 1


def test_symbolic_sizes_measure_the_border_and_stay_interior() -> None:
    model = _issue_model(pad=1)
    for value_info in (model.graph.input[0], model.graph.output[0]):
        dims = value_info.type.tensor_type.shape.dim
        for d, name in zip(dims[2:], ("h", "w"), strict=True):
            d.dim_param = name
    analysis = analyze(model)
    plan = _plan(analysis, "w1", (1, 2, 3))
    _, folds = apply_plan_report(model, analysis, plan, exact_border=True)
    (fold,) = folds.layers
    assert fold.kind is FoldKind.INTERIOR and fold.border_error > 0


def test_unknown_constant_is_reported_not_silently_dropped() -> None:
    """A Softmax over a spatial axis: the evaluator does not claim to know the constant."""
    text = """<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 3, 5, 5] x) => (float[1, 2, 5, 5] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
        s = Softmax <axis = 3> (c)
        y = Conv (s, w2)
    }"""
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(0)
    model.graph.initializer.extend(
        [_t("w1", rng.normal(size=(4, 3, 3, 3))), _t("b1", rng.normal(size=4)),
         _t("w2", rng.normal(size=(2, 4, 1, 1)))]
    )  # fmt: skip
    analysis = analyze(model)
    plan = _plan(analysis, "w1", (0, 2))
    pruned, folds = apply_plan_report(model, analysis, plan)
    onnx.checker.check_model(pruned, full_check=True)
    s = folds.summary()
    assert s["layers"]["unknown"] == 1 and s["unknown_channels"] == 2 and not folds.exact


def _two_readers(beta: float) -> onnx.ModelProto:
    """One removable channel set read by two convs sharing a bias, and by a Gemm with
    ``beta`` whose C is a full [1, 5] row; the MatMul reader is a graph output."""
    text = f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 3, 4, 4] x) => (float[1, 2, 2, 2] y1, float[1, 2, 2, 2] y2, float[1, 5] y3,
                               float[1, 3] y4) {{
        c = Conv (x, w1, b1)
        r = Relu (c)
        y1 = Conv (r, wa, bs)
        y2 = Conv (r, wb, bs)
        p = GlobalAveragePool (r)
        f = Flatten (p)
        y3 = Gemm <transB = 1, beta = {beta}> (f, wg, cg)
        y4 = MatMul (f, wm)
    }}"""
    model = onnx.parser.parse_model(text)
    rng = np.random.default_rng(1)
    model.graph.initializer.extend(
        [_t("w1", rng.normal(size=(4, 3, 1, 1))), _t("b1", rng.uniform(0.5, 1, 4)),
         _t("wa", rng.normal(size=(2, 4, 3, 3))), _t("wb", rng.normal(size=(2, 4, 3, 3))),
         _t("bs", rng.normal(size=2)), _t("wg", rng.normal(size=(5, 4))),
         _t("cg", rng.normal(size=(1, 5))), _t("wm", rng.normal(size=(4, 3)))]
    )  # fmt: skip
    return model


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5])
def test_shared_biases_gemm_beta_and_matmul_outputs(beta: float) -> None:
    model = _two_readers(beta)
    analysis = analyze(model)
    plan = _plan(analysis, "w1", (1, 3))
    pruned, folds = apply_plan_report(model, analysis, plan)
    onnx.checker.check_model(pruned, full_check=True)
    assert folds.exact and len(folds.layers) == 4
    feed = _feed(model)
    assert_same(run(zero_producers(model, analysis, plan), feed), run(pruned, feed))
    biases = [n.input[2] for n in pruned.graph.node if n.op_type == "Conv" and len(n.input) > 2]
    assert len(set(biases[1:])) == 2  # the shared bias was copied, not folded twice


def test_conv_transpose_reader_is_approximate() -> None:
    from zoo import parser_depthwise_convtranspose

    model = parser_depthwise_convtranspose()
    analysis = analyze(model)
    g = next(g for g in analysis.prunable_groups if any(m.name == "wdw" for m in g.members))
    _, folds = apply_plan_report(model, analysis, PrunePlan({g.id: (0, 2, 5)}))
    (fold,) = folds.layers
    assert fold.op == "ConvTranspose" and fold.kind is FoldKind.APPROXIMATE
    assert fold.border_error > 0 and folds.summary()["layers"]["approximate"] == 1
