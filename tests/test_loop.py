"""The evolution loop end to end: API, CLI, resume, lineage and report contents."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from helpers import save_npz
from torch import nn

import evonnx
from evonnx.cli.main import cli
from evonnx.data import Dataset
from evonnx.errors import DataError, RunDirectoryError, UnsupportedModelError
from evonnx.evolution import loop as evolve_module
from evonnx.evolution.lineage import EvolveConfig

CONFIG = EvolveConfig(
    generations=3,
    epochs=1,
    lr=0.05,
    optimizer="sgd",
    warmup=0.0,
    freeze_bn=False,
    batch_size=32,
    seed=7,
    threads=1,
)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv2(torch.relu(self.conv(x)))), 2)
        return self.fc(torch.flatten(x, 1))


def _export(module: nn.Module, shape: tuple[int, ...]) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(1, *shape),), buf, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


@pytest.fixture(scope="module")
def tiny_model() -> onnx.ModelProto:
    torch.manual_seed(0)
    return _export(TinyNet(), (1, 8, 8))


@pytest.fixture(scope="module")
def tiny_data() -> Dataset:
    rng = np.random.default_rng(0)
    templates = rng.normal(size=(3, 1, 8, 8)).astype(np.float32)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        return templates[y] + 0.5 * rng.normal(size=(n, 1, 8, 8)).astype(np.float32), y

    x_train, y_train = split(256)
    x_test, y_test = split(96)
    return Dataset(x_train, y_train, x_test, y_test, name="tiny")


def _lineage(out: Path) -> dict:
    return json.loads((out / "lineage.json").read_text())


def test_api_three_generations(tiny_model: onnx.ModelProto, tiny_data: Dataset,
                               tmp_path: Path) -> None:  # fmt: skip
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, CONFIG)
    assert [r.generation for r in lineage.records] == [1, 2, 3]
    for prev, cur in zip(lineage.records, lineage.records[1:], strict=False):
        assert cur.parent == prev.generation
        assert cur.nonzero_synapses <= 0.8 * prev.nonzero_synapses
        assert cur.ae > prev.ae
        model = evonnx.load(tmp_path / cur.file)
        onnx.checker.check_model(model, full_check=True)
        assert evonnx.inspect(model).metrics.nonzero_synapses == cur.nonzero_synapses
    data = _lineage(tmp_path)
    assert [g["generation"] for g in data["generations"]] == [1, 2, 3]
    assert data["config"]["seed"] == 7 and data["data"] == "tiny"
    rows = list(csv.DictReader((tmp_path / "lineage.csv").open()))
    assert [int(r["generation"]) for r in rows] == [1, 2, 3]
    assert float(rows[2]["ae"]) == pytest.approx(lineage.records[2].ae)
    report = (tmp_path / "report.md").read_text()
    assert "| Gen. | A-E | ACC. |" in report and "| Gen. | C-E | ACC. |" in report
    assert f"| 3 | {lineage.records[2].ae:.2f}x |" in report
    assert (tmp_path / "efficiency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_seed_same_lineage_and_resume(tiny_model: onnx.ModelProto, tiny_data: Dataset,
                                           tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    full = evonnx.evolve(tiny_model, tiny_data, tmp_path / "full", CONFIG)
    real = evolve_module._offspring
    calls = {"n": 0}

    def killed(*args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:  # generation 3: the process dies mid-generation
            raise KeyboardInterrupt
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(evolve_module, "_offspring", killed)
    with pytest.raises(KeyboardInterrupt):
        evonnx.evolve(tiny_model, tiny_data, tmp_path / "cut", CONFIG)
    monkeypatch.setattr(evolve_module, "_offspring", real)
    assert [g["generation"] for g in _lineage(tmp_path / "cut")["generations"]] == [1, 2]
    assert not (tmp_path / "cut" / "gen_003.onnx").exists()
    resumed = evonnx.evolve(tiny_model, tiny_data, tmp_path / "cut", CONFIG, resume=True)

    def key(lineage: evonnx.Lineage) -> list[tuple[object, ...]]:
        return [(r.generation, r.seed, r.accuracy, r.nonzero_synapses, r.live_clusters)
                for r in lineage.records]  # fmt: skip

    assert key(resumed) == key(full)
    assert (tmp_path / "cut" / "gen_003.onnx").read_bytes() == (
        tmp_path / "full" / "gen_003.onnx"
    ).read_bytes()


def test_resume_extends_generations(tiny_model: onnx.ModelProto, tiny_data: Dataset,
                                    tmp_path: Path) -> None:  # fmt: skip
    from dataclasses import replace

    evonnx.evolve(tiny_model, tiny_data, tmp_path, replace(CONFIG, generations=2))
    more = evonnx.evolve(tiny_model, tiny_data, tmp_path, CONFIG, resume=True)
    assert len(more.records) == 3


def test_run_directory_errors(tiny_model: onnx.ModelProto, tiny_data: Dataset,
                              tmp_path: Path) -> None:  # fmt: skip
    from dataclasses import replace

    config = replace(CONFIG, generations=1)
    evonnx.evolve(tiny_model, tiny_data, tmp_path / "run", config)
    with pytest.raises(RunDirectoryError, match="--resume"):
        evonnx.evolve(tiny_model, tiny_data, tmp_path / "run", config)
    with pytest.raises(RunDirectoryError, match="different settings: keep"):
        evonnx.evolve(tiny_model, tiny_data, tmp_path / "run", replace(config, keep=0.5),
                      resume=True)  # fmt: skip
    other = _export(TinyNet(), (1, 8, 8))
    with pytest.raises(RunDirectoryError, match="different ancestor"):
        evonnx.evolve(other, tiny_data, tmp_path / "run", config, resume=True)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(RunDirectoryError, match="not empty"):
        evonnx.evolve(tiny_model, tiny_data, tmp_path / "junk", config)


def test_data_mismatch_and_nothing_prunable(tiny_model: onnx.ModelProto, tiny_data: Dataset,
                                            tmp_path: Path) -> None:  # fmt: skip
    wrong = Dataset(np.zeros((40, 1, 9, 9)), np.zeros(40), np.zeros((4, 1, 9, 9)), np.zeros(4))
    with pytest.raises(DataError, match="expects"):
        evonnx.evolve(tiny_model, wrong, tmp_path / "a", CONFIG)
    torch.manual_seed(0)
    single = _export(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), (1, 8, 8))
    with pytest.raises(UnsupportedModelError, match="nothing in this model can be pruned"):
        evonnx.evolve(single, tiny_data, tmp_path / "b", CONFIG)
    assert not (tmp_path / "b").exists()


def test_cli_evolve(tiny_model: onnx.ModelProto, tiny_data: Dataset, tmp_path: Path) -> None:
    model_path = tmp_path / "m.onnx"
    onnx.save(tiny_model, str(model_path))
    data_path = save_npz(tiny_data, tmp_path / "d.npz")
    args = ["evolve", str(model_path), "--data", str(data_path), "--out", str(tmp_path / "run"),
            "--generations", "3", "--epochs", "1", "--lr", "0.05", "--batch-size", "32",
            "--seed", "7", "--threads", "1"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert re.search(r"^\s+1\s+\d+\.\d\d%\s+\d+\.\d\d%\s+1\.00x", res.output, re.M)  # test, val
    assert re.search(r"^\s+3\s+\d+\.\d\d%", res.output, re.M)
    assert "best within budget" in res.output
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1 and "--resume" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(cli, [*args, "--resume", "--generations", "4"])
    assert res.exit_code == 0, res.output
    assert len(_lineage(tmp_path / "run")["generations"]) == 4


def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = [c for c in re.findall(r"```python\n(.*?)```", readme, re.S) if "evonnx.evolve(" in c]
    assert code, "README has no python example of evonnx.evolve"
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code[0], "README.md", "exec"), namespace)
    lineage = namespace["lineage"]
    assert isinstance(lineage, evonnx.Lineage) and len(lineage.records) >= 2


def _demo(out: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    """``evonnx demo`` for 2 generations of 1 epoch: its output and ``lineage.json``."""
    args = ["demo", "--out", str(out), "--generations", "2", "--epochs", "1",
            "--ancestor-epochs", "1", *extra]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    return res.output, _lineage(out / "run")


def test_cli_demo(tmp_path: Path) -> None:
    output, data = _demo(tmp_path / "demo", "--val-fraction", "0.2")
    assert "ancestor test accuracy" in output and "best within budget" in output
    assert data["data"] == "mnist-demo" and len(data["generations"]) == 2
    assert (
        data["config"]["encoding"]["cluster_keep"] == 0.92
        and data["config"]["encoding"]["keep"] == 0.72
    )
    assert (
        data["config"]["selection"]["val_fraction"] == 0.2
        and data["config"]["training"]["epochs"] == 1
    )
    assert data["generations"][1]["val_accuracy"] is not None
    assert data["generations"][0]["accuracy"] > 0.5


def test_cli_demo_caffe_arch(tmp_path: Path) -> None:
    """``--arch lenet5-caffe`` evolves Caffe's LeNet (20 and 50 filters, ip1 800→500)."""
    output, data = _demo(tmp_path / "demo", "--arch", "lenet5-caffe")
    assert "training the lenet5-caffe ancestor" in output
    ancestor = onnx.load(tmp_path / "demo" / "ancestor.onnx")
    weights = [list(i.dims) for i in ancestor.graph.initializer]
    assert [500, 800] in weights and [50, 20, 5, 5] in weights
    assert data["generations"][0]["nonzero_synapses"] > 400_000  # 430.5k weights (+ biases)
    assert data["generations"][1]["ae"] > 1.0


