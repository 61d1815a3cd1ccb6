"""Writing models with their weights in an external ``.data`` file (models over 2 GB).

Protobuf cannot serialize a message over 2 GB, so large models keep their weights beside the
``.onnx`` file. :func:`save_external` writes both files atomically without copying the model
in memory (``onnx.save(..., save_as_external_data=True)`` would also strip the weights from
the caller's model).
"""

from __future__ import annotations

import logging
import os
import posixpath
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from google.protobuf.message import Message
from onnx import numpy_helper

from evonnx.errors import ModelLoadError
from evonnx.model.textio import atomic_path

logger = logging.getLogger(__name__)

EXTERNAL_THRESHOLD = 1_800_000_000
"""Initializer bytes above which a model is written with external data."""

MIN_EXTERNAL_BYTES = 1024
"""Initializers smaller than this stay inside the ``.onnx`` file."""


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Bytes of a numeric tensor's data, from its dims (``ByteSize`` would walk the data)."""
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return t.ByteSize()
    n = 1
    for d in t.dims:
        n *= int(d)
    return n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Data size of the model's initializers (cheap: the data is not read)."""
    return sum(tensor_bytes(t) for t in model.graph.initializer)


def needs_external(model: onnx.ModelProto) -> bool:
    """True when ``model`` is too large for one protobuf message."""
    return initializer_bytes(model) > EXTERNAL_THRESHOLD


def check_location(location: str | None, tensor: str, base: Path) -> Path:
    """The file an external-data ``location`` names inside the model's folder ``base``.

    The location is judged by its text alone before any file is looked at, so the message
    for a location outside the folder is the same whether or not that outside path exists.

    Raises:
        ModelLoadError: The location is missing, empty, absolute, escapes the folder (also
            through a symbolic link in it), or names no file.
    """
    where = f"external data of tensor {tensor!r}"
    if location is None or not location.strip():
        raise ModelLoadError(f"{where} has no location (a file name beside the model)")
    if "\x00" in location or len(location) > 4096:
        raise ModelLoadError(f"{where} has a malformed location {location[:80]!r}")
    outside = ModelLoadError(
        f"{where} has location {location!r}, outside the model's folder; it must be a file "
        "name relative to the folder that holds the .onnx file"
    )
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).anchor:
        raise outside
    normal = posixpath.normpath(location.replace("\\", "/"))
    if normal == "." or normal == ".." or normal.startswith("../"):
        raise outside
    path = base / normal
    try:
        real = Path(os.path.realpath(path))
        inside = real.is_relative_to(Path(os.path.realpath(base)))
    except (OSError, ValueError):
        inside = False
    if not inside:  # a link inside the folder: same message as a path outside it
        raise outside
    if not path.is_file():
        raise ModelLoadError(f"{where}: file {location!r} is missing next to the model")
    return path


def save_external(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` to ``path`` with its large weights in ``<name>.data`` beside it.

    Both files are written to temporary names and renamed (the data first); ``model`` is
    not modified.
    """
    p = Path(path)
    data_path = p.with_name(f"{p.name}.data")
    light = without_initializers(model)
    with atomic_path(p) as tmp_model, atomic_path(data_path) as tmp_data:
        with tmp_data.open("wb") as f:
            for t in model.graph.initializer:
                if (
                    t.ByteSize() < MIN_EXTERNAL_BYTES
                    or t.data_location == onnx.TensorProto.EXTERNAL
                ):
                    light.graph.initializer.append(t)
                    continue
                raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
                offset = f.tell()
                f.write(raw)
                light.graph.initializer.append(_external_stub(t, data_path.name, offset, len(raw)))
                del raw
        onnx.save(light, str(tmp_model))
    logger.info("wrote %s with external data %s", p, data_path.name)
    return p


def _external_stub(
    t: onnx.TensorProto, location: str, offset: int, length: int
) -> onnx.TensorProto:
    stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
    if t.doc_string:
        stub.doc_string = t.doc_string
    stub.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value
    return stub


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Copy of ``model`` whose graph has no initializers (the weights are not copied)."""
    light = onnx.ModelProto()
    _copy_fields(model, light, skip="graph")
    _copy_fields(model.graph, light.graph, skip="initializer")
    return light


def _copy_fields(src: Message, dst: Message, skip: str) -> None:
    for field, value in src.ListFields():
        if field.name == skip:
            continue
        if field.is_repeated:
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)
