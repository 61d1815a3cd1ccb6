"""The in-memory data set, its normalization, and the checks every loader applies.

A :class:`Dataset` holds float32 samples (``N×C×H×W`` images or ``N×features`` vectors) and
int64 class labels; :mod:`evonnx.data.formats` reads files into it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evonnx.errors import DataError
from evonnx.model.textio import dangling_link

logger = logging.getLogger(__name__)

BUILTIN_NAMES: tuple[str, ...] = ("mnist-demo", "digits")
"""Names :func:`load_dataset` resolves to built-in data sets when no such path exists."""

DEMO_SEED = 0
"""Seed of the fixed stratified train/test split of the built-in data sets."""

DEMO_TEST_FRACTION = 0.2
"""Fraction of each class the built-in data sets hold out for testing."""

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

IMAGE_SUFFIXES: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Normalization:
    """How raw samples are turned into network inputs.

    Attributes:
        scale: Divide integer data by the maximum of its dtype (255 for ``uint8``) so that it
            lies in [0, 1]. Float data is assumed to be scaled already and is left as is.
        mean: Optional per-channel (axis 1) mean subtracted after scaling; one value is
            broadcast to all channels.
        std: Optional per-channel standard deviation divided by after subtracting ``mean``.
    """

    scale: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise DataError("normalization needs both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise DataError(f"normalization std must be positive, got {self.std}")

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Return ``x`` as float32, scaled and standardized as configured."""
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise DataError(f"samples have dtype {x.dtype}; expected numbers")
        out = _scale_to_unit(x) if self.scale else x.astype(np.float32)
        if self.mean is None or self.std is None:
            return out
        return _standardize(out, self.mean, self.std)


@dataclass(frozen=True)
class Dataset:
    """An in-memory classification data set.

    Arrays are coerced on construction: samples to float32, labels to int64. Samples are
    ``N×C×H×W`` images or ``N×features`` vectors.

    Attributes:
        x_train: Training samples.
        y_train: Training labels in ``[0, num_classes)``.
        x_test: Test samples, same per-sample shape as ``x_train``.
        y_test: Test labels.
        name: Human-readable name used in messages and logs.
        class_names: Optional names of the classes; fixes ``num_classes`` when given.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = "dataset"
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = _as_samples(getattr(self, f"x_{split}"), f"{self.name} x_{split}")
            y = _as_labels(getattr(self, f"y_{split}"), f"{self.name} y_{split}")
            if len(x) != len(y):
                raise DataError(
                    f"{self.name}: x_{split} has {len(x)} samples but y_{split} has {len(y)} "
                    "labels; they must have the same length"
                )
            object.__setattr__(self, f"x_{split}", x)
            object.__setattr__(self, f"y_{split}", y)
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise DataError(
                f"{self.name}: train samples have shape {self.x_train.shape[1:]} but test "
                f"samples have shape {self.x_test.shape[1:]}"
            )
        for split in ("train", "test"):
            if len(getattr(self, f"x_{split}")) == 0:
                other = "test" if split == "train" else "train"
                raise DataError(
                    f"{self.name}: the {'training' if split == 'train' else split} split is "
                    f"empty (x_{split}: 0 samples, y_{split}: 0 labels; x_{other}: "
                    f"{len(getattr(self, f'x_{other}'))} samples); it needs at least one"
                )
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
            _check_label_range(self.y_train, len(self.class_names), f"{self.name} y_train")
            _check_label_range(self.y_test, len(self.class_names), f"{self.name} y_test")

    @property
    def num_classes(self) -> int:
        """Number of classes: ``len(class_names)`` or one more than the largest label."""
        if self.class_names is not None:
            return len(self.class_names)
        top = max(int(self.y_train.max(initial=-1)), int(self.y_test.max(initial=-1)))
        return top + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, without the batch dimension (e.g. ``(1, 28, 28)``)."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    def fingerprint(self) -> str:
        """SHA-256 of the four arrays (dtype, shape and bytes): identifies the data by content."""
        digest = hashlib.sha256()
        for key in ("x_train", "y_train", "x_test", "y_test"):
            arr = np.ascontiguousarray(getattr(self, key))
            digest.update(f"{key}:{arr.dtype.str}:{arr.shape};".encode())
            digest.update(arr.tobytes())
        return digest.hexdigest()

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.x_train)}, "
            f"test={len(self.x_test)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


# --------------------------------------------------------------------------- checks


def check_matches(
    dataset: Dataset, input_shape: Sequence[int | None], num_classes: int | None = None
) -> None:
    """Check that a data set fits a model.

    Args:
        dataset: The data set.
        input_shape: The model input's full shape including the batch dimension, e.g.
            ``(None, 1, 28, 28)``; ``None`` (or a non-positive size) marks a dynamic dim. The
            batch size itself is not checked.
        num_classes: The model's number of output classes, if known.

    Raises:
        DataError: If the sample shape or the label range does not fit.
    """
    check_sample_shape(dataset.input_shape, input_shape, f"data set {dataset.name!r}")
    if num_classes is not None:
        check_labels(dataset, num_classes)


def check_labels(dataset: Dataset, num_classes: int) -> None:
    """Check that every label of both splits is a valid index into ``num_classes`` outputs.

    Raises:
        DataError: Naming the split and the largest label the model cannot score.
    """
    if dataset.class_names is not None and len(dataset.class_names) > num_classes:
        raise DataError(
            f"data set {dataset.name!r} has {len(dataset.class_names)} classes but the "
            f"model only outputs {num_classes}"
        )
    for split in ("train", "test"):
        labels = getattr(dataset, f"y_{split}")
        if len(labels) and labels.max() >= num_classes:
            raise DataError(
                f"data set {dataset.name!r}: y_{split} holds label {int(labels.max())} but the "
                f"model only outputs {num_classes} classes (labels must be 0..{num_classes - 1})"
            )


def check_sample_shape(
    sample_shape: Sequence[int], input_shape: Sequence[int | None], what: str = "the data"
) -> None:
    """Check one sample's shape against a model input shape that includes the batch dim.

    ``None`` or a non-positive size in ``input_shape`` matches anything; the batch dim is not
    checked.

    Raises:
        DataError: Naming ``what`` and both shapes when they do not fit.
    """
    want = tuple(input_shape)[1:]
    have = tuple(int(d) for d in sample_shape)
    if len(want) == len(have) and all(
        w is None or w <= 0 or w == h for w, h in zip(want, have, strict=True)
    ):
        return
    shown = "×".join("?" if w is None or w <= 0 else str(w) for w in want)
    hint = ""
    if len(have) == 3 and len(want) == 3 and have[2] == want[0] and have[0] != want[0]:
        hint = " (channels-last data? evonnx expects N×C×H×W)"
    raise DataError(f"{what} has samples of shape {have} but the model expects N×{shown}{hint}")


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (train, test), holding out ``test_fraction`` of each class.

    Both index arrays are shuffled with ``seed``; the result only depends on the inputs.
    """
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = round(len(idx) * test_fraction)
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    return rng.permutation(np.concatenate(train_parts)), rng.permutation(np.concatenate(test_parts))


