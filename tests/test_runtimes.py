"""Latency runtimes: measurement on tiny graphs, clear errors, shape specialization."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import assert_same, run
from onnx import TensorProto, helper, numpy_helper
from zoo import helper_convnet, input_feed

from evonnx.converters import to_torch
from evonnx.errors import ConfigError, ProviderError, RuntimeUnavailableError
from evonnx.runtimes import RuntimeSettings, make_runtime, specialize

HAS_CUDA = torch.cuda.is_available()
ORT_PROVIDERS = ort.get_available_providers()


def shape_chain_model(seed: int = 0) -> onnx.ModelProto:
    """Conv, then a reshape whose target is computed: Shape -> Gather -> Concat -> Reshape."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    idx = numpy_helper.from_array(np.array([0], dtype=np.int64), "idx")
    rest = numpy_helper.from_array(np.array([-1], dtype=np.int64), "rest")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Shape", ["y"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "idx"], ["n"], axis=0, name="gather"),
        helper.make_node("Concat", ["n", "rest"], ["target"], axis=0, name="concat"),
        helper.make_node("Reshape", ["y", "target"], ["z"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "shape_chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 5, 5])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 100])],
        [w, idx, rest],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    return model


def test_specialize_folds_shape_chain() -> None:
    model = shape_chain_model()
    spec = specialize(model, {"x": [2, 3, 5, 5]})
    onnx.checker.check_model(spec, full_check=True)
    ops = [n.op_type for n in spec.graph.node]
    assert ops == ["Conv", "Reshape"]
    target = {t.name: numpy_helper.to_array(t) for t in spec.graph.initializer}["target"]
    assert target.tolist() == [2, -1]
    x = np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32)
    assert_same(run(model, {"x": x}), run(spec, {"x": x}))
    with torch.no_grad():  # the torch module of the specialized graph agrees too
        out = to_torch(spec)(torch.from_numpy(x))
    assert isinstance(out, torch.Tensor)
    assert_same(run(model, {"x": x}), [out.numpy()])


def test_specialize_needs_static_inputs() -> None:
    from evonnx.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="static shape"):
        specialize(shape_chain_model())


def test_ort_cpu_measures_every_model() -> None:
    rt = make_runtime(RuntimeSettings("ort-cpu", threads=1, warmup=1, runs=3))
    model = helper_convnet()
    ms = rt.latencies([model, model, shape_chain_model()], batch=2)
    assert len(ms) == 3 and all(np.isfinite(v) and v > 0 for v in ms)
    assert len(rt.fingerprint()) == 16
    assert "onnxruntime" in rt.device()


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown runtime"):
        RuntimeSettings("ort-gpu")
    with pytest.raises(ConfigError, match="fp16"):
        RuntimeSettings("ort-cpu", fp16=True)
    with pytest.raises(ConfigError, match="runs"):
        RuntimeSettings("ort-cpu", runs=0)
    with pytest.raises(ConfigError, match="statistic"):
        RuntimeSettings("ort-cpu", statistic="mean")  # type: ignore[arg-type]


def test_fingerprint_depends_on_settings() -> None:
    a = make_runtime(RuntimeSettings("ort-cpu", threads=1))
    b = make_runtime(RuntimeSettings("ort-cpu", threads=2))
    c = make_runtime(RuntimeSettings("ort-cpu", threads=1, statistic="median"))
    assert len({a.fingerprint(), b.fingerprint(), c.fingerprint()}) == 3


@pytest.mark.skipif("CUDAExecutionProvider" in ORT_PROVIDERS, reason="onnxruntime-gpu installed")
def test_ort_cuda_unavailable_is_an_error() -> None:
    with pytest.raises(ProviderError, match="not available"):
        make_runtime("ort-cuda")
    with pytest.raises(ProviderError, match="not available"):
        make_runtime("ort-trt")


@pytest.mark.skipif(HAS_CUDA, reason="a CUDA device is present")
def test_torch_cuda_unavailable_is_an_error() -> None:
    with pytest.raises(RuntimeUnavailableError, match="CUDA"):
        make_runtime("torch-cuda")


def test_tensorrt_without_trtexec_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeUnavailableError, match="trtexec"):
        make_runtime("tensorrt")


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (none here or in CI)")
@pytest.mark.parametrize("fp16", [False, True])
def test_torch_cuda_measures_with_graph_capture(fp16: bool) -> None:
    rt = make_runtime(RuntimeSettings("torch-cuda", fp16=fp16, warmup=2, runs=5))
    ms = rt.latencies([helper_convnet(), shape_chain_model()], batch=4)
    assert all(np.isfinite(v) and v > 0 for v in ms)


@pytest.mark.skipif(
    "CUDAExecutionProvider" not in ORT_PROVIDERS, reason="needs onnxruntime-gpu and a GPU"
)
def test_ort_cuda_measures() -> None:
    rt = make_runtime(RuntimeSettings("ort-cuda", warmup=1, runs=3))
    assert all(v > 0 for v in rt.latencies([helper_convnet()], batch=1))


def test_input_feed_helper_matches_specialized_inputs() -> None:
    model = helper_convnet()
    feed = input_feed(model)
    shapes = {k: list(v.shape) for k, v in feed.items()}
    spec = specialize(model, shapes)
    assert_same(run(model, feed), run(spec, feed))


def test_rounds_are_every_timed_run_interleaved() -> None:
    model = helper_convnet()
    rt = make_runtime(RuntimeSettings("ort-cpu", threads=1, warmup=1, runs=6))
    rounds = rt.rounds([model, model], 1)
    assert rounds.shape == (2, 6) and (rounds > 0).all()
    assert RuntimeSettings().statistic == "min"  # robust on a shared machine (the default)
