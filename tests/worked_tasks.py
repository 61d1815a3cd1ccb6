"""Two worked :class:`evonnx.Task` examples on generated images (see docs/tasks.md).

* :class:`DetectionTask`: one object per 16×16 image (a filled square or a hollow one);
  the network has two output heads, a box ``(cx, cy, w, h)`` in [0, 1] and class logits.
  Score: the fraction of images whose box overlaps the truth with IoU >= 0.5 and whose
  class is right (precision = recall at IoU 0.5 when each image holds one object).
* :class:`SegmentationTask`: two graph inputs (the image and a second, noisier view);
  per-pixel logits for background/foreground. Score: foreground IoU over the split.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from evonnx import Task
from evonnx.retrain import predict_onnx

SIDE = 16


# --------------------------------------------------------------------------- detection


def detection_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images ``N×1×16×16``, boxes ``N×4`` (cx, cy, w, h in [0, 1]) and classes ``N``."""
    x = 0.1 * rng.normal(size=(n, 1, SIDE, SIDE)).astype(np.float32)
    boxes = np.zeros((n, 4), np.float32)
    classes = rng.integers(0, 2, n)
    for i in range(n):
        size = int(rng.integers(5, 9))
        top, left = (int(v) for v in rng.integers(0, SIDE - size + 1, 2))
        x[i, 0, top : top + size, left : left + size] += 1.0
        if classes[i] == 1:  # hollow square
            x[i, 0, top + 1 : top + size - 1, left + 1 : left + size - 1] -= 1.0
        boxes[i] = [(left + size / 2) / SIDE, (top + size / 2) / SIDE, size / SIDE, size / SIDE]
    return x, boxes, classes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of matching rows of two ``N×4`` (cx, cy, w, h) box arrays."""
    a0, a1 = a[:, :2] - a[:, 2:] / 2, a[:, :2] + a[:, 2:] / 2
    b0, b1 = b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None).prod(axis=1)
    union = np.clip(a[:, 2:], 0, None).prod(axis=1) + b[:, 2:].prod(axis=1) - inter
    return inter / np.maximum(union, 1e-9)


class Detector(nn.Module):
    """Conv trunk, then a box head (sigmoid) and a class head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 32)
        self.box = nn.Linear(32, 4)
        self.cls = nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        h = torch.relu(self.fc(torch.flatten(x, 1)))
        return torch.sigmoid(self.box(h)), self.cls(h)


class DetectionTask(Task):
    """Single-object detection on generated squares (box and class heads)."""

    name = "squares-detection"

    def __init__(self, seed: int = 0, n_train: int = 512, n_eval: int = 128) -> None:
        rng = np.random.default_rng(seed)
        x, boxes, classes = detection_data(n_train, rng)
        self.loader = DataLoader(
            TensorDataset(torch.from_numpy(x), torch.from_numpy(boxes), torch.from_numpy(classes)),
            batch_size=32,
            shuffle=True,
            collate_fn=lambda rows: (
                torch.stack([r[0] for r in rows]),
                (torch.stack([r[1] for r in rows]), torch.stack([r[2] for r in rows])),
            ),
        )
        self.splits = {s: detection_data(n_eval, rng) for s in ("val", "test")}

    def train_batches(self) -> DataLoader:
        return self.loader

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        boxes, logits = outputs
        true_boxes, classes = targets
        return 10.0 * F.smooth_l1_loss(boxes, true_boxes) + F.cross_entropy(logits, classes)

    def score(self, onnx_path: Path, split: str) -> float:
        x, true_boxes, classes = self.splits[split]
        boxes, logits = predict_onnx(onnx_path, x)
        return detection_score(boxes, logits, true_boxes, classes)


def detection_score(
    boxes: np.ndarray, logits: np.ndarray, true_boxes: np.ndarray, classes: np.ndarray
) -> float:
    """Fraction of images with IoU >= 0.5 and the right class."""
    hit = (box_iou(boxes, true_boxes) >= 0.5) & (logits.argmax(axis=1) == classes)
    return float(hit.mean())


# --------------------------------------------------------------------------- segmentation


def segmentation_data(
    n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image ``N×1×16×16``, a noisier second view of it, and the ``N×16×16`` mask."""
    masks = np.zeros((n, SIDE, SIDE), np.int64)
    for i in range(n):
        for _ in range(2):
            h, w = (int(v) for v in rng.integers(3, 8, 2))
            top, left = int(rng.integers(0, SIDE - h)), int(rng.integers(0, SIDE - w))
            masks[i, top : top + h, left : left + w] = 1
    clean = masks[:, None].astype(np.float32)
    image = clean + 0.3 * rng.normal(size=clean.shape).astype(np.float32)
    view = clean + 0.6 * rng.normal(size=clean.shape).astype(np.float32)
    return image, view, masks


class Segmenter(nn.Module):
    """Two input stems added together, a conv, and a 1×1 per-pixel classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem_a = nn.Conv2d(1, 12, 3, padding=1)
        self.stem_b = nn.Conv2d(1, 12, 3, padding=1)
        self.mid = nn.Conv2d(12, 12, 3, padding=1)
        self.head = nn.Conv2d(12, 2, 1)

    def forward(self, image: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_a(image) + self.stem_b(view))
        return self.head(torch.relu(self.mid(x)))


def foreground_iou(logits: np.ndarray, masks: np.ndarray) -> float:
    """IoU of the predicted and true foreground pixels over a whole split."""
    pred = logits.argmax(axis=1) == 1
    truth = masks == 1
    return float((pred & truth).sum() / max(1, (pred | truth).sum()))


class SegmentationTask(Task):
    """Foreground segmentation from two views (a two-input graph)."""

    name = "rectangles-segmentation"

    def __init__(self, seed: int = 0, n_train: int = 256, n_eval: int = 64) -> None:
        rng = np.random.default_rng(seed)
        image, view, masks = segmentation_data(n_train, rng)
        self.batches = [
            ((torch.from_numpy(image[i : i + 32]), torch.from_numpy(view[i : i + 32])),
             torch.from_numpy(masks[i : i + 32]))
            for i in range(0, n_train, 32)
        ]  # fmt: skip
        self.splits = {s: segmentation_data(n_eval, rng) for s in ("val", "test")}

    def train_batches(self) -> list[Any]:
        return self.batches

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        return F.cross_entropy(outputs, targets)

    def score(self, onnx_path: Path, split: str) -> float:
        image, view, masks = self.splits[split]
        (logits,) = predict_onnx(onnx_path, [image, view])
        return foreground_iou(logits, masks)


# --------------------------------------------------------------------------- ancestors


def trained_ancestor(
    module: nn.Module, task: Task, epochs: int, names: dict[str, Any]
) -> onnx.ModelProto:
    """Train ``module`` on ``task`` and export it (dynamic batch) as an ONNX model."""
    from evonnx.retrain import TrainConfig, train

    config = TrainConfig(epochs=epochs, lr=3e-3, optimizer="adam", seed=0, num_threads=1,
                         device="cpu")  # fmt: skip
    train(module, task.train_batches(), config, loss_fn=task.loss, progress=False)
    dummies = tuple(torch.zeros(1, 1, SIDE, SIDE) for _ in names["inputs"])
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), dummies, buf, dynamo=False, opset_version=17,
            input_names=names["inputs"], output_names=names["outputs"],
            dynamic_axes={n: {0: "batch"} for n in (*names["inputs"], *names["outputs"])},
        )  # fmt: skip
    return onnx.load_from_string(buf.getvalue())
