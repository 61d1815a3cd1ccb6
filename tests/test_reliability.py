"""Reliability round 3 (issue 19): links, non-finite numbers, user task code, run folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from helpers import save_npz
from onnx import numpy_helper
from zoo import helper_convnet

import evonnx
from evonnx.cli.main import cli
from evonnx.data import Dataset
from evonnx.errors import ConfigError, NonFiniteError, RunDirectoryError, TaskError
from evonnx.evolution import loop as evolution
from evonnx.evolution.lineage import EvolveConfig
from evonnx.evolution.rundir import LOCK_NAME
from evonnx.model import textio
from evonnx.model.files import save_model
from evonnx.retrain.task import ClassificationTask, TrainData

CONFIG = EvolveConfig(generations=2, epochs=1, lr=0.05, batch_size=16, seed=3, threads=1)
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}


def _data(seed: int = 0, n: int = 64) -> Dataset:
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(4, 2, 8, 8)).astype(np.float32)

    def split(k: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(k) % 4
        return templates[y] + 0.5 * rng.normal(size=(k, 2, 8, 8)).astype(np.float32), y

    return Dataset(*split(n), *split(n // 2), name="tiny")


def _files(tmp_path: Path) -> tuple[Path, Path]:
    model, data = tmp_path / "model.onnx", tmp_path / "tiny.npz"
    save_model(helper_convnet(), model)
    save_npz(_data(), data)
    return model, data


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# --------------------------------------------------------------------------- links (High 1)


def test_a_lock_file_that_is_a_link_is_refused_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(RunDirectoryError, match="symbolic link"):
        evonnx.evolve(helper_convnet(), _data(), out, CONFIG)
    assert victim.read_text() == "keep me"
    assert (out / LOCK_NAME).is_symlink()


def test_an_atomic_write_replaces_a_link_not_its_target(tmp_path: Path) -> None:
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    os.chmod(victim, 0o600)
    link = tmp_path / "out.txt"
    link.symlink_to(victim)
    textio.write_text_atomic(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert victim.read_text() == "keep me"


def test_prune_output_on_a_link_says_what_it_does(tmp_path: Path) -> None:
    model, _ = _files(tmp_path)
    victim = tmp_path / "precious.onnx"
    victim.write_bytes(b"keep me")
    link = tmp_path / "pruned.onnx"
    link.symlink_to(victim)
    code, output = _invoke("prune", str(model), "--method", "magnitude", "--keep", "0.5",
                           "-o", str(link))  # fmt: skip
    assert code == 0, output
    assert "symbolic link" in output and "target is left unchanged" in output
    assert victim.read_bytes() == b"keep me"
    onnx.checker.check_model(onnx.load(link), full_check=True)


# --------------------------------------------------------------------------- folders (5, 6)


def test_a_foreign_folder_is_refused_without_touching_its_temporaries(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    user_files = {"notes.txt": "mine", ".notes.txt.ab12cd34.tmp": "an editor's backup",
                  ".gen_002.onnx.ab12cd34.tmp": "not evonnx's"}  # fmt: skip
    for name, text in user_files.items():
        (out / name).write_text(text)
    with pytest.raises(RunDirectoryError, match="not empty"):
        evonnx.evolve(helper_convnet(), _data(), out, CONFIG)
    assert {p.name: p.read_text() for p in out.iterdir()} == user_files


def test_only_evonnx_temporaries_of_run_files_are_swept(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    ours = out / f".gen_002.onnx.ab12cd34{textio.TMP_SUFFIX}"
    ours.write_bytes(b"left by a kill")
    evonnx.evolve(helper_convnet(), _data(), out, replace(CONFIG, generations=1))
    assert not ours.exists() and (out / "lineage.json").is_file()
    assert not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------- NaN/Inf (High 3)


class _NaNTask(ClassificationTask):
    """Classification whose loss is NaN in the ``nan_call``-th ``train_batches()`` call."""

    def __init__(self, data: Dataset, nan_call: int) -> None:
        super().__init__(data, 0.25, 0)
        self.calls, self.nan_call = 0, nan_call

    def train_batches(self) -> TrainData:
        self.calls += 1
        return super().train_batches()

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        own = super().loss(outputs, targets)
        return own * float("nan") if self.calls == self.nan_call else own


def test_a_nan_loss_fails_the_offspring_which_is_never_selected(tmp_path: Path) -> None:
    config = replace(CONFIG, population=2, distill=None)
    # calls: 1 sample shapes, 2 offspring 0, 3 offspring 1 (NaN)
    lineage = evonnx.evolve(helper_convnet(), _NaNTask(_data(), 3), tmp_path / "run", config)
    gen2 = lineage.records[1]
    assert gen2.candidates[1] is None and gen2.candidates[0] is not None
    assert gen2.seed == evolution.generation_seed(config.seed, 2, 0)
    model = onnx.load(tmp_path / "run" / "gen_002.onnx")
    assert all(np.isfinite(numpy_helper.to_array(t)).all() for t in model.graph.initializer)


def test_a_generation_whose_every_offspring_diverges_stops_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match=r"generation 2: every offspring failed .*nan"):
        evonnx.evolve(helper_convnet(), _NaNTask(_data(), 2), out, CONFIG)
    lineage = json.loads((out / "lineage.json").read_text())
    assert [g["generation"] for g in lineage["generations"]] == [1]
    assert not (out / "gen_002.onnx").exists()


def _nan_model() -> onnx.ModelProto:
    model = helper_convnet()
    w = numpy_helper.to_array(model.graph.initializer[0]).copy()
    w.flat[3] = np.inf
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, model.graph.initializer[0].name))
    return model


def test_an_ancestor_with_non_finite_weights_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError, match="the ancestor has NaN or infinite weights in w1"):
        evonnx.evolve(_nan_model(), _data(), tmp_path / "run", CONFIG)
    assert not (tmp_path / "run").exists()
    save_model(_nan_model(), tmp_path / "nan.onnx")
    code, output = _invoke("prune", str(tmp_path / "nan.onnx"), "-o", str(tmp_path / "o.onnx"))
    assert code == 1 and "NaN or infinite weights in w1" in _one_error_line(output)
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("--distill", "inf"), ("--distill", "nan"), ("--lr", "nan"), ("--lr", "inf"),
     ("--max-drop", "nan")],
)  # fmt: skip
def test_non_finite_options_are_refused_before_the_run_folder(
    tmp_path: Path, option: str, value: str
) -> None:
    model, data = _files(tmp_path)
    out = tmp_path / "run"
    code, output = _invoke("evolve", str(model), "--data", str(data), "--out", str(out),
                           option, value)  # fmt: skip
    assert code == 1, output
    _one_error_line(output)
    assert not out.exists()


def test_max_drop_is_in_the_scores_units_not_capped_at_one() -> None:
    assert EvolveConfig(max_drop=5.0).max_drop == 5.0
    with pytest.raises(ConfigError):
        EvolveConfig(max_drop=-1.0)


# --------------------------------------------------------------------------- user code (4)

TASK_FILE = """
import os, signal, sys, time
import numpy as np
import torch
from evonnx.data import load_npz
from evonnx.retrain.task import ClassificationTask, Task as BaseTask
from helper_beside import WHAT  # a module beside the task file

