"""Executors: a process pool and Ray give the local executor's lineage; failing jobs surface;
Ray Train retrains one offspring on 2 ranks; latency jobs on Ray never overlap training."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import onnx
import pytest
from click.testing import CliRunner
from helpers import save_npz
from test_loop import TinyNet, _export, tiny_data, tiny_model  # noqa: F401  (fixtures)

import evonnx
import evonnx.evolution.loop
from evonnx.cli.main import cli
from evonnx.data import Dataset
from evonnx.errors import (
    ConfigError,
    EvonnxError,
    ExecutorError,
    RuntimeUnavailableError,
    TaskError,
)
from evonnx.evolution.lineage import EvolveConfig
from evonnx.evolution.loop import _offspring
from evonnx.execute.ddp import rank_results
from evonnx.execute.executors import Executor, RayExecutor, make_executor
from evonnx.execute.jobs import pack_split, unpack_split
from evonnx.model.files import save_model
from evonnx.pruning.analysis import analyze
from evonnx.retrain.task import ClassificationTask, Split, load_task, split_data
from evonnx.runtimes import RuntimeSettings

CONFIG = EvolveConfig(
    generations=2,
    population=2,
    epochs=1,
    lr=0.05,
    batch_size=32,
    seed=3,
    threads=1,
    optimizer="sgd",
    warmup=0.0,
    freeze_bn=False,
)

FAILING_TASK = '''
from pathlib import Path

from evonnx import ClassificationTask
from evonnx.data import Dataset
import numpy as np

LOG = Path({log!r})


class Broken(ClassificationTask):
    """Labels the model cannot fit: the loss fails in every worker that runs it."""

    def loss(self, outputs, targets):
        with LOG.open("a") as f:
            f.write("called\\n")
        raise ValueError("target 7 is out of bounds")


def make():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    return Broken(Dataset(x, y, x[:16], y[:16], name="broken"), 0.25)
'''


KILLING_TASK = '''
import os
from pathlib import Path

import numpy as np

from evonnx import ClassificationTask
from evonnx.data import Dataset

MARKER = Path({marker!r})


class Killed(ClassificationTask):
    """The first worker to train dies mid-job, as if the machine took it away."""

    def loss(self, outputs, targets):
        if not MARKER.exists():
            MARKER.write_text("killed")
            os._exit(9)
        return super().loss(outputs, targets)


def make():
    with np.load({data!r}) as z:
        data = Dataset(*(z[k] for k in ("x_train", "y_train", "x_test", "y_test")), name="tiny")
    return Killed(data, 0.1, 3)
'''


def _key(lineage: evonnx.Lineage) -> list[tuple[object, ...]]:
    return [
        (r.generation, r.seed, r.accuracy, r.val_accuracy, r.nonzero_synapses, r.candidates)
        for r in lineage.records
    ]


@pytest.fixture(scope="module")
def local_run(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[evonnx.Lineage, Path]:
    out = tmp_path_factory.mktemp("local") / "run"
    return evonnx.evolve(tiny_model, tiny_data, out, CONFIG, progress=False), out


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray", reason="Ray is in the dev extra: pip install -e '.[dev]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _same_run(local: tuple[evonnx.Lineage, Path], other: evonnx.Lineage, out: Path) -> None:
    lineage, folder = local
    assert len(other.records) == CONFIG.generations
    assert len(other.records[-1].candidates) == CONFIG.population
    assert _key(other) == _key(lineage)
    for r in lineage.records:
        assert (out / r.file).read_bytes() == (folder / r.file).read_bytes()


def test_process_pool_gives_the_local_lineage(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    local_run: tuple[evonnx.Lineage, Path],
    tmp_path: Path,
) -> None:
    config = replace(CONFIG, executor="process")
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, config, progress=False)
    _same_run(local_run, lineage, tmp_path)


def test_ray_gives_the_local_lineage(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    local_run: tuple[evonnx.Lineage, Path],
    ray_cluster: None,
    tmp_path: Path,
) -> None:
    config = replace(CONFIG, executor="ray")
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, config, progress=False)
    _same_run(local_run, lineage, tmp_path)


def _failing(tmp_path: Path, executor: str, ranks: int = 1) -> tuple[EvonnxError, list[str]]:
    log = tmp_path / "calls.log"
    source = tmp_path / "broken_task.py"
    source.write_text(FAILING_TASK.format(log=str(log)))
    task = load_task(f"{source}:make")
    model = tmp_path / "tiny.onnx"
    save_model(_export(TinyNet(), (1, 8, 8)), model)
    config = EvolveConfig(
        generations=2, epochs=1, batch_size=32, threads=1, max_batches=1, executor=executor,
        gpus_per_offspring=ranks,
    )  # fmt: skip
    with pytest.raises(EvonnxError) as info:
        evonnx.evolve(model, task, tmp_path / "run", config, progress=False)
    return info.value, log.read_text().splitlines()


@pytest.mark.parametrize("executor", ["local", "process"])
def test_a_failing_job_is_a_clear_error(tmp_path: Path, executor: str) -> None:
    error, calls = _failing(tmp_path, executor)
    assert isinstance(error, TaskError)
    assert "ValueError: target 7 is out of bounds" in str(error)
    assert calls == ["called"]  # the task file was imported in the worker, run once
    assert (tmp_path / "run" / "gen_001.onnx").is_file()  # the driver wrote generation 1
    assert not (tmp_path / "run" / "gen_002.onnx").exists()


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_failing_ray_job_is_not_retried(tmp_path: Path, ray_cluster: None, ranks: int) -> None:
    error, calls = _failing(tmp_path, "ray", ranks)
    assert isinstance(error, TaskError)  # with 2 ranks: a Ray Train rank's own error
    assert "ValueError: target 7 is out of bounds" in str(error)
    assert calls == ["called"] * ranks  # once on each rank, never retried


def test_ray_train_job_matches_plain_ddp(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    ray_cluster: None,
) -> None:
    config = EvolveConfig(
        epochs=1, lr=0.05, batch_size=32, max_batches=5, seed=5, threads=1,
        gpus_per_offspring=2, executor="ray", distill=None,
    )  # fmt: skip
    split = split_data(tiny_data, config.selection, config.seed)
    job = _offspring(tiny_model, analyze(tiny_model), config, 11)
    with make_executor(config.execution, True, config.threads, config.population) as executor:
        assert isinstance(executor, RayExecutor)
        (result,) = executor.run([job], split)  # a TorchTrainer of 2 gloo workers
    # both ranks compared their weights inside the job (evonnx.execute.ddp.check_same_weights);
    # the plain torch DDP launcher runs the same per-rank function with the same seed, the
    # same gloo all-reduce and 1 thread per rank, so the trained bytes are identical
    plain = rank_results(job, pack_split(split), 2)
    assert plain[0].model == plain[1].model
    assert result.model == plain[0].model and result.scores == plain[0].scores
    assert result.model != job.child  # it trained
    onnx.checker.check_model(onnx.load_from_string(result.model), full_check=True)
    assert [s.kind for s in executor.timeline] == ["train"]


def test_ray_train_failures_map_to_job_errors() -> None:
    pytest.importorskip("ray.train", reason="Ray Train is in the dev extra")
    from ray.exceptions import RayTaskError
    from ray.train import WorkerGroupError

    from evonnx.errors import RankDiedError
    from evonnx.execute.ray_train import _rank_error

    task_error = TaskError("task 'x' loss failed: ValueError: target 7 is out of bounds")
    wrapped = RayTaskError("_train_loop", "traceback", task_error)
    error = _rank_error(WorkerGroupError("rank 1 failed", {0: RuntimeError("x"), 1: wrapped}))
    assert error is task_error  # a rank's data or model error, as raised: never rerun
    died = _rank_error(WorkerGroupError("boom", {0: RuntimeError("worker exited")}))
    assert isinstance(died, RankDiedError)  # rerun as a whole job (retry_exceptions)
    assert "data-parallel retraining on Ray Train failed" in str(died)


def test_latency_jobs_never_overlap_training(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    local_run: tuple[evonnx.Lineage, Path],
    ray_cluster: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[Executor] = []

    def keep(*args: Any, **kwargs: Any) -> Executor:
        made.append(make_executor(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(evonnx.evolution.loop, "make_executor", keep)
    # runtime_threads 0: each measurement reserves every CPU of the node
    config = replace(CONFIG, executor="ray", runtime="ort-cpu", runtime_threads=0)
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, config, progress=False)
    _same_run(local_run, lineage, tmp_path)  # measuring on Ray changes no decision or model
    for r in lineage.records:
        assert r.latency_ms is not None and r.latency_ms > 0 and r.speedup is not None
    (executor,) = made
    assert isinstance(executor, RayExecutor)
    spans = sorted(executor.timeline, key=lambda s: s.start)
    train = [s for s in spans if s.kind == "train"]
    latency = [s for s in spans if s.kind == "latency"]
    assert len(train) == CONFIG.population * (CONFIG.generations - 1)
    assert len(latency) == 1 + CONFIG.generations  # the device query, one per generation
    for m in latency:
        assert all(m.end <= t.start or t.end <= m.start for t in train), (m, train)
    launch = executor.latency_runtime()
    with pytest.raises(ConfigError, match="more than the 2 CPUs"):  # it could never start
        launch(RuntimeSettings("ort-cpu", threads=3))
    with pytest.raises(RuntimeUnavailableError, match="the Ray cluster has none"):
        launch(RuntimeSettings("torch-cuda"))
    executor._in_flight = 1  # as if a generation's training jobs were still running
    with pytest.raises(ExecutorError, match="in flight"):
        launch(RuntimeSettings("ort-cpu"))


@pytest.mark.parametrize("executor", ["process", "ray"])
def test_a_killed_worker_is_retried(
    tiny_data: Dataset,  # noqa: F811
    tiny_model: onnx.ModelProto,  # noqa: F811
    local_run: tuple[evonnx.Lineage, Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    executor: str,
) -> None:
    if executor == "ray":
        request.getfixturevalue("ray_cluster")
    arrays = save_npz(tiny_data, tmp_path / "tiny.npz")
    source = tmp_path / "killed_task.py"
    marker = tmp_path / "killed"
    source.write_text(KILLING_TASK.format(marker=str(marker), data=str(arrays)))
    config = replace(CONFIG, executor=executor)  # type: ignore[arg-type]
    out = tmp_path / "run"
    lineage = evonnx.evolve(tiny_model, load_task(f"{source}:make"), out, config, progress=False)
    assert marker.read_text() == "killed"  # a worker did die
    _same_run(local_run, lineage, out)


def test_an_unpicklable_task_is_refused_before_any_job(tiny_data: Dataset) -> None:  # noqa: F811
    task = ClassificationTask(tiny_data)
    task.hook = lambda: None  # type: ignore[attr-defined]
    with pytest.raises(TaskError, match="cannot be sent to worker processes"):
        pack_split(Split(task, "val"))
    assert unpack_split(pack_split(Split(ClassificationTask(tiny_data), "val"))).task.name == "tiny"


def test_executor_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="ray_address needs --executor ray"):
        EvolveConfig(ray_address="auto")
    with pytest.raises(ConfigError, match="executor must be"):
        EvolveConfig(executor="dask")  # type: ignore[arg-type]


def test_cli_executor_option(tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    save_model(_export(TinyNet(), (1, 8, 8)), model)
    result = CliRunner().invoke(
        cli,
        ["evolve", str(model), "--data", "digits", "--out", str(tmp_path / "run"),
         "--ray-address", "auto"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "ray_address needs --executor ray" in result.output
