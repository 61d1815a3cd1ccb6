"""Offspring jobs: retrain and score one synthesized offspring, anywhere.

A job is what an executor (:mod:`evonnx.execute.executors`) ships to a worker: the offspring's ONNX
bytes, the run settings and its seed (plus the teacher's bytes, the parent's or the
ancestor's, when retraining distills). :func:`run_job` retrains it, writes the weights back
and scores the written graph; the driver keeps synthesis, selection and every file write.
"""

from __future__ import annotations

import logging
import math
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import onnx

from evonnx.errors import EvonnxError, NonFiniteError, TaskError
from evonnx.model.graph import non_finite_weights
from evonnx.retrain.guard import checked_batches, guarded, guarded_loss, user_code
from evonnx.retrain.task import USER_TASK_PREFIX, Split, Task, import_task_file
from evonnx.retrain.train import LossFn, TrainConfig

if TYPE_CHECKING:
    from evonnx.retrain.settings import TrainingSettings

logger = logging.getLogger(__name__)

OUTPUTS_CHANGED = "the offspring changes the outputs"
"""How the reason of an offspring refused by :func:`run_checked` begins."""


@dataclass(frozen=True)
class OffspringJob:
    """One offspring to retrain and score.

    Attributes:
        child: The synthesized, pruned offspring (serialized ONNX, untrained).
        seed: The offspring's seed (initialization and training).
        training: How to retrain it (the run's training section).
        teacher: The model retraining distills from (serialized ONNX: the parent, or with
            ``training.teacher == "ancestor"`` generation 1), else ``None``.
        frozen: Initializers of the layers evonnx cannot prune
            (:meth:`~evonnx.pruning.groups.Analysis.frozen_initializers`): not trained, not
            re-initialized, and written back byte-identical.
        ranks: Data-parallel ranks retraining it (the run's ``gpus_per_offspring``).
    """

    child: bytes
    seed: int
    training: TrainingSettings
    teacher: bytes | None = None
    frozen: tuple[str, ...] = ()
    ranks: int = 1


class JobRunner(Protocol):
    """What runs jobs (an :class:`~evonnx.execute.executors.Executor`)."""

    def run(self, jobs: Sequence[OffspringJob], data: Split) -> list[JobResult]:
        """Each job's result, in order."""
        ...


@dataclass(frozen=True)
class JobResult:
    """What a job returns to the driver.

    Attributes:
        model: The trained offspring (serialized ONNX).
        scores: (test score, validation score or ``None`` when selecting on test).
        train_seconds: Seconds spent training.
        job_seconds: Seconds the whole job took inside the worker (load, train, score).
        seed: The job's seed.
        failed: Why the offspring failed (a NaN or infinite loss, weight or score), else
            ``None``; a failed offspring is recorded but never selected.
        score_seconds: Seconds spent scoring the trained offspring (the task's
            ``score_model`` on the test and validation splits).
    """

    model: bytes
    scores: tuple[float, float | None]
    train_seconds: float
    job_seconds: float
    seed: int
    failed: str | None = None
    score_seconds: float = 0.0