# --------------------------------------------------------------------------- validation

_LAYOUT_HELP = (
    "expected a .npz file (x_train, y_train, x_test, y_test), a folder with the "
    "MNIST IDX files, a 'cifar-10-batches-py' folder, a folder with train/<class>/ "
    "and test/<class>/ images, or a built-in name: " + ", ".join(BUILTIN_NAMES)
)


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(dangling_link(path) or f"{path} does not exist")
    return path


def _as_samples(x: Any, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim < 2:
        raise DataError(f"{what} has shape {arr.shape}; expected N×features or N×C×H×W")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise DataError(f"{what} has dtype {arr.dtype}; expected numbers")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise DataError(f"{what} contains NaN or infinite values")
    return out


def _as_labels(y: Any, what: str) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(
            f"{what} has shape {arr.shape}; expected one integer class label per "
            "sample (not one-hot)"
        )
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise DataError(f"{what} holds non-integer labels; expected integer class ids")
    elif arr.dtype.kind not in "iub":
        raise DataError(f"{what} has dtype {arr.dtype}; expected integer class ids")
    if len(arr) and arr.dtype.kind != "b":
        low, high = arr.min(), arr.max()  # in the labels' own dtype: no wrap-around
        if low < 0:
            raise DataError(
                f"{what}: label {_label_text(low)} is out of range; labels must be >= 0"
            )
        if high > np.iinfo(np.int64).max:
            raise DataError(
                f"{what}: label {_label_text(high)} ({arr.dtype}) is out of range; class ids "
                f"must be below 2**63 (int64)"
            )
    return arr.astype(np.int64)


def _label_text(value: Any) -> str:
    """A label as it is written (an integral float without its ``.0``)."""
    number = float(value) if np.asarray(value).dtype.kind == "f" else int(value)
    return str(int(number)) if isinstance(number, float) and number.is_integer() else str(number)


def _check_label_range(labels: np.ndarray, num_classes: int, what: str) -> None:
    if len(labels) and labels.max() >= num_classes:
        raise DataError(
            f"{what}: label {int(labels.max())} is out of range for "
            f"{num_classes} classes (valid: 0..{num_classes - 1})"
        )


def _scale_to_unit(x: np.ndarray) -> np.ndarray:
    if np.issubdtype(x.dtype, np.integer):
        top = np.iinfo(x.dtype).max
        return (x.astype(np.float32) / np.float32(top)).astype(np.float32)
    return x.astype(np.float32)


def _standardize(x: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    channels = x.shape[1] if x.ndim > 1 else 1
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise DataError(
                f"normalization {name} has {len(values)} values but the data has "
                f"{channels} channels"
            )
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = np.asarray(mean, dtype=np.float32).reshape(shape)
    s = np.asarray(std, dtype=np.float32).reshape(shape)
    return ((x - m) / s).astype(np.float32)


def _to_channels_first(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
        logger.info("%s looks channels-last %s; transposing to N×C×H×W", what, x.shape)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return x