if WHAT == "interrupt-import":
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(5)


class Task(ClassificationTask):
    def __init__(self):
        super().__init__(load_npz(os.environ["TASK_DATA"]), 0.25, 0)
        self.name = "mytask"

    if WHAT == "list":  # the default distillation: mean squared error, no temperature
        distill_loss = BaseTask.distill_loss

    def train_batches(self):
        if WHAT == "batches":
            raise RuntimeError("no data today")
        if WHAT == "list":
            x = torch.from_numpy(self.fit.x_train)
            y = torch.from_numpy(self.fit.y_train)
            return [(x[:16], y[:16]), (x[16:32], y[16:32])]
        if WHAT == "shape":
            x = torch.zeros(16, 3, 8, 8)
            return [(x, torch.zeros(16, dtype=torch.int64))]
        return super().train_batches()

    def loss(self, outputs, targets):
        if WHAT == "loss":
            raise KeyError("no such head")
        if WHAT == "exit":
            sys.exit(0)
        if WHAT == "term":
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        return super().loss(outputs, targets)

    def score(self, onnx_path, split):
        if WHAT == "swallow" and split == "test" and "candidate" in str(onnx_path):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
            except KeyboardInterrupt:
                pass  # a careless library swallows the Ctrl-C
        return super().score(onnx_path, split)


