"""The built-in demo ancestor: LeNet-5 trained on the offline MNIST subset, exported to ONNX."""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from evonnx.data.formats import load_builtin
from evonnx.errors import ConfigError, DataError
from evonnx.model.textio import atomic_path
from evonnx.retrain.evaluate import evaluate_onnx, evaluate_torch
from evonnx.retrain.train import TrainConfig, TrainResult, train

if TYPE_CHECKING:
    from evonnx.data.dataset import Dataset

logger = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17

DEMO_EPOCHS = 8
DEMO_CONFIG = TrainConfig(
    epochs=DEMO_EPOCHS,
    batch_size=32,
    lr=2e-3,
    optimizer="adam",
    schedule="cosine",
    seed=0,
    device="cpu",
    num_threads=1,
)
"""Training recipe of the demo ancestor: CPU, one thread (LeNet-5 is too small to gain from a
GPU or from more threads, and one thread is robust when other processes share the cores)."""


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling.

    conv 6@5×5 (pad 2) → ReLU → max-pool 2 → conv 16@5×5 → ReLU → max-pool 2 → fc 120 → ReLU →
    fc 84 → ReLU → fc ``num_classes``. For 28×28 inputs this is the classic network (16×5×5
    features into fc 120). Inputs too small for an unpadded second conv (the 8×8 ``digits``
    fallback) pad it by 2, giving 16×2×2 features.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        pooled = image_size // 2
        pad2 = 0 if pooled >= 5 else 2
        side = (pooled + 2 * pad2 - 4) // 2
        if side < 1:
            raise ConfigError(f"LeNet5 needs images of at least 4×4 pixels, got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5, padding=pad2)
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of ``N×C×H×W`` images."""
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


class LeNet5Caffe(nn.Module):
    """Caffe's LeNet (``examples/mnist/lenet_train_test.prototxt``), the pruning literature's
    "LeNet-5" and almost certainly the network of Shafiee et al.'s Table I.

    conv1 20@5×5 → max-pool 2 → conv2 50@5×5 → max-pool 2 → ip1 500 → ReLU → ip2
    ``num_classes``; no nonlinearity after the convolutions, as in the prototxt. For 28×28
    inputs that is 20×12×12 → 50×4×4 = 800 features into ip1 and 430,500 weights (the
    431k-weight LeNet-5 of Han et al. 2015). Inputs too small for unpadded convolutions (the
    8×8 ``digits`` fallback) pad each by 2.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 28, num_classes: int = 10) -> None:
        super().__init__()
        pad1 = 0 if image_size >= 16 else 2
        side1 = (image_size + 2 * pad1 - 4) // 2
        pad2 = 0 if side1 >= 5 else 2
        side = (side1 + 2 * pad2 - 4) // 2
        if side1 < 1 or side < 1:
            raise ConfigError(f"LeNet5Caffe needs images of at least 4×4 pixels, got {image_size}")
        self.conv1 = nn.Conv2d(in_channels, 20, 5, padding=pad1)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=pad2)
        self.ip1 = nn.Linear(50 * side * side, 500)
        self.ip2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits for a batch of ``N×C×H×W`` images."""
        x = torch.max_pool2d(self.conv1(x), 2)
        x = torch.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.ip1(torch.flatten(x, 1)))
        return self.ip2(x)


ARCHS: dict[str, type[nn.Module]] = {"lenet5": LeNet5, "lenet5-caffe": LeNet5Caffe}
"""Built-in demo architectures by name: ``lenet5`` (the classic 61.5k-weight LeNet-5, the
default) and ``lenet5-caffe`` (Caffe's 430.5k-weight LeNet, the paper's ancestor)."""


@dataclass(frozen=True)
class DemoResult:
    """Outcome of :func:`train_demo_ancestor`.

    Attributes:
        path: The written ONNX file.
        dataset: Name of the data set trained on (``mnist-demo`` or the ``digits`` fallback).
        onnx_accuracy: Test accuracy of the written file, measured with onnxruntime.
        torch_accuracy: Test accuracy of the torch module before export.
        train: The training run.
        seconds: Total wall-clock time (loading, training, export, evaluation).
    """

    path: Path
    dataset: str
    onnx_accuracy: float
    torch_accuracy: float
    train: TrainResult
    seconds: float


def train_demo_ancestor(
    out_path: str | Path,
    epochs: int = DEMO_EPOCHS,
    seed: int = 0,
    progress: bool = True,
    max_batches: int | None = None,
    dataset: Dataset | None = None,
    arch: str = "lenet5",
) -> DemoResult:
    """Train LeNet-5 on the built-in demo data and write it as an ONNX ancestor.

    Args:
        out_path: Where to write the ``.onnx`` file (atomically; parent folders are created).
        epochs: Training epochs.
        seed: Seeds weight initialization and shuffling.
        progress: Show a progress bar on a terminal.
        max_batches: Cap on batches per epoch, for quick smoke runs.
        dataset: Use this data set instead of loading the built-in ``mnist-demo``.
        arch: ``lenet5`` (:class:`LeNet5`, default) or ``lenet5-caffe`` (:class:`LeNet5Caffe`).

    Returns:
        The file path and its onnxruntime-measured test accuracy.

    Raises:
        ConfigError: ``arch`` is not a built-in architecture.
    """
    if arch not in ARCHS:
        raise ConfigError(f"unknown demo architecture {arch!r}; choose one of {sorted(ARCHS)}")
    start = time.perf_counter()
    data = dataset if dataset is not None else load_builtin("mnist-demo")
    channels, height, width = _image_shape(data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ARCHS[arch](channels, height, data.num_classes)
    config = replace(DEMO_CONFIG, epochs=epochs, seed=seed, max_batches=max_batches)
    result = train(model, data, config, progress=progress)
    torch_acc = evaluate_torch(model, data.x_test, data.y_test)
    path = export_onnx(model, (channels, height, width), out_path)
    onnx_acc = evaluate_onnx(path, data.x_test, data.y_test)
    seconds = time.perf_counter() - start
    logger.info(
        "demo ancestor %s (%s): %s test accuracy %.4f (onnxruntime), trained in %.1fs",
        path,
        arch,
        data.name,
        onnx_acc,
        result.seconds,
    )
    return DemoResult(path, data.name, onnx_acc, torch_acc, result, seconds)


def export_onnx(module: nn.Module, sample_shape: tuple[int, ...], out_path: str | Path) -> Path:
    """Export ``module`` (CPU) with a dynamic batch dim, atomically replacing ``out_path``.

    Uses the legacy TorchScript exporter (opset 17), which is fast and needs no onnxscript.
    """
    path = Path(out_path)
    was_training = module.training
    module.eval()
    try:
        dummy = torch.zeros(1, *sample_shape)
        with atomic_path(path) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            torch.onnx.export(
                module,
                (dummy,),
                str(tmp),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            )
    finally:
        module.train(was_training)
    return path


def _image_shape(data: Dataset) -> tuple[int, int, int]:
    shape = data.input_shape
    if len(shape) != 3 or shape[1] != shape[2]:
        raise DataError(f"the demo LeNet-5 needs square C×H×W images, got {shape}")
    return shape[0], shape[1], shape[2]