def run_job(
    job: OffspringJob,
    data: Split,
    progress: bool = False,
    rank: tuple[int, int] | None = None,
) -> JobResult:
    """Retrain ``job``'s offspring on ``data``'s task, write the weights back and score it.

    Args:
        job: The offspring.
        data: The run's task and selection split.
        progress: Show a progress bar.
        rank: (rank, world size) inside a data-parallel job (:mod:`evonnx.execute.ddp`); ranks
            other than 0 do not score (their scores are NaN).
    """
    from evonnx.converters import write_back
    from evonnx.retrain.train import train

    start = time.perf_counter()
    config = job.training
    child = onnx.load_from_string(job.child)
    task = data.task
    module, trainee, loss = _trainee(job, child, task)
    if rank is not None:
        from evonnx.execute.ranks import data_parallel

        trainee, loss = data_parallel(trainee, loss, rank)
    with user_code(task.name, "train_batches()"):
        batches = checked_batches(task.train_batches(), task.name)
    with user_code(task.name, "training on the batches of train_batches()"):
        result = train(
            trainee,
            batches,
            TrainConfig.for_offspring(config, job.seed % (2**31)),
            loss_fn=loss,
            after_step=lambda _m: module.apply_masks(),
            progress=progress,
        )
    trained = keep_initializers(write_back(child, module), child, job.frozen)
    failed = _diverged(result.losses, trained)
    scores: tuple[float, float | None] = (math.nan, None)
    scoring_start = time.perf_counter()
    if failed is None and (rank is None or rank[0] == 0):
        try:
            scores = data.score_model(trained)
        except NonFiniteError as exc:
            failed = str(exc)
    score_seconds = time.perf_counter() - scoring_start
    if failed is not None:
        logger.warning("offspring %d failed: %s", job.seed, failed)
    return JobResult(
        trained.SerializeToString(),
        scores,
        result.seconds,
        time.perf_counter() - start,
        job.seed,
        failed,
        score_seconds,
    )


def _trainee(job: OffspringJob, child: onnx.ModelProto, task: Task) -> tuple[Any, Any, LossFn]:
    """The offspring's torch module (weights inherited or re-initialized, frozen layers held),
    what trains (the module, or a :class:`~evonnx.retrain.distill.Distiller` around it and the
    teacher) and the loss."""
    from evonnx.converters import to_torch
    from evonnx.retrain.distill import Distiller, distillation_loss

    config = job.training
    view = guarded(task.training_graph, task.name, "training_graph()")
    module = to_torch(view(child), freeze_zeros=True)
    if config.init == "random":
        reinitialize(module, job.seed, set(job.frozen))
    hold(module, job.frozen)
    loss: LossFn = guarded_loss(task.loss, task.name, "loss()")
    if config.distill is None:
        return module, module, loss
    if job.teacher is None:
        raise ValueError("a distilling job needs its teacher model")
    trainee = Distiller(module, to_torch(view(onnx.load_from_string(job.teacher))))
    soft = guarded_loss(task.distill_loss, task.name, "distill_loss()")
    return module, trainee, distillation_loss(loss, soft, config.distill)


def run_checked(
    executor: JobRunner, jobs: list[OffspringJob], data: Split, reference: onnx.ModelProto
) -> list[JobResult]:
    """Run ``jobs`` on ``executor``, refusing every offspring whose outputs' names or shapes
    differ from ``reference``'s (the ancestor, at its input shapes; values change by design):
    checked once synthesized (such an offspring is not trained) and once trained, before the
    driver may write it. A refused offspring fails with the difference as its reason."""
    before = [output_change(reference, onnx.load_from_string(job.child)) for job in jobs]
    runnable = [j for j, bad in zip(jobs, before, strict=True) if bad is None]
    ran = iter(executor.run(runnable, data) if runnable else [])
    out = []
    for job, bad in zip(jobs, before, strict=True):
        if bad is not None:
            out.append(JobResult(job.child, (math.nan, None), 0.0, 0.0, job.seed, bad))
            continue
        result = next(ran)
        if result.failed is None:
            after = output_change(reference, onnx.load_from_string(result.model))
            result = result if after is None else replace(result, failed=after)
        out.append(result)
    return out


def output_change(reference: onnx.ModelProto, candidate: onnx.ModelProto) -> str | None:
    """Why ``candidate`` may not stand for ``reference`` (outputs' names or shapes differ on one
    onnxruntime run at the reference's input shapes), or ``None``."""
    from evonnx.model.outputs import compare_outputs

    check = compare_outputs(reference, candidate, values=False)
    if check.difference is None:
        return None
    reason = f"{OUTPUTS_CHANGED} ({check.difference}); not written"
    logger.warning("%s", reason)
    return reason


