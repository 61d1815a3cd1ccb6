"""Tests of evonnx.converters: ONNX graph -> torch module -> trained ONNX graph."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from zoo import VGGish, cached_case, input_feed

from evonnx.converters import OnnxModule, mangle_name, to_torch, unmangle_name, write_back
from evonnx.errors import ConversionError

RTOL, ATOL = 1e-4, 1e-5


# ----------------------------------------------------------------------------------- helpers


def run_ort(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feed)]


def run_torch(module: OnnxModule, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    module.eval()
    with torch.no_grad():
        out = module(*[torch.from_numpy(feed[n]) for n in module.input_names])
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in outs]


def assert_matches_ort(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> None:
    expected = run_ort(model, feed)
    actual = run_torch(to_torch(model), feed)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert a.shape == e.shape
        if e.dtype.kind == "f":
            np.testing.assert_allclose(a, e, rtol=RTOL, atol=ATOL)
        else:
            np.testing.assert_array_equal(a, e)


def parse(text: str, inits: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """Parse an ONNX text graph, drop output shapes and add initializers."""
    model = onnx.parser.parse_model(text)
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    for name, arr in (inits or {}).items():
        model.graph.initializer.append(numpy_helper.from_array(arr, name))
    return model


def header(opset: int = 17) -> str:
    return f'<ir_version: {9 if opset >= 19 else 8}, opset_import: ["" : {opset}]>'


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


# ------------------------------------------------------------------------------ zoo models


def test_zoo_eval_matches_onnxruntime(zoo_case: tuple[str, onnx.ModelProto]) -> None:
    _, model = zoo_case
    assert_matches_ort(model, input_feed(model))


def test_zoo_parameters_keyed_by_onnx_names(zoo_case: tuple[str, onnx.ModelProto]) -> None:
    _, model = zoo_case
    module = to_torch(model)
    inits = {t.name for t in model.graph.initializer}
    params, buffers = module.onnx_parameters(), module.onnx_buffers()
    assert set(params) <= inits and not set(params) & set(buffers)
    assert set(params) | (set(buffers) & inits) == inits
    assert {n for n, p in module.named_parameters()} == {mangle_name(n) for n in params}
    for name in module.weight_names():
        assert name in params
    for name, param in params.items():
        assert param.requires_grad and param.is_floating_point()
        assert unmangle_name(mangle_name(name)) == name


TRAIN_CASES = [
    "lenet5@dynamo",
    "resnet@legacy",
    "mobilenetv2@legacy",
    "se@dynamo",
    "helper_convnet",
    "helper_residual_concat",
    "parser_depthwise_convtranspose",
]


def _single(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    assert isinstance(out, torch.Tensor)
    return out


def _loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.dtype == torch.int64:
        return torch.nn.functional.cross_entropy(out, target)
    return torch.nn.functional.mse_loss(out, target)


def _target(out: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if out.dim() == 2 and out.shape[1] > 2:
        return torch.randint(0, out.shape[1], (out.shape[0],), generator=g)
    return torch.randn(out.shape, generator=g)


def _train(
    module: OnnxModule, inputs: list[torch.Tensor], steps: int = 6, weight_decay: float = 0.0
) -> list[float]:
    module.train()
    opt = torch.optim.SGD(module.parameters(), lr=0.05, momentum=0.9, weight_decay=weight_decay)
    with torch.no_grad():
        target = _target(_single(module.eval()(*inputs)))
    module.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = _loss(_single(module(*inputs)), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 0.5)
        opt.step()
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_training_lowers_loss_and_writes_back(case: str, zoo_dir: Path) -> None:
    model = cached_case(case, zoo_dir)
    original = model.SerializeToString()
    feed = input_feed(model)
    module = to_torch(model)
    before = {k: v.detach().clone() for k, v in module.onnx_parameters().items()}
    losses = _train(module, [torch.from_numpy(feed[n]) for n in module.input_names])
    assert losses[-1] < losses[0], losses
    assert any(not torch.equal(before[k], p) for k, p in module.onnx_parameters().items())

    trained = write_back(model, module)
    assert model.SerializeToString() == original  # input untouched
    onnx.checker.check_model(trained, full_check=True)
    for old, new in zip(model.graph.initializer, trained.graph.initializer, strict=True):
        assert (old.name, old.data_type, list(old.dims)) == (
            new.name,
            new.data_type,
            list(new.dims),
        )
    for got, want in zip(run_ort(trained, feed), run_torch(module, feed), strict=True):
        np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------- masks


def _sparsify(model: onnx.ModelProto, fraction: float = 0.5) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    rng = np.random.default_rng(0)
    for init in out.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.ndim >= 2:
            arr = np.where(rng.random(arr.shape) < fraction, 0.0, arr).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    return out


@pytest.mark.parametrize("case", ["resnet@legacy", "helper_residual_concat"])
def test_masks_keep_zeros_during_training(case: str, zoo_dir: Path) -> None:
    model = _sparsify(cached_case(case, zoo_dir))
    feed = input_feed(model)
    module = to_torch(model, freeze_zeros=True)
    masks = module.masks
    assert masks and set(masks) <= set(module.weight_names())
    params = module.onnx_parameters()
    before = {k: params[k].detach().clone() for k in masks}
    # Hooks alone keep zeros under SGD with momentum and weight decay.
    _train(
        module, [torch.from_numpy(feed[n]) for n in module.input_names], steps=4, weight_decay=0.1
    )
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0), name
        assert not torch.equal(params[name][mask], before[name][mask]), name
    # apply_masks() undoes changes made behind the hooks' back.
    with torch.no_grad():
        for name in masks:
            params[name].add_(1.0)
    module.apply_masks()
    for name, mask in masks.items():
        assert torch.all(params[name][~mask] == 0)
    trained = write_back(model, module)
    inits = {t.name: numpy_helper.to_array(t) for t in trained.graph.initializer}
    for name, mask in masks.items():
        assert np.all(inits[name][~mask.numpy()] == 0)


def test_freeze_zeros_twice_rerecords_masks() -> None:
    model = _sparsify(
        parse(
            f"""{header()}
        g (float[2, 4] x) => (float y) {{ y = MatMul(x, w) }}""",
            {"w": rand(4, 3)},
        )
    )
    module = to_torch(model)
    assert module.masks == {}
    first = module.freeze_zeros()
    second = module.freeze_zeros()
    assert torch.equal(first["w"], second["w"])
    assert len(module._hooks) == 1


# ------------------------------------------------------------------------ batchnorm/dropout


def test_batchnorm_train_updates_running_stats_and_writes_back() -> None:
    model = parse(
        f"""{header()}
        g (float[4, 3, 5, 5] x) => (float y) {{
            y = BatchNormalization <momentum = 0.7, epsilon = 0.001> (x, s, b, m, v) }}""",
        {
            "s": f32(1.0, 2.0, 0.5),
            "b": f32(0.1, 0.2, 0.3),
            "m": f32(0.0, 1.0, -1.0),
            "v": f32(1.0, 2.0, 0.5),
        },
    )
    module = to_torch(model)
    assert set(module.onnx_buffers()) == {"m", "v"}
    assert set(module.onnx_parameters()) == {"s", "b"}
    x = rand(4, 3, 5, 5, seed=3) * 2 + 1
    module.train()
    y = module(torch.from_numpy(x))
    assert isinstance(y, torch.Tensor)
    batch_mean = x.mean(axis=(0, 2, 3))
    batch_var = x.var(axis=(0, 2, 3), ddof=0)
    np.testing.assert_allclose(y.detach().numpy().mean(axis=(0, 2, 3)), [0.1, 0.2, 0.3], atol=1e-5)
    n = x.size / 3
    stats = module.onnx_buffers()
    np.testing.assert_allclose(
        stats["m"].numpy(), 0.7 * np.array([0.0, 1.0, -1.0]) + 0.3 * batch_mean, rtol=1e-5
    )
    np.testing.assert_allclose(
        stats["v"].numpy(),
        0.7 * np.array([1.0, 2.0, 0.5]) + 0.3 * batch_var * n / (n - 1),
        rtol=1e-5,
    )
    trained = write_back(model, module)
    inits = {t.name: numpy_helper.to_array(t) for t in trained.graph.initializer}
    np.testing.assert_allclose(inits["m"], stats["m"].numpy())
    np.testing.assert_allclose(inits["v"], stats["v"].numpy())
    feed = {"x": x}
    np.testing.assert_allclose(
        run_ort(trained, feed)[0], run_torch(module, feed)[0], rtol=RTOL, atol=ATOL
    )


def test_dropout_active_only_in_train_mode() -> None:
    model = parse(f"""{header()}
        g (float[64, 64] x) => (float y) {{
            r = Constant <value = float {{0.5}}> ()
            y = Dropout(x, r) }}""")
    module = to_torch(model)
    x = torch.ones(64, 64)
    assert torch.equal(_single(module.eval()(x)), x)
    y = module.train()(x)
    assert isinstance(y, torch.Tensor)
    zeros = float((y == 0).float().mean())
    assert 0.35 < zeros < 0.65
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 2.0))


# ---------------------------------------------------------------------------------- errors


def test_unsupported_op_raises_at_construction() -> None:
    model = parse(f"""{header()}
        g (float[1, 4] x) => (float y) {{ y = Det(x) }}""")
    model.graph.node[0].name = "my_det"
    with pytest.raises(ConversionError, match=r"Det.*my_det"):
        to_torch(model)
    custom = helper.make_model(
        helper.make_graph(
            [helper.make_node("Frobnicate", ["x"], ["y"], name="frob", domain="com.example")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        ),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
        ir_version=8,
    )
    with pytest.raises(ConversionError, match=r"Frobnicate.*frob"):
        to_torch(custom)


def test_unsupported_attribute_raises_at_construction() -> None:
    model = parse(
        f"""{header()}
        g (float[1, 1, 4, 4] x) => (float y) {{
            y = Resize <mode = "cubic"> (x, , sc) }}""",
        {"sc": f32(1, 1, 2, 2)},
    )
    with pytest.raises(ConversionError, match=r"Resize.*cubic"):
        to_torch(model)


def test_wrong_input_count_raises() -> None:
    module = to_torch(parse(f"""{header()} g (float[1] x) => (float y) {{ y = Relu(x) }}"""))
    with pytest.raises(ConversionError, match="expected 1 inputs"):
        module(torch.ones(1), torch.ones(1))


# ------------------------------------------------------------------------- dynamic batch


def test_legacy_export_with_dynamic_batch() -> None:
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
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
        )
    model = onnx.load_from_string(buf.getvalue())
    assert {"Shape", "Gather", "Unsqueeze", "Concat"} <= {n.op_type for n in model.graph.node}
    module = to_torch(model)
    for batch in (1, 4):
        x = rand(batch, 3, 8, 8, seed=batch)
        got = run_torch(module, {"x": x})[0]
        assert got.shape == (batch, 5)
        np.testing.assert_allclose(got, run_ort(model, {"x": x})[0], rtol=RTOL, atol=ATOL)
        with torch.no_grad():
            np.testing.assert_allclose(got, net(torch.from_numpy(x)).numpy(), rtol=RTOL, atol=ATOL)


# -------------------------------------------------------------------------- name mangling


@given(st.lists(st.text(max_size=12), min_size=2, max_size=6, unique=True))
def test_mangle_is_injective_and_valid(names: list[str]) -> None:
    mangled = [mangle_name(n) for n in names]
    assert len(set(mangled)) == len(names)
    for name, attr in zip(names, mangled, strict=True):
        assert attr.isidentifier() and "." not in attr
        assert unmangle_name(attr) == name


# ------------------------------------------------------------------ single-op graphs vs ORT

X4 = "float[1, 3, 6, 7] x"
OP_CASES: dict[str, tuple[str, dict[str, np.ndarray]]] = {
    "resize_linear_scales": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Resize <mode = "linear"> (x, , sc) }}""",
        {"sc": f32(1, 1, 2, 1.5)},
    ),
    "resize_linear_sizes_align": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Resize <mode = "linear", coordinate_transformation_mode = "align_corners">
            (x, , , sz) }}""",
        {"sz": i64(1, 3, 11, 4)},
    ),
    "resize_linear_down_pytorch": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Resize <mode = "linear", coordinate_transformation_mode = "pytorch_half_pixel">
            (x, , sc) }}""",
        {"sc": f32(1, 1, 0.5, 0.6)},
    ),
    "resize_nearest_torch_style": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Resize <mode = "nearest", coordinate_transformation_mode = "asymmetric",
                    nearest_mode = "floor"> (x, , sc) }}""",
        {"sc": f32(1, 1, 2, 3)},
    ),
    "resize_nearest_default": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Resize <mode = "nearest"> (x, , sc) }}""",
        {"sc": f32(1, 1, 1.5, 0.5)},
    ),
    "resize_nearest_sizes_ceil": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Resize <mode = "nearest", nearest_mode = "round_prefer_ceil"> (x, , , sz) }}""",
        {"sz": i64(1, 3, 9, 10)},
    ),
    "pad_reflect": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Pad <mode = "reflect"> (x, p) }}""",
        {"p": i64(0, 0, 2, 1, 0, 0, 1, 3)},
    ),
    "pad_edge": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Pad <mode = "edge"> (x, p) }}""",
        {"p": i64(0, 1, 2, 0, 0, 0, 1, 3)},
    ),
    "pad_constant_value_crop": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Pad (x, p, cv) }}""",
        {"p": i64(0, 0, 2, -1, 0, 0, 1, 3), "cv": f32(1.5)[0]},
    ),
    "split_input": (
        f"""{header()} g ({X4}) => (float a, float b, float c) {{
        a, b, c = Split <axis = 3> (x, s) }}""",
        {"s": i64(2, 4, 1)},
    ),
    "split_num_outputs": (
        f"""{header(18)} g ({X4}) => (float a, float b, float c) {{
        a, b, c = Split <axis = -1, num_outputs = 3> (x) }}""",
        {},
    ),
    "split_equal": (
        f"""{header()} g ({X4}) => (float a, float b) {{
        a, b = Split <axis = 2> (x) }}""",
        {},
    ),
    "slice_steps": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Slice (x, st, en, ax, sp) }}""",
        {"st": i64(-1, 1, 0), "en": i64(-100, 6, 100), "ax": i64(3, 2, 1), "sp": i64(-2, 2, 1)},
    ),
    "transpose": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Transpose <perm = [0, 3, 1, 2]> (x) }}""",
        {},
    ),
    "softmax_axis": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Softmax <axis = 2> (x) }}""",
        {},
    ),
    "softmax_opset11": (
        f"""{header(11)} g ({X4}) => (float y) {{
        y = Softmax <axis = 2> (x) }}""",
        {},
    ),
    "log_softmax": (f"""{header()} g ({X4}) => (float y) {{ y = LogSoftmax (x) }}""", {}),
    "gather": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Gather <axis = 3> (x, i) }}""",
        {"i": np.array([[0, -1], [2, 3]], dtype=np.int64)},
    ),
    "gather_scalar": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Gather <axis = 1> (x, i) }}""",
        {"i": np.array(-2, dtype=np.int64)},
    ),
    "conv_transpose_output_padding": (
        f"""{header()} g ({X4}) => (float y) {{
        y = ConvTranspose <strides = [2, 3], pads = [1, 0, 1, 2], output_padding = [1, 2],
                           group = 1> (x, w, b) }}""",
        {"w": rand(3, 4, 3, 3), "b": rand(4)},
    ),
    "conv_transpose_groups_dilation": (
        f"""{header()} g ({X4}) => (float y) {{
        y = ConvTranspose <strides = [2, 2], pads = [1, 1, 1, 1], dilations = [2, 1],
                           output_padding = [1, 0], group = 3> (x, w) }}""",
        {"w": rand(3, 2, 3, 2)},
    ),
    "conv_transpose_output_shape_same_upper": (
        f"""{header()} g ({X4}) => (float y, float z) {{
        y = ConvTranspose <strides = [2, 2], output_shape = [12, 15], auto_pad = "SAME_UPPER">
            (x, w)
        z = ConvTranspose <strides = [2, 3], auto_pad = "SAME_LOWER"> (x, w) }}""",
        {"w": rand(3, 2, 3, 4)},
    ),
    "avgpool_ceil": (
        f"""{header()} g ({X4}) => (float y, float z) {{
        y = AveragePool <kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1> (x)
        z = AveragePool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1],
                         ceil_mode = 1> (x) }}""",
        {},
    ),
    "conv_same_upper": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Conv <auto_pad = "SAME_UPPER", strides = [2, 2]> (x, w, b) }}""",
        {"w": rand(4, 3, 4, 3), "b": rand(4)},
    ),
    "conv_same_lower": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Conv <auto_pad = "SAME_LOWER", strides = [1, 2]> (x, w) }}""",
        {"w": rand(4, 3, 2, 4)},
    ),
    "conv_asymmetric_pads_groups": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Conv <pads = [0, 1, 2, 0], strides = [1, 2], group = 3> (x, w, b) }}""",
        {"w": rand(6, 1, 3, 3), "b": rand(6)},
    ),
    "conv_valid_1d": (
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3, 9] x) => (float y) { y = Conv <auto_pad = "VALID", strides = [2]> (x, w) }
        """,
        {"w": rand(5, 3, 3)},
    ),
    "maxpool_ceil_pads": (
        f"""{header()} g ({X4}) => (float y) {{
        y = MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1],
                     ceil_mode = 1> (x) }}""",
        {},
    ),
    "maxpool_asym_dilated": (
        f"""{header()} g ({X4}) => (float y) {{
        y = MaxPool <kernel_shape = [2, 3], pads = [0, 2, 1, 0], dilations = [2, 1]> (x) }}""",
        {},
    ),
    "avgpool_include_pad": (
        f"""{header()} g ({X4}) => (float y) {{
        y = AveragePool <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2],
                         count_include_pad = 1> (x) }}""",
        {},
    ),
    "avgpool_exclude_pad_asym": (
        f"""{header()} g ({X4}) => (float y) {{
        y = AveragePool <kernel_shape = [2, 3], pads = [1, 0, 0, 2]> (x) }}""",
        {},
    ),
    "avgpool_same_upper": (
        f"""{header()} g ({X4}) => (float y) {{
        y = AveragePool <kernel_shape = [3, 2], strides = [2, 2], auto_pad = "SAME_UPPER"> (x)
        }}""",
        {},
    ),
    "global_max_pool": (
        f"""{header()} g ({X4}) => (float y) {{
        y = GlobalMaxPool (x) }}""",
        {},
    ),
    "gemm_alpha_beta_trans": (
        """<ir_version: 8, opset_import: ["" : 17]>
        g (float[4, 3] x) => (float y) {
            y = Gemm <alpha = 0.5, beta = 2.0, transA = 1> (x, w, c) }""",
        {"w": rand(4, 5), "c": rand(3, 5)},
    ),
    "reduce_mean_axes_input": (
        f"""{header(18)} g ({X4}) => (float y) {{
        y = ReduceMean <keepdims = 0> (x, ax) }}""",
        {"ax": i64(-1, 1)},
    ),
    "reduce_sum_all": (
        f"""{header()} g ({X4}) => (float y) {{
        y = ReduceSum (x) }}""",
        {},
    ),
    "reduce_max_min": (
        f"""{header()} g ({X4}) => (float y) {{
        a = ReduceMax <axes = [2], keepdims = 1> (x)
        b = ReduceMin <axes = [2], keepdims = 1> (x)
        y = Sub(a, b) }}""",
        {},
    ),
    "clip_empty_min": (
        f"""{header()} g ({X4}) => (float y) {{
        y = Clip (x, , hi) }}""",
        {"hi": f32(0.3)[0]},
    ),
    "clip_attrs_opset6": (
        f"""{header(6)} g ({X4}) => (float y) {{
        y = Clip <min = -0.5, max = 0.25> (x) }}""",
        {},
    ),
    "squeeze_unsqueeze_flatten": (
        f"""{header()} g ({X4}) => (float y) {{
        u = Unsqueeze (x, a1)
        s = Squeeze (u, a2)
        y = Flatten <axis = -2> (s) }}""",
        {"a1": i64(-1, 0), "a2": i64(0)},
    ),
    "shape_arith_reshape": (
        f"""{header()} g ({X4}) => (float y) {{
        sh = Shape <start = 1, end = -1> (x)
        n = Shape <end = 1> (x)
        z = ConstantOfShape <value = int64[1] {{-1}}> (n)
        cat = Concat <axis = 0> (n, sh, z)
        r = Reshape (x, cat)
        zero = Reshape <allowzero = 0> (r, keep)
        y = Expand(zero, ex) }}""",
        {"keep": i64(0, 0, 0, 7), "ex": i64(2, 1, 1, 1, 1)},
    ),
    "where_equal_cast": (
        f"""{header()} g ({X4}) => (float y) {{
        r = Relu(x)
        z = Equal(r, zero)
        c = Cast <to = 1> (z)
        y = Where(z, c, x) }}""",
        {"zero": f32(0.0)[0]},
    ),
    "activations": (
        f"""{header(20)} g ({X4}) => (float y) {{
        a = Elu <alpha = 0.7> (x)
        b = Selu (a)
        c = Softplus (b)
        d = Gelu (c)
        e = PRelu (x, slope)
        f = LeakyRelu <alpha = 0.2> (e)
        g1 = HardSigmoid <alpha = 0.3, beta = 0.4> (f)
        h = HardSwish (g1)
        i = Tanh (h)
        j = Gelu <approximate = "tanh"> (x)
        k = Max (d, i, j)
        y = Min (k, x) }}""",
        {"slope": rand(3, 1, 1)},
    ),
    "unary_math": (
        f"""{header()} g ({X4}) => (float y) {{
        a = Abs(x)
        b = Sqrt(a)
        c = Log(b)
        d = Exp(c)
        e = Erf(d)
        f = Neg(e)
        h = Pow(a, p)
        i = Div(f, h)
        j = Sub(i, x)
        y = Mul(j, j) }}""",
        {"p": f32(1.5)[0]},
    ),
    "instance_layer_norm": (
        f"""{header()} g ({X4}) => (float y) {{
        a = InstanceNormalization <epsilon = 0.01> (x, s, b)
        y = LayerNormalization <axis = 2> (a, ls, lb) }}""",
        {"s": rand(3), "b": rand(3), "ls": rand(6, 7), "lb": rand(7)},
    ),
    "int_div_shape": (
        f"""{header()} g ({X4}) => (float y, int64 sl) {{
        s = Shape (x)
        two = Constant <value = int64 {{2}}> ()
        h = Div(s, two)
        sl = Slice(h, st, en)
        y = Reshape(x, target) }}""",
        {"st": i64(2), "en": i64(4), "target": i64(1, 3, -1)},
    ),
    "resize_opset10": (
        f"""{header(10)} g ({X4}) => (float y, float z) {{
        y = Resize <mode = "linear"> (x, sc)
        z = Resize (x, sc2) }}""",
        {"sc": f32(1, 1, 2, 2), "sc2": f32(1, 1, 2.5, 0.5)},
    ),
    "misc_math": (
        f"""{header()} g ({X4}) => (float y, int64 am, float z, float l2) {{
        am = ArgMax <axis = 3, keepdims = 0, select_last_index = 1> (x)
        t = Tile(x, reps)
        ge = GatherElements <axis = 2> (t, gi)
        s = Sum(ge, ge, ge)
        m = Mean(s, ge)
        p = ReduceProd <axes = [1], keepdims = 0> (m)
        l2 = ReduceL2 <axes = [3]> (m)
        r = Round(m)
        md = Mod <fmod = 1> (m, two)
        y = Add(r, md)
        lim = Constant <value = float {{3.5}}> ()
        rg = Range(zero, lim, half)
        z = Mul(p, rg) }}""",
        {
            "reps": i64(1, 1, 2, 1),
            "gi": np.tile(i64(0, 11, 5), 21).reshape(1, 3, 3, 7),
            "two": f32(2.0)[0],
            "zero": f32(0.0)[0],
            "half": f32(0.5)[0],
        },
    ),
}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_matches_onnxruntime(case: str) -> None:
    text, inits = OP_CASES[case]
    model = parse(text, inits)
    feed = {}
    for k, inp in enumerate(model.graph.input):
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        feed[inp.name] = rand(*dims, seed=k + 7)
    assert_matches_ort(model, feed)


def test_constant_node_weights_become_parameters() -> None:
    model = parse(f"""{header()} g (float[2, 3] x) => (float y) {{
        c = Constant <value_floats = [1.0, 2.0, 3.0]> ()
        s = Constant <value_ints = [2, 3]> ()
        k = Constant <value_floats = [0.5, 0.5, 0.5]> ()
        r = Reshape(x, s)
        b = BatchNormalization(r, k, k, k, k)
        y = Add(b, c) }}""")
    module = to_torch(model)
    # c is data (trainable); k also holds BatchNorm statistics, so it stays a buffer
    assert set(module.onnx_parameters()) == {"c"}
    assert {"s", "k"} <= set(module.onnx_buffers())
    feed = {"x": rand(2, 3)}
    np.testing.assert_allclose(run_torch(module, feed)[0], run_ort(model, feed)[0], rtol=1e-6)
    with torch.no_grad():
        module.onnx_parameters()["c"].mul_(2)
    rewritten = write_back(model, module)
    assert [a.name for a in rewritten.graph.node[0].attribute] == ["value"]
    value = numpy_helper.to_array(rewritten.graph.node[0].attribute[0].t)
    np.testing.assert_array_equal(value, [2.0, 4.0, 6.0])
    assert write_back(model, to_torch(model)).SerializeToString() == model.SerializeToString()


class KitchenSink(torch.nn.Module):
    """Ops the zoo lacks, as the legacy exporter writes them; two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.prelu = torch.nn.PReLU(8)
        self.deconv = torch.nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1)
        self.ln = torch.nn.LayerNorm(4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        F = torch.nn.functional
        x = self.prelu(self.conv(x))
        a, b = torch.split(x, [3, 5], dim=1)
        up = F.interpolate(a, scale_factor=2, mode="nearest")
        bl = F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=False)
        y = torch.cat([up, bl], 1)
        y = F.gelu(y) + F.elu(y) * torch.sigmoid(y) - F.softplus(y) / 3
        y = self.deconv(F.max_pool2d(y, 2)).permute(0, 2, 3, 1)
        y = torch.softmax(self.ln(y), dim=-1)
        return y.flatten(1), y[:, ::2, 1:3].sum(dim=(1, 2))


