"""Surgery on the whole zoo: checker, onnxruntime and the dead-channel invariant."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_same, check_function_kept, random_plan, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper
from zoo import cached_case, input_feed

from evonnx.errors import PlanError
from evonnx.pruning.analysis import analyze
from evonnx.pruning.groups import Analysis, Role
from evonnx.pruning.metrics import compute_metrics
from evonnx.pruning.plan import PrunePlan
from evonnx.pruning.surgery import apply_plan


def _check_pruned(model: onnx.ModelProto, keep: float, seed: int) -> onnx.ModelProto:
    analysis = analyze(model)
    plan = random_plan(analysis, keep, np.random.default_rng(seed))
    feed = input_feed(model, seed)
    pruned = check_function_kept(model, analysis, plan, feed)
    _check_shapes(model, pruned, analysis, plan)
    return pruned


def _check_shapes(
    model: onnx.ModelProto, pruned: onnx.ModelProto, analysis: Analysis, plan: PrunePlan
) -> None:
    """Every sliced weight lost exactly ``removed * block`` entries per member on its axis."""
    before = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t).shape for t in pruned.graph.initializer}
    lost: dict[tuple[str, int], int] = {}
    for g in analysis.groups:
        removed = g.size - len(plan.keep.get(g.id, range(g.size)))
        seen = set()
        for m in g.members:
            key = (m.role, m.name, m.axis, m.start, m.block)
            if m.role in (Role.PRODUCER, Role.CONSUMER, Role.BIAS) and key not in seen:
                seen.add(key)
                lost[(m.name, m.axis)] = lost.get((m.name, m.axis), 0) + removed * m.block
    assert lost
    for (name, axis), n in lost.items():
        assert after[name][axis] == before[name][axis] - n, name


@settings(
    max_examples=4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(keep=st.floats(0.05, 1.0), seed=st.integers(0, 2**16))
def test_zoo_random_keep(zoo_case: tuple[str, onnx.ModelProto], keep: float, seed: int) -> None:
    _, model = zoo_case
    _check_pruned(model, keep, seed)


def test_zoo_prunes_something(zoo_case: tuple[str, onnx.ModelProto]) -> None:
    name, model = zoo_case
    analysis = analyze(model)
    assert analysis.prunable_groups, f"{name}: nothing prunable"
    pruned = _check_pruned(model, 0.5, 0)
    before = sum(numpy_helper.to_array(t).size for t in model.graph.initializer)
    after = sum(numpy_helper.to_array(t).size for t in pruned.graph.initializer)
    assert after < before


def test_keep_everything_is_identity(zoo_case: tuple[str, onnx.ModelProto]) -> None:
    _, model = zoo_case
    analysis = analyze(model)
    pruned = apply_plan(model, analysis, PrunePlan({}))
    feed = input_feed(model)
    assert_same(run(model, feed), run(pruned, feed))


def test_masks_zero_weights_before_removal(zoo_dir: object) -> None:
    from zoo import helper_convnet

    model = helper_convnet()
    analysis = analyze(model)
    mask = np.ones((6, 2, 3, 3), dtype=np.float32)
    mask[0, 0] = 0
    pruned = apply_plan(model, analysis, PrunePlan({}), {"w1": mask})
    w1 = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}["w1"]
    assert np.all(w1[0, 0] == 0) and np.count_nonzero(w1) == w1.size - 9


def test_plan_errors() -> None:
    from zoo import helper_convnet

    model = helper_convnet()
    analysis = analyze(model)
    frozen = next(g for g in analysis.groups if not g.prunable)
    prunable = analysis.prunable_groups[0]
    with pytest.raises(PlanError, match="frozen"):
        apply_plan(model, analysis, PrunePlan({frozen.id: (0,)}))
    with pytest.raises(PlanError, match="every channel"):
        apply_plan(model, analysis, PrunePlan({prunable.id: ()}))
    with pytest.raises(PlanError, match="sorted"):
        apply_plan(model, analysis, PrunePlan({prunable.id: (2, 1)}))
    with pytest.raises(PlanError, match="does not have"):
        apply_plan(model, analysis, PrunePlan({999: (0,)}))
    with pytest.raises(PlanError, match="mask"):
        apply_plan(model, analysis, PrunePlan({}), {"w1": np.ones((2, 2))})


def test_depthwise_group_attribute_updated() -> None:
    from zoo import parser_depthwise_convtranspose

    model = parser_depthwise_convtranspose()
    analysis = analyze(model)
    g = next(g for g in analysis.prunable_groups if any(m.name == "wdw" for m in g.members))
    assert {m.role for m in g.members} >= {Role.PRODUCER, Role.GROUP_ATTR, Role.CONSUMER}
    plan = PrunePlan({g.id: (1, 4, 6)})
    pruned = apply_plan(model, analysis, plan)
    dw = next(n for n in pruned.graph.node if n.input[1] == "wdw")
    assert next(a.i for a in dw.attribute if a.name == "group") == 3
    feed = input_feed(model)
    check_function_kept(model, analysis, plan, feed)


def test_reshape_constant_rewritten() -> None:
    from zoo import helper_residual_concat

    model = helper_residual_concat()
    analysis = analyze(model)
    plan = random_plan(analysis, 0.5, np.random.default_rng(3))
    pruned = apply_plan(model, analysis, plan)
    shape = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}["shape"]
    wm = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}["wm"]
    assert shape.tolist() == [1, wm.shape[0]] and wm.shape[0] < 20


@pytest.mark.parametrize("case", ["resnet@legacy", "resnet@dynamo"])
def test_emptied_residual_branches_are_removed(case: str, zoo_dir: Path) -> None:
    model = cached_case(case, zoo_dir)
    analysis = analyze(model)
    removable = [g for g in analysis.groups if g.removable]
    assert [g.size for g in removable] == [8, 16, 8, 8]  # basic blocks' and bottlenecks' inner
    rng = np.random.default_rng(0)
    for pick in ([0], [1, 3], [0, 1, 2, 3]):
        plan = random_plan(analysis, 0.5, rng)
        keep = {**plan.keep, **{removable[i].id: () for i in pick}}
        plan = PrunePlan(keep)
        pruned = check_function_kept(model, analysis, plan, input_feed(model))
        dropped = {m.node for i in pick for m in removable[i].members}
        assert not dropped & {n.name for n in pruned.graph.node}
    assert compute_metrics(pruned).macs < compute_metrics(model).macs / 3


def test_only_removable_groups_may_be_emptied() -> None:
    from zoo import helper_convnet

    model = helper_convnet()
    analysis = analyze(model)
    assert not any(g.removable for g in analysis.groups)
    with pytest.raises(PlanError, match="every channel"):
        apply_plan(model, analysis, PrunePlan({analysis.prunable_groups[0].id: ()}))


def test_branch_plan_empties_weakest_branches_until_target(zoo_dir: Path) -> None:
    from evonnx.model.graph import constant_values, to_graph
    from evonnx.pruning.plan import branch_plan, channel_strength, estimate_macs

    model = cached_case("resnet@legacy", zoo_dir)
    analysis = analyze(model)
    weights = constant_values(to_graph(model))
    base = estimate_macs(analysis, weights, {})
    plan = branch_plan(analysis, weights, 1.3)
    assert plan.keep and all(kept == () for kept in plan.keep.values())
    after = estimate_macs(analysis, weights, {gid: 0 for gid in plan.keep})
    assert after <= base / 1.3
    pruned = apply_plan(model, analysis, plan)
    assert compute_metrics(pruned).macs <= after  # a bottleneck also loses its dead 1x1 conv
    strengths = {g.id: channel_strength(g, weights).mean() for g in analysis.groups if g.removable}
    assert max(strengths[g] for g in plan.keep) <= min(
        (v for g, v in strengths.items() if g not in plan.keep), default=np.inf
    )
    with pytest.raises(PlanError, match="mac_ratio"):
        branch_plan(analysis, weights, 0.5)
