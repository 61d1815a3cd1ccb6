"""Executors: where a generation's offspring jobs (:mod:`evonnx.execute.jobs`) run.

``local`` runs them one after another in this process (the default). ``process`` runs them
in a pool of worker processes on this machine, ``ray`` as Ray tasks on a local or running
cluster (``pip install "evonnx[ray]"``). Every executor returns the results in job order and
each job is seeded on its own, so the lineage does not depend on the executor (on CPU, with
the same ``threads``). The driver keeps synthesis, selection and every file write.

:meth:`Executor.latency_runtime` is where the run's latency measurements go: the driver
itself for the local executors, Ray jobs with a device to themselves for ``ray``
(:mod:`evonnx.execute.ray_latency`). Either way a measurement is only requested between a
generation's training jobs, never beside one.
"""

from __future__ import annotations

import abc
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from evonnx.errors import (
    ConfigError,
    EvonnxError,
    ExecutorError,
    RankDiedError,
    RuntimeUnavailableError,
)
from evonnx.execute.jobs import JobResult, OffspringJob, pack_split, run_job, unpack_split
from evonnx.execute.signals import ignore_interrupts

if TYPE_CHECKING:
    from evonnx.execute.settings import ExecutionSettings
    from evonnx.retrain.task import Split
    from evonnx.runtimes.base import Runtime, RuntimeSettings

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "process", "ray")
"""Names :func:`make_executor` accepts."""

RETRIES = 3
"""Times a job whose worker died is rerun (a job that raises is never rerun)."""

T = TypeVar("T")
_WHAT = {"train": "an offspring job", "latency": "a latency measurement job"}


@dataclass(frozen=True)
class JobSpan:
    """When a job ran, by its worker's clock (``time.time()``, seconds).

    Attributes:
        kind: ``"train"`` (an offspring job) or ``"latency"`` (a measurement job).
        start: When the worker started it.
        end: When the worker finished it.
    """

    kind: Literal["train", "latency"]
    start: float
    end: float


class Executor(abc.ABC):
    """Runs a generation's offspring jobs; use as a context manager."""

    @abc.abstractmethod
    def run(self, jobs: Sequence[OffspringJob], data: Split) -> list[JobResult]:
        """Results of ``jobs``, in order.

        Raises:
            EvonnxError: A job failed (the first failure in job order is raised).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the workers."""

    def latency_runtime(self) -> Callable[[RuntimeSettings], Runtime] | None:
        """What builds the runtime of the run's latency measurements (``None``: the
        driver's own, :func:`~evonnx.runtimes.make_runtime`)."""
        return None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def execute(job: OffspringJob, data: Split, progress: bool = False) -> JobResult:
    """:func:`~evonnx.execute.jobs.run_job`, on ``job.ranks`` data-parallel ranks when that
    is above 1."""
    if job.ranks > 1:
        from evonnx.execute.ddp import run_data_parallel

        return run_data_parallel(job, data, job.ranks)
    return run_job(job, data, progress)


class LocalExecutor(Executor):
    """One job after another in this process."""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def run(self, jobs: Sequence[OffspringJob], data: Split) -> list[JobResult]:
        """Run each job in turn."""
        return [execute(job, data, self.progress) for job in jobs]

    def close(self) -> None:
        """Nothing to release."""