def test_fixed_batch_dynamo_export_evolves(tiny_data: Dataset, tmp_path: Path) -> None:
    """torch's dynamo exporter hard-codes batch 1 (Reshape target [1, 128]); evolve copes."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(TinyNet().eval(), (torch.zeros(1, 1, 8, 8),), dynamo=True,
                                 optimize=True, verbose=False)  # fmt: skip
    assert prog is not None
    model = prog.model_proto
    dim0 = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 1
    from dataclasses import replace

    lineage = evonnx.evolve(model, tiny_data, tmp_path, replace(CONFIG, generations=2))
    assert len(lineage.records) == 2 and lineage.records[1].ae > 1
    gen1 = evonnx.load(tmp_path / "gen_001.onnx")
    assert gen1.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert lineage.records[0].accuracy == pytest.approx(evonnx_accuracy(model, tiny_data), abs=1e-9)


def evonnx_accuracy(model: onnx.ModelProto, data: Dataset) -> float:
    """Accuracy of a fixed-batch-1 model, one sample at a time."""
    from evonnx.retrain import evaluate_onnx

    return evaluate_onnx(model, data.x_test, data.y_test)


def test_validation_split_selects_and_reports(tiny_data: Dataset, tiny_model: onnx.ModelProto,
                                              tmp_path: Path) -> None:  # fmt: skip
    from dataclasses import replace

    from evonnx.evolution.loop import split_data
    from evonnx.retrain.task import ClassificationTask

    config = replace(CONFIG, val_fraction=0.25, population=2)
    task = split_data(tiny_data, config.selection, config.seed).task
    assert isinstance(task, ClassificationTask) and task.val is not None
    assert len(task.val[0]) == 64
    assert len(task.fit.x_train) == 192 and len(task.fit.x_test) == 96
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, config)
    for r in lineage.records:
        assert r.val_accuracy is not None and 0.0 <= r.val_accuracy <= 1.0
        assert r.fitness == r.val_accuracy
    assert max(lineage.records[2].candidates) == lineage.records[2].val_accuracy
    report = (tmp_path / "report.md").read_text()
    assert "validation split (VAL.; for a data set 25% of its training data)" in report
    rows = list(csv.DictReader((tmp_path / "lineage.csv").open()))
    assert float(rows[1]["val_accuracy"]) == pytest.approx(lineage.records[1].val_accuracy)


def test_cli_distill_on_by_default_off_and_refusals(
    tiny_model: onnx.ModelProto, tiny_data: Dataset, tmp_path: Path
) -> None:
    assert EvolveConfig().distill == 4.0
    model_path = tmp_path / "m.onnx"
    onnx.save(tiny_model, str(model_path))
    data_path = save_npz(tiny_data, tmp_path / "d.npz")
    base = ["evolve", str(model_path), "--data", str(data_path), "--generations", "1",
            "--epochs", "1", "--threads", "1"]  # fmt: skip
    runs = {"default": [], "off": ["--distill", "off"], "t2": ["--distill", "2"]}
    for name, extra in runs.items():
        res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / name), *extra])
        assert res.exit_code == 0, res.output
    distill = {n: _lineage(tmp_path / n)["config"]["training"]["distill"] for n in runs}
    assert distill == {"default": 4.0, "off": None, "t2": 2.0}
    assert "distills from the parent (T=4.0)" in (tmp_path / "default" / "report.md").read_text()
    assert "distills" not in (tmp_path / "off" / "report.md").read_text()
    for bad in ("0", "-1", "warm"):  # click reads "-1" as an unknown option: exit 1 as well
        res = CliRunner().invoke(cli, [*base, "--out", str(tmp_path / "bad"), "--distill", bad])
        assert res.exit_code == 1 and ("--distill" in res.output or bad == "-1"), res.output
        assert not (tmp_path / "bad").exists()


def _parameters(model: bytes | onnx.ModelProto) -> int:
    m = onnx.load_from_string(model) if isinstance(model, bytes) else model
    return sum(int(np.prod(t.dims)) for t in m.graph.initializer)


@pytest.mark.parametrize("teacher", ["ancestor", "parent"])
def test_offspring_distill_from_the_teacher_asked_for(
    tiny_model: onnx.ModelProto,
    tiny_data: Dataset,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    teacher: str,
) -> None:
    seen: list[list[bytes | None]] = []
    real = evolve_module.run_checked

    def spy(executor: Any, jobs: Any, data: Any, reference: Any) -> Any:
        seen.append([job.teacher for job in jobs])
        return real(executor, jobs, data, reference)

    monkeypatch.setattr(evolve_module, "run_checked", spy)
    config = replace(CONFIG, teacher=teacher, max_drop=1.0, patience=5, keep=0.5)
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, config)
    assert [r.generation for r in lineage.records] == [1, 2, 3]
    gen1, gen2 = (onnx.load(str(tmp_path / f"gen_00{g}.onnx")) for g in (1, 2))
    assert _parameters(gen2) < _parameters(gen1)
    assert len(seen) == 2 and all(t is not None for batch in seen for t in batch)
    got = [_parameters(t) for batch in seen for t in batch if t is not None]
    # generation 2's teacher is generation 1 either way; generation 3's is the one asked for
    assert got == [_parameters(gen1), _parameters(gen1 if teacher == "ancestor" else gen2)]
    words = "ancestor (generation 1)" if teacher == "ancestor" else "parent"
    assert f"distills from the {words} (T=4.0)" in (tmp_path / "report.md").read_text()
    assert (
        json.loads((tmp_path / "lineage.json").read_text())["config"]["training"]["teacher"]
        == teacher
    )


def test_an_unknown_teacher_is_refused() -> None:
    from evonnx.errors import ConfigError

    with pytest.raises(ConfigError, match="teacher must be 'parent' or 'ancestor'"):
        EvolveConfig(teacher="grandparent")


def test_cli_teacher_without_distillation_is_refused(
    tiny_model: onnx.ModelProto, tiny_data: Dataset, tmp_path: Path
) -> None:
    model_path = tmp_path / "m.onnx"
    onnx.save(tiny_model, str(model_path))
    data_path = save_npz(tiny_data, tmp_path / "d.npz")
    out = tmp_path / "run"
    res = CliRunner().invoke(
        cli,
        ["evolve", str(model_path), "--data", str(data_path), "--out", str(out),
         "--distill", "off", "--teacher", "ancestor"],
    )  # fmt: skip
    assert res.exit_code == 1 and "--teacher: distillation is off" in res.output, res.output
    assert not out.exists()


# --------------------------------------------------------------------------- output checks


def _drop_a_class(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` whose classifier lost its last output neuron: outputs [N, 2], not [N, 3]."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in ("fc.weight", "fc.bias"):
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t)[:-1], t.name))
    return out


def test_offspring_that_change_output_shapes_are_refused(
    tiny_model: onnx.ModelProto, tiny_data: Dataset, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A surgery that breaks an output shape: that offspring fails with the difference as its
    recorded reason (never trained nor written); its sibling is selected."""
    from evonnx.execute.jobs import OUTPUTS_CHANGED

    real = evolve_module.apply_plan
    calls: list[int] = []

    def broken_first(*args: Any, **kwargs: Any) -> onnx.ModelProto:
        calls.append(1)
        child = real(*args, **kwargs)
        return _drop_a_class(child) if len(calls) == 1 else child

    monkeypatch.setattr(evolve_module, "apply_plan", broken_first)
    config = replace(CONFIG, generations=2, population=2)
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, config)
    rec = lineage.records[1]
    assert rec.candidates[0] is None and rec.candidates[1] is not None
    assert rec.failures[0] is not None and rec.failures[0].startswith(OUTPUTS_CHANGED)
    assert "output" in rec.failures[0] and rec.failures[1] is None
    stored = _lineage(tmp_path)["generations"][1]["failures"]
    assert stored == list(rec.failures)  # recorded in lineage.json, and read back on resume
    from evonnx.evolution.lineage import Lineage

    assert Lineage.from_dict(_lineage(tmp_path)).records[1].failures == rec.failures
    child = onnx.load(str(tmp_path / "gen_002.onnx"))
    assert [d.dim_value for d in child.graph.output[0].type.tensor_type.shape.dim][1:] == [3]


