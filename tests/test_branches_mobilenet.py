"""Depth clusters on MobileNetV2: an inverted-residual branch (expand, depthwise, project)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import check_function_kept, make_model
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from zoo import InvertedResidual, export_torch, input_feed, randomize_bn

from evonnx.genetic import EncodingConfig, encode, model_weights, sample
from evonnx.genetic.environments import MacBudget
from evonnx.pruning.analysis import analyze
from evonnx.pruning.groups import Analysis, Role
from evonnx.pruning.plan import PrunePlan


class _Blocks(nn.Module):
    """Stem, three stride-1 inverted-residual blocks (ReLU6 = Clip), a stride-2 one, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU6())
        self.blocks = nn.Sequential(*(InvertedResidual(8, 3) for _ in range(3)))
        self.down = nn.Sequential(
            nn.Conv2d(8, 16, 1), nn.ReLU6(), nn.Conv2d(16, 16, 3, 2, 1, groups=16)
        )
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.blocks(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module", params=["legacy", "dynamo"])
def blocks(request: pytest.FixtureRequest) -> onnx.ModelProto:
    torch.manual_seed(0)
    model = _Blocks()
    randomize_bn(model, 0)
    return export_torch(model, (1, 3, 8, 8), request.param)


def _branch_nodes(analysis: Analysis, gid: int) -> set[str]:
    """The expand, depthwise and project convs of the branch of group ``gid``."""
    return {m.node for m in analysis.group(gid).members if m.role is not Role.BIAS}


def _check_removal(model: onnx.ModelProto, analysis: Analysis, plan: PrunePlan) -> onnx.ModelProto:
    """The pruned graph is valid and equals the original with the removed branches' filter
    weights zeroed (their biases, BatchNorm and activations stay)."""
    return check_function_kept(model, analysis, plan, input_feed(model, seed=3))


def test_inverted_residual_branches_are_removable(blocks: onnx.ModelProto) -> None:
    analysis = analyze(blocks)
    removable = [g for g in analysis.groups if g.removable]
    assert len(removable) == 3  # the stride-1 blocks with a skip; not the down-sampling one
    for g in removable:
        assert g.size == 24 and g.prunable
        roles = {m.role for m in g.members}
        assert Role.GROUP_ATTR in roles and Role.CONSUMER in roles  # depthwise inside
        assert len(_branch_nodes(analysis, g.id)) == 3


@pytest.mark.parametrize("which", [(0,), (1,), (0, 1, 2)])
def test_removing_inverted_residual_branches_is_exact(
    blocks: onnx.ModelProto, which: tuple[int, ...]
) -> None:
    analysis = analyze(blocks)
    removable = [g.id for g in analysis.groups if g.removable]
    plan = PrunePlan({removable[i]: () for i in which})
    child = _check_removal(blocks, analysis, plan)
    names = {n.name for n in child.graph.node}
    for i in which:
        assert not _branch_nodes(analysis, removable[i]) & names
    for op, fewer in (("Conv", 3), ("Add", 1)):  # the bias of a removed block is folded
        count = sum(n.op_type == op for n in child.graph.node)
        assert count == sum(n.op_type == op for n in blocks.graph.node) - fewer * len(which)


def test_depth_clusters_drop_inverted_residual_blocks(blocks: onnx.ModelProto) -> None:
    analysis = analyze(blocks)
    weights = model_weights(blocks)
    cfg = EncodingConfig(environment=MacBudget(0.5), depth=True, synapse_level=False)
    genome = encode(analysis, weights, cfg)
    assert sorted(genome.branch_p) == sorted(g.id for g in analysis.groups if g.removable)
    emptied_any = False
    for seed in range(16):
        off = sample(genome, np.random.default_rng(seed))
        assert off.realized_cost <= off.budget
        if any(len(kept) == 0 for kept in off.plan.keep.values()):
            emptied_any = True
            _check_removal(blocks, analysis, off.plan)
    assert emptied_any


def _hand_built(bias: float, mult: int = 1, out_pad: int = 0) -> onnx.ModelProto:
    """x -> conv0 -> Clip -> [expand -> Clip -> depthwise (multiplier ``mult``) -> Clip ->
    project(bias)] + skip -> conv_out (1x1, ``out_pad`` zero padding), built with onnx.helper
    (Clip bounds as initializers)."""
    rng = np.random.default_rng(0)
    c, hidden = 4, 8

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    def scalar(name: str, v: float) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(v, np.float32), name)

    inits = [
        w("w0", c, 3, 3, 3), w("we", hidden, c, 1, 1), w("be", hidden),
        w("wd", hidden * mult, 1, 3, 3), w("bd", hidden * mult), w("wp", c, hidden * mult, 1, 1),
        numpy_helper.from_array(np.full(c, bias, np.float32), "bp"), w("wo", 3, c, 1, 1),
        scalar("lo", 0.0), scalar("hi", 6.0),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        helper.make_node("Clip", ["c0", "lo", "hi"], ["r0"], name="clip0"),
        helper.make_node("Conv", ["r0", "we", "be"], ["e"], name="expand"),
        helper.make_node("Clip", ["e", "lo", "hi"], ["re"], name="clip_e"),
        helper.make_node(
            "Conv", ["re", "wd", "bd"], ["d"], pads=[1, 1, 1, 1], group=hidden, name="depthwise"
        ),
        helper.make_node("Clip", ["d", "lo", "hi"], ["rd"], name="clip_d"),
        helper.make_node("Conv", ["rd", "wp", "bp"], ["p"], name="project"),
        helper.make_node("Add", ["r0", "p"], ["s"], name="add"),
        helper.make_node("Conv", ["s", "wo"], ["y"], pads=[out_pad] * 4, name="conv_out"),
    ]
    side = 6 + 2 * out_pad
    graph = helper.make_graph(
        nodes, "inverted_residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, side, side])], inits,
    )  # fmt: skip
    return make_model(graph)


@pytest.mark.parametrize(("bias", "out_pad"), [(0.0, 0), (0.5, 0), (0.5, 1)])
def test_hand_built_inverted_residual(bias: float, out_pad: int) -> None:
    model = _hand_built(bias, out_pad=out_pad)
    analysis = analyze(model)
    (branch,) = [g for g in analysis.groups if g.removable]
    assert _branch_nodes(analysis, branch.id) == {"expand", "depthwise", "project"}
    child = _check_removal(model, analysis, PrunePlan({branch.id: ()}))
    ops = [n.op_type for n in child.graph.node]
    if bias == 0.0 or not out_pad:  # exact: x + 0 = x; conv(x + b) = conv(x) + W b (no pad)
        assert ops == ["Conv", "Clip", "Conv"]
    else:  # a zero-padded border would see b: the branch's constant bias is still added
        assert ops == ["Conv", "Clip", "Add", "Conv"]


def test_depthwise_multiplier_is_no_removable_branch() -> None:
    """A depthwise conv with channel multiplier 2 reads its group in blocks: kept conservative."""
    model = _hand_built(0.5, mult=2)
    analysis = analyze(model)
    assert not any(g.removable for g in analysis.groups)
    onnx.checker.check_model(model, full_check=True)
