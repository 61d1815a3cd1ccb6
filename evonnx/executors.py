"""Executors: where a generation's offspring jobs (:mod:`evonnx.jobs`) run.

``local`` runs them one after another in this process (the default). ``process`` runs them
in a pool of worker processes on this machine, ``ray`` as Ray tasks on a local or running
cluster (``pip install "evonnx[ray]"``). Every executor returns the results in job order and
each job is seeded on its own, so the lineage does not depend on the executor (on CPU, with
the same ``threads``). The driver keeps synthesis, selection and every file write.
"""

from __future__ import annotations

import abc
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from evonnx.errors import ConfigError, EvonnxError, ExecutorError
from evonnx.jobs import JobResult, OffspringJob, execute, pack_split, unpack_split
from evonnx.lineage import EvolveConfig
from evonnx.task import Split

logger = logging.getLogger(__name__)

EXECUTORS = ("local", "process", "ray")
"""Names :func:`make_executor` accepts."""

RETRIES = 3
"""Times a job whose worker died is rerun (a job that raises is never rerun)."""


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

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """One job after another in this process."""

    def __init__(self, progress: bool = True) -> None:
        self.progress = progress

    def run(self, jobs: Sequence[OffspringJob], data: Split) -> list[JobResult]:
        """Run each job in turn."""
        return [execute(job, data, self.progress) for job in jobs]

    def close(self) -> None:
        """Nothing to release."""


def _threads_per_worker(config: EvolveConfig, workers: int) -> int:
    """Training threads of a worker: ``threads``, else this machine's CPUs shared out."""
    if config.threads is not None:
        return config.threads
    return max(1, (os.cpu_count() or 1) // workers)


def _worker_job(job: OffspringJob, payload: bytes) -> JobResult:
    """Entry point in a worker process (module level, so it pickles by name)."""
    if job.config.gpus_per_offspring > 1:
        from evonnx.ddp import train_parallel

        return train_parallel(job, payload, job.config.gpus_per_offspring)
    return execute(job, unpack_split(payload))


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class ProcessExecutor(Executor):
    """A pool of ``workers`` spawned processes on this machine (for CPU training: on a GPU
    machine every worker would train on the same device; use Ray there).

    Args:
        config: Run settings (``threads`` per job, else the CPUs shared among workers).
        workers: Pool size (default: the population, at most the number of CPUs).
    """

    def __init__(self, config: EvolveConfig, workers: int | None = None) -> None:
        self.workers = workers or max(1, min(config.population, os.cpu_count() or 1))
        self.threads = _threads_per_worker(config, self.workers)
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


class RayExecutor(Executor):
    """Ray tasks on a cluster: ``address`` (``"auto"``: a running one) or a local one.

    A job whose worker dies is rerun up to :data:`RETRIES` times; a job that raises (a
    data or model error) is not rerun: its error is raised here. A Ray session opened here
    is shut down by :meth:`close`; one already open (``ray.init`` by the caller) is used.

    Each job asks Ray for ``threads`` CPUs (default 1) and, on a cluster with GPUs, one GPU
    to itself.

    Args:
        config: Run settings.
        address: Cluster address for ``ray.init``; ``None`` starts a local one.
    """

    def __init__(self, config: EvolveConfig, address: str | None = None) -> None:
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("--executor ray needs Ray: pip install 'evonnx[ray]'") from exc
        self._ray = ray
        self._owned = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutorError(f"cannot start or reach a Ray cluster: {exc}") from exc
            self._owned = True
        ranks = config.gpus_per_offspring
        gpus = ranks if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        self._remote = ray.remote(
            num_cpus=(config.threads or 1) * ranks,
            num_gpus=gpus,
            max_retries=RETRIES,
            retry_exceptions=False,
        )(_worker_job)
        logger.info(
            "offspring jobs run on Ray, %d CPU(s) and %d GPU each", config.threads or 1, gpus
        )

    def run(self, jobs: Sequence[OffspringJob], data: Split) -> list[JobResult]:
        """Submit every job as a Ray task and wait for all of them."""
        ray = self._ray
        payload = ray.put(pack_split(data))
        refs = [self._remote.remote(job, payload) for job in jobs]
        try:
            results: list[JobResult] = ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, EvonnxError):
                raise cause from None
            raise ExecutorError(f"an offspring job failed: {cause or exc}") from exc
        except ray.exceptions.RayError as exc:
            raise ExecutorError(
                f"an offspring job failed {RETRIES + 1} times on Ray ({type(exc).__name__}); "
                "rerun with --resume"
            ) from exc
        return results

    def close(self) -> None:
        """Shut down the Ray session this executor started."""
        if self._owned:
            self._ray.shutdown()
            self._owned = False


def make_executor(config: EvolveConfig, progress: bool = True) -> Executor:
    """The executor ``config.executor`` names."""
    if config.executor == "process":
        return ProcessExecutor(config)
    if config.executor == "ray":
        return RayExecutor(config, config.ray_address)
    return LocalExecutor(progress)
