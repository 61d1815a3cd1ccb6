"""Depth clusters: removable residual branches sampled whole by the genetic encoding."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import check_function_kept
from zoo import cached_case, input_feed

from evonnx.errors import ConfigError
from evonnx.genetic import EncodingConfig, encode, model_weights, sample, solve_factor
from evonnx.genetic.environments import MacBudget
from evonnx.genetic.probabilities import cluster_probabilities
from evonnx.pruning.analysis import analyze
from evonnx.pruning.plan import channel_strength
from evonnx.pruning.surgery import apply_plan


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> onnx.ModelProto:
    return cached_case("resnet@legacy", tmp_path_factory.mktemp("zoo"))


def test_branch_probabilities_follow_eq4(resnet: onnx.ModelProto) -> None:
    analysis = analyze(resnet)
    weights = model_weights(resnet)
    cfg = EncodingConfig(depth=True, truncation=EncodingConfig().truncation)
    genome = encode(analysis, weights, cfg)
    removable = [g for g in analysis.prunable_groups if g.removable]
    assert sorted(genome.branch_p) == sorted(g.id for g in removable) and removable
    sums = np.array([channel_strength(g, weights, cfg.truncation).sum() for g in removable])
    expect = cluster_probabilities(sums)
    got = np.array([genome.branch_p[g.id] for g in removable])
    np.testing.assert_allclose(got, expect, rtol=1e-6)
    assert max(got) == pytest.approx(1.0)
    assert not encode(analysis, weights, EncodingConfig()).branch_p  # off by default


def test_depth_clusters_remove_exactly_a_branch(resnet: onnx.ModelProto) -> None:
    analysis = analyze(resnet)
    weights = model_weights(resnet)
    cfg = EncodingConfig(environment=MacBudget(0.6), depth=True, synapse_level=False)
    genome = encode(analysis, weights, cfg)
    removable = {g.id for g in analysis.groups if g.removable}
    emptied_any = False
    feed = input_feed(resnet)
    for seed in range(12):
        off = sample(genome, np.random.default_rng(seed))
        assert off.realized_cost <= off.budget
        emptied = {gid for gid, kept in off.plan.keep.items() if not kept}
        assert emptied <= removable
        if not emptied:
            continue
        emptied_any = True
        child = check_function_kept(resnet, analysis, off.plan, feed, off.masks)
        dropped = {m.node for gid in emptied for m in analysis.group(gid).members}
        assert not dropped & {n.name for n in child.graph.node}
    assert emptied_any


def test_branch_survival_matches_its_probability(resnet: onnx.ModelProto) -> None:
    analysis = analyze(resnet)
    genome = encode(analysis, model_weights(resnet), EncodingConfig(depth=True))
    factor = 0.6
    gid = min(genome.branch_p, key=genome.branch_p.__getitem__)
    q = genome.branch_q(gid, factor)
    c = genome.cluster_q(gid, factor)
    none = np.prod(1.0 - c)  # all channels dying also empties it
    n = 400
    alive = sum(
        bool(_draft_alive(genome, factor, np.random.default_rng(s))[gid].any()) for s in range(n)
    )
    expect = q * (1.0 - none)
    assert abs(alive / n - expect) < 4 * np.sqrt(expect * (1 - expect) / n) + 1e-9


def _draft_alive(genome: object, factor: float, rng: np.random.Generator) -> dict[int, np.ndarray]:
    from evonnx.genetic.sample import _sample_clusters

    return _sample_clusters(genome, factor, rng).alive  # type: ignore[arg-type]


def test_solver_counts_depth_clusters(resnet: onnx.ModelProto) -> None:
    analysis = analyze(resnet)
    weights = model_weights(resnet)
    env = MacBudget(0.5)
    plain = solve_factor(encode(analysis, weights, EncodingConfig(environment=env)))
    deep = solve_factor(encode(analysis, weights, EncodingConfig(environment=env, depth=True)))
    assert deep.expected_cost == pytest.approx(deep.budget, rel=1e-3)
    assert deep.factor > plain.factor  # branches die too, so channels need less pressure


def test_depth_needs_filter_clusters() -> None:
    with pytest.raises(ConfigError, match="depth"):
        EncodingConfig(depth=True, cluster_mode="kernel")


def _residual(bias: float) -> onnx.ModelProto:
    """x -> conv0 -> relu0 -> [conv1 -> relu1 -> conv2(bias)] + relu0 -> relu2 -> conv3."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    inits = [
        w("w0", 4, 3, 3, 3), w("w1", 6, 4, 3, 3), w("w2", 4, 6, 3, 3), w("w3", 2, 4, 1, 1),
        numpy_helper.from_array(np.full(4, bias, np.float32), "b2"),
    ]  # fmt: skip
    pads = [1, 1, 1, 1]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=pads, name="conv0"),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], pads=pads, name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=pads, name="conv2"),
        helper.make_node("Add", ["r0", "c2"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    graph = helper.make_graph(
        nodes, "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("bias", [0.0, 0.5])
def test_removed_branch_leaves_no_add_of_a_zero_bias(bias: float) -> None:
    from evonnx.pruning.plan import PrunePlan

    model = _residual(bias)
    analysis = analyze(model)
    (branch,) = [g for g in analysis.groups if g.removable]
    plan = PrunePlan({branch.id: ()})
    child = apply_plan(model, analysis, plan)
    onnx.checker.check_model(child, full_check=True)
    ops = [n.op_type for n in child.graph.node]
    if bias == 0.0:  # exact: x + 0 = x and Relu(Relu(x)) = Relu(x)
        assert ops == ["Conv", "Relu", "Conv"]
    else:
        assert ops == ["Conv", "Relu", "Add", "Relu", "Conv"]
    feed = {"x": np.random.default_rng(1).standard_normal((1, 3, 6, 6)).astype(np.float32)}
    check_function_kept(model, analysis, plan, feed)
