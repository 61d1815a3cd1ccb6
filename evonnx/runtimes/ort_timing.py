"""Interleaved onnxruntime timing: the one place that builds timed onnxruntime sessions.

:func:`latency_rounds` and :func:`median_latencies` time one or more models in alternating
rounds (A B, B A, ...) at one batch size; :func:`run_timing` runs a prepared
:class:`TimingJob` in a fresh process (CPU: one global thread pool sized ``threads``), in a
:class:`~evonnx.runtimes.worker.Worker`, or here. :func:`evonnx.deploy.bench.benchmark` and
the ``ort-*`` runtimes both measure through it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import onnx
import onnxruntime as ort

from evonnx.errors import DeployError, ProviderError
from evonnx.model.batch import rebatch
from evonnx.model.session import make_session
from evonnx.runtimes.worker import Worker, call_in_fresh_process

PROVIDERS = MappingProxyType(
    {
        "cpu": "CPUExecutionProvider",
        "cuda": "CUDAExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider",
    }
)
"""Provider names accepted by :func:`benchmark`, mapped to onnxruntime's names."""


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
    check_counts([batch], warmup, runs, threads)
    ep = resolve_provider(provider)
    job = TimingJob(
        models=(tuple(rebatch(m, batch).SerializeToString() for m in models),),
        labels=tuple(f"model{i}" for i in range(len(models))),
        provider=ep,
        pool="global" if ep == PROVIDERS["cpu"] else "per-session",
        threads=threads or 0,
        warmup=warmup,
        runs=runs,
        seed=seed,
    )
    out = worker.call(_measure, job) if worker is not None else run_timing(job, isolate=True)
    return np.asarray(out[0], dtype=np.float64) * 1e3


def run_timing(job: TimingJob, isolate: bool) -> list[np.ndarray]:
    """Per batch size, the latencies (seconds) ``[model, round]`` of ``job``; ``isolate`` runs
    it in a fresh process."""
    return _measure_isolated(job) if isolate else _measure(job)


@dataclass(frozen=True)
class TimingJob:
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


def _measure_isolated(job: TimingJob) -> list[np.ndarray]:
    """Run :func:`_measure` in a fresh process (its exceptions are re-raised here).

    The child is ``python -m evonnx.runtimes.worker``, which never imports the caller's
    ``__main__``: scripts need no ``if __name__ == "__main__":`` guard.
    """
    return call_in_fresh_process(_measure, job)


def _measure(job: TimingJob) -> list[np.ndarray]:
    """Latencies (seconds), per batch size an array ``[model, run]``.

    With ``job.pool == "global"`` it sizes onnxruntime's process-wide thread pool, which
    requires a process that has not created any session yet (the isolated child; a
    :class:`~evonnx.runtimes.worker.Worker` keeps the size of its first job).
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


def check_counts(batches: Sequence[int], warmup: int, runs: int, threads: int | None) -> None:
    """Refuse empty or repeated batch sizes and negative counts (:class:`DeployError`)."""
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


def _providers(ep: str) -> list[str]:
    """The requested provider first, then the fallbacks onnxruntime partitions nodes onto."""
    chain = [ep]
    if ep == PROVIDERS["tensorrt"] and PROVIDERS["cuda"] in ort.get_available_providers():
        chain.append(PROVIDERS["cuda"])
    if ep != PROVIDERS["cpu"]:
        chain.append(PROVIDERS["cpu"])
    return chain


def _session(data: bytes, job: TimingJob, label: str) -> ort.InferenceSession:
    pool = job.pool == "global"
    try:  # the global pool, or a per-session one of job.threads threads that do not spin
        sess = make_session(
            data,
            _providers(job.provider),
            threads=None if pool else job.threads,
            inter_threads=None if pool else 1,
            global_pool=pool,
            spinning=None if pool else False,
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


def _interleaved(sessions: Sequence[ort.InferenceSession], job: TimingJob) -> np.ndarray:
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
