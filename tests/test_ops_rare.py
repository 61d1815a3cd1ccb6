"""Rarer ops the analysis prunes through: the converter matches onnxruntime on each."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from evonnx.converters import to_torch

X = np.random.default_rng(0).normal(size=(2, 4, 5, 6)).astype(np.float32)
SPECIAL = np.where(X > 1, np.inf, np.where(X < -1, -np.inf, np.where(X > 0.8, np.nan, X)))

CASES = {
    "ReduceL1": (17, "y = ReduceL1 <axes = [1], keepdims = 1> (x)", {}, X),
    "ReduceLogSum": (17, "y = ReduceLogSum <axes = [2, 3]> (x)", {}, np.abs(X) + 0.1),
    "ReduceLogSumExp": (17, "y = ReduceLogSumExp <axes = [1], keepdims = 0> (x)", {}, X),
    "IsNaN": (17, "y = IsNaN (x)", {}, SPECIAL),
    "IsInf": (17, "y = IsInf (x)", {}, SPECIAL),
    "IsInf positive": (17, "y = IsInf <detect_negative = 0> (x)", {}, SPECIAL),
    "Shrink": (17, "y = Shrink <lambd = 0.3, bias = 0.1> (x)", {}, X),
    "Hardmax": (17, "y = Hardmax <axis = 1> (x)", {}, X),
    "Hardmax opset 11": (11, "y = Hardmax <axis = 2> (x)", {}, X),
    "GlobalLpPool": (17, "y = GlobalLpPool <p = 3> (x)", {}, X),
    "Swish": (24, "y = Swish <alpha = 1.5> (x)", {}, X),
    "RMSNormalization": (
        23,
        "y = RMSNormalization <axis = 2, epsilon = 0.001> (x, s)",
        {"s": np.linspace(0.5, 1.5, 30, dtype=np.float32).reshape(5, 6)},
        X,
    ),
    "Upsample nearest": (
        9,
        'y = Upsample <mode = "nearest"> (x, sc)',
        {"sc": np.array([1, 1, 2, 1.5], np.float32)},
        X,
    ),
    "Upsample linear": (
        9,
        'y = Upsample <mode = "linear"> (x, sc)',
        {"sc": np.array([1, 1, 2, 2], np.float32)},
        X,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rare_op_matches_onnxruntime(case: str) -> None:
    opset, body, inits, x = CASES[case]
    ir = 8 if opset < 19 else 10
    text = f'<ir_version: {ir}, opset_import: ["" : {opset}]>\n'
    model = onnx.parser.parse_model(f"{text}g (float[2, 4, 5, 6] x) => (y) {{\n{body}\n}}")
    for name, value in inits.items():
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # an older onnxruntime may lack a newer op
        pytest.skip(f"this onnxruntime cannot run {case}: {str(exc)[:80]}")
    expected = sess.run(None, {"x": x})[0]
    with torch.no_grad():
        actual = to_torch(model).eval()(torch.from_numpy(x)).numpy()
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    if expected.dtype == bool:
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_bit_shift_matches_onnxruntime() -> None:
    text = '<ir_version: 8, opset_import: ["" : 17]>\n'
    model = onnx.parser.parse_model(
        f"{text}g (uint8[6] x, uint8[6] s) => (uint8[6] l, uint8[6] r) {{\n"
        'l = BitShift <direction = "LEFT"> (x, s)\n r = BitShift <direction = "RIGHT"> (x, s)\n}'
    )
    feed = {
        "x": np.array([1, 2, 3, 64, 128, 255], np.uint8),
        "s": np.array([0, 1, 2, 1, 3, 4], np.uint8),
    }
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, feed)
    actual = to_torch(model)(*(torch.from_numpy(v) for v in feed.values()))
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_array_equal(a.numpy(), e)
