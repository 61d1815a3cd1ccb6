"""Side-by-side onnxruntime latency of two or more models, next to their MAC ratio.

Measurement protocol (:func:`benchmark`):

* Every model is re-batched to each requested batch size (:func:`~evonnx.deploy.shapes.rebatch`)
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
  its own (:func:`evonnx.metrics.compute_metrics`); ``realized = speed-up / MAC ratio``.

Providers ``cpu``, ``cuda`` and ``tensorrt`` map to onnxruntime execution providers. A provider
missing from ``onnxruntime.get_available_providers()`` raises :class:`ProviderError`; it is
never replaced by the CPU (nodes a GPU provider cannot run still fall back, as onnxruntime
partitions graphs per node).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from evonnx.deploy.shapes import batch_info, graph_inputs, rebatch
from evonnx.deploy.worker import Worker, call_in_fresh_process
from evonnx.errors import DeployError, EvonnxError, ProviderError
from evonnx.memory import check_batch_fits
from evonnx.metrics import compute_metrics

logger = logging.getLogger(__name__)

PROVIDERS = MappingProxyType(
    {
        "cpu": "CPUExecutionProvider",
        "cuda": "CUDAExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider",
    }
)
"""Provider names accepted by :func:`benchmark`, mapped to onnxruntime's names."""


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


def resolve_provider(provider: str) -> str:
    """onnxruntime's name for ``provider``, checked against this build.

    Raises:
        ProviderError: The name is unknown or the provider is not available.
    """
    name = PROVIDERS.get(provider.lower())
    if name is None:
        raise ProviderError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    available = ort.get_available_providers()
    if name not in available:
        raise ProviderError(
            f"provider {provider!r} ({name}) is not available in this onnxruntime build "
            f"(available: {', '.join(available)}); install onnxruntime-gpu with matching "
            "CUDA/TensorRT libraries, or use --provider cpu"
        )
    return name


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
    labels = _labels(models, names)
    _check_same_inputs(models, labels)
    _check_counts(batches, warmup, runs, threads)
    for model in models:
        check_batch_fits(model, max(batches))
    ep = resolve_provider(provider)
    n_threads = threads or 0
    pool = "global" if isolate and ep == PROVIDERS["cpu"] else "per-session"
    job = _Job(
        models=tuple(tuple(rebatch(m, b).SerializeToString() for m in models) for b in batches),
        labels=tuple(labels),
        provider=ep,
        pool=pool,
        threads=n_threads,
        warmup=warmup,
        runs=runs,
        seed=seed,
    )
    samples = _run(job, isolate)
    macs = [_macs_per_sample(m) for m in models]
    timings = tuple(
        ModelTiming(lab, macs[i], tuple(_timing(b, samples[k][i]) for k, b in enumerate(batches)))
        for i, lab in enumerate(labels)
    )
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


def median_latencies(
    models: Sequence[onnx.ModelProto],
    batch: int = 1,
    provider: str = "cpu",
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 50,
    seed: int = 0,
    statistic: str = "median",
    worker: Worker | None = None,
) -> list[float]:
    """Median (or with ``statistic="min"``, fastest) latency (ms) of each model at one batch
    size, measured as :func:`benchmark` measures (interleaved rounds; CPU: one global thread
    pool in a fresh process).

    Unlike :func:`benchmark` it takes one model or many (e.g. single-layer graphs). With a
    ``worker`` (for CPU, one per thread count) the measurement runs there instead of in a fresh
    process.

    Raises:
        DeployError: Bad arguments, a model that cannot be re-batched or run.
        ProviderError: The provider is not available.
    """
    reduce = np.min if statistic == "min" else np.median
    return [
        float(reduce(s))
        for s in latency_rounds(models, batch, provider, threads, warmup, runs, seed, worker)
    ]


def latency_rounds(
    models: Sequence[onnx.ModelProto],
    batch: int = 1,
    provider: str = "cpu",
    threads: int | None = None,
    warmup: int = 10,
    runs: int = 50,
    seed: int = 0,
    worker: Worker | None = None,
) -> np.ndarray:
    """Every timed round (ms) of each model, ``[model, round]``, measured as
    :func:`median_latencies` measures (interleaved: round ``r`` ran every model once; in
    ``worker`` when given).

    Raises:
        DeployError: Bad arguments, a model that cannot be re-batched or run.
        ProviderError: The provider is not available.
    """
    if not models:
        raise DeployError("no model to measure")
    _check_counts([batch], warmup, runs, threads)
    ep = resolve_provider(provider)
    job = _Job(
        models=(tuple(rebatch(m, batch).SerializeToString() for m in models),),
        labels=tuple(f"model{i}" for i in range(len(models))),
        provider=ep,
        pool="global" if ep == PROVIDERS["cpu"] else "per-session",
        threads=threads or 0,
        warmup=warmup,
        runs=runs,
        seed=seed,
    )
    out = worker.call(_measure, job) if worker is not None else _run(job, isolate=True)
    return np.asarray(out[0], dtype=np.float64) * 1e3


def _run(job: _Job, isolate: bool) -> list[np.ndarray]:
    return _measure_isolated(job) if isolate else _measure(job)


@dataclass(frozen=True)
class _Job:
    """What one measurement needs; picklable, so it can run in a child process.

    ``models[k][i]`` is model ``i`` serialized at the ``k``-th batch size.
    """

    models: tuple[tuple[bytes, ...], ...]
    labels: tuple[str, ...]
    provider: str
    pool: str
    threads: int
    warmup: int
    runs: int
    seed: int


