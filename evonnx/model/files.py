"""ONNX files on disk: :func:`load_model` reads, checks and normalizes; :func:`save_model`
writes atomically, with the weights in an external ``.data`` file when they need one."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from evonnx.errors import ModelLoadError, first_line
from evonnx.model.external import check_location, needs_external, save_external
from evonnx.model.graph import check_model
from evonnx.model.normalize import normalize as normalize_model
from evonnx.model.textio import atomic_path, dangling_link

logger = logging.getLogger(__name__)


def load_model(path: str | Path, normalize: bool = True) -> onnx.ModelProto:
    """Read and validate an ONNX file (external data included).

    Args:
        path: The ``.onnx`` file.
        normalize: Rewrite exporter quirks (see :func:`evonnx.model.normalize.normalize`).

    Raises:
        ModelLoadError: The file is missing, not an ONNX protobuf, or its external data is absent.
        UnsupportedModelError: Its default-domain opset is outside what evonnx supports.
    """
    p = Path(path)
    if p.is_dir():
        raise ModelLoadError(f"{p} is a folder; give the path of an .onnx model file")
    if not p.is_file():
        raise ModelLoadError(dangling_link(p) or f"model file not found: {p}")
    if p.stat().st_size == 0:
        raise ModelLoadError(f"{p} is empty (0 bytes), not an ONNX model")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{p} is not a valid ONNX model: {exc}") from exc
    if not model.graph.node and not model.opset_import:
        raise ModelLoadError(f"{p} holds no ONNX graph; is it an .onnx model file?")
    _load_external(model, p.parent)
    check_model(model, str(p))
    if normalize:
        model = normalize_model(model)[0]
    return model


def _load_external(model: onnx.ModelProto, base: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    for t in model.graph.initializer:
        if uses_external_data(t):
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            check_location(loc, t.name, base)
    try:
        load_external_data_for_model(model, str(base))
    except (OSError, ValueError, onnx.checker.ValidationError) as exc:
        raise ModelLoadError(f"cannot read external data: {first_line(exc)}") from exc


def keeps_external_data(path: str | Path) -> bool | None:
    """``True`` when the ONNX file at ``path`` keeps weights in external data files.

    Writers pass it on as ``save_model(..., external_data=...)``, so that a model given with a
    ``.data`` file is written the same way; ``None`` otherwise (the size decides).
    """
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    return True if any(uses_external_data(t) for t in model.graph.initializer) else None


def save_model(model: onnx.ModelProto, path: str | Path, external_data: bool | None = None) -> Path:
    """Write ``model`` atomically (temporary file in the same folder, then rename).

    Args:
        model: The model (not modified).
        path: The ``.onnx`` file.
        external_data: Put the weights in ``<name>.data`` beside the file; ``None`` does so
            when the weights exceed 1.8 GB (protobuf cannot hold 2 GB).
    """
    p = Path(path)
    if needs_external(model) if external_data is None else external_data:
        return save_external(model, p)
    with atomic_path(p) as tmp:
        onnx.save(model, str(tmp))
    return p
