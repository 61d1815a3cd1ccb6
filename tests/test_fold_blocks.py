"""Removed channels' constants fold exactly through MobileOne / PP-LCNetV3-style blocks.

The patterns of the PP-OCRv4 recognizer (Paddle2ONNX export): a *scalar* learnable affine
``Mul(scale, x)`` / ``Add(x, shift)`` with the constant as the **first** operand of the Mul,
HardSwish decomposed into ``x * Clip(x + 3, 0, 6) / 6`` (or ``x * HardSigmoid(x)``),
squeeze-excite blocks (the pooled channel feeds the squeeze FC; the excite FC is a producer
of the same channels) and reparameterized branches (3x3, 1x1 and identity-BN summed by Add).
The invariant: the pruned graph equals the ancestor with the removed filters' weights zeroed.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_same, make_model, run, zero_producers
from onnx import TensorProto, helper, numpy_helper

from evonnx.pruning.analysis import analyze
from evonnx.pruning.plan import PrunePlan
from evonnx.pruning.surgery import apply_plan_report

C = 8
SIDE = 6


def _t(name: str, arr: np.ndarray | float | list[float]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr, np.float32), name)


def _affine(x: str, out: str, tag: str, scale: float, shift: float) -> tuple[list, list]:
    """Paddle's learnable affine block: ``Add(Mul(scale, x), shift)`` with [1]-shaped
    constants, the scale as the first operand."""
    nodes = [
        helper.make_node("Mul", [f"{tag}_a", x], [f"{tag}_m"]),
        helper.make_node("Add", [f"{tag}_m", f"{tag}_b"], [out]),
    ]
    return nodes, [_t(f"{tag}_a", [scale]), _t(f"{tag}_b", [shift])]


def _hardswish(x: str, out: str, tag: str, style: str) -> tuple[list, list]:
    """HardSwish from basic ops: ``x * Clip(x + 3, 0, 6) / 6`` or ``x * HardSigmoid(x)``."""
    if style == "hardsigmoid":
        return [
            helper.make_node("HardSigmoid", [x], [f"{tag}_hs"], alpha=1 / 6, beta=0.5),
            helper.make_node("Mul", [x, f"{tag}_hs"], [out]),
        ], []
    nodes = [
        helper.make_node("Add", [x, f"{tag}_3"], [f"{tag}_p3"]),
        helper.make_node("Clip", [f"{tag}_p3", f"{tag}_0", f"{tag}_6"], [f"{tag}_cl"]),
        helper.make_node("Mul", [x, f"{tag}_cl"], [f"{tag}_mx"]),
        helper.make_node("Div", [f"{tag}_mx", f"{tag}_d6"], [out]),
    ]
    inits = [
        _t(f"{tag}_3", [3.0]),
        _t(f"{tag}_0", 0.0),
        _t(f"{tag}_6", 6.0),
        _t(f"{tag}_d6", [6.0]),
    ]
    return nodes, inits


def _finish(nodes: list, inits: list, out_shape: list[int]) -> onnx.ModelProto:
    for i, n in enumerate(nodes):
        n.name = f"n{i}_{n.op_type}"
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, SIDE, SIDE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        inits,
    )
    return make_model(graph)


def lcnet_block(style: str, seed: int = 0) -> onnx.ModelProto:
    """x -> Conv(3->C, bias) -> affine -> HardSwish -> affine -> depthwise 3x3 (bias) ->
    affine -> HardSwish -> affine -> Conv 1x1 (C->4, bias): the output."""
    rng = np.random.default_rng(seed)
    inits = [
        _t("w1", rng.normal(size=(C, 3, 1, 1))),
        _t("b1", rng.uniform(-3, 3, C)),
        _t("wd", rng.normal(size=(C, 1, 3, 3))),
        _t("bd", rng.uniform(-2, 2, C)),
        _t("w2", rng.normal(size=(4, C, 1, 1))),
        _t("b2", rng.normal(size=4)),
    ]
    parts = [
        ([helper.make_node("Conv", ["x", "w1", "b1"], ["c1"])], []),
        _affine("c1", "l1", "la", 1.38, 0.59),
        _hardswish("l1", "h1", "ha", style),
        _affine("h1", "l2", "lb", 0.17, 0.3),
        ([helper.make_node("Conv", ["l2", "wd", "bd"], ["d1"], group=C)], []),
        _affine("d1", "l3", "lc", 2.1, 1.05),
        _hardswish("l3", "h2", "hb", style),
        _affine("h2", "l4", "ld", 0.41, -0.28),
        ([helper.make_node("Conv", ["l4", "w2", "b2"], ["y"])], []),
    ]
    nodes = [n for ns, _ in parts for n in ns]
    inits += [i for _, ins in parts for i in ins]
    return _finish(nodes, inits, [1, 4, SIDE - 2, SIDE - 2])


def se_block(seed: int = 0) -> onnx.ModelProto:
    """x -> Conv(3->C, bias) -> affine -> HardSwish -> [GAP -> Conv(C->2) -> Relu ->
    Conv(2->C) -> HardSigmoid] -> Mul -> Conv 1x1 (C->4): the output."""
    rng = np.random.default_rng(seed)
    inits = [
        _t("w1", rng.normal(size=(C, 3, 1, 1))),
        _t("b1", rng.uniform(-3, 3, C)),
        _t("ws", rng.normal(size=(2, C, 1, 1))),
        _t("bs", rng.normal(size=2)),
        _t("we", rng.normal(size=(C, 2, 1, 1))),
        _t("be", rng.normal(size=C)),
        _t("w2", rng.normal(size=(4, C, 1, 1))),
    ]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"])]
    for n, i in (_affine("c1", "l1", "la", 1.3, 0.5), _hardswish("l1", "h1", "ha", "clip")):
        nodes += n
        inits += i
    nodes += [
        helper.make_node("GlobalAveragePool", ["h1"], ["gp"]),
        helper.make_node("Conv", ["gp", "ws", "bs"], ["sq"]),
        helper.make_node("Relu", ["sq"], ["sr"]),
        helper.make_node("Conv", ["sr", "we", "be"], ["ex"]),
        helper.make_node("HardSigmoid", ["ex"], ["gate"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["h1", "gate"], ["se"]),
        helper.make_node("Conv", ["se", "w2"], ["y"]),
    ]
    return _finish(nodes, inits, [1, 4, SIDE, SIDE])


def reparam_block(seed: int = 0) -> onnx.ModelProto:
    """MobileOne before reparameterization: x -> Conv(3->C) -> [Conv 3x3 (pad 1, bias) +
    Conv 1x1 (bias) + BN(identity)] -> affine -> HardSwish -> Conv 1x1 (C->4): the output."""
    rng = np.random.default_rng(seed)
    inits = [
        _t("w0", rng.normal(size=(C, 3, 1, 1))),
        _t("b0", rng.uniform(-1, 1, C)),
        _t("w3", rng.normal(size=(C, C, 3, 3)) * 0.3),
        _t("b3", rng.uniform(-1, 1, C)),
        _t("w1", rng.normal(size=(C, C, 1, 1))),
        _t("b1", rng.uniform(-1, 1, C)),
        _t("s", rng.uniform(0.5, 1.5, C)),
        _t("beta", rng.uniform(-2, 2, C)),
        _t("mean", rng.normal(size=C) * 0.3),
        _t("var", rng.uniform(0.5, 1.5, C)),
        _t("w2", rng.normal(size=(4, C, 1, 1))),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"]),
        helper.make_node("Conv", ["c0", "w3", "b3"], ["k3"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c0", "w1", "b1"], ["k1"]),
        helper.make_node("BatchNormalization", ["c0", "s", "beta", "mean", "var"], ["id"]),
        helper.make_node("Add", ["k3", "k1"], ["s1"]),
        helper.make_node("Add", ["s1", "id"], ["s2"]),
    ]
    for n, i in (_affine("s2", "l1", "la", 1.2, 0.4), _hardswish("l1", "h1", "ha", "clip")):
        nodes += n
        inits += i
    nodes.append(helper.make_node("Conv", ["h1", "w2"], ["y"]))
    return _finish(nodes, inits, [1, 4, SIDE, SIDE])


def _check(model: onnx.ModelProto, weight: str, keep: tuple[int, ...], folded: int) -> None:
    analysis = analyze(model)
    (g,) = [g for g in analysis.prunable_groups if any(m.name == weight for m in g.producers)]
    plan = PrunePlan({g.id: keep})
    pruned, folds = apply_plan_report(model, analysis, plan, exact_border=True)
    onnx.checker.check_model(pruned, full_check=True)
    assert folds.exact, folds.summary()
    assert folds.summary()["unknown_channels"] == 0
    assert len(folds.layers) == folded
    assert all(np.any(f.delta) for f in folds.layers)  # the removed channels carried something
    feed = {"x": np.random.default_rng(1).normal(size=(1, 3, SIDE, SIDE)).astype(np.float32)}
    ref = run(zero_producers(model, analysis, plan), feed)
    assert_same(ref, run(pruned, feed))
    assert not np.allclose(ref[0], run(model, feed)[0])  # zeroing the filters mattered


@pytest.mark.parametrize("style", ["clip", "hardsigmoid"])
def test_fold_through_scalar_affine_and_decomposed_hardswish(style: str) -> None:
    # w1's channels run through the depthwise conv (a producer of the same group) to w2
    _check(lcnet_block(style), "w1", (0, 2, 5, 7), folded=1)


def test_fold_into_squeeze_excite_and_its_reader() -> None:
    # removed channels reach the squeeze FC (through the pool) and the block's reader
    _check(se_block(), "w1", (1, 3, 4, 6), folded=2)


def test_fold_through_reparameterized_branches() -> None:
    # the identity-BN branch ties w0, w3 and w1 into one group: the removed channels' 3x3,
    # 1x1 and BN branches are all constants, summed by Add; w3, w1 and w2 read them
    _check(reparam_block(), "w3", (0, 1, 4, 6, 7), folded=3)
