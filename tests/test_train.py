from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from evonnx.data import Dataset
from evonnx.errors import DataError, ModelLoadError, UnsupportedModelError
from evonnx.retrain import (
    TrainConfig,
    evaluate_onnx,
    evaluate_torch,
    resolve_device,
    top1_accuracy,
    train,
)


class TinyNet(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(torch.flatten(x, 1)))


def blobs(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three separable classes of 1×4×4 images."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    centers = rng.normal(size=(3, 1, 4, 4)) * 2
    x = centers[y] + rng.normal(size=(n, 1, 4, 4)) * 0.5
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    x, y = blobs(126)
    return Dataset(x[:96], y[:96], x[96:], y[96:], name="blobs")


def fresh(seed: int = 0, dropout: float = 0.0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(dropout)


CFG = TrainConfig(epochs=4, batch_size=16, lr=0.05, seed=3, device="cpu", num_threads=1)


# --------------------------------------------------------------------------- train


def test_train_lowers_loss(dataset: Dataset) -> None:
    model = fresh()
    before = evaluate_torch(model, dataset.x_test, dataset.y_test)
    result = train(model, dataset, CFG, progress=False)
    assert len(result.losses) == 4
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.steps == 4 * 6 and result.images == 4 * 96
    assert result.seconds > 0 and result.images_per_second > 0 and result.device == "cpu"
    assert evaluate_torch(model, dataset.x_test, dataset.y_test) > max(before, 0.9)


def test_train_is_reproducible(dataset: Dataset) -> None:
    runs = []
    for _ in range(2):
        model = fresh(dropout=0.3)
        runs.append(
            (
                train(model, dataset, CFG, progress=False).losses,
                [p.detach().clone() for p in model.parameters()],
            )
        )
    assert runs[0][0] == runs[1][0]
    for a, b in zip(runs[0][1], runs[1][1], strict=True):
        assert torch.equal(a, b)
    other = train(
        fresh(dropout=0.3),
        dataset,
        TrainConfig(epochs=4, batch_size=16, lr=0.05, seed=4),
        progress=False,
    )
    assert other.losses != runs[0][0]


def test_train_leaves_global_rng_and_mode(dataset: Dataset) -> None:
    model = fresh()
    model.eval()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    cfg = TrainConfig(epochs=1, max_batches=2, num_threads=threads + 1)
    train(model, dataset, cfg, progress=False)
    assert torch.equal(torch.rand(3), expected)
    assert not model.training
    assert torch.get_num_threads() == threads


def test_after_step_and_max_batches(dataset: Dataset) -> None:
    calls: list[nn.Module] = []
    model = fresh()
    cfg = TrainConfig(
        epochs=3, batch_size=8, max_batches=2, optimizer="adam", lr=1e-3, schedule="constant"
    )
    result = train(model, dataset, cfg, after_step=calls.append, progress=False)
    assert len(calls) == result.steps == 6 and all(m is model for m in calls)
    assert result.images == 3 * 2 * 8


def test_after_step_can_reapply_masks(dataset: Dataset) -> None:
    model = fresh()
    mask = torch.ones_like(model.fc.weight)
    mask[:, ::2] = 0

    def apply_mask(module: nn.Module) -> None:
        with torch.no_grad():
            module.fc.weight.mul_(mask)  # type: ignore[operator]

    apply_mask(model)
    train(model, dataset, CFG, after_step=apply_mask, progress=False)
    assert torch.count_nonzero(model.fc.weight[:, ::2]) == 0


def test_custom_loader_and_loss(dataset: Dataset) -> None:
    x = torch.from_numpy(dataset.x_train)
    y = torch.from_numpy(dataset.y_train)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    seen: list[int] = []

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append(len(target))
        return nn.functional.cross_entropy(out, target, label_smoothing=0.1)

    result = train(fresh(), loader, CFG, loss_fn=loss_fn, progress=False)
    assert result.steps == 4 * 3 and seen == [32] * 12
    assert result.losses[-1] < result.losses[0]

    # Detection-style targets: a list of dicts passes through to the loss untouched.
    batches = [(x[:8], [{"label": y[i]} for i in range(8)])]

    def dict_loss(out: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        labels = torch.stack([t["label"] for t in targets])
        return nn.functional.cross_entropy(out, labels)

    assert train(fresh(), batches, CFG, loss_fn=dict_loss, progress=False).steps == 4


def test_train_errors(dataset: Dataset) -> None:
    one_shot = iter([(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))])
    with pytest.raises(ValueError, match="one-shot iterator"):
        train(fresh(), one_shot, CFG, progress=False)
    with pytest.raises(ValueError, match="saw no batches"):
        train(fresh(), [], TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="expected \\(inputs, targets\\)"):
        train(fresh(), [(torch.zeros(1),)], TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        train(nn.ReLU(), dataset, CFG, progress=False)
    for bad in (
        {"epochs": 0},
        {"lr": -1.0},
        {"optimizer": "rmsprop"},
        {"max_batches": 0},
        {"schedule": "step"},
        {"device": "tpu"},
        {"batch_size": 0},
        {"num_threads": 0},
    ):
        with pytest.raises(ValueError):
            TrainConfig(**bad)  # type: ignore[arg-type]


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


# --------------------------------------------------------------------------- evaluate


def export(model: nn.Module, batch: int, dynamic: bool) -> onnx.ModelProto:
    model.eval()
    buf = io.BytesIO()
    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(batch, 1, 4, 4),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes=axes,
        )
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def trained(dataset: Dataset) -> TinyNet:
    model = fresh()
    train(model, dataset, TrainConfig(epochs=1, batch_size=16, lr=0.02, seed=0), progress=False)
    return model


@pytest.mark.parametrize(("batch", "dynamic"), [(1, True), (1, False), (4, False), (64, False)])
def test_evaluate_onnx_matches_torch(
    trained: TinyNet, dataset: Dataset, batch: int, dynamic: bool, tmp_path: Path
) -> None:
    proto = export(trained, batch, dynamic)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert (dims[0].dim_param == "batch") if dynamic else (dims[0].dim_value == batch)
    x, y = dataset.x_test, dataset.y_test  # 30 samples: not a multiple of 4 or 64
    expected = evaluate_torch(trained, x, y)
    assert expected > 0.5
    assert evaluate_onnx(proto, x, y, batch_size=7) == expected
    onnx.save(proto, str(tmp_path / "m.onnx"))
    assert evaluate_onnx(tmp_path / "m.onnx", x, y) == expected
    assert evaluate_onnx(str(tmp_path / "m.onnx"), x[:1], y[:1]) == evaluate_torch(
        trained, x[:1], y[:1]
    )


def test_evaluate_outputs_match_exactly_with_fixed_batch(
    trained: TinyNet, dataset: Dataset
) -> None:
    proto = export(trained, 4, dynamic=False)
    x = dataset.x_test[:10]
    collected: list[np.ndarray] = []

    def grab(logits: np.ndarray, labels: np.ndarray) -> float:
        collected.append(logits)
        return 0.5

    assert evaluate_onnx(proto, x, dataset.y_test[:10], metric=grab) == 0.5
    with torch.no_grad():
        reference = trained.eval()(torch.from_numpy(x)).numpy()
    assert collected[0].shape == (10, 3)
    np.testing.assert_allclose(collected[0], reference, rtol=1e-4, atol=1e-5)


def test_evaluate_errors(trained: TinyNet, dataset: Dataset, tmp_path: Path) -> None:
    proto = export(trained, 1, dynamic=True)
    with pytest.raises(ModelLoadError, match="does not exist"):
        evaluate_onnx(tmp_path / "missing.onnx", dataset.x_test, dataset.y_test)
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ModelLoadError, match="cannot load"):
        evaluate_onnx(tmp_path / "junk.onnx", dataset.x_test, dataset.y_test)
    with pytest.raises(DataError, match="must match"):
        evaluate_onnx(proto, dataset.x_test, dataset.y_test[:-1])
    with pytest.raises(DataError, match="zero samples"):
        evaluate_onnx(proto, dataset.x_test[:0], dataset.y_test[:0])
    with pytest.raises(DataError, match="model expects N×1×4×4"):
        evaluate_onnx(proto, np.zeros((3, 1, 5, 5), np.float32), np.zeros(3))
    two_inputs = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["a", "b"], ["c"])],
            "g",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 3]) for n in "ab"],
            [helper.make_tensor_value_info("c", TensorProto.FLOAT, [None, 3])],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
    )
    with pytest.raises(UnsupportedModelError, match="one input"):
        evaluate_onnx(two_inputs, np.zeros((2, 3)), np.zeros(2))


def test_top1_accuracy() -> None:
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert top1_accuracy(logits, np.array([1, 0, 0])) == pytest.approx(2 / 3)
    assert top1_accuracy(logits[:, :, None, None], np.array([1, 0, 1])) == 1.0
    with pytest.raises(DataError, match="pass a metric"):
        top1_accuracy(np.zeros((2, 3, 4)), np.zeros(2))


def test_evaluate_torch_restores_state(trained: TinyNet, dataset: Dataset) -> None:
    trained.train()
    acc = evaluate_torch(trained, dataset.x_test, dataset.y_test, batch_size=4)
    assert trained.training
    trained.eval()
    assert acc == evaluate_torch(trained, dataset.x_test, dataset.y_test)
