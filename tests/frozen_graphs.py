"""A CNN + recognizer-style head whose large classifier is frozen (tests of issue 18).

The convs are prunable; a channel-mixing ``Reshape`` into time steps freezes the last conv's
group, and the classifier ``Gemm`` (its input and output groups both frozen: the output goes
through a ``Reshape`` to ``[T, 1, C]``) is a frozen layer that must stay byte-identical.
"""

from __future__ import annotations

import numpy as np
import onnx
from helpers import make_model
from onnx import TensorProto, helper, numpy_helper

T, FEAT, CLASSES = 8, 32, 48


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name)


def frozen_classifier(seed: int = 0, zeros: float = 0.0) -> onnx.ModelProto:
    """x[1,3,8,8] -> 3 convs -> Reshape [T, FEAT] -> Gemm (frozen) -> Reshape [T, 1, CLASSES].

    ``zeros``: fraction of every conv/FC weight set to zero beforehand (a sparse input).
    """
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        a = rng.normal(size=shape).astype(np.float32) / np.sqrt(np.prod(shape[1:]))
        return a * (rng.random(shape) >= zeros)

    inits = [
        _init("w1", w(16, 3, 3, 3)),
        _init("b1", rng.normal(size=16) * 0.1),
        _init("w2", w(16, 16, 3, 3)),
        _init("b2", rng.normal(size=16) * 0.1),
        _init("w3", w(4, 16, 1, 1)),
        _init("b3", rng.normal(size=4) * 0.1),
        _init("wfc", w(CLASSES, FEAT)),
        _init("bfc", rng.normal(size=CLASSES) * 0.1),
        numpy_helper.from_array(np.array([T, FEAT], np.int64), "seq_shape"),
        numpy_helper.from_array(np.array([T, 1, CLASSES], np.int64), "out_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3"),
        helper.make_node("Reshape", ["c3", "seq_shape"], ["seq"], name="to_seq"),
        helper.make_node("Gemm", ["seq", "wfc", "bfc"], ["logits"], name="classifier", transB=1),
        helper.make_node("Reshape", ["logits", "out_shape"], ["y"], name="to_tnc"),
    ]
    graph = helper.make_graph(
        nodes,
        "frozen_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [T, 1, CLASSES])],
        inits,
    )
    model = make_model(graph)
    onnx.checker.check_model(model, full_check=True)
    return model
