"""Accuracy of ONNX models (with onnxruntime) and of torch modules on in-memory data."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from evonnx.data.dataset import check_sample_shape
from evonnx.errors import ConfigError, DataError, ModelLoadError, UnsupportedModelError
from evonnx.model import session as sessions

logger = logging.getLogger(__name__)

Metric = Callable[[np.ndarray, np.ndarray], float]
"""``metric(outputs, labels) -> score`` over the whole evaluation set."""

DEFAULT_PROVIDERS: tuple[str, ...] = sessions.CPU_PROVIDERS

_ORT_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
}


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose highest-scoring class is the label.

    ``logits`` is ``N×C``; trailing singleton dims (``N×C×1×1``) are accepted.
    """
    scores = _as_class_scores(np.asarray(logits))
    labels = np.asarray(labels).reshape(-1)
    if len(scores) != len(labels):
        raise DataError(f"{len(scores)} predictions but {len(labels)} labels")
    if len(labels) == 0:
        raise DataError("cannot compute accuracy on zero samples")
    return float(np.mean(scores.argmax(axis=1) == labels))


def evaluate_onnx(
    model: onnx.ModelProto | str | Path,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 256,
    providers: Sequence[str] | None = None,
    metric: Metric | None = None,
) -> float:
    """Score an ONNX model with onnxruntime.

    A graph whose batch dim is fixed to ``b`` is run on chunks of exactly ``b`` samples, the
    last chunk padded by repeating its final sample (padded outputs are dropped); a fixed
    batch of 1 thus runs one sample at a time. A dynamic batch dim uses ``batch_size``.

    Args:
        model: A model proto or the path of an ``.onnx`` file.
        x: Samples matching the graph's single input (``N×C×H×W`` or ``N×features``).
        y: Labels (or whatever ``metric`` compares the outputs with), one per sample.
        batch_size: Chunk size for graphs with a dynamic batch dim.
        providers: onnxruntime execution providers; CPU by default.
        metric: ``metric(outputs, y)``; top-1 accuracy by default.

    Returns:
        The metric over all samples.

    Raises:
        ModelLoadError: If onnxruntime cannot load or run the model.
        UnsupportedModelError: If the graph does not have exactly one input.
        DataError: If ``x``/``y`` are empty, of different lengths, or do not fit the input.
    """
    x, y = _check_xy(x, y, batch_size)
    session = make_session(model, providers)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise UnsupportedModelError(
            f"evaluation needs a graph with one input, this one has "
            f"{len(inputs)}: {[i.name for i in inputs]}"
        )
    info = inputs[0]
    shape = [d if isinstance(d, int) and d > 0 else None for d in info.shape]
    if shape:
        check_sample_shape(x.shape[1:], shape, "the evaluation data")
    x = x.astype(_ORT_TO_NUMPY.get(info.type, np.dtype(np.float32)), copy=False)
    fixed = shape[0] if shape else None
    outputs = [
        _run(session, info.name, chunk)[:n]
        for chunk, n in _chunks(x, fixed or batch_size, pad=fixed is not None)
    ]
    return float((metric or top1_accuracy)(np.concatenate(outputs), y))


def evaluate_torch(
    module: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int = 256,
    metric: Metric | None = None,
    device: str = "cpu",
) -> float:
    """Score a torch module in eval mode (the counterpart of :func:`evaluate_onnx`).

    The module's device and train/eval mode are restored afterwards.
    """
    x, y = _check_xy(x, y, batch_size)
    target = torch.device(device)
    params = [*module.parameters(), *module.buffers()]
    original = params[0].device if params else torch.device("cpu")
    was_training = module.training
    module.to(target).eval()
    try:
        with torch.inference_mode():
            outputs = [
                module(torch.from_numpy(np.ascontiguousarray(chunk)).to(target))
                .float()
                .cpu()
                .numpy()
                for chunk, _ in _chunks(x, batch_size, pad=False)
            ]
    finally:
        module.train(was_training)
        module.to(original)
    return float((metric or top1_accuracy)(np.concatenate(outputs), y))


def predict_onnx(
    model: onnx.ModelProto | str | Path,
    inputs: np.ndarray | Sequence[np.ndarray],
    batch_size: int = 256,
    providers: Sequence[str] | None = None,
) -> list[np.ndarray]:
    """Run an ONNX model with onnxruntime on whole arrays and return every output.

    The building block of a :class:`~evonnx.retrain.task.Task` score: ``inputs`` is one array, or
    one
    per graph input (in graph order), all with the same number of samples; they are fed in
    chunks of ``batch_size`` (of the graph's batch size if it is fixed, the last chunk padded).

    Returns:
        One array per graph output, the chunks concatenated along its batch axis: the axis
        that grows with the batch (:func:`output_batch_axes`), axis 1 for a time-major
        ``[T, N, C]`` output.

    Raises:
        ModelLoadError: If onnxruntime cannot load or run the model.
        DataError: If the number of arrays or samples does not fit the graph.
    """
    arrays = [np.asarray(inputs)] if isinstance(inputs, np.ndarray) else list(inputs)
    session = make_session(model, providers)
    infos = session.get_inputs()
    if len(arrays) != len(infos) or len({len(a) for a in arrays}) != 1 or len(arrays[0]) == 0:
        raise DataError(
            f"the graph takes {len(infos)} inputs {[i.name for i in infos]}; got "
            f"{len(arrays)} arrays with {[len(a) for a in arrays]} samples"
        )
    first = infos[0].shape[0] if infos[0].shape else None
    fixed = first if isinstance(first, int) and first > 0 else None
    size = batch_size if fixed is None else fixed
    feeds = [
        a.astype(_ORT_TO_NUMPY.get(i.type, a.dtype), copy=False)
        for a, i in zip(arrays, infos, strict=True)
    ]
    parts: list[list[np.ndarray]] = []
    chunked = [_chunks(a, size, pad=fixed is not None) for a in feeds]
    axes: list[int] | None = None
    for chunks in zip(*chunked, strict=True):
        n = chunks[0][1]
        feed = {i.name: np.ascontiguousarray(c) for i, (c, _) in zip(infos, chunks, strict=True)}
        outs = [np.asarray(o) for o in _run_feed(session, feed)]
        if len(arrays[0]) <= size and n == len(chunks[0][0]):  # one unpadded chunk: as is
            return outs
        if axes is None:
            axes = output_batch_axes(session, feeds, fixed)
        parts.append([np.take(o, np.arange(n), axis=a) for o, a in zip(outs, axes, strict=True)])
    assert axes is not None
    return [
        np.concatenate(col, axis=a) for col, a in zip(zip(*parts, strict=True), axes, strict=True)
    ]


