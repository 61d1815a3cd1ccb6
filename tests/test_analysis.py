"""Channel-dependency analysis: coupling on the zoo and every frozen case."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import assert_same, check_function_kept, random_plan, run
from onnx import numpy_helper
from zoo import build_case, input_feed

from evonnx.pruning.analysis import RULES, analyze
from evonnx.pruning.groups import Analysis, ChannelGroup, Role
from evonnx.pruning.surgery import apply_plan


def _group_of(analysis: Analysis, weight: str, role: Role = Role.PRODUCER) -> ChannelGroup:
    return next(
        g for g in analysis.groups if any(m.name == weight and m.role is role for m in g.members)
    )


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _parse(text: str, inits: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = onnx.parser.parse_model(text)
    for name, arr in inits.items():
        model.graph.initializer.append(numpy_helper.from_array(arr, name))
    onnx.checker.check_model(model)
    return model


def _rand(*shape: int) -> np.ndarray:
    return np.random.default_rng(sum(shape)).normal(size=shape).astype(np.float32)


HEAD = '<ir_version: 8, opset_import: ["" : 17]>'


def test_lenet_flatten_block(zoo_dir: object) -> None:
    model = build_case("lenet5@legacy")
    a = analyze(model)
    conv2 = next(
        lay
        for lay in a.layers
        if lay.op_type == "Conv" and lay.in_groups and a.group(lay.in_groups[0]).prunable
    )
    g = a.group(conv2.out_group or -1)
    fc_consumer = next(m for m in g.by_role(Role.CONSUMER))
    assert g.size == 16 and fc_consumer.block == 25 and fc_consumer.axis == 1


def test_resnet_residual_coupling() -> None:
    model = build_case("resnet@legacy")
    a = analyze(model)
    # stem conv and the second conv of the first basic block write the same channels
    stem = a.layers[0]
    g = a.group(stem.out_group or -1)
    assert len(g.producers) == 2 and g.prunable
    # the downsample conv and conv2 of block 2 plus the bottleneck output are coupled
    assert max(len(gr.producers) for gr in a.groups) == 3


def test_se_excite_coupled_with_feature_map() -> None:
    a = analyze(build_case("se@dynamo"))
    big = [g for g in a.prunable_groups if len(g.producers) == 2]
    assert len(big) == 2  # conv + fc2 (FC-style SE), conv_se + se2 (1x1-conv SE)
    for g in big:
        assert g.size == 16


def test_concat_offsets() -> None:
    a = analyze(build_case("inception@legacy"))
    mix = next(lay for lay in a.layers if len(lay.in_groups) == 4)
    starts = sorted(
        m.start
        for gid in mix.in_groups
        for m in a.group(gid).by_role(Role.CONSUMER)
        if m.node == mix.node
    )
    assert starts == [0, 8, 12, 18]


def test_depthwise_ties_input_and_output() -> None:
    a = analyze(build_case("mobilenetv2@dynamo"))
    g = next(g for g in a.groups if g.by_role(Role.GROUP_ATTR))
    assert g.prunable and g.size == 24 and len(g.producers) == 2


def test_every_layer_reported(zoo_case: tuple[str, onnx.ModelProto]) -> None:
    _, model = zoo_case
    a = analyze(model)
    weights = {
        n.input[1]
        for n in model.graph.node
        if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")
    }
    assert {lay.weight for lay in a.layers} == weights
    assert all(lay.macs > 0 for lay in a.layers)


def test_analysis_is_pure(zoo_case: tuple[str, onnx.ModelProto]) -> None:
    _, model = zoo_case
    before = model.SerializeToString()
    a1, a2 = analyze(model), analyze(model)
    assert model.SerializeToString() == before
    assert a1 == a2


# --------------------------------------------------------------------------- frozen cases


def _two_convs(
    middle: str,
    extra_inits: dict[str, np.ndarray] | None = None,
    mid_shape: str = "float[1, 8, 6, 6]",
) -> onnx.ModelProto:
    text = f"""{HEAD}
    g (float[1, 3, 6, 6] x) => (float[1, 4, 6, 6] y) {{
        a = Conv <pads = [1, 1, 1, 1]> (x, w1)
        {middle}
        y = Conv (m, w2)
    }}"""
    inits = {"w1": _rand(8, 3, 3, 3), "w2": _rand(4, 8, 1, 1), **(extra_inits or {})}
    return _parse(text, inits)


FROZEN_CASES = {
    "unknown op": ("m = LRN <size = 3> (a)", {}, "unsupported op LRN"),
    "custom domain": ("m = Relu (a)", {}, None),
    "softmax over channels": ("m = Softmax <axis = 1> (a)", {}, "normalizes over the channel"),
    "reduce over channels": (
        "r = ReduceMean <axes = [1], keepdims = 1> (a)\n m = Mul (a, r)",
        {},
        "channel",
    ),
    "pad on channels": (
        "m0 = Pad (a, pads)\n m = Slice (m0, st, en, ax)",
        {
            "pads": np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64),
            "st": np.array([1], np.int64),
            "en": np.array([9], np.int64),
            "ax": np.array([1], np.int64),
        },
        "pads the channel axis",
    ),
    "split on channels by implicit sizes": (
        "s1, s2 = Split <axis = 1> (a)\n m = Concat <axis = 1> (s2, s1)",
        {},
        "splits the channel axis by implicit sizes",
    ),
    "channel shuffle reshape": (
        "r = Reshape (a, s1)\n t = Transpose <perm = [0, 2, 1, 3, 4]> (r)\n m = Reshape (t, s2)",
        {"s1": np.array([1, 2, 4, 6, 6], np.int64), "s2": np.array([1, 8, 6, 6], np.int64)},
        "reshapes the channel axis",
    ),
    "maxpool indices used": (
        "p, i = MaxPool <kernel_shape = [1, 1]> (a)\n f = Cast <to = 1> (i)\n m = Add (p, f)",
        {},
        "indices",
    ),
    "resize over channels": (
        'm = Resize <mode = "nearest"> (a, , sc)',
        {"sc": np.array([1, 1, 1, 1], np.float32)},
        None,
    ),
}


@pytest.mark.parametrize(
    "case", [k for k in FROZEN_CASES if k not in ("custom domain", "resize over channels")]
)
def test_frozen_reason(case: str) -> None:
    middle, inits, reason = FROZEN_CASES[case]
    model = _two_convs(middle, inits)
    a = analyze(model)
    g = _group_of(a, "w1")
    assert not g.prunable
    assert reason is not None and reason in (g.frozen or "")
    assert RULES  # registry is populated


def test_custom_domain_op_freezes() -> None:
    text = """<ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
    g (float[1, 3, 6, 6] x) => (float[1, 4, 6, 6] y) {
        a = Conv <pads = [1, 1, 1, 1]> (x, w1)
        m = com.example.Mystery (a)
        y = Conv (m, w2)
    }"""
    model = onnx.parser.parse_model(text)
    for name, arr in {"w1": _rand(8, 3, 3, 3), "w2": _rand(4, 8, 1, 1)}.items():
        model.graph.initializer.append(numpy_helper.from_array(arr, name))
    a = analyze(model)
    assert "unsupported op Mystery" in (_group_of(a, "w1").frozen or "")


def test_resize_with_unit_channel_scale_passes() -> None:
    middle, inits, _ = FROZEN_CASES["resize over channels"]
    a = analyze(_two_convs(middle, inits))
    assert _group_of(a, "w1").prunable


def test_resize_scaling_channels_freezes() -> None:
    text = f"""{HEAD}
    g (float[1, 3, 6, 6] x) => (float[1, 4, 6, 6] y) {{
        a = Conv <pads = [1, 1, 1, 1]> (x, w1)
        m = Resize <mode = "nearest"> (a, , sc)
        y = Conv (m, w2)
    }}"""
    model = onnx.parser.parse_model(text)
    for name, arr in {
        "w1": _rand(4, 3, 3, 3),
        "w2": _rand(4, 8, 1, 1),
        "sc": np.array([1, 2, 1, 1], np.float32),
    }.items():
        model.graph.initializer.append(numpy_helper.from_array(arr, name))
    a = analyze(model)
    assert "rescales the channel axis" in (_group_of(a, "w1").frozen or "")


def test_grouped_conv_freezes() -> None:
    text = f"""{HEAD}
    g (float[1, 3, 6, 6] x) => (float[1, 4, 6, 6] y) {{
        a = Conv (x, w1)
        m = Conv <group = 2> (a, wg)
        y = Conv (m, w2)
    }}"""
    model = _parse(
        text, {"w1": _rand(8, 3, 1, 1), "wg": _rand(8, 4, 1, 1), "w2": _rand(4, 8, 1, 1)}
    )
    a = analyze(model)
    assert "grouped conv" in (_group_of(a, "w1").frozen or "")
    assert "grouped conv" in (_group_of(a, "wg").frozen or "")


def test_shared_weight_freezes() -> None:
    text = f"""{HEAD}
    g (float[1, 8, 6, 6] x) => (float[1, 4, 6, 6] y) {{
        a = Conv (x, w1)
        b = Conv (a, w1)
        y = Conv (b, w2)
    }}"""
    model = _parse(text, {"w1": _rand(8, 8, 1, 1), "w2": _rand(4, 8, 1, 1)})
    a = analyze(model)
    assert "shared" in (_group_of(a, "w1").frozen or "")


def test_non_constant_weight_freezes() -> None:
    text = f"""{HEAD}
    g (float[1, 3, 6, 6] x, float[8, 3, 1, 1] w) => (float[1, 4, 6, 6] y) {{
        a = Conv (x, w1)
        b = Relu (a)
        m = Conv (x, w)
        s = Add (b, m)
        y = Conv (s, w2)
    }}"""
    model = _parse(text, {"w1": _rand(8, 3, 1, 1), "w2": _rand(4, 8, 1, 1)})
    a = analyze(model)
    assert "not a constant" in (_group_of(a, "w1").frozen or "")


def test_output_and_input_groups_frozen() -> None:
    model = _two_convs("m = Relu (a)")
    a = analyze(model)
    assert "graph output" in (_group_of(a, "w2").frozen or "")
    assert "input channels" in (_group_of(a, "w1", Role.CONSUMER).frozen or "")
    assert _group_of(a, "w1").prunable


def test_frozen_groups_survive_pruning() -> None:
    model = _two_convs("m = LRN <size = 3> (a)")
    a = analyze(model)
    assert not a.prunable_groups
    pruned = apply_plan(model, a, random_plan(a, 0.5, np.random.default_rng(0)))
    assert _weights(pruned)["w1"].shape == (8, 3, 3, 3)
    feed = input_feed(model)
    assert_same(run(model, feed), run(pruned, feed))


def test_dynamic_batch_legacy_export_reshape() -> None:
    import io
    import sys
    import warnings

    import torch

    sys.path.insert(0, "tests")
    from zoo import VGGish

    torch.manual_seed(0)
    net = VGGish().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(2, 3, 8, 8),),
            buf,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    model = onnx.load_from_string(buf.getvalue())
    a = analyze(model)
    assert len(a.prunable_groups) == 4
    plan = random_plan(a, 0.5, np.random.default_rng(1))
    feed = {"x": np.random.default_rng(0).normal(size=(5, 3, 8, 8)).astype(np.float32)}
    check_function_kept(model, a, plan, feed)


def test_resize_sizes_rewritten() -> None:
    text = f"""{HEAD}
    g (float[1, 3, 6, 6] x) => (float[1, 4, 12, 12] y) {{
        a = Conv <pads = [1, 1, 1, 1]> (x, w1)
        m = Resize <mode = "nearest"> (a, , , sz)
        y = Conv (m, w2)
    }}"""
    model = _parse(text, {"w1": _rand(8, 3, 3, 3), "w2": _rand(4, 8, 1, 1),
                          "sz": np.array([1, 8, 12, 12], np.int64)})  # fmt: skip
    a = analyze(model)
    g = _group_of(a, "w1")
    assert g.prunable and any(m.role is Role.SHAPE and m.name == "sz" for m in g.members)
    plan = random_plan(a, 0.5, np.random.default_rng(0))
    pruned = apply_plan(model, a, plan)
    onnx.checker.check_model(pruned, full_check=True)
    assert _weights(pruned)["sz"].tolist() == [1, 4, 12, 12]
    feed = input_feed(model)
    check_function_kept(model, a, plan, feed)


def test_tf2onnx_style_nhwc_graph() -> None:
    """NHWC input transposed around convs, mean over H and W, MatMul plus a separate bias Add."""
    text = """<ir_version: 8, opset_import: ["" : 13]>
    g (float[1, 6, 6, 3] x) => (float[1, 5] y) {
        t = Transpose <perm = [0, 3, 1, 2]> (x)
        c = Conv <pads = [1, 1, 1, 1]> (t, w1, b1)
        r = Relu (c)
        c2 = Conv (r, w2)
        h = Transpose <perm = [0, 2, 3, 1]> (c2)
        m = ReduceMean <axes = [1, 2], keepdims = 0> (h)
        f = MatMul (m, wf)
        s = Add (f, bf)
        a = Relu (s)
        y = MatMul (a, wo)
    }"""
    model = _parse(text, {"w1": _rand(8, 3, 3, 3), "b1": _rand(8), "w2": _rand(6, 8, 1, 1),
                          "wf": _rand(6, 7), "bf": _rand(7), "wo": _rand(7, 5)})  # fmt: skip
    a = analyze(model)
    for w in ("w1", "w2", "wf"):
        assert _group_of(a, w).prunable, _group_of(a, w).frozen
    assert any(m.role is Role.PARAM and m.name == "bf" for m in _group_of(a, "wf").members)
    plan = random_plan(a, 0.5, np.random.default_rng(2))
    pruned = apply_plan(model, a, plan)
    onnx.checker.check_model(pruned, full_check=True)
    assert _weights(pruned)["bf"].shape == (4,)
    feed = input_feed(model)
    check_function_kept(model, a, plan, feed)
