"""Data-parallel retraining of one offspring as a Ray Train ``TorchTrainer`` (the Ray executor).

With ``--executor ray`` and ``gpus_per_offspring = N > 1`` an offspring job is a Ray task that
starts a ``TorchTrainer`` with N workers (one GPU each on a cluster with GPUs, else CPU
workers with the gloo backend). Every worker runs the same per-rank function as the local
launcher (:func:`evonnx.execute.ddp.train_rank`: train, then compare the weights of every rank);
rank 0 hands its result to a small mailbox actor, from which the job returns it to the
driver like any other job. Ray Train keeps its run files in a temporary folder of the job,
deleted when the job ends (never in the user's home); its console output stays in the
workers' logs (the executor starts Ray with ``log_to_driver=False``).

A rank's data or model error fails the job with that error, never retried. A rank whose
worker died fails the trainer (``max_failures=0``) with a
:class:`~evonnx.errors.RankDiedError`, which the Ray executor reruns as a whole job, like
any job whose worker died.
"""

from __future__ import annotations

import logging
import tempfile
from typing import TYPE_CHECKING, Any

from evonnx.errors import EvonnxError, ExecutorError, RankDiedError

if TYPE_CHECKING:
    from evonnx.execute.jobs import JobResult, OffspringJob

logger = logging.getLogger(__name__)


class _Mailbox:
    """Holds rank 0's result until the job collects it (a Ray actor)."""

    def __init__(self) -> None:
        self.result: JobResult | None = None

    def put(self, result: JobResult) -> None:
        self.result = result

    def get(self) -> JobResult | None:
        return self.result


def _train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker: its rank of the job (process group already joined)."""
    import ray
    import ray.train
    import torch

    from evonnx.execute.ddp import train_rank

    context = ray.train.get_context()
    rank = (context.get_world_rank(), context.get_world_size())
    if torch.cuda.is_available():
        import ray.train.torch

        torch.cuda.set_device(ray.train.torch.get_device())
    result = train_rank(config["job"], config["payload"], rank)
    if rank[0] == 0:
        ray.get(config["mailbox"].put.remote(result))


def train_with_ray(
    job: OffspringJob, payload: bytes, cpus_per_rank: int, use_gpu: bool
) -> JobResult:
    """Run ``job`` on ``job.ranks`` Ray Train workers; rank 0's result.

    Called inside a Ray task (the job) that reserves nothing itself: the trainer's workers
    reserve ``cpus_per_rank`` CPUs each, plus one GPU each when ``use_gpu``.

    Raises:
        EvonnxError: A rank's data or model error (as raised there), or an
            :class:`~evonnx.errors.ExecutorError` when the ranks' weights differ or a worker
            died.
    """
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ranks = job.ranks
    mailbox: Any = ray.remote(num_cpus=0)(_Mailbox).remote()
    with tempfile.TemporaryDirectory(prefix="evonnx-raytrain-") as tmp:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"job": job, "payload": payload, "mailbox": mailbox},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=ranks, use_gpu=use_gpu, resources_per_worker={"CPU": cpus_per_rank}
            ),
            run_config=RunConfig(
                name=f"offspring-{job.seed}",
                storage_path=tmp,
                failure_config=FailureConfig(max_failures=0),
            ),
        )
        try:
            trainer.fit()
            result: JobResult | None = ray.get(mailbox.get.remote())
        except Exception as exc:  # Ray Train wraps the ranks' errors in its own
            raise _rank_error(exc) from None
        finally:
            ray.kill(mailbox)
    if result is None:
        raise ExecutorError("Ray Train finished without a result from rank 0")
    return result


def _rank_error(exc: Exception) -> EvonnxError:
    """The error a failed ``TorchTrainer.fit`` stands for: a rank's own, else one line."""
    failures = getattr(exc, "worker_failures", None) or {}
    for rank in sorted(failures):
        cause: BaseException | None = failures[rank]
        for _ in range(8):  # a rank's error, wrapped by Ray (``.cause``) or chained
            if cause is None or isinstance(cause, EvonnxError):
                break
            cause = getattr(cause, "cause", None) or cause.__cause__
        if isinstance(cause, EvonnxError):
            return cause
    message = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return RankDiedError(f"data-parallel retraining on Ray Train failed: {message}")
