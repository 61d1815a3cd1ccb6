"""Unlabelled inputs of a model: a folder of images or an ``.npz`` named after graph inputs.

:func:`load_inputs` returns one float/int array per graph input (samples along axis 0), checked
against the graph: the label-free fidelity task (:mod:`evonnx.retrain.fidelity`) runs the ancestor
on
them to get its teacher outputs.

Images are read with Pillow (``pip install 'evonnx[images]'``), converted to the model's
channel count (1: grayscale, 3: RGB, or BGR with ``bgr``), resized to ``resize`` (or to the
graph's fixed height and width), scaled to [0, 1], then standardized with ``mean`` and ``std``
(one value, or one per channel, on the [0, 1] scale as in torchvision). The layout (NCHW or
NHWC) is read from the graph input: the axis of size 1 or 3 next to the batch axis (NCHW)
or last (NHWC).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx

from evonnx.data.dataset import IMAGE_SUFFIXES
from evonnx.errors import ConfigError, DataError
from evonnx.model.graph import graph_inputs
from evonnx.model.textio import dangling_link

logger = logging.getLogger(__name__)

Layout = Literal["NCHW", "NHWC"]
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


@dataclass(frozen=True)
class ImagePreprocess:
    """How a folder of images becomes model inputs.

    Attributes:
        resize: ``(height, width)`` every image is resized to (bilinear); ``None``: the graph's
            fixed height and width, else the images' own (which must then agree).
        mean: Subtracted after scaling pixels to [0, 1]: one value or one per channel.
        std: Divides after subtracting ``mean``: one value or one per channel.
        bgr: Channel order BGR instead of RGB (3-channel models).
    """

    resize: tuple[int, int] | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    bgr: bool = False

    def __post_init__(self) -> None:
        if self.resize is not None and (len(self.resize) != 2 or min(self.resize) < 1):
            raise ConfigError(f"resize must be (height, width) >= 1, got {self.resize}")
        if not self.mean or not self.std:
            raise ConfigError("mean and std need at least one value each")
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"std values must be > 0, got {self.std}")

    def describe(self) -> str:
        """Stable text of the settings (part of the fidelity task's fingerprint)."""
        return f"resize={self.resize}|mean={self.mean}|std={self.std}|bgr={self.bgr}"


def load_inputs(
    source: str | Path | Mapping[str, np.ndarray],
    model: onnx.ModelProto,
    preprocess: ImagePreprocess | None = None,
) -> dict[str, np.ndarray]:
    """One array per graph input, samples along axis 0, checked against ``model``.

    Args:
        source: A folder of images (searched recursively), an ``.npz`` file whose arrays are
            named after the graph inputs, or such arrays in memory.
        model: The model the inputs are for.
        preprocess: Image settings (only for a folder).

    Raises:
        DataError: Nothing readable, names or shapes that do not fit the graph.
        ConfigError: Image settings for something that is not an image folder.
    """
    if isinstance(source, Mapping):
        _no_preprocess(preprocess, "arrays")
        return check_arrays(dict(source), model, "the inputs")
    path = Path(source)
    if path.is_dir():
        return load_image_folder_inputs(path, model, preprocess or ImagePreprocess())
    if not path.is_file():
        link = dangling_link(path)
        raise DataError(f"inputs {link}" if link else f"inputs {path} do not exist")
    if path.suffix.lower() != ".npz":
        raise DataError(f"inputs {path} must be a folder of images or an .npz file")
    _no_preprocess(preprocess, "an .npz file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from exc
    return check_arrays(arrays, model, str(path))


def check_arrays(
    arrays: dict[str, np.ndarray], model: onnx.ModelProto, what: str
) -> dict[str, np.ndarray]:
    """``arrays`` restricted to the graph inputs, cast to their element types and checked.

    Raises:
        DataError: No name matches a graph input, one is missing, ranks, fixed dimensions
            or sample counts disagree, or values are not finite.
    """
    infos = graph_inputs(model)
    names = [i.name for i in infos]
    if not set(arrays) & set(names):
        raise DataError(
            f"{what} holds arrays {sorted(arrays)} but the model's inputs are {names}; name "
            "each array after a graph input"
        )
    missing = [n for n in names if n not in arrays]
    if missing:
        raise DataError(f"{what} has no array for graph input(s) {missing}")
    extra = sorted(set(arrays) - set(names))
    if extra:
        logger.warning("%s: ignoring arrays %s (not graph inputs)", what, extra)
    out = {info.name: _checked(arrays[info.name], info, what) for info in infos}
    counts = {len(a) for a in out.values()}
    if len(counts) != 1:
        raise DataError(f"{what}: the arrays hold different numbers of samples {sorted(counts)}")
    return out


def _checked(arr: np.ndarray, info: onnx.ValueInfoProto, what: str) -> np.ndarray:
    tt = info.type.tensor_type
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
    dims = list(tt.shape.dim) if tt.HasField("shape") else None
    if arr.ndim == 0 or len(arr) == 0:
        raise DataError(f"{what}: array {info.name!r} holds no samples")
    if dims is not None and len(dims) != arr.ndim:
        raise DataError(
            f"{what}: array {info.name!r} has shape {arr.shape}, the graph input has rank "
            f"{len(dims)}"
        )
    for k, d in list(enumerate(dims or []))[1:]:
        if d.HasField("dim_value") and d.dim_value != arr.shape[k]:
            raise DataError(
                f"{what}: array {info.name!r} has shape {arr.shape}; the graph input needs "
                f"{d.dim_value} at axis {k}"
            )
    if np.issubdtype(dtype, np.floating) and not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{what}: array {info.name!r} is {arr.dtype}, not numbers")
    out = np.ascontiguousarray(arr.astype(dtype, copy=False))
    if np.issubdtype(dtype, np.floating) and not np.isfinite(out).all():
        raise DataError(f"{what}: array {info.name!r} holds NaN or infinite values")
    return out


def image_layout(info: onnx.ValueInfoProto) -> tuple[Layout, int, int | None, int | None]:
    """``(layout, channels, height, width)`` of a 4-D image input (``None``: symbolic).

    Raises:
        DataError: The input is not 4-D or neither axis 1 nor axis 3 holds 1 or 3 channels.
    """
    dims = list(info.type.tensor_type.shape.dim)
    if len(dims) != 4:
        raise DataError(
            f"an image folder needs a 4-D image input; input {info.name!r} has rank "
            f"{len(dims)} (give an .npz whose arrays are named after the graph inputs)"
        )
    size = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if size[1] in (1, 3):
        return "NCHW", int(size[1]), size[2], size[3]
    if size[3] in (1, 3):
        return "NHWC", int(size[3]), size[1], size[2]
    raise DataError(
        f"cannot tell the channel axis of input {info.name!r} (shape {size}): neither axis 1 "
        "nor axis 3 has 1 or 3 channels; give an .npz instead"
    )


def load_image_folder_inputs(
    folder: Path, model: onnx.ModelProto, preprocess: ImagePreprocess
) -> dict[str, np.ndarray]:
    """Every readable image under ``folder``, preprocessed for the model's one image input.

    Raises:
        DataError: Not one 4-D input, no readable image, another channel count, or images
            of different sizes without ``resize``.
        ConfigError: ``resize`` disagrees with the graph's fixed size, or ``mean``/``std``
            have neither one value nor one per channel.
    """
    infos = graph_inputs(model)
    if len(infos) != 1:
        raise DataError(
            f"an image folder feeds a model with one input; this one has {len(infos)} "
            f"{[i.name for i in infos]} (give an .npz named after them)"
        )
    layout, channels, height, width = image_layout(infos[0])
    size = _target_size(preprocess.resize, height, width)
    mean = _per_channel(preprocess.mean, channels, "mean")
    std = _per_channel(preprocess.std, channels, "std")
    image_module = _pillow()
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    pixels = [
        img for img in (_read(image_module, p, channels, size) for p in paths) if img is not None
    ]
    if not pixels:
        raise DataError(f"{folder} holds no readable image ({', '.join(sorted(IMAGE_SUFFIXES))})")
    shapes = {p.shape for p in pixels}
    if len(shapes) != 1:
        raise DataError(
            f"images under {folder} differ in size ({sorted(s[:2] for s in shapes)[:3]}); "
            "give --resize HxW"
        )
    x = np.stack(pixels).astype(np.float32) / 255.0  # N, H, W, C
    if preprocess.bgr and channels == 3:
        x = x[..., ::-1]
    x = (x - mean) / std
    if layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    logger.info("read %d images from %s as %s %s", len(x), folder, layout, x.shape[1:])
    return check_arrays({infos[0].name: x}, model, str(folder))


def _target_size(
    resize: tuple[int, int] | None, height: int | None, width: int | None
) -> tuple[int, int] | None:
    graph = (height, width) if height is not None and width is not None else None
    if resize is not None and graph is not None and tuple(resize) != graph:
        raise ConfigError(
            f"--resize {resize[0]}x{resize[1]} disagrees with the model's fixed input size "
            f"{graph[0]}x{graph[1]}"
        )
    return tuple(resize) if resize is not None else graph  # type: ignore[return-value]


def _read(image_module: Any, path: Path, channels: int, size: tuple[int, int] | None) -> Any:
    """``H×W×C`` uint8 pixels of one image (``None`` with a warning when unreadable)."""
    try:
        with image_module.open(path) as img:
            native = 1 if img.mode in _GRAY_MODES else 3
            if native != channels:
                raise DataError(
                    f"{path}: {native}-channel image ({img.mode}), but the model takes "
                    f"{channels} channel{'s' if channels > 1 else ''}"
                )
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), image_module.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        logger.warning("skipping unreadable image %s (%s)", path, exc)
        return None
    return arr[..., None] if arr.ndim == 2 else arr


def _per_channel(values: tuple[float, ...], channels: int, what: str) -> np.ndarray:
    if len(values) not in (1, channels):
        raise ConfigError(
            f"--{what} has {len(values)} values; give one, or one per channel ({channels})"
        )
    return np.asarray(values, dtype=np.float32)


def _no_preprocess(preprocess: ImagePreprocess | None, what: str) -> None:
    if preprocess is not None and preprocess != ImagePreprocess():
        raise ConfigError(f"image preprocessing (resize, mean, std, bgr) does not apply to {what}")


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError(
            "reading an image folder needs Pillow: pip install 'evonnx[images]'"
        ) from exc
    return Image
