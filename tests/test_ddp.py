"""Data-parallel retraining of one offspring: 2 CPU ranks (gloo) end with equal weights."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import save_npz
from onnx import numpy_helper
from test_loop import tiny_data, tiny_model  # noqa: F401  (fixtures)

from evonnx.cli.main import cli
from evonnx.data import Dataset
from evonnx.errors import ConfigError, ExecutorError
from evonnx.evolution.lineage import EvolveConfig
from evonnx.evolution.loop import _offspring
from evonnx.execute.ddp import (
    _wait_for_ranks,
    check_same_weights,
    local_rank_setup,
    rank_results,
)
from evonnx.execute.jobs import pack_split, run_job
from evonnx.execute.ranks import shard
from evonnx.model.files import save_model
from evonnx.pruning.analysis import analyze
from evonnx.retrain.task import split_data

# 5 full batches of 32: every rank's slice has 16 samples, so the averaged gradient of the
# two ranks is the gradient of the whole batch and DDP must match one process closely.
CONFIG = EvolveConfig(
    epochs=1, lr=0.05, batch_size=32, max_batches=5, seed=5, threads=1, distill=None
)


@pytest.fixture(autouse=True)
def _one_ddp_test_at_a_time(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Data-parallel tests hold a lock shared by every xdist worker, so no two groups of
    ranks compete for the cores (4 ranks on 2 busy cores made the test flaky)."""
    import fcntl

    lock = tmp_path_factory.getbasetemp().parent / "evonnx-ddp-tests.lock"
    with lock.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


DDP_TEST_TIMEOUT = 600
"""Seconds a data-parallel test may take (about 20 s on 2 busy cores) before its ranks are
stopped and it fails: a hung rank waits 30 minutes in a collective (``RENDEZVOUS_TIMEOUT``),
and forever outside one."""


@pytest.fixture(autouse=True)
def _ranks_cannot_hang(_one_ddp_test_at_a_time: None) -> Iterator[None]:
    """Stop the ranks (this process's children) of a test still running after
    :data:`DDP_TEST_TIMEOUT`, and fail it saying so."""
    import multiprocessing
    import threading

    fired = threading.Event()

    def stop() -> None:
        fired.set()
        for child in multiprocessing.active_children():
            child.kill()

    watchdog = threading.Timer(DDP_TEST_TIMEOUT, stop)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
    if fired.is_set():
        pytest.fail(f"the data-parallel ranks were still running after {DDP_TEST_TIMEOUT} s: "
                    "stopped (a hung rank)")  # fmt: skip


def _weights(model: bytes) -> dict[str, np.ndarray]:
    graph = onnx.load_from_string(model).graph
    return {t.name: numpy_helper.to_array(t) for t in graph.initializer}


def test_two_ranks_train_equal_weights(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
) -> None:
    config = replace(CONFIG, gpus_per_offspring=2)
    split = split_data(tiny_data, config.selection, config.seed)
    job = _offspring(tiny_model, analyze(tiny_model), config, 11)
    ranks = rank_results(job, pack_split(split), 2)
    assert ranks[0].model == ranks[1].model  # gradients were averaged: equal weights
    onnx.checker.check_model(onnx.load_from_string(ranks[0].model), full_check=True)
    assert math.isnan(ranks[1].scores[0]) and 0.0 <= ranks[0].scores[0] <= 1.0
    single = run_job(replace(job, training=CONFIG.training, ranks=CONFIG.gpus_per_offspring), split)
    trained, alone, before = _weights(ranks[0].model), _weights(single.model), _weights(job.child)
    assert any(not np.array_equal(trained[k], before[k]) for k in before)  # it trained
    for name, value in alone.items():  # and like one process on the whole batches
        np.testing.assert_allclose(trained[name], value, rtol=1e-3, atol=1e-4)


def _compare_rank(index: int, folder: str) -> None:
    """A rank of a 2-rank gloo group whose "trained model" differs from the other rank's."""
    import torch.distributed as dist

    local_rank_setup(1, 2)  # loopback, one thread: as evonnx's own ranks
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/rendezvous", rank=index, world_size=2
    )
    try:
        check_same_weights(b"same", (index, 2))  # equal everywhere: passes
        check_same_weights(bytes([index]), (index, 2))
    except ExecutorError as exc:
        Path(folder, f"rank{index}.txt").write_text(str(exc))
    finally:
        dist.destroy_process_group()


def test_ranks_with_different_weights_fail_the_job(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_compare_rank, args=(str(tmp_path),), nprocs=2)
    for k in range(2):  # every rank sees the mismatch, so none waits for the others
        assert "rank(s) [1] differ from rank 0" in (tmp_path / f"rank{k}.txt").read_text()


def _save_then_die(index: int, folder: str, saved: bool) -> None:
    """A rank that dies by SIGABRT (rank 1), after saving its result or before."""
    if saved or index == 0:
        Path(folder, f"rank{index}.pkl").write_bytes(pickle.dumps(index))
    if index == 1:
        os.abort()


def test_a_rank_dying_after_saving_its_result_does_not_fail_the_job(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch.multiprocessing as mp

    context = mp.start_processes(
        _save_then_die, args=(str(tmp_path), True), nprocs=2, join=False, start_method="spawn"
    )
    _wait_for_ranks(context, tmp_path)  # a crash in teardown: the saved results stand
    assert [p.exitcode for p in context.processes] == [0, -signal.SIGABRT]
    assert "rank 1 ended with exit code -6 after saving its result" in caplog.text


def test_a_rank_dying_before_saving_its_result_fails_the_job(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    context = mp.start_processes(
        _save_then_die, args=(str(tmp_path), False), nprocs=2, join=False, start_method="spawn"
    )
    with pytest.raises(Exception, match="process 1 terminated with signal SIGABRT"):
        _wait_for_ranks(context, tmp_path)


def test_batches_are_sliced_per_rank() -> None:
    x = np.arange(10)
    assert shard((x, [1, 2, 3]), (1, 2))[0].tolist() == [1, 3, 5, 7, 9]
    assert shard((x, [1, 2, 3]), (1, 2))[1] == [2]
    with pytest.raises(ConfigError):
        EvolveConfig(gpus_per_offspring=0)


def test_cli_evolves_data_parallel(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    tmp_path: Path,
) -> None:
    save_npz(tiny_data, tmp_path / "tiny.npz")
    save_model(tiny_model, tmp_path / "tiny.onnx")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        ["evolve", str(tmp_path / "tiny.onnx"), "--data", str(tmp_path / "tiny.npz"),
         "--out", str(out), "--generations", "2", "--epochs", "1", "--threads", "1",
         "--gpus-per-offspring", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["config"]["execution"]["gpus_per_offspring"] == 2
    assert [g["generation"] for g in lineage["generations"]] == [1, 2]
    onnx.checker.check_model(onnx.load(out / "gen_002.onnx"), full_check=True)
