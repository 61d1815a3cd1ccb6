"""Checks made before anything is written: finite weights, options that take effect, resources.

Every check here raises an :class:`~evonnx.errors.EvonnxError` with one line naming what is
wrong and how to fix it; commands call them before their first write, so a refused run leaves
nothing behind that would block a rerun or a resume with the fix.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import onnx

from evonnx.errors import ConfigError, NonFiniteError, UnsupportedModelError
from evonnx.model.graph import non_finite_weights

if TYPE_CHECKING:
    from evonnx.evolution.settings import EvolveConfig
    from evonnx.pruning.groups import Analysis
    from evonnx.pruning.metrics import LayerMetrics, ModelMetrics
    from evonnx.runtimes.base import RuntimeSettings

logger = logging.getLogger(__name__)


def check_finite_weights(model: onnx.ModelProto, what: str = "the model") -> None:
    """Refuse a model with NaN or infinite weights.

    Raises:
        NonFiniteError: Some weight is NaN or infinite (the first names are given).
    """
    bad = non_finite_weights(model)
    if bad:
        raise NonFiniteError(
            f"{what} has NaN or infinite weights in {', '.join(bad[:3])}"
            f"{', ...' if len(bad) > 3 else ''}; nothing can be learned from it"
        )


def zero_layers(metrics: ModelMetrics) -> list[LayerMetrics]:
    """The conv/FC layers of ``metrics`` whose every weight is zero."""
    return [m for m in metrics.layers if m.synapses and m.nonzero_synapses == 0]


def zero_layers_text(layers: list[LayerMetrics]) -> str:
    """``layer conv2 (weight w2) is all zeros`` for the first three of ``layers``."""
    names = ", ".join(f"{m.node} (weight {m.weight})" for m in layers[:3])
    more = ", ..." if len(layers) > 3 else ""
    verb = "is" if len(layers) == 1 else "are"
    return f"layer{'s' if len(layers) > 1 else ''} {names}{more} {verb} all zeros"


def warn_zero_layers(metrics: ModelMetrics, what: str = "the ancestor") -> None:
    """Log a warning naming the all-zero layers of ``what`` (their zeros stay zero while
    offspring retrain, so the network computes a constant past them)."""
    zero = zero_layers(metrics)
    if zero:
        logger.warning(
            "%s: %s; past %s the network computes a constant, and zero weights stay "
            "zero while offspring retrain",
            what, zero_layers_text(zero), "it" if len(zero) == 1 else "them",
        )  # fmt: skip


def check_float32(model: onnx.ModelProto) -> None:
    """Refuse a half-precision model for evolution (offspring retrain in float32).

    Raises:
        UnsupportedModelError: Some weight is float16 or bfloat16.
    """
    half = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    names = [t.name for t in model.graph.initializer if t.data_type in half]
    if names:
        raise UnsupportedModelError(
            f"the ancestor has half-precision weights ({', '.join(names[:3])}"
            f"{', ...' if len(names) > 3 else ''}); evolve a float32 model and convert the "
            "result with `evonnx export --fp16`"
        )


def check_runtime_settings(settings: RuntimeSettings) -> None:
    """Refuse latency settings that would do nothing on their runtime.

    Raises:
        ConfigError: ``--runtime-threads`` with a runtime other than ``ort-cpu``.
    """
    if settings.threads and settings.name != "ort-cpu":
        raise ConfigError(
            f"--runtime-threads sets ort-cpu's intra-op threads; runtime {settings.name} "
            "ignores it (drop the option)"
        )


def check_threads(threads: int | None, option: str = "--threads") -> None:
    """Refuse more threads than this machine has CPUs.

    Raises:
        ConfigError: ``threads`` is above ``os.cpu_count()``.
    """
    cpus = os.cpu_count() or 1
    if threads is not None and threads > cpus:
        raise ConfigError(f"{option} {threads} is more than the {cpus} CPUs of this machine")


def check_resources(config: EvolveConfig) -> None:
    """Check the machine can run ``config`` before the run writes anything.

    On the local and process executors: ``threads`` within this machine's CPUs and the
    latency runtime usable here (a Ray cluster's own resources are checked when it is
    reached, see :class:`~evonnx.execute.executors.RayExecutor`).

    Raises:
        ConfigError: Too many threads, or latency settings the runtime ignores.
        RuntimeUnavailableError, ProviderError: The latency runtime cannot run here.
    """
    settings = config.measurement()
    if settings is not None:
        check_runtime_settings(settings.runtime)
    if config.executor == "ray":
        return
    check_threads(config.threads)
    if settings is not None:
        from evonnx.runtimes.registry import make_runtime

        make_runtime(settings.runtime)


def check_round_to(analysis: Analysis, round_to: int | None) -> None:
    """Refuse a ``round_to`` larger than every prunable group (groups smaller than it are
    not rounded, so it would round nothing).

    Raises:
        ConfigError: ``round_to`` exceeds the size of every prunable group.
    """
    sizes = [g.size for g in analysis.prunable_groups]
    if round_to is not None and sizes and round_to > max(sizes):
        raise ConfigError(
            f"--round-to {round_to} is larger than every prunable channel group (the largest "
            f"has {max(sizes)} channels), so it would round nothing; choose a smaller one"
        )