def test_legacy_kitchen_sink_two_outputs() -> None:
    torch.manual_seed(0)
    net = KitchenSink().eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(2, 3, 6, 6),), buf, dynamo=False, opset_version=17)
    model = onnx.load_from_string(buf.getvalue())
    assert {"Resize", "Split", "PRelu", "ConvTranspose", "Softmax"} <= {
        n.op_type for n in model.graph.node
    }
    x = rand(2, 3, 6, 6, seed=5)
    assert_matches_ort(model, {model.graph.input[0].name: x})
    got = run_torch(to_torch(model), {model.graph.input[0].name: x})
    with torch.no_grad():
        want = net(torch.from_numpy(x))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=RTOL, atol=ATOL)


def test_state_dict_and_deepcopy_round_trip() -> None:
    import copy

    model = parse(
        f"""{header()} g (float[2, 4] x) => (float y) {{
        h = Gemm <transB = 1> (x, w, b)
        y = Relu(h) }}""",
        {"w": rand(3, 4), "b": rand(3)},
    )
    module = to_torch(model)
    assert set(module.state_dict()) == {"t_w", "t_b"}
    other = to_torch(model)
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    other.load_state_dict(module.state_dict())
    clone = copy.deepcopy(module)
    x = torch.from_numpy(rand(2, 4))
    assert torch.equal(_single(other(x)), _single(module(x)))
    assert torch.equal(_single(clone(x)), _single(module(x)))


def test_float16_and_double_dtypes_survive_write_back() -> None:
    model = parse(
        f"""{header()} g (float16[2, 4] x, double[3] d) => (float16 y, double z) {{
        y = MatMul(x, w)
        z = Mul(d, s) }}""",
        {"w": rand(4, 3).astype(np.float16), "s": rand(3).astype(np.float64)},
    )
    module = to_torch(model)
    params = module.onnx_parameters()
    assert params["w"].dtype == torch.float16 and params["s"].dtype == torch.float64
    with torch.no_grad():
        params["w"].add_(1)
    trained = write_back(model, module)
    inits = {t.name: t for t in trained.graph.initializer}
    assert inits["w"].data_type == TensorProto.FLOAT16
    assert inits["s"].data_type == TensorProto.DOUBLE
    np.testing.assert_array_equal(numpy_helper.to_array(inits["w"]), params["w"].detach().numpy())