@pytest.mark.parametrize("where", ["surgery", "write-back"])
def test_a_changed_output_shape_is_never_written(
    where: str, tiny_model: onnx.ModelProto, tiny_data: Dataset, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Every offspring changes an output shape (after surgery, or in the trained model the
    worker writes back): the generation fails with OutputMismatchError and no gen_002."""
    from evonnx import converters
    from evonnx.errors import OutputMismatchError

    if where == "surgery":
        real = evolve_module.apply_plan
        broken = lambda *a, **k: _drop_a_class(real(*a, **k))  # noqa: E731
        monkeypatch.setattr(evolve_module, "apply_plan", broken)
    else:
        back = converters.write_back
        monkeypatch.setattr(converters, "write_back", lambda m, mod: _drop_a_class(back(m, mod)))
    config = replace(CONFIG, generations=2)
    with pytest.raises(OutputMismatchError, match="changes the outputs"):
        evonnx.evolve(tiny_model, tiny_data, tmp_path, config)
    assert (tmp_path / "gen_001.onnx").exists() and not (tmp_path / "gen_002.onnx").exists()


def test_scoring_time_is_recorded_apart_from_training(
    tiny_model: onnx.ModelProto, tiny_data: Dataset, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Each generation records the seconds its offspring spent being scored (the benchmark's
    overhead split needs it for any task): never inside ``train_seconds``."""
    from evonnx.retrain.task import Split

    original = Split.score_model
    slow = 0.3

    def slow_score(self: Split, model: onnx.ModelProto) -> tuple[float, float | None]:
        time.sleep(slow)
        return original(self, model)

    monkeypatch.setattr(Split, "score_model", slow_score)
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, replace(CONFIG, generations=2))
    rec = lineage.records[1]
    assert rec.score_seconds >= slow
    rows = list(csv.DictReader((tmp_path / "lineage.csv").open()))
    assert float(rows[1]["score_seconds"]) == pytest.approx(rec.score_seconds)
    again = evonnx.Lineage.from_dict(_lineage(tmp_path))
    assert again.records[1].score_seconds == pytest.approx(rec.score_seconds)
    old = _lineage(tmp_path)  # a lineage written before the field existed still reads
    for g in old["generations"]:
        del g["score_seconds"]
    assert evonnx.Lineage.from_dict(old).records[1].score_seconds == 0.0
