"""Side-by-side onnxruntime latency of two or more models, next to their MAC ratio.

Measurement protocol (:func:`benchmark`):

* Every model is re-batched to each requested batch size (:func:`~evonnx.model.batch.rebatch`)
  and gets one ``InferenceSession`` per batch size, all in one process, with the same
  session options (full graph optimizations, sequential execution).
* Thread pool: by default (``isolate=True``) the measurement runs in a fresh child
  process, where all CPU sessions share onnxruntime's process-wide *global* intra-op thread pool
  (``set_global_thread_pool_sizes(threads, 1)`` + ``use_per_session_threads = False``), sized
  ``threads`` (0: onnxruntime's default, one thread per physical core). The child is needed
  because the global pools can be created once per process and, once they exist, every later
  session of that process must use them. With ``isolate=False`` the measurement runs in the
  calling process and every session gets its own pool with the same ``intra_op_num_threads``
  and spinning disabled, so an idle session's threads do not spin while another model runs.
  The mode is recorded as ``thread_pool`` (``"global"`` or ``"per-session"``; GPU providers
  always use per-session pools).
* ``warmup`` rounds, then ``runs`` rounds; each round runs every model once, in alternating
  order (A B, B A, ...), so slow drifts of the machine hit all models alike. The inputs are the
  same random tensors for every model of equal input shapes.
* Latency is the wall time of ``session.run`` (host-side inputs and outputs included).
  Throughput is ``batch / median``. The speed-up of a model is the reference's (the first
  model's) median latency over its own; the MAC ratio is the reference's MACs per sample over
  its own (:func:`evonnx.pruning.metrics.compute_metrics`); ``realized = speed-up / MAC ratio``.

Providers ``cpu``, ``cuda`` and ``tensorrt`` map to onnxruntime execution providers. A provider
missing from ``onnxruntime.get_available_providers()`` raises :class:`ProviderError`; it is
never replaced by the CPU (nodes a GPU provider cannot run still fall back, as onnxruntime
partitions graphs per node).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from evonnx.errors import DeployError, EvonnxError
from evonnx.model.batch import batch_info, rebatch
from evonnx.model.graph import graph_inputs
from evonnx.model.memory import check_batch_fits
from evonnx.pruning.metrics import compute_metrics
from evonnx.runtimes.ort_timing import (
    PROVIDERS,
    TimingJob,
    check_counts,
    resolve_provider,
    run_timing,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """Latency of one model at one batch size.

    Attributes:
        batch: Batch size.
        median_ms: Median latency of one ``run`` in milliseconds.
        p90_ms: 90th-percentile latency in milliseconds.
        min_ms: Fastest run in milliseconds.
        throughput: Samples per second at the median latency.
        runs: Timed runs.
    """

    batch: int
    median_ms: float
    p90_ms: float
    min_ms: float
    throughput: float
    runs: int


@dataclass(frozen=True)
class ModelTiming:
    """Timings of one model at every batch size.

    Attributes:
        name: Label of the model.
        macs: Multiply-accumulates per sample.
        timings: One entry per batch size, in the requested order.
    """

    name: str
    macs: int
    timings: tuple[Timing, ...]

    def at(self, batch: int) -> Timing:
        """Timing at ``batch``."""
        for t in self.timings:
            if t.batch == batch:
                return t
        raise KeyError(batch)


@dataclass(frozen=True)
class Speedup:
    """One model against the reference (first) model at one batch size.

    Attributes:
        model: Label of the model.
        reference: Label of the reference model.
        batch: Batch size.
        speedup: Reference median latency / this model's median latency.
        mac_ratio: Reference MACs / this model's MACs (``None`` when a count is 0).
        realized: ``speedup / mac_ratio`` (``None`` without a MAC ratio).
    """

    model: str
    reference: str
    batch: int
    speedup: float
    mac_ratio: float | None
    realized: float | None


@dataclass(frozen=True)
class BenchResult:
    """Everything one :func:`benchmark` call measured.

    Attributes:
        provider: Short provider name (``cpu``, ``cuda``, ``tensorrt``).
        threads: Intra-op threads (0: onnxruntime's default).
        thread_pool: ``"global"`` (one pool shared by all sessions) or ``"per-session"``.
        warmup: Untimed rounds per batch size.
        runs: Timed rounds per batch size.
        batches: Batch sizes, in the order measured.
        models: Per-model timings, the reference first.
        speedups: Every other model against the reference, per batch size.
    """

    provider: str
    threads: int
    thread_pool: str
    warmup: int
    runs: int
    batches: tuple[int, ...]
    models: tuple[ModelTiming, ...]
    speedups: tuple[Speedup, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def benchmark(
    models: Sequence[onnx.ModelProto],
    names: Sequence[str] | None = None,
    batches: Sequence[int] = (1,),
    provider: str = "cpu",
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 50,
    seed: int = 0,
    isolate: bool = True,
) -> BenchResult:
    """Measure the models' latencies interleaved in one process and compare them.

    Args:
        models: Two or more models; the first is the reference (the ancestor).
        names: Labels (default ``model0``, ``model1``, ...).
        batches: Batch sizes to measure.
        provider: ``cpu``, ``cuda`` or ``tensorrt``.
        threads: Intra-op threads (``None`` or 0: onnxruntime's default).
        warmup: Untimed rounds per batch size.
        runs: Timed rounds per batch size.
        seed: Seed of the random inputs.
        isolate: Measure in a fresh child process whose sessions share one global thread
            pool (CPU); ``False`` measures here, each session with its own pool.

    Raises:
        DeployError: Bad arguments, a model that cannot be re-batched or run.
        ProviderError: The provider is not available.
    """
    labels = _checked_labels(models, names, batches, warmup, runs, threads)
    ep = resolve_provider(provider)
    n_threads = threads or 0
    pool = "global" if isolate and ep == PROVIDERS["cpu"] else "per-session"
    job = TimingJob(
        models=tuple(tuple(rebatch(m, b).SerializeToString() for m in models) for b in batches),
        labels=tuple(labels),
        provider=ep,
        pool=pool,
        threads=n_threads,
        warmup=warmup,
        runs=runs,
        seed=seed,
    )
    timings = _model_timings(models, labels, batches, run_timing(job, isolate))
    return BenchResult(
        provider=provider.lower(),
        threads=n_threads,
        thread_pool=pool,
        warmup=warmup,
        runs=runs,
        batches=tuple(batches),
        models=timings,
        speedups=_speedups(timings),
    )


def _checked_labels(
    models: Sequence[onnx.ModelProto],
    names: Sequence[str] | None,
    batches: Sequence[int],
    warmup: int,
    runs: int,
    threads: int | None,
) -> list[str]:
    """The models' labels, once the arguments and each model's largest batch are checked."""
    labels = _labels(models, names)
    _check_same_inputs(models, labels)
    check_counts(batches, warmup, runs, threads)
    for model in models:
        check_batch_fits(model, max(batches))
    return labels


def _model_timings(
    models: Sequence[onnx.ModelProto],
    labels: Sequence[str],
    batches: Sequence[int],
    samples: Sequence[np.ndarray],
) -> tuple[ModelTiming, ...]:
    """Per model, its MACs and its timing at each batch size (``samples[batch][model]``)."""
    macs = [_macs_per_sample(m) for m in models]
    return tuple(
        ModelTiming(lab, macs[i], tuple(_timing(b, samples[k][i]) for k, b in enumerate(batches)))
        for i, lab in enumerate(labels)
    )


def _labels(models: Sequence[onnx.ModelProto], names: Sequence[str] | None) -> list[str]:
    if len(models) < 2:
        raise DeployError(f"benchmark needs at least two models, got {len(models)}")
    labels = list(names) if names is not None else [f"model{i}" for i in range(len(models))]
    if len(labels) != len(models):
        raise DeployError(f"{len(labels)} names given for {len(models)} models")
    if len(set(labels)) != len(labels):
        raise DeployError(f"model names must be unique: {labels}")
    return labels


def _input_signature(model: onnx.ModelProto) -> list[str]:
    """Element type and per-sample shape (batch dim left out) of each graph input."""
    out = []
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        dims = [str(d.dim_value) if d.HasField("dim_value") else "?" for d in tt.shape.dim][1:]
        out.append(f"{onnx.TensorProto.DataType.Name(tt.elem_type).lower()}[N×{'×'.join(dims)}]")
    return out


def _check_same_inputs(models: Sequence[onnx.ModelProto], labels: Sequence[str]) -> None:
    """Refuse to compare models that do not take the same inputs (speed-ups would be void)."""
    reference = _input_signature(models[0])
    for model, label in zip(models[1:], labels[1:], strict=True):
        other = _input_signature(model)
        if other != reference:
            raise DeployError(
                f"{label} takes inputs {', '.join(other)} but {labels[0]} takes "
                f"{', '.join(reference)}; benchmark offspring of the same ancestor"
            )


def _timing(batch: int, seconds: np.ndarray) -> Timing:
    median = float(np.median(seconds))
    return Timing(
        batch=batch,
        median_ms=median * 1e3,
        p90_ms=float(np.percentile(seconds, 90)) * 1e3,
        min_ms=float(np.min(seconds)) * 1e3,
        throughput=batch / median if median > 0 else float("inf"),
        runs=int(seconds.size),
    )


def _macs_per_sample(model: onnx.ModelProto) -> int:
    """Dense MACs of one sample (metrics count a fixed batch as it is)."""
    macs = compute_metrics(model).macs
    try:
        fixed = batch_info(model).fixed
    except EvonnxError:
        fixed = None
    return macs // fixed if fixed else macs


def _speedups(timings: Sequence[ModelTiming]) -> tuple[Speedup, ...]:
    ref = timings[0]
    out = []
    for mt in timings[1:]:
        mac_ratio = ref.macs / mt.macs if ref.macs and mt.macs else None
        for t in mt.timings:
            speedup = ref.at(t.batch).median_ms / t.median_ms
            realized = speedup / mac_ratio if mac_ratio else None
            out.append(Speedup(mt.name, ref.name, t.batch, speedup, mac_ratio, realized))
    return tuple(out)
