from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from evonnx.data import Dataset, load_builtin
from evonnx.errors import ConfigError, DataError
from evonnx.retrain import evaluate_onnx, evaluate_torch
from evonnx.retrain.demo import LeNet5, LeNet5Caffe, export_onnx, train_demo_ancestor


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_builtin("mnist-demo")


def test_lenet_shapes() -> None:
    assert LeNet5()(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    net = LeNet5()
    assert net.fc1.in_features == 16 * 5 * 5
    assert LeNet5(1, 8)(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert LeNet5(3, 32, 7)(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    with pytest.raises(ValueError, match="at least"):
        LeNet5(1, 2)


def test_lenet_caffe_shapes() -> None:
    """Caffe's LeNet: 20 and 50 filters, 800 features into ip1, 430,500 weights."""
    net = LeNet5Caffe()
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert (net.conv1.out_channels, net.conv2.out_channels) == (20, 50)
    assert (net.ip1.in_features, net.ip1.out_features) == (800, 500)
    weights = sum(p.numel() for name, p in net.named_parameters() if name.endswith("weight"))
    assert weights == 430_500
    assert LeNet5Caffe(1, 8)(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    assert LeNet5Caffe(3, 32, 7)(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    with pytest.raises(ConfigError, match="at least"):
        LeNet5Caffe(1, 2)


def test_demo_caffe_ancestor(tmp_path: Path, mnist: Dataset) -> None:
    """``arch="lenet5-caffe"`` writes Caffe's LeNet: no ReLU after the convolutions."""
    result = train_demo_ancestor(tmp_path / "c.onnx", epochs=1, max_batches=40, progress=False,
                                 dataset=mnist, arch="lenet5-caffe")  # fmt: skip
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Conv", "MaxPool", "Conv", "MaxPool", "Flatten", "Gemm", "Relu", "Gemm"]
    dims = {i.name: list(i.dims) for i in model.graph.initializer}
    assert sorted(map(tuple, dims.values()))[-1] == (500, 800)
    assert result.onnx_accuracy > 0.5
    assert result.onnx_accuracy == pytest.approx(result.torch_accuracy, abs=0.002)
    with pytest.raises(ConfigError, match="lenet5-caffe"):
        train_demo_ancestor(tmp_path / "x.onnx", dataset=mnist, progress=False, arch="vgg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.onnx"]


def test_demo_ancestor_full(tmp_path: Path, mnist: Dataset) -> None:
    """The shipped recipe: > 95% test accuracy (onnxruntime), same score in torch and ONNX."""
    result = train_demo_ancestor(tmp_path / "out" / "lenet5.onnx", progress=False, dataset=mnist)
    assert result.path == tmp_path / "out" / "lenet5.onnx" and result.path.is_file()
    assert result.dataset == "mnist-demo"
    assert result.onnx_accuracy > 0.95
    assert result.onnx_accuracy == pytest.approx(result.torch_accuracy, abs=0.002)
    assert result.train.losses[-1] < result.train.losses[0]
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    (inp,) = model.graph.input
    assert inp.name == "input" and inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim[1:]] == [1, 28, 28]
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert evaluate_onnx(result.path, mnist.x_test, mnist.y_test) == result.onnx_accuracy
    assert list(result.path.parent.iterdir()) == [result.path]  # no temp files left


def test_demo_quick_is_reproducible(tmp_path: Path, mnist: Dataset) -> None:
    out = tmp_path / "a.onnx"
    out.write_bytes(b"old contents")  # replaced atomically
    first = train_demo_ancestor(out, epochs=1, max_batches=60, progress=False, dataset=mnist)
    assert 0.5 < first.onnx_accuracy <= 1.0
    second = train_demo_ancestor(
        tmp_path / "b.onnx", epochs=1, max_batches=60, progress=False, dataset=mnist
    )
    assert first.onnx_accuracy == second.onnx_accuracy
    assert first.train.losses == second.train.losses
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.onnx", "b.onnx"]


def test_demo_digits_fallback(tmp_path: Path) -> None:
    digits = load_builtin("digits")
    result = train_demo_ancestor(
        tmp_path / "d.onnx", epochs=1, max_batches=20, progress=False, dataset=digits
    )
    assert result.dataset == "digits"
    dims = onnx.load(str(result.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]
    assert 0.0 <= result.onnx_accuracy <= 1.0


def test_demo_rejects_non_image_data(tmp_path: Path) -> None:
    flat = Dataset(np.zeros((4, 10)), [0, 1, 0, 1], np.zeros((2, 10)), [0, 1])
    with pytest.raises(DataError, match="square C×H×W"):
        train_demo_ancestor(tmp_path / "x.onnx", dataset=flat, progress=False)


def test_export_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        export_onnx(LeNet5(), (1, 4, 4), tmp_path / "bad.onnx")  # too small for LeNet5(28)
    assert list(tmp_path.iterdir()) == []


def test_export_matches_torch(tmp_path: Path, mnist: Dataset) -> None:
    torch.manual_seed(0)
    net = LeNet5()
    path = export_onnx(net, (1, 28, 28), tmp_path / "n.onnx")
    x, y = mnist.x_test[:50], mnist.y_test[:50]
    assert evaluate_onnx(path, x, y) == evaluate_torch(net, x, y)
