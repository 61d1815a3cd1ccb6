"""Error hierarchy: every failure a user can cause is an :class:`EvonnxError`."""

from __future__ import annotations

from collections.abc import Iterable


class EvonnxError(Exception):
    """Base class of all errors evonnx reports to users."""


class ModelLoadError(EvonnxError):
    """The ONNX file is missing, corrupt, or cannot be used."""


class UnsupportedModelError(EvonnxError):
    """The model uses something evonnx cannot handle (opset, op, structure)."""


class PlanError(EvonnxError):
    """A pruning plan does not fit the model's channel groups."""


class LatencyBudgetError(PlanError):
    """No offspring fits the latency budget: nothing is left to remove."""


class DataError(EvonnxError):
    """A data set is missing, malformed, or does not match the model."""


class ConversionError(EvonnxError):
    """An ONNX graph cannot be turned into a torch module."""


class ConfigError(EvonnxError, ValueError):
    """A setting (option, config field) is out of range or contradicts another."""


class RunDirectoryError(EvonnxError):
    """The output directory holds something other than this run, or is in use."""


class DeployError(EvonnxError):
    """A model cannot be benchmarked or exported as asked."""


class ProviderError(DeployError):
    """An onnxruntime execution provider is unknown or not available in this build."""


class RebatchError(DeployError):
    """The batch dimension of a model cannot be changed to the requested size."""


class TaskError(EvonnxError):
    """A user task (``--task``) cannot be loaded, or it failed while training or scoring."""


class RuntimeUnavailableError(DeployError):
    """A latency runtime (``torch-cuda``, ``tensorrt``, ...) cannot run on this machine."""


class ExecutorError(EvonnxError):
    """Offspring jobs could not run: a worker died for good or a cluster is unreachable."""


class RankDiedError(ExecutorError):
    """A data-parallel rank's worker died (not a data or model error): the job may be rerun."""


class OutputMismatchError(EvonnxError):
    """A rewritten graph's outputs differ from its input's: nothing is written."""


class NonFiniteError(EvonnxError):
    """A model's weights, a training loss or a score is NaN or infinite."""


class NonFiniteScoreError(NonFiniteError, TaskError):
    """A task scored a model as NaN or infinite (that offspring fails)."""


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM (a ``KeyboardInterrupt``, so it stops work the same way)."""


def require(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise :class:`ConfigError` with the message of the first failed ``(ok, message)`` check.

    How settings objects refuse bad values in their ``__post_init__``.
    """
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message, or its type's name when the message is empty."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