def _measure_isolated(job: _Job) -> list[np.ndarray]:
    """Run :func:`_measure` in a fresh process (its exceptions are re-raised here).

    The child is ``python -m evonnx.deploy.worker``, which never imports the caller's
    ``__main__``: scripts need no ``if __name__ == "__main__":`` guard.
    """
    return call_in_fresh_process(_measure, job)


def _measure(job: _Job) -> list[np.ndarray]:
    """Latencies (seconds), per batch size an array ``[model, run]``.

    With ``job.pool == "global"`` it sizes onnxruntime's process-wide thread pool, which
    requires a process that has not created any session yet (the isolated child; a
    :class:`~evonnx.deploy.worker.Worker` keeps the size of its first job).
    """
    if job.pool == "global":
        _set_global_pool(job.threads)
    out = []
    for per_batch in job.models:
        sessions = [
            _session(data, job, label) for data, label in zip(per_batch, job.labels, strict=True)
        ]
        out.append(_interleaved(sessions, job))
        del sessions
    return out


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


def _check_counts(batches: Sequence[int], warmup: int, runs: int, threads: int | None) -> None:
    if not batches or any(b < 1 for b in batches):
        raise DeployError(f"batch sizes must be >= 1, got {list(batches)}")
    if len(set(batches)) != len(batches):
        raise DeployError(f"batch sizes must be unique, got {list(batches)}")
    if warmup < 0 or runs < 1:
        raise DeployError(f"need warmup >= 0 and runs >= 1, got {warmup} and {runs}")
    if threads is not None and threads < 0:
        raise DeployError(f"threads must be >= 0, got {threads}")


_POOL_SIZE: dict[str, int] = {}
"""This process's global thread pool size, once set (a fact of the process, set once)."""


def _set_global_pool(threads: int) -> None:
    from onnxruntime.capi import _pybind_state

    if "intra" in _POOL_SIZE:
        if _POOL_SIZE["intra"] != threads:
            raise DeployError(
                f"this process's onnxruntime thread pool has {_POOL_SIZE['intra']} threads, "
                f"not {threads}: measure in another worker"
            )
        return
    try:
        _pybind_state.set_global_thread_pool_sizes(threads, 1)
    except Exception as exc:  # pybind's Fail, or an onnxruntime without the function
        raise DeployError(f"cannot size onnxruntime's global thread pool: {exc}") from exc
    _POOL_SIZE["intra"] = threads


def _session_options(pool: str, threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 4  # errors come back as exceptions
    if pool == "global":
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _providers(ep: str) -> list[str]:
    """The requested provider first, then the fallbacks onnxruntime partitions nodes onto."""
    chain = [ep]
    if ep == PROVIDERS["tensorrt"] and PROVIDERS["cuda"] in ort.get_available_providers():
        chain.append(PROVIDERS["cuda"])
    if ep != PROVIDERS["cpu"]:
        chain.append(PROVIDERS["cpu"])
    return chain


def _session(data: bytes, job: _Job, label: str) -> ort.InferenceSession:
    try:
        sess = ort.InferenceSession(
            data, _session_options(job.pool, job.threads), providers=_providers(job.provider)
        )
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        hint = (
            " (this process already uses onnxruntime's global thread pools; benchmark with "
            "isolate=True)"
            if "global thread pool" in str(exc)
            else ""
        )
        raise DeployError(f"onnxruntime cannot load {label}: {exc}{hint}") from exc
    used = sess.get_providers()
    if not used or used[0] != job.provider:
        raise ProviderError(
            f"{label}: onnxruntime did not enable {job.provider} (session uses {used})"
        )
    return sess


def _feed(sess: ort.InferenceSession, rng: np.random.Generator) -> dict[str, np.ndarray]:
    feed = {}
    for arg in sess.get_inputs():
        if any(not isinstance(d, int) for d in arg.shape):
            raise DeployError(
                f"input {arg.name} has symbolic dims {arg.shape} besides the batch; "
                "benchmarks need static input shapes"
            )
        feed[arg.name] = _random(arg.type, tuple(arg.shape), rng)
    return feed


_ORT_TYPES = MappingProxyType(
    {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(bool)": np.bool_,
        "tensor(uint8)": np.uint8,
        "tensor(int8)": np.int8,
    }
)


def _random(ort_type: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = _ORT_TYPES.get(ort_type)
    if dtype is None:
        raise DeployError(f"cannot make benchmark inputs of type {ort_type}")
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    return np.zeros(shape, dtype=dtype)


def _interleaved(sessions: Sequence[ort.InferenceSession], job: _Job) -> np.ndarray:
    """Per-session latencies (seconds) of ``job.runs`` interleaved rounds after warm-up."""
    feeds = [_feed(s, np.random.default_rng(job.seed)) for s in sessions]
    order = list(range(len(sessions)))
    for i in order:
        _run_once(sessions[i], feeds[i], job.labels[i])
    for _ in range(job.warmup):
        for i in order:
            sessions[i].run(None, feeds[i])
    samples = np.zeros((len(sessions), job.runs), dtype=np.float64)
    for r in range(job.runs):
        for i in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            sessions[i].run(None, feeds[i])
            samples[i, r] = time.perf_counter() - t0
    return samples


def _run_once(sess: ort.InferenceSession, feed: dict[str, np.ndarray], label: str) -> None:
    try:
        sess.run(None, feed)
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise DeployError(f"onnxruntime cannot run {label}: {exc}") from exc


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
