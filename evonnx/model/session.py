"""The one place that creates onnxruntime sessions: :func:`make_session`.

Every caller (output checks, shape runs, importance, evaluation, fidelity, latency checks
and timed benchmarks) states what it needs through its arguments: providers, optimization,
thread pools, log level and how a model onnxruntime rejects is reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx
import onnxruntime as ort

from evonnx.errors import EvonnxError, ModelLoadError
from evonnx.model.textio import dangling_link

CPU_PROVIDERS: tuple[str, ...] = ("CPUExecutionProvider",)
"""onnxruntime's CPU provider alone: the default of :func:`make_session`."""


def make_session(
    model: onnx.ModelProto | bytes | str | Path,
    providers: Sequence[str] = CPU_PROVIDERS,
    *,
    optimize: bool = True,
    threads: int | None = None,
    inter_threads: int | None = None,
    global_pool: bool = False,
    spinning: bool | None = None,
    log_severity: int = 4,
    error: type[EvonnxError] | None = None,
    label: str | None = None,
) -> ort.InferenceSession:
    """An onnxruntime session for a model proto, serialized model or ``.onnx`` file.

    Args:
        model: The model, its serialized bytes, or the path of its file.
        providers: onnxruntime execution providers, in order of preference.
        optimize: All graph optimizations (onnxruntime's default) or none.
        threads: Intra-op threads of a per-session pool (``0``: onnxruntime's choice;
            ``None``: onnxruntime's default).
        inter_threads: Inter-op threads of a per-session pool (``None``: the default).
        global_pool: Use the process-wide thread pools instead of per-session ones.
        spinning: Whether idle intra-op threads spin (``None``: onnxruntime's default).
        log_severity: onnxruntime's log level (4, fatal only: errors come back as exceptions).
        error: Raise this for a model onnxruntime rejects, ``"onnxruntime cannot load
            <label>: <reason>"``, instead of onnxruntime's own exception.
        label: How ``error`` names the model (default: the model's graph name or path).

    Raises:
        ModelLoadError: ``model`` is a path to no file.
        EvonnxError: The ``error`` type, when onnxruntime rejects the model.
    """
    source: str | bytes
    if isinstance(model, onnx.ModelProto):
        source, named = model.SerializeToString(), f"model {model.graph.name!r}"
    elif isinstance(model, bytes):
        source, named = model, "the model"
    else:
        if not Path(model).is_file():
            raise ModelLoadError(dangling_link(model) or f"ONNX model {model} does not exist")
        source = named = str(model)
    options = _options(optimize, (threads, inter_threads), global_pool, spinning, log_severity)
    try:
        return ort.InferenceSession(source, options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        if error is None:
            raise
        raise error(f"onnxruntime cannot load {label or named}: {exc}") from exc


def _options(
    optimize: bool,
    threads: tuple[int | None, int | None],
    global_pool: bool,
    spinning: bool | None,
    log_severity: int,
) -> ort.SessionOptions:
    """Session options as :func:`make_session` describes its arguments (``threads``: intra-op
    and inter-op)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = log_severity
    if global_pool:
        options.use_per_session_threads = False
    intra, inter = threads
    if intra is not None:
        options.intra_op_num_threads = intra
    if inter is not None:
        options.inter_op_num_threads = inter
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", str(int(spinning)))
    return options
