"""Depth clusters through BatchNorm and activations (C2f, CSP, MobileNetV3, PicoDet blocks),
on static and symbolic-batch exports: emptied, a branch becomes its exact constant."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_same, check_function_kept, run, zero_producers
from zoo_depth import DEPTH_ZOO, build_depth_model

from evonnx.genetic import EncodingConfig, encode, model_weights, sample
from evonnx.genetic.environments import MacBudget
from evonnx.pruning.analysis import analyze
from evonnx.pruning.groups import Role
from evonnx.pruning.plan import PrunePlan
from evonnx.pruning.surgery import apply_plan_report

CASES = [(name, e) for name in DEPTH_ZOO for e in ("legacy", "dynamo", "dynamic")]


@pytest.fixture(scope="module")
def models() -> dict[tuple[str, str], onnx.ModelProto]:
    return {}


def _model(models: dict[tuple[str, str], onnx.ModelProto], name: str, e: str) -> onnx.ModelProto:
    if (name, e) not in models:
        models[(name, e)] = build_depth_model(name, e)
    return models[(name, e)]


def _feed(model: onnx.ModelProto, batch: int) -> dict[str, np.ndarray]:
    inp = model.graph.input[0]
    dims = [d.dim_value if d.dim_value > 0 else batch for d in inp.type.tensor_type.shape.dim]
    return {inp.name: np.random.default_rng(2).normal(size=dims).astype(np.float32)}


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_branches_through_bn_and_activations_are_removable(
    models: dict[tuple[str, str], onnx.ModelProto], name: str, exporter: str
) -> None:
    model = _model(models, name, exporter)
    analysis = analyze(model)
    removable = [g for g in analysis.groups if g.removable]
    assert len(removable) == DEPTH_ZOO[name][2], [g.frozen for g in analysis.groups]
    feed = _feed(model, 3 if exporter == "dynamic" else 1)
    for pick in ([0], list(range(len(removable)))):
        plan = PrunePlan({removable[i].id: () for i in pick})
        child, folds = apply_plan_report(model, analysis, plan)
        onnx.checker.check_model(child, full_check=True)
        assert folds.exact  # the exit is an exact constant (a map for a padded conv)
        assert_same(run(zero_producers(model, analysis, plan), feed), run(child, feed))
        inner = {m.node for i in pick for m in removable[i].members if m.role is Role.PRODUCER}
        assert not inner & {n.name for n in child.graph.node}
        assert len(child.graph.node) < len(model.graph.node)


@pytest.mark.parametrize("name", list(DEPTH_ZOO))
def test_depth_clusters_sampled_on_blocks(
    models: dict[tuple[str, str], onnx.ModelProto], name: str
) -> None:
    """The genetic encoding with depth clusters: branches die whole, channels thin out; the
    offspring keeps the function of the ancestor with the removed filters' weights zeroed."""
    model = _model(models, name, "dynamo")
    analysis = analyze(model)
    cfg = EncodingConfig(environment=MacBudget(0.5), depth=True, synapse_level=False)
    genome = encode(analysis, model_weights(model), cfg)
    assert sorted(genome.branch_p) == sorted(g.id for g in analysis.groups if g.removable)
    emptied_any = False
    for seed in range(6):
        off = sample(genome, np.random.default_rng(seed))
        emptied_any |= any(len(k) == 0 for k in off.plan.keep.values())
        check_function_kept(model, analysis, off.plan, _feed(model, 1), off.masks)
    assert emptied_any


def test_squeeze_excite_inside_a_branch_dies_with_it(
    models: dict[tuple[str, str], onnx.ModelProto],
) -> None:
    model = _model(models, "mobilenetv3", "legacy")
    analysis = analyze(model)
    branch = next(g for g in analysis.groups if g.removable)
    consumers = {m.node for m in branch.by_role(Role.CONSUMER)}
    assert len(consumers) == 2  # the project conv and the squeeze's first conv
    child, _ = apply_plan_report(model, analysis, PrunePlan({branch.id: ()}))
    assert not consumers & {n.name for n in child.graph.node}
    assert not any(n.op_type == "HardSigmoid" for n in child.graph.node[:3])