def _diverged(losses: tuple[float, ...], trained: onnx.ModelProto) -> str | None:
    """Why a trained offspring is unusable (a non-finite loss or weight), else ``None``."""
    bad = [k + 1 for k, value in enumerate(losses) if not math.isfinite(value)]
    if bad:
        return f"training loss is {losses[bad[0] - 1]} in epoch {bad[0]}"
    weights = non_finite_weights(trained)
    if weights:
        return f"training left NaN or infinite weights in {', '.join(weights[:3])}"
    return None


def hold(module: Any, names: tuple[str, ...]) -> None:
    """Stop training the parameters ``names`` (frozen layers): the other layers adapt to
    their real values."""
    params = module.onnx_parameters()
    for name in names:
        if name in params:
            params[name].requires_grad_(False)


def keep_initializers(
    trained: onnx.ModelProto, child: onnx.ModelProto, names: tuple[str, ...]
) -> onnx.ModelProto:
    """``trained`` with the initializers ``names`` copied from ``child`` byte for byte."""
    if not names:
        return trained
    keep = set(names)
    original = {t.name: t for t in child.graph.initializer if t.name in keep}
    for init in trained.graph.initializer:
        if init.name in original:
            init.CopyFrom(original[init.name])
    return trained


def reinitialize(module: Any, seed: int, frozen: set[str] | None = None) -> None:
    """Fresh Kaiming-uniform weights (zeros kept) and zero biases for conv/FC layers, except
    the weights named in ``frozen`` (frozen layers)."""
    import torch

    gen = torch.Generator().manual_seed(seed % (2**31))
    params = module.onnx_parameters()
    with torch.no_grad():
        for name in module.weight_names():
            if frozen and name in frozen:
                continue
            w = params[name]
            fan_in = max(1, w[0].numel()) if w.dim() > 2 else max(1, w.shape[-1])
            bound = math.sqrt(6.0 / fan_in)
            w.copy_((torch.rand(w.shape, generator=gen) * 2 - 1) * bound)
    module.apply_masks()


# ------------------------------------------------------------------ shipping to workers


def pack_split(data: Split) -> bytes:
    """``data`` pickled for a worker process, with the file of a ``--task`` module.

    A task loaded from a file (:func:`evonnx.retrain.task.load_task`) lives in a module no worker
    can import by name; the worker imports that file again before unpickling the task.

    Raises:
        TaskError: The task cannot be pickled (a lambda, an open file...).
    """
    module = sys.modules.get(type(data.task).__module__)
    source: tuple[str, str] | None = None
    if module is not None and module.__name__.startswith(USER_TASK_PREFIX):
        source = (module.__name__, str(getattr(module, "__file__", "")))
    try:
        inner = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # any object the user's task holds
        raise TaskError(
            f"task {data.task.name!r} cannot be sent to worker processes "
            f"({type(exc).__name__}: {exc}); use --executor local and --gpus-per-offspring 1"
        ) from exc
    return pickle.dumps((source, inner), protocol=pickle.HIGHEST_PROTOCOL)


def unpack_split(payload: bytes) -> Split:
    """Inverse of :func:`pack_split`, in a worker process.

    Raises:
        TaskError: The task cannot be rebuilt in this process.
    """
    source, inner = pickle.loads(payload)
    try:
        if (
            source is not None
            and source[0] not in sys.modules
            and import_task_file(Path(source[1]), source[0]) is None
        ):  # the --task file, imported as the driver did
            raise TaskError(f"a worker cannot import the task file {source[1]}")
        split = pickle.loads(inner)
    except EvonnxError:
        raise
    except Exception as exc:  # unpickling user objects may raise anything
        raise TaskError(f"a worker cannot load the task: {type(exc).__name__}: {exc}") from exc
    if not isinstance(split, Split):
        raise TaskError(f"a worker received a {type(split).__name__}, not a task")
    return split
