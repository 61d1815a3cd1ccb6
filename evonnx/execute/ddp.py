"""Data-parallel retraining of one offspring over several ranks (torch DDP).

With ``gpus_per_offspring = N > 1`` a job runs on N ranks (one per GPU, or on CPU one per
rank with the gloo backend). Every rank walks the same shuffled batches and trains on its
slice of each (``batch[rank::N]``); DDP averages the gradients, so the ranks stay equal.
Every rank runs :func:`train_rank`: it trains, then compares its weights with every other
rank's inside the job (a mismatch fails the job); rank 0 scores the trained offspring.

Two launchers start the ranks: :func:`train_parallel` spawns N local processes (the local
and process executors), :mod:`evonnx.execute.ray_train` runs them as a Ray Train ``TorchTrainer``
(the Ray executor).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import math
import os
import pickle
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from evonnx.errors import EvonnxError, ExecutorError

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from torch.multiprocessing.spawn import ProcessContext

    from evonnx.execute.jobs import JobResult, OffspringJob
    from evonnx.execute.ranks import Rank
    from evonnx.retrain.task import Split


WEIGHT_RTOL = 1e-4
"""Largest difference between two ranks' weights, relative to each tensor's largest weight,
still counted as equal: float rounding (all-reduce order, kernels) is no divergence."""

RENDEZVOUS_TIMEOUT = 1800
"""Seconds a rank waits for the others (joining, and in every collective) before failing."""


def train_rank(job: OffspringJob, payload: bytes, rank: Rank) -> JobResult:
    """One rank of a data-parallel job, in a joined process group: train, then check that
    every rank ended with the same weights (rank 0's result holds the scores).

    Raises:
        ExecutorError: The ranks' weights differ (raised on every rank).
        EvonnxError: Training failed (a data or model error).
    """
    from evonnx.execute.jobs import run_job, unpack_split

    result = run_job(job, unpack_split(payload), rank=rank)
    check_same_weights(result.model, rank)
    return result


def check_same_weights(model: bytes, rank: Rank) -> None:
    """Compare this rank's trained model with every other rank's (a collective call).

    Bit-identical models (the usual case) are compared by digest alone; otherwise rank 0's
    model is sent to every rank, which measures its largest weight difference
    (:func:`weight_difference`); differences within :data:`WEIGHT_RTOL` are float rounding.

    Raises:
        ExecutorError: Some rank's weights differ from rank 0's beyond the tolerance, with the
            largest difference (raised on every rank).
    """
    import torch.distributed as dist

    world = rank[1]
    digests: list[object] = [None] * world
    dist.all_gather_object(digests, hashlib.sha256(model).hexdigest())
    if all(d == digests[0] for d in digests):
        return
    reference: list[object] = [model if rank[0] == 0 else None]
    dist.broadcast_object_list(reference, src=0)
    mine = weight_difference(reference[0], model) if isinstance(reference[0], bytes) else None
    gathered: list[object] = [None] * world
    dist.all_gather_object(gathered, mine or (math.inf, math.inf, "(no model from rank 0)"))
    problem = divergence([d for d in gathered if isinstance(d, tuple)])
    if problem is not None:
        raise ExecutorError(problem)


Difference = tuple[float, float, str]
"""(largest difference relative to the tensor's largest weight, absolute difference, tensor)."""


def divergence(differences: list[Difference]) -> str | None:
    """The message for ranks whose :func:`weight_difference` from rank 0 is past
    :data:`WEIGHT_RTOL`, else ``None`` (a difference within it is logged)."""
    over = [k for k, d in enumerate(differences) if not d[0] <= WEIGHT_RTOL]
    worst = max(range(len(differences)), key=lambda k: _order(differences[k][0]))
    rel, diff, name = differences[worst]
    if not over:
        logger.info("data-parallel ranks differ by at most %.3g (relative %.3g, in %s): "
                    "float rounding", diff, rel, name)  # fmt: skip
        return None
    return (
        f"data-parallel ranks ended with different weights: rank(s) {over} differ from rank 0 "
        f"by up to {diff:.6g} in {name} ({rel:.3g} of its largest weight; the tolerance is "
        f"{WEIGHT_RTOL:g})"
    )


def _order(value: float) -> float:
    return math.inf if math.isnan(value) else value


def weight_difference(reference: bytes, model: bytes) -> Difference:
    """Largest difference of ``model``'s float weights from ``reference``'s (both serialized
    ONNX models): relative to the tensor's largest weight, absolute, and the tensor's name. A
    missing tensor or another shape counts as an infinite difference."""
    import numpy as np
    import onnx
    from google.protobuf.message import DecodeError
    from onnx import numpy_helper

    if model == reference:
        return (0.0, 0.0, "")
    try:
        ref = {t.name: t for t in onnx.load_from_string(reference).graph.initializer}
        mine = onnx.load_from_string(model).graph.initializer
    except (DecodeError, ValueError):
        return (math.inf, math.inf, "(a model that cannot be read)")
    worst: Difference = (0.0, 0.0, "")
    for t in mine:
        a = numpy_helper.to_array(t)
        if a.dtype.kind != "f":
            continue
        other = ref.get(t.name)
        b = numpy_helper.to_array(other) if other is not None else None
        if b is None or b.shape != a.shape:
            return (math.inf, math.inf, t.name)
        diff = float(np.max(np.abs(a.astype(np.float64) - b), initial=0.0))
        scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-12)
        rel = math.inf if math.isnan(diff) else diff / scale
        if _order(rel) > _order(worst[0]):
            worst = (rel, diff, t.name)
    return worst


def train_parallel(job: OffspringJob, payload: bytes, ranks: int) -> JobResult:
    """Run ``job`` on ``ranks`` local DDP processes; rank 0's result.

    Raises:
        EvonnxError: A rank failed (its error), or the ranks ended with different weights.
    """
    return rank_results(job, payload, ranks)[0]


def rank_results(job: OffspringJob, payload: bytes, ranks: int) -> list[JobResult]:
    """Every rank's result of ``job`` trained on ``ranks`` DDP processes.

    Raises:
        EvonnxError: A rank failed: its error.
    """
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="evonnx-ddp-") as tmp:
        folder = Path(tmp)
        try:
            with _rank_threads(job.training.threads, ranks):
                context = mp.spawn(
                    _rank_main, args=(ranks, job, payload, str(folder)), nprocs=ranks, join=False
                )
            try:
                _wait_for_ranks(context, folder)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the ranks ignore it; stop them
                for process in context.processes:
                    process.terminate()
                raise
        except Exception as exc:  # torch wraps a rank's exception; ours is saved on disk
            for k in range(ranks):
                error = folder / f"error{k}.pkl"
                if error.exists():
                    raise pickle.loads(error.read_bytes()) from None
            raise ExecutorError(f"data-parallel retraining failed: {exc}") from exc
        return [pickle.loads(_result_file(folder, k).read_bytes()) for k in range(ranks)]