def _run_feed(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> list[Any]:
    try:
        return list(session.run(None, feed))
    except Exception as exc:  # onnxruntime raises bare Exception subclasses
        raise ModelLoadError(f"onnxruntime failed to run the model: {exc}") from exc


def output_batch_axes(
    session: ort.InferenceSession, feeds: Sequence[np.ndarray], fixed: int | None = None
) -> list[int]:
    """Per graph output, its batch axis: the one axis that grows from one sample to two (a
    CRNN's ``[T, N, C]``: 1), found by running the first samples; with a fixed batch size,
    the first axis of that size. 0 where no single axis qualifies (e.g. a reduced output).
    """
    infos = session.get_inputs()
    if fixed is not None:
        outs = _run_feed(
            session, {i.name: _rows(a, fixed) for i, a in zip(infos, feeds, strict=True)}
        )
        return [next((k for k, d in enumerate(np.shape(o)) if d == fixed), 0) for o in outs]
    one = _run_feed(session, {i.name: _rows(a, 1) for i, a in zip(infos, feeds, strict=True)})
    two = _run_feed(session, {i.name: _rows(a, 2) for i, a in zip(infos, feeds, strict=True)})
    axes = []
    for a, b in zip(one, two, strict=True):
        sa, sb = np.shape(a), np.shape(b)
        grown = [k for k in range(len(sa)) if len(sa) == len(sb) and (sa[k], sb[k]) == (1, 2)]
        same = len(sa) == len(sb) and all(sa[k] == sb[k] for k in range(len(sa)) if k not in grown)
        axes.append(grown[0] if len(grown) == 1 and same else 0)
    return axes


def _rows(a: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` samples of ``a`` (the last repeated when it has fewer)."""
    rows = a[:n]
    if len(rows) < n:
        rows = np.concatenate([rows, np.repeat(rows[-1:], n - len(rows), axis=0)])
    return np.ascontiguousarray(rows)


def make_session(
    model: onnx.ModelProto | str | Path, providers: Sequence[str] | None = None
) -> ort.InferenceSession:
    """Create a quiet onnxruntime session for a model proto or file
    (:func:`evonnx.model.session.make_session`; default providers: :data:`DEFAULT_PROVIDERS`).

    Raises:
        ModelLoadError: If the file is missing or onnxruntime rejects the model.
    """
    return sessions.make_session(
        model if isinstance(model, onnx.ModelProto) else Path(model),
        DEFAULT_PROVIDERS if providers is None else providers,
        error=ModelLoadError,
    )


# --------------------------------------------------------------------------- internals


def _check_xy(x: Any, y: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    xa, ya = np.asarray(x), np.asarray(y)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if xa.ndim < 1 or len(xa) == 0:
        raise DataError("cannot evaluate on zero samples")
    if ya.ndim < 1 or len(xa) != len(ya):
        raise DataError(
            f"x has {len(xa)} samples but y has {len(ya) if ya.ndim else 0} labels; they must match"
        )
    return xa, ya


def _chunks(x: np.ndarray, size: int, *, pad: bool) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(chunk, real_count)``; with ``pad`` every chunk has exactly ``size`` rows."""
    for start in range(0, len(x), size):
        chunk = x[start : start + size]
        n = len(chunk)
        if pad and n < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - n, axis=0)])
        yield chunk, n


def _run(session: ort.InferenceSession, name: str, chunk: np.ndarray) -> np.ndarray:
    try:
        return np.asarray(session.run(None, {name: np.ascontiguousarray(chunk)})[0])
    except Exception as exc:  # onnxruntime raises bare Exception subclasses
        raise ModelLoadError(
            f"onnxruntime failed to run the model on a batch of shape {chunk.shape}: {exc}"
        ) from exc


def _as_class_scores(logits: np.ndarray) -> np.ndarray:
    if logits.ndim > 2 and all(d == 1 for d in logits.shape[2:]):
        logits = logits.reshape(logits.shape[0], logits.shape[1])
    if logits.ndim != 2:
        raise DataError(
            f"top-1 accuracy needs N×classes outputs, got shape {logits.shape}; "
            "pass a metric for other kinds of output"
        )
    return logits