TASK = Task
"""


def _task_files(tmp_path: Path, what: str) -> tuple[Path, str, dict[str, str]]:
    model, data = _files(tmp_path)
    folder = tmp_path / "tasks"
    folder.mkdir(exist_ok=True)
    (folder / "task.py").write_text(TASK_FILE)
    (folder / "helper_beside.py").write_text(f"WHAT = {what!r}\n")
    return model, f"{folder / 'task.py'}:TASK", {**ENV, "TASK_DATA": str(data)}


def _cli(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    code = "from evonnx.cli.main import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def _evolve_task(tmp_path: Path, what: str, *extra: str) -> subprocess.CompletedProcess:
    model, spec, env = _task_files(tmp_path, what)
    return _cli(
        "evolve",
        str(model),
        "--task",
        spec,
        "--out",
        str(tmp_path / "run"),
        "--generations",
        "2",
        "--epochs",
        "1",
        "--threads",
        "1",
        *extra,
        env=env,
    )


@pytest.mark.parametrize(
    ("what", "message"),
    [("batches", "task 'mytask': train_batches() failed: RuntimeError: no data today"),
     ("loss", "task 'mytask': loss() failed: KeyError: 'no such head'"),
     ("exit", "task 'mytask': loss() called sys.exit(0); a task must raise instead"),
     ("shape", "task 'mytask': training on the batches of train_batches() failed: RuntimeError")],
)  # fmt: skip
def test_task_code_failures_are_one_line_naming_the_step(
    tmp_path: Path, what: str, message: str
) -> None:
    result = _evolve_task(tmp_path, what)  # distillation on (the default): loss() is named
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


# --------------------------------------------------------------------------- signals (7)


def test_ctrl_c_while_importing_the_task_is_exit_130_one_line(tmp_path: Path) -> None:
    result = _evolve_task(tmp_path, "interrupt-import")
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip() == "interrupted (Ctrl-C)" and "Aborted" not in result.stderr


def test_sigterm_during_training_is_exit_143_and_the_run_resumes(tmp_path: Path) -> None:
    result = _evolve_task(tmp_path, "term")
    assert result.returncode == 143, result.stderr
    assert "terminated (SIGTERM); finished generations are kept in" in result.stderr
    assert "Traceback" not in result.stderr
    out = tmp_path / "run"
    assert not list(out.glob(".*")), list(out.iterdir())  # no temporary, no lock left
    lineage = json.loads((out / "lineage.json").read_text())
    assert [g["generation"] for g in lineage["generations"]] == [1]


def test_a_swallowed_ctrl_c_still_stops_the_run(tmp_path: Path) -> None:
    result = _evolve_task(tmp_path, "swallow", "--generations", "3")
    assert result.returncode == 130, result.stderr
    lineage = json.loads((tmp_path / "run" / "lineage.json").read_text())
    assert len(lineage["generations"]) < 3


# --------------------------------------------------------------------------- options (9-11)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--threads", "100000"], "more than the"),
     (["--runtime", "ort-cuda"], "not available"),
     (["--runtime", "torch-cuda", "--runtime-threads", "2"], "ignores it"),
     (["--round-to", "1000"], "larger than every prunable channel group"),
     (["--seed", "-1"], "seed")],
)  # fmt: skip
def test_options_are_checked_before_the_first_write(
    tmp_path: Path, args: list[str], message: str
) -> None:
    model, data = _files(tmp_path)
    out = tmp_path / "run"
    code, output = _invoke("evolve", str(model), "--data", str(data), "--out", str(out),
                           "--epochs", "1", *args)  # fmt: skip
    assert code == 1 and message in _one_error_line(output), output
    assert not out.exists() or not list(out.iterdir())


def test_an_unreachable_ray_address_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    def refuse(**_kw: Any) -> None:
        raise ConnectionError("Could not find any running Ray instance.\nPlease specify ...")

    monkeypatch.setattr(ray, "init", refuse)
    model, data = _files(tmp_path)
    out = tmp_path / "run"
    code, output = _invoke("evolve", str(model), "--data", str(data), "--out", str(out),
                           "--executor", "ray", "--ray-address", "10.0.0.1:6379")  # fmt: skip
    line = _one_error_line(output)
    assert code == 1 and "10.0.0.1:6379" in line and "RAY_AUTH_MODE=token" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("what", "args", "message"),
    [("list", ["--batch-size", "8"], "--batch-size: task 'mytask' brings its own batches"),
     ("list", ["--distill", "2"], "has no temperature")],
)  # fmt: skip
def test_options_a_task_ignores_are_refused(
    tmp_path: Path, what: str, args: list[str], message: str
) -> None:
    result = _evolve_task(tmp_path, what, *args)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


def test_a_second_demo_in_the_same_folder_is_refused_before_writing(tmp_path: Path) -> None:
    from evonnx.evolution.rundir import locked

    out = tmp_path / "demo"
    out.mkdir()
    with locked(out):
        code, output = _invoke("demo", "--out", str(out), "--generations", "2")
    assert code == 1 and "in use by another evonnx run" in _one_error_line(output)
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- resume (12)


def test_resume_refuses_a_changed_generation_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    config = replace(CONFIG, generations=3)
    evonnx.evolve(helper_convnet(), _data(), out, config)
    lineage = json.loads((out / "lineage.json").read_text())
    assert all(len(g["sha256"]) == 64 for g in lineage["generations"])
    two, three = (out / "gen_002.onnx").read_bytes(), (out / "gen_003.onnx").read_bytes()
    (out / "gen_002.onnx").write_bytes(three)  # swapped
    (out / "gen_003.onnx").write_bytes(two)
    with pytest.raises(RunDirectoryError, match=r"gen_002.onnx, gen_003.onnx in .* changed"):
        evonnx.evolve(helper_convnet(), _data(), out, replace(config, generations=4), resume=True)
    (out / "gen_002.onnx").write_bytes(two[: len(two) // 2])  # truncated
    (out / "gen_003.onnx").write_bytes(three)
    with pytest.raises(RunDirectoryError, match=r"gen_002.onnx in .* changed"):
        evonnx.evolve(helper_convnet(), _data(), out, replace(config, generations=4), resume=True)


def test_nan_in_the_lineage_is_a_one_line_error(tmp_path: Path) -> None:
    model, data = _files(tmp_path)
    out = tmp_path / "run"
    evonnx.evolve(helper_convnet(), _data(), out, replace(CONFIG, generations=1))
    text = (out / "lineage.json").read_text()
    lineage = json.loads(text)
    accuracy = lineage["generations"][0]["accuracy"]
    (out / "lineage.json").write_text(text.replace(f'"accuracy": {accuracy}', '"accuracy": NaN'))
    code, output = _invoke("evolve", str(model), "--data", str(data), "--out", str(out),
                           "--resume", "--epochs", "1", "--batch-size", "16", "--seed", "3",
                           "--threads", "1", "--lr", "0.05")  # fmt: skip
    assert code == 1 and "NaN is not a number a lineage may hold" in _one_error_line(output)


# --------------------------------------------------------------------------- latency cache (8)


def _queries() -> list[tuple[Any, int, int]]:
    from evonnx.latency import layer_shapes
    from evonnx.pruning.analysis import analyze

    model = helper_convnet()
    return [(s, s.cin, s.cout) for s in layer_shapes(model, analyze(model), batch=2).values()]


@pytest.mark.parametrize("bad", ["[1, 2, 3]", '{"entries": [1]}', "CORRUPT"])
def test_a_latency_cache_of_the_wrong_shape_is_rebuilt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    from fake_runtime import MacRuntime

    from evonnx.latency import LatencyTable

    monkeypatch.setenv("EVONNX_CACHE_DIR", str(tmp_path))
    path = LatencyTable(MacRuntime(pad=4), 2).path
    path.write_text(bad)
    table = LatencyTable(MacRuntime(pad=4), 2)
    assert table.entries == {} and len(table.lookup(_queries())) == 3
    assert len(json.loads(path.read_text())["entries"]) == 3


def test_nan_and_negative_latency_entries_are_remeasured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fake_runtime import MacRuntime

    from evonnx.latency import LatencyTable

    monkeypatch.setenv("EVONNX_CACHE_DIR", str(tmp_path))
    first = LatencyTable(MacRuntime(pad=4), 2)
    good = first.lookup(_queries())
    data = json.loads(first.path.read_text())
    keys = sorted(data["entries"])
    data["entries"][keys[0]], data["entries"][keys[1]] = -5.0, float("nan")
    first.path.write_text(json.dumps(data))
    again = LatencyTable(MacRuntime(pad=4), 2)
    assert len(again.entries) == len(keys) - 2
    assert again.lookup(_queries()) == good and again.misses == 2


def test_an_unwritable_latency_cache_falls_back_to_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fake_runtime import MacRuntime

    from evonnx.latency import LatencyTable

    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("EVONNX_CACHE_DIR", str(blocker / "cache"))
    table = LatencyTable(MacRuntime(pad=4), 2)
    assert len(table.lookup(_queries())) == 3 and table.lookup(_queries()[:1])
    assert table.hits == 1


# --------------------------------------------------------------------------- reports (Low)


def test_cli_summary_shows_the_deciding_score_and_marks_over_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vals = iter([0.9, 0.5])  # generation 2 falls 0.4 below generation 1: over the budget
    monkeypatch.setattr(
        evolution.Split, "_score", lambda _s, _p, split: 0.75 if split == "test" else next(vals)
    )
    model, data = _files(tmp_path)
    code, output = _invoke("evolve", str(model), "--data", str(data), "--out",
                           str(tmp_path / "run"), "--generations", "2", "--epochs", "1",
                           "--threads", "1", "--distill", "off")  # fmt: skip
    assert code == 0, output
    header, row1, row2 = [line for line in output.splitlines() if line[:4].strip()][:3]
    assert "test acc." in header and "val acc." in header
    assert "90.00%" in row1 and "over budget" not in row1
    assert "50.00%" in row2 and row2.endswith("over budget")
    assert "validation accuracy 90.00% (generation 1: 90.00%) decided" in output
    assert "over budget (not bred from): generation(s) 2" in output
    lineage = json.loads((tmp_path / "run" / "lineage.json").read_text())
    assert [g["val_score"] for g in lineage["generations"]] == [0.9, 0.5]
    assert evonnx.Lineage.from_dict(lineage).records[1].val_accuracy == 0.5


def test_huge_scores_plot_and_plain_scores_are_not_called_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evolution.Split, "_score", lambda _s, _p, _split: 1e308)
    task = ClassificationTask(_data(), 0.25, 0)
    task.score_percent = False
    out = tmp_path / "run"
    evonnx.evolve(helper_convnet(), task, out, replace(CONFIG, generations=1))
    assert (out / "efficiency.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "| Gen. | A-E | SCORE |" in report and "ACC." not in report


def test_scores_numpy_integers_and_percent_range() -> None:
    class Fixed(ClassificationTask):
        value: Any = 0

        def score(self, onnx_path: Path, split: Any) -> float:
            return self.value  # type: ignore[no-any-return]

    task = Fixed(_data(), 0.25, 0)
    split = evolution.Split(task, "val")
    task.value = np.int64(1)
    assert split._score(Path("x.onnx"), "test") == 1.0
    task.value = 1.5
    with pytest.raises(TaskError, match=r"scored test as 1.5; its score_percent"):
        split._score(Path("x.onnx"), "test")


def test_api_progress_prints_one_line_per_generation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evonnx.evolve(helper_convnet(), _data(), tmp_path / "run", CONFIG, progress=True)
    err = capsys.readouterr().err
    assert "evonnx: generation 1: test" in err and "evonnx: generation 2: test" in err


# --------------------------------------------------------------------------- bounds (10)


@pytest.mark.parametrize(
    ("shape", "message"),
    [("x=1x2x100000000x100000000", "GiB of memory; this machine has"),
     ("x=1x2x99999999999999999999x8", "dimensions must be below")],
)  # fmt: skip
def test_huge_input_shapes_are_refused_with_the_figure(
    tmp_path: Path, shape: str, message: str
) -> None:
    model, _ = _files(tmp_path)
    code, output = _invoke("inspect", str(model), "--input-shape", shape)
    assert code == 1 and message in _one_error_line(output)


def test_an_npz_inflating_past_memory_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evonnx.data import load_npz
    from evonnx.errors import DataError
    from evonnx.model import memory

    _, data = _files(tmp_path)
    monkeypatch.setattr(memory, "available_bytes", lambda: 1000)
    with pytest.raises(DataError, match=r"tiny.npz \(uncompressed\) needs .* GiB of memory"):
        load_npz(data)


def test_a_half_precision_ancestor_is_refused_up_front(tmp_path: Path) -> None:
    from onnxconverter_common import float16

    from evonnx.errors import UnsupportedModelError

    half = float16.convert_float_to_float16(helper_convnet(), keep_io_types=True)
    with pytest.raises(UnsupportedModelError, match="half-precision weights"):
        evonnx.evolve(half, _data(), tmp_path / "run", CONFIG)
    assert not (tmp_path / "run").exists()


def test_infinite_speedups_are_refused(tmp_path: Path) -> None:
    model, _ = _files(tmp_path)
    code, output = _invoke("prune", str(model), "--env", "latency", "--speedup", "inf",
                           "-o", str(tmp_path / "o.onnx"))  # fmt: skip
    assert code == 1 and "speedup" in _one_error_line(output)
    with pytest.raises(ConfigError):
        EvolveConfig(env="latency", target_speedup=float("inf"))