def _result_file(folder: Path, index: int) -> Path:
    return folder / f"rank{index}.pkl"


def _wait_for_ranks(context: ProcessContext, folder: Path) -> None:
    """Wait until every rank has ended. A rank that fails before saving its result fails
    the job at once (torch's join raises its error and stops the others, which would wait in
    a collective). A rank that dies *after* saving it (a native library aborting in its
    teardown, once its last collective is done) does not: every rank is past that collective,
    so the others finish too, and the saved results stand (a warning names the rank).

    Raises:
        Exception: torch's error for a rank that failed before saving its result.
    """
    from multiprocessing.connection import wait

    processes = context.processes
    while True:
        running = [p.sentinel for p in processes if p.exitcode is None]  # before ``failed``
        failed = [k for k, p in enumerate(processes) if p.exitcode not in (None, 0)]
        if any(not _result_file(folder, k).exists() for k in failed):
            while not context.join():  # raises that rank's error, stopping the others
                pass
        if not running:
            break
        wait(running, timeout=1.0)
    for k in failed:
        logger.warning("data-parallel rank %d ended with exit code %s after saving its "
                       "result (a crash in teardown); its result stands", k,
                       processes[k].exitcode)  # fmt: skip


@contextlib.contextmanager
def _rank_threads(threads: int | None, world: int) -> Iterator[None]:
    """``OMP_NUM_THREADS`` for the ranks being started (read when they start): the job's
    threads, else the CPUs shared out, so that no rank's OpenMP pool oversubscribes the
    cores (spinning OpenMP threads on a busy machine slow every rank down many times)."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads or max(1, (os.cpu_count() or 1) // world))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def _rank_main(index: int, world: int, job: OffspringJob, payload: bytes, folder: str) -> None:
    """One rank: join the process group, train, save the result (or the error)."""
    import torch
    import torch.distributed as dist

    from evonnx.execute.signals import ignore_interrupts
    from evonnx.model.textio import write_bytes_atomic

    ignore_interrupts()  # the launching process handles Ctrl-C and stops the ranks
    local_rank_setup(job.training.threads, world)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(index)
    dist.init_process_group(
        backend,
        init_method=f"file://{folder}/rendezvous",
        rank=index,
        world_size=world,
        timeout=datetime.timedelta(seconds=RENDEZVOUS_TIMEOUT),
    )
    out = Path(folder)
    try:
        result = train_rank(job, payload, (index, world))
        write_bytes_atomic(_result_file(out, index), pickle.dumps(result))  # whole or absent
    except EvonnxError as exc:
        (out / f"error{index}.pkl").write_bytes(pickle.dumps(exc))
        raise
    finally:
        dist.destroy_process_group()
    # Done: leave without the interpreter's teardown, where native libraries' destructors
    # have aborted a rank that had finished ("terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def local_rank_setup(threads: int | None, world: int) -> None:
    """Settings of a rank on this machine: gloo talks over the loopback interface (no lookup
    of the host's name, which can stall or fail on a busy or offline machine), and torch
    uses the job's threads (else the CPUs shared out among the ranks), so ranks do not
    oversubscribe the cores before training sets its own."""
    import torch

    loopback = next((name for _, name in socket.if_nameindex() if name.startswith("lo")), None)
    if loopback is not None:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", loopback)
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))


def run_data_parallel(job: OffspringJob, data: Split, ranks: int) -> JobResult:
    """:func:`train_parallel` for a task in this process."""
    from evonnx.execute.jobs import pack_split

    return train_parallel(job, pack_split(data), ranks)