def _threads_per_worker(threads: int | None, workers: int) -> int:
    """Training threads of a worker: ``threads``, else this machine's CPUs shared out."""
    if threads is not None:
        return threads
    return max(1, (os.cpu_count() or 1) // workers)


def _worker_job(job: OffspringJob, payload: bytes) -> JobResult:
    """Entry point in a worker process (module level, so it pickles by name)."""
    if job.ranks > 1:
        from evonnx.execute.ddp import train_parallel

        return train_parallel(job, payload, job.ranks)
    return execute(job, unpack_split(payload))


def _ray_train_job(job: OffspringJob, payload: bytes, cpus: int, use_gpu: bool) -> JobResult:
    """Entry point of a data-parallel job on Ray: a Ray Train ``TorchTrainer``."""
    from evonnx.execute.ray_train import train_with_ray

    return train_with_ray(job, payload, cpus, use_gpu)


def _timed(fn: Callable[..., T], *args: Any) -> tuple[T, float, float]:
    """``fn(*args)`` in a Ray worker, with the worker's start and end time."""
    start = time.time()
    result = fn(*args)
    return result, start, time.time()


def _init_worker(threads: int) -> None:
    import torch

    ignore_interrupts()  # the driver handles Ctrl-C and stops the pool: no worker tracebacks
    torch.set_num_threads(threads)


class ProcessExecutor(Executor):
    """A pool of ``workers`` spawned processes on this machine (for CPU training: on a GPU
    machine every worker would train on the same device; use Ray there).

    Args:
        threads: Training threads per job (``None``: the CPUs shared among workers).
        workers: Pool size (default: the population, at most the number of CPUs).
        population: Offspring per generation.
    """

    def __init__(
        self, threads: int | None = None, workers: int | None = None, population: int = 1
    ) -> None:
        self.workers = workers or max(1, min(population, os.cpu_count() or 1))
        self.threads = _threads_per_worker(threads, self.workers)
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),  # torch is not fork-safe
                initializer=_init_worker,
                initargs=(self.threads,),
            )
        return self._pool

    def run(self, jobs: Sequence[OffspringJob], data: Split) -> list[JobResult]:
        """Submit every job to the pool and wait for all of them.

        A job whose worker died (killed, out of memory) is rerun in a fresh pool, up to
        :data:`RETRIES` times; a job that raises is not rerun: its error is raised here.
        """
        payload = pack_split(data)
        results: dict[int, JobResult] = {}
        for attempt in range(RETRIES + 1):
            pool = self._get_pool()
            futures = {
                k: pool.submit(_worker_job, job, payload)
                for k, job in enumerate(jobs)
                if k not in results
            }
            try:
                for k, future in futures.items():
                    results[k] = future.result()
                return [results[k] for k in range(len(jobs))]
            except KeyboardInterrupt:
                self._terminate()
                raise
            except BrokenProcessPool:
                self.close()
                done = {k: f for k, f in futures.items() if f.done() and not f.exception()}
                results.update({k: f.result() for k, f in done.items()})
                logger.warning(
                    "a worker process died; rerunning %d offspring job(s) (retry %d of %d)",
                    len(jobs) - len(results),
                    attempt + 1,
                    RETRIES,
                )
        raise ExecutorError(
            f"worker processes died {RETRIES + 1} times while retraining offspring (out of "
            "memory?); rerun with --resume"
        )

    def close(self) -> None:
        """Shut the pool down."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def _terminate(self) -> None:
        """Stop the workers now (interrupted: their jobs are not waited for)."""
        if self._pool is None:
            return
        for process in list(getattr(self._pool, "_processes", {}).values()):
            process.terminate()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None


class RayExecutor(Executor):
    """Ray tasks on a cluster: ``address`` (``"auto"``: a running one) or a local one.

    A job whose worker dies is rerun up to :data:`RETRIES` times; a job that raises (a
    data or model error) is not rerun: its error is raised here. A Ray session opened here
    is shut down by :meth:`close`; one already open (``ray.init`` by the caller) is used.

    Each job asks Ray for ``threads`` CPUs (default 1) and, on a cluster with GPUs, one GPU
    to itself. With ``gpus_per_offspring = N > 1`` a job is a Ray Train ``TorchTrainer`` of
    N workers (:mod:`evonnx.execute.ray_train`), each with those resources; the job itself reserves
    nothing. Latency measurements are jobs of their own (:mod:`evonnx.execute.ray_latency`),
    submitted only while no training job is in flight. :attr:`timeline` records when each
    job ran.

    Args:
        execution: Where jobs run: the cluster address for ``ray.init`` (``None`` starts a
            local one) and the data-parallel ranks of each job.
        threads: CPUs per job (``None``: 1).
    """

    def __init__(self, execution: ExecutionSettings, threads: int | None = None) -> None:
        address = execution.ray_address
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("--executor ray needs Ray: pip install 'evonnx[ray]'") from exc
        self._ray = ray
        self._owned = False
        self._in_flight = 0
        self.timeline: list[JobSpan] = []
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except Exception as exc:  # Ray raises many kinds while connecting
                raise ExecutorError(_ray_failure(address, exc)) from exc
            self._owned = True
        cpus = threads or 1
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        ranks = execution.gpus_per_offspring
        self._timed = ray.remote(max_retries=RETRIES, retry_exceptions=False)(_timed)
        self._entry: Callable[..., JobResult] = _worker_job
        self._extra: tuple[object, ...] = ()
        self._train = self._timed.options(num_cpus=cpus, num_gpus=gpus)
        if ranks > 1:  # the trainer's workers reserve the resources; a dead rank reruns it
            self._entry, self._extra = _ray_train_job, (cpus, gpus > 0)
            self._train = self._timed.options(num_cpus=0, retry_exceptions=[RankDiedError])
        logger.info(
            "offspring jobs run on Ray: %d rank(s) of %d CPU(s) and %d GPU each", ranks, cpus, gpus
        )

    def run(self, jobs: Sequence[OffspringJob], data: Split) -> list[JobResult]:
        """Submit every job as a Ray task and wait for all of them."""
        payload = self._ray.put(pack_split(data))
        refs = [self._train.remote(self._entry, job, payload, *self._extra) for job in jobs]
        self._in_flight = len(refs)
        try:
            return self._get(refs, "train")
        except Exception:
            # A failed generation leaves no training job running: the others are waited for,
            # not cancelled (Ray 2.60 aborts the driver when a cancel races a task's
            # completion: "Tried to complete task that was not pending").
            self._ray.wait(refs, num_returns=len(refs))
            raise
        except BaseException:  # interrupted: stop the rest now
            for ref in refs:
                self._ray.cancel(ref)
            raise
        finally:
            self._in_flight = 0

    def measure(self, settings: RuntimeSettings, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` as a measurement job with a device to itself: one GPU for a GPU
        runtime, else the runtime's threads (all CPUs of the largest node for 0).

        Raises:
            ExecutorError: A training job of this run is in flight (a measurement must
                never run beside training), or the job's worker died for good.
            RuntimeUnavailableError: A GPU runtime on a cluster without GPUs.
            ConfigError: More runtime threads than the largest node has CPUs.
            EvonnxError: The measurement failed (its error).
        """
        from evonnx.execute.ray_latency import GPU_RUNTIMES

        if self._in_flight:
            raise ExecutorError(
                f"a latency measurement was requested while {self._in_flight} training "
                "job(s) are in flight"
            )
        cpus = self._node_cpus()
        if settings.name in GPU_RUNTIMES:
            if not self._ray.cluster_resources().get("GPU"):
                raise RuntimeUnavailableError(
                    f"runtime {settings.name} measures on a GPU; the Ray cluster has none"
                )
            options: dict[str, float] = {"num_gpus": 1}
        elif settings.threads > cpus:
            raise ConfigError(
                f"--runtime-threads {settings.threads} is more than the {cpus:g} CPUs of the "
                "largest Ray node"
            )
        else:
            options = {"num_cpus": settings.threads or cpus}
        ref = self._timed.options(**options).remote(fn, *args)
        result: T = self._get([ref], "latency")[0]
        return result

    def latency_runtime(self) -> Callable[[RuntimeSettings], Runtime]:
        """Runtimes whose measurements are Ray jobs
        (:class:`~evonnx.execute.ray_latency.RayRuntime`)."""
        from evonnx.execute.ray_latency import RayRuntime

        return lambda settings: RayRuntime(settings, self)

    def _node_cpus(self) -> float:
        """CPUs of the largest live node of the cluster."""
        nodes = [n for n in self._ray.nodes() if n.get("Alive")]
        return max((n["Resources"].get("CPU", 0.0) for n in nodes), default=1.0) or 1.0

    def _get(self, refs: list[Any], kind: Literal["train", "latency"]) -> list[Any]:
        """The results of timed jobs, recorded in :attr:`timeline`; errors as one line."""
        ray = self._ray
        try:
            timed: list[tuple[Any, float, float]] = ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, EvonnxError):
                raise cause from None
            raise ExecutorError(f"{_WHAT[kind]} failed: {cause or exc}") from exc
        except ray.exceptions.RayError as exc:
            raise ExecutorError(
                f"{_WHAT[kind]} failed {RETRIES + 1} times on Ray ({type(exc).__name__}); "
                "rerun with --resume"
            ) from exc
        self.timeline.extend(JobSpan(kind, start, end) for _, start, end in timed)
        return [result for result, _, _ in timed]

    def close(self) -> None:
        """Shut down the Ray session this executor started."""
        if self._owned:
            self._ray.shutdown()
            self._owned = False


def _ray_failure(address: str | None, exc: Exception) -> str:
    """One line on a failed ``ray.init``, naming the likely fix."""
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    reason = f"{type(exc).__name__}: {first}"[:300]
    if address is None:
        return f"cannot start a local Ray cluster ({reason})"
    return (
        f"cannot reach the Ray cluster at {address} ({reason}); check the address, and for a "
        "cluster started with `ray start --head` (Ray >= 2.60 turns on token authentication) "
        "run with RAY_AUTH_MODE=token set, as the README's Ray section shows"
    )


def make_executor(
    execution: ExecutionSettings,
    progress: bool = True,
    threads: int | None = None,
    population: int = 1,
) -> Executor:
    """The executor ``execution.executor`` names.

    Args:
        execution: The run's execution settings.
        progress: Show progress bars (local executor).
        threads: Training threads per job (the run's training ``threads``).
        population: Offspring per generation (sizes a process pool).
    """
    if execution.executor == "process":
        return ProcessExecutor(threads, population=population)
    if execution.executor == "ray":
        return RayExecutor(execution, threads)
    return LocalExecutor(progress)
