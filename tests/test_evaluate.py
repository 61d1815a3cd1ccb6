"""predict_onnx concatenates each output's chunks along its own batch axis."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import make_model, run
from onnx import TensorProto, helper, numpy_helper

from evonnx.retrain import predict_onnx


def time_major(batch: int | str) -> onnx.ModelProto:
    """x [N, 5, 2] -> MatMul [N, 5, 4] -> Transpose: y [5, N, 4] (a CRNN's CTC layout) and
    z [N, 4] (batch first, mean over time)."""
    w = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32), "w"
    )
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["m"]),
        helper.make_node("Transpose", ["m"], ["y"], perm=[1, 0, 2]),
        helper.make_node("ReduceMean", ["m"], ["z"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "ctc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 5, 2])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, batch, 4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 4]),
        ],
        [w],
    )
    return make_model(graph)


@pytest.mark.parametrize("n", [1, 3, 7])
def test_time_major_outputs_concatenate_along_their_batch_axis(n: int) -> None:
    model = time_major("n")
    x = np.random.default_rng(1).normal(size=(n, 5, 2)).astype(np.float32)
    y, z = predict_onnx(model, x, batch_size=3)
    ref_y, ref_z = run(model, {"x": x})
    assert y.shape == (5, n, 4) and z.shape == (n, 4)
    np.testing.assert_allclose(y, ref_y, rtol=1e-6)
    np.testing.assert_allclose(z, ref_z, rtol=1e-6)


def test_fixed_batch_pads_and_trims_the_batch_axis() -> None:
    model = time_major(2)
    x = np.random.default_rng(2).normal(size=(5, 5, 2)).astype(np.float32)
    y, z = predict_onnx(model, x)
    assert y.shape == (5, 5, 4) and z.shape == (5, 4)
    ref = np.concatenate([run(model, {"x": x[i : i + 2]})[0] for i in (0, 2)], axis=1)
    np.testing.assert_allclose(y[:, :4], ref, rtol=1e-6)
    last = run(model, {"x": np.concatenate([x[4:], x[4:]])})[0][:, :1]
    np.testing.assert_allclose(y[:, 4:], last, rtol=1e-6)
