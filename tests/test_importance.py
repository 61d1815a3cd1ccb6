"""Ranking channels by their deviation from the constant they fold to (not filter L1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from click.testing import CliRunner
from helpers import make_model, run
from onnx import TensorProto, helper, numpy_helper

from evonnx import api
from evonnx.cli.main import cli
from evonnx.errors import ConfigError
from evonnx.model.graph import constant_values
from evonnx.model.shapes import shaped_graph
from evonnx.pruning.analysis import analyze
from evonnx.pruning.importance import deviation_strength, reader_deviation, synthetic_inputs
from evonnx.pruning.plan import channel_strength, magnitude_plan


def _t(name: str, arr: np.ndarray | list[float]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def misleading_l1() -> onnx.ModelProto:
    """x -> Conv(3->4, bias 10) -> Relu -> Conv 1x1 (4->4, bias) -> Conv 1x1 (4->2): the output.

    The middle conv's channel 0 has the smallest filter (0.3 per input) but reads inputs near
    10: removing it moves its output by about 12. Channel 1's filter is the largest, but its
    weights cancel on those nearly equal inputs: its output barely moves off its bias.
    """
    rng = np.random.default_rng(0)
    w2 = rng.uniform(0.5, 1.0, (4, 4, 1, 1))
    w2[0] = 0.3
    w2[1] = np.array([3.0, -3.0, 3.0, -3.0]).reshape(4, 1, 1)
    inits = [
        _t("w1", rng.normal(size=(4, 3, 1, 1)) * 0.02),
        _t("b1", [10.0, 10.0, 10.0, 10.0]),
        _t("w2", w2),
        _t("b2", [0.5, -0.5, 0.2, 0.1]),
        _t("w3", rng.normal(size=(2, 4, 1, 1))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Conv", ["c2", "w3"], ["y"], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes,
        "l1",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])],
        inits,
    )
    return make_model(graph)


def _group(analysis, weight: str):  # type: ignore[no-untyped-def]
    (g,) = [g for g in analysis.prunable_groups if any(m.name == weight for m in g.producers)]
    return g


def test_deviation_ranks_by_what_removing_a_channel_changes() -> None:
    model = mis = misleading_l1()
    analysis = analyze(model)
    graph, _ = shaped_graph(model, None)
    weights = constant_values(graph)
    inputs = synthetic_inputs(graph, 8)
    assert inputs["x"].shape == (8, 3, 4, 4)
    deviation = reader_deviation(model, analysis, graph, inputs)
    # by hand: conv3's input channels minus their fold constant (conv2's bias), rms
    c2 = np.concatenate([_c2(mis, inputs["x"][i : i + 1]) for i in range(8)])
    expect = np.sqrt(
        ((c2 - np.array([0.5, -0.5, 0.2, 0.1]).reshape(1, 4, 1, 1)) ** 2).mean((0, 2, 3))
    )
    np.testing.assert_allclose(deviation["conv3"], expect, rtol=1e-5)
    g = _group(analysis, "w2")
    strength = deviation_strength(analysis, weights, deviation)[g.id]
    w3 = numpy_helper.to_array(next(t for t in mis.graph.initializer if t.name == "w3"))
    np.testing.assert_allclose(strength, expect * np.sqrt((w3**2).sum(axis=(0, 2, 3))), rtol=1e-5)
    l1 = channel_strength(g, weights)
    assert np.argmin(l1) == 0 and np.argmax(l1) == 1  # L1 would remove channel 0 first
    assert np.argmin(strength) == 1  # the deviation removes the nearly constant channel 1
    by_dev = magnitude_plan(analysis, weights, 0.75, strength={g.id: strength})
    by_l1 = magnitude_plan(analysis, weights, 0.75)
    assert by_dev.kept(g).tolist() == [0, 2, 3] and by_l1.kept(g).tolist() == [1, 2, 3]


def _c2(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("c2", TensorProto.FLOAT, None))
    return run(probe, {"x": x})[1]


def test_prune_by_deviation_keeps_the_function_better_than_l1() -> None:
    model = misleading_l1()
    x = np.random.default_rng(3).normal(size=(1, 3, 4, 4)).astype(np.float32)
    ref = run(model, {"x": x})[0]
    errs = {}
    original = model.SerializeToString()
    for criterion in ("deviation", "l1"):
        pruned = api.prune(model, 0.75, min_fraction=0.0, criterion=criterion).model
        onnx.checker.check_model(pruned, full_check=True)
        errs[criterion] = float(np.abs(run(pruned, {"x": x})[0] - ref).max())
    assert model.SerializeToString() == original  # the probe outputs are gone again
    assert errs["deviation"] < 0.25 * errs["l1"]


def test_l1_criterion_is_the_plain_magnitude_plan() -> None:
    model = misleading_l1()
    analysis = analyze(model)
    weights = constant_values(shaped_graph(model, None)[0])
    result = api.prune(model, 0.75, min_fraction=0.0, criterion="l1")
    assert result.plan == magnitude_plan(analysis, weights, 0.75)
    with pytest.raises(ConfigError, match="criterion"):
        api.prune(model, 0.75, min_fraction=0.0, criterion="taylor")


def test_no_synthetic_inputs_for_symbolic_or_integer_inputs() -> None:
    x = gs.Variable("x", dtype=np.float32, shape=["n", 3, "h", 4])
    ids = gs.Variable("ids", dtype=np.int64, shape=[1, 5])
    assert synthetic_inputs(gs.Graph(inputs=[x])) == {}
    assert synthetic_inputs(gs.Graph(inputs=[ids])) == {}
    ok = gs.Variable("x", dtype=np.float32, shape=["n", 3, 2, 4])
    assert synthetic_inputs(gs.Graph(inputs=[ok]), 2)["x"].shape == (2, 3, 2, 4)


def test_cli_criterion_only_with_magnitude(tmp_path: Path) -> None:
    src, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(misleading_l1(), str(src))
    base = ["prune", str(src), "-o", str(out), "--keep", "0.75", "--min-fraction", "0"]
    res = CliRunner().invoke(cli, [*base, "--criterion", "l1"])
    assert res.exit_code == 1 and "--criterion: only with --method magnitude" in res.output
    kept = {}
    for criterion in ("deviation", "l1"):
        args = [*base, "--method", "magnitude", "--criterion", criterion, "--json"]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
        kept[criterion] = onnx.load(str(out)).graph.initializer
    w3 = numpy_helper.to_array(next(t for t in misleading_l1().graph.initializer if t.name == "w3"))
    # conv3 reads the channels each ranking kept: all but channel 1, or all but channel 0
    for criterion, cols in (("deviation", [0, 2, 3]), ("l1", [1, 2, 3])):
        got = numpy_helper.to_array(next(t for t in kept[criterion] if t.name == "w3"))
        np.testing.assert_array_equal(got, w3[:, cols])
