"""The Task interface: built-in classification, user tasks (detection, segmentation,
multi-input/-output graphs), honest selection, patience, distillation, --task loading."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from worked_tasks import (
    DetectionTask,
    Detector,
    SegmentationTask,
    Segmenter,
    detection_score,
    foreground_iou,
    trained_ancestor,
)

import evonnx
from evonnx.data import Dataset
from evonnx.errors import ConfigError, TaskError
from evonnx.evolution.lineage import EvolveConfig, GenerationRecord, Lineage, show_score
from evonnx.evolution.loop import _should_continue, split_data
from evonnx.retrain import TrainConfig, deterministic_mode, evaluate_onnx, predict_onnx, train
from evonnx.retrain.distill import Distiller, distillation_loss
from evonnx.retrain.task import ClassificationTask, load_task

CONFIG = EvolveConfig(generations=3, epochs=2, lr=0.003, optimizer="adam", batch_size=32,
                      seed=3, threads=1, keep=0.8, max_drop=1.0, warmup=0.0,
                      freeze_bn=False)  # fmt: skip


@pytest.fixture(scope="module")
def detection() -> tuple[DetectionTask, onnx.ModelProto]:
    torch.manual_seed(0)
    task = DetectionTask()
    names = {"inputs": ["image"], "outputs": ["boxes", "logits"]}
    return task, trained_ancestor(Detector(), task, 12, names)


@pytest.fixture(scope="module")
def segmentation() -> tuple[SegmentationTask, onnx.ModelProto]:
    torch.manual_seed(0)
    task = SegmentationTask()
    names = {"inputs": ["image", "view"], "outputs": ["mask_logits"]}
    return task, trained_ancestor(Segmenter(), task, 6, names)


def _check_scores(task: evonnx.Task, lineage: Lineage, out: Path, metric) -> None:  # type: ignore[no-untyped-def]
    """Every record's scores are the metric recomputed here on the written file."""
    for r in lineage.records:
        model = onnx.load(out / r.file)
        onnx.checker.check_model(model, full_check=True)
        for split, value in (("test", r.accuracy), ("val", r.val_accuracy)):
            arrays = task.splits[split]  # type: ignore[attr-defined]
            n_in = len(model.graph.input)
            outputs = predict_onnx(out / r.file, list(arrays[:n_in]))
            assert value == pytest.approx(metric(*outputs, *arrays[n_in:]))


def test_detector_task_evolves(detection: tuple[DetectionTask, onnx.ModelProto],
                               tmp_path: Path) -> None:  # fmt: skip
    task, ancestor = detection
    lineage = evonnx.evolve(ancestor, task, tmp_path, CONFIG)
    assert [r.generation for r in lineage.records] == [1, 2, 3]
    first = lineage.records[0]
    assert first.accuracy > 0.5  # the trained ancestor finds most squares (chance ~0)
    assert lineage.records[-1].ae > 1.5 and lineage.records[-1].val_accuracy is not None
    model = onnx.load(tmp_path / lineage.records[-1].file)
    assert [o.name for o in model.graph.output] == ["boxes", "logits"]
    _check_scores(task, lineage, tmp_path, detection_score)
    saved = json.loads((tmp_path / "lineage.json").read_text())
    assert saved["data"] == "squares-detection" and saved["score_percent"] is False
    # a detection score is not an accuracy: report.md shows it plain, not as a percentage
    report = (tmp_path / "report.md").read_text()
    assert f"| 1 | 1.00x | {first.accuracy:.4g} |" in report
    assert f"{100 * first.accuracy:.2f}" not in report and "accuracy budget" not in report
    assert f"budget of {CONFIG.max_drop:g} on the score" in report


def test_segmentation_task_two_inputs_evolves(
    segmentation: tuple[SegmentationTask, onnx.ModelProto], tmp_path: Path
) -> None:
    task, ancestor = segmentation
    config = replace(CONFIG, distill=2.0)
    lineage = evonnx.evolve(ancestor, task, tmp_path, config)
    assert len(lineage.records) == 3
    assert lineage.records[0].accuracy > 0.6  # foreground IoU of the trained ancestor
    assert lineage.records[-1].nonzero_synapses < lineage.records[0].nonzero_synapses
    model = onnx.load(tmp_path / lineage.records[-1].file)
    assert [i.name for i in model.graph.input] == ["image", "view"]
    _check_scores(task, lineage, tmp_path, foreground_iou)
    assert "distills from the parent (T=2.0)" in (tmp_path / "report.md").read_text()


# --------------------------------------------------------------------------- classification


def _data(n_train: int = 200) -> Dataset:
    rng = np.random.default_rng(1)
    y = np.arange(n_train) % 4
    x = rng.normal(size=(n_train, 6)).astype(np.float32) + y[:, None]
    return Dataset(x, y, x[:40], y[:40], name="blobs")


def test_classification_task_splits_and_scores(tmp_path: Path) -> None:
    data = _data()
    task = ClassificationTask(data, 0.1, seed=5)
    assert task.val is not None and len(task.val[1]) == 20
    assert np.bincount(task.val[1]).tolist() == [5, 5, 5, 5]  # stratified
    assert len(task.fit.y_train) == 180
    both = np.concatenate([task.fit.x_train, task.val[0]])
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, data.x_train.tolist()))
    assert ClassificationTask(data, 0.0).has_validation is False
    with pytest.raises(ConfigError):
        split_data(data, replace(CONFIG.selection, val_fraction=0.0))
    test_only = split_data(data, replace(CONFIG.selection, select_on="test")).task
    assert isinstance(test_only, ClassificationTask) and not test_only.has_validation

    path = _mlp(tmp_path)
    assert task.score(path, "val") == evaluate_onnx(path, *task.val)
    assert task.score(path, "test") == evaluate_onnx(path, data.x_test, data.y_test)


def test_accuracy_shown_as_percent_other_scores_plain(tmp_path: Path) -> None:
    """Classification's top-1 is shown as a percentage, a custom task's score as a number;
    a lineage.json written before the flag existed is a classification run's."""
    assert ClassificationTask(_data()).score_percent and not DetectionTask.score_percent
    assert show_score(0.975, True) == "97.50" and show_score(0.975, True, unit=True) == "97.50%"
    assert show_score(0.8123456, False, unit=True) == "0.8123"
    assert show_score(-1.5, False) == "-1.5" and show_score(None, True) == "-"
    data = _data()
    config = replace(CONFIG, generations=1)
    lineage = evonnx.evolve(_mlp(tmp_path), data, tmp_path / "run", config)
    saved = json.loads((tmp_path / "run" / "lineage.json").read_text())
    assert saved["score_percent"] is True
    acc = lineage.records[0].accuracy
    assert f"| 1 | 1.00x | {100 * acc:.2f} |" in (tmp_path / "run" / "report.md").read_text()
    del saved["score_percent"]
    assert Lineage.from_dict(saved).score_percent is True


def _mlp(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    torch.onnx.export(mlp, (torch.zeros(1, 6),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})  # fmt: skip
    return path


def test_kl_distillation_loss() -> None:
    task = ClassificationTask(_data(), 0.0)
    s = torch.tensor([[2.0, 0.0, -1.0, 0.5]])
    assert float(task.distill_loss(s, s.clone(), None, 4.0)) == pytest.approx(0.0, abs=1e-7)
    t = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    p, q = torch.softmax(t / 2, 1), torch.softmax(s / 2, 1)
    want = 4 * float((p * (p.log() - q.log())).sum())
    assert float(task.distill_loss(s, t, None, 2.0)) == pytest.approx(want, rel=1e-5)
    loss = distillation_loss(task.loss, task.distill_loss, 2.0, weight=0.25)
    y = torch.tensor([1])
    assert float(loss((s, t), y)) == pytest.approx(
        0.75 * float(task.loss(s, y)) + 0.25 * want, rel=1e-5
    )


def test_distiller_teacher_frozen_and_in_eval() -> None:
    student = torch.nn.Linear(3, 2)
    teacher = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(3, 2))
    before = [p.detach().clone() for p in teacher.parameters()]
    wrapper = Distiller(student, teacher).train()
    assert wrapper.student.training and not wrapper.teacher.training
    x = torch.ones(4, 3)
    _, t = wrapper(x)
    assert torch.equal(t, teacher(x)) and not t.requires_grad  # dropout off: deterministic
    batches = [(torch.randn(8, 3), torch.randint(0, 2, (8,))) for _ in range(4)]
    task = ClassificationTask(_data(), 0.0)
    train(wrapper, batches, TrainConfig(epochs=2, seed=0),
          loss_fn=distillation_loss(task.loss, task.distill_loss, 2.0), progress=False)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))


# --------------------------------------------------------------------------- stop rule


def _record(gen: int, val: float) -> GenerationRecord:
    return GenerationRecord(gen, gen - 1 or None, None, f"gen_{gen:03d}.onnx", 0.9, 1.0, 1.0,
                            1.0, 1, 1, 1, 1, 1, 1, 0.0, (), val)  # fmt: skip


@pytest.mark.parametrize(
    ("vals", "patience", "go_on", "best"),
    [
        ([0.90, 0.91, 0.87], 2, True, 2),  # one generation over: may come back
        ([0.90, 0.91, 0.87, 0.89], 2, True, 4),  # came back within the budget
        ([0.90, 0.91, 0.87, 0.86], 2, False, 2),  # two in a row: stop
        ([0.90, 0.91, 0.87], 1, False, 2),  # patience 1: the paper's rule
    ],
)
def test_patience_stop_rule(vals: list[float], patience: int, go_on: bool, best: int) -> None:
    config = EvolveConfig(generations=10, max_drop=0.02, patience=patience)
    lineage = Lineage("sha", "data", config, tuple(_record(g + 1, v) for g, v in enumerate(vals)))
    assert _should_continue(lineage) is go_on
    assert lineage.best.generation == best


def test_select_on_test_never_reads_validation(tmp_path: Path) -> None:
    data = _data()
    module = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    path = tmp_path / "m.onnx"
    torch.onnx.export(module, (torch.zeros(1, 6),), str(path), dynamo=False,
                      input_names=["x"], dynamic_axes={"x": {0: "n"}})  # fmt: skip
    config = replace(CONFIG, select_on="test", max_drop=0.5)
    lineage = evonnx.evolve(path, data, tmp_path / "run", config)
    assert all(r.val_accuracy is None and r.fitness == r.accuracy for r in lineage.records)
    assert "Protocol: **test**" in (tmp_path / "run" / "report.md").read_text()
    lineage = evonnx.evolve(path, data, tmp_path / "val", replace(config, select_on="val"))
    assert all(r.val_accuracy is not None for r in lineage.records)
    assert "Protocol: **validation**" in (tmp_path / "val" / "report.md").read_text()


# --------------------------------------------------------------------------- determinism


def test_deterministic_mode_sets_and_restores() -> None:
    before = torch.are_deterministic_algorithms_enabled()
    with deterministic_mode(True):
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        import os

        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] in (":4096:8", ":16:8")
    assert torch.are_deterministic_algorithms_enabled() == before


def _resume_identical(tmp_path: Path, device_note: str) -> None:
    task, ancestor = DetectionTask(n_train=128, n_eval=32), None
    torch.manual_seed(0)
    names = {"inputs": ["image"], "outputs": ["boxes", "logits"]}
    ancestor = trained_ancestor(Detector(), task, 2, names)
    config = replace(CONFIG, deterministic=True)
    evonnx.evolve(ancestor, task, tmp_path / "a", config)
    evonnx.evolve(ancestor, task, tmp_path / "b", replace(config, generations=2))
    evonnx.evolve(ancestor, task, tmp_path / "b", config, resume=True)
    for gen in (1, 2, 3):
        name = f"gen_{gen:03d}.onnx"
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b, f"{name} differs after resume on {device_note}"


def test_deterministic_resume_byte_identical_cpu(tmp_path: Path) -> None:
    """Promise on CPU: resume gives byte-identical generations (deterministic or not)."""
    if torch.cuda.is_available():
        pytest.skip("training would run on CUDA here; see the CUDA test")
    _resume_identical(tmp_path, "CPU")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here or in CI)")
def test_deterministic_resume_byte_identical_cuda(tmp_path: Path) -> None:
    """Promise on CUDA: with --deterministic, resume gives byte-identical generations."""
    _resume_identical(tmp_path, "CUDA")


# --------------------------------------------------------------------------- --task loading


def test_load_task_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"path/to/task\.py:NAME"):
        load_task("no-colon")
    with pytest.raises(ConfigError, match="does not exist"):
        load_task(str(tmp_path / "missing.py") + ":TASK")
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(TaskError, match="boom"):
        load_task(f"{bad}:TASK")
    good = tmp_path / "good.py"
    good.write_text("from worked_tasks import DetectionTask\nNOT_TASK = 3\nclass Thing: pass\n"
                    "def make():\n    return DetectionTask(n_train=32, n_eval=8)\n")  # fmt: skip
    with pytest.raises(ConfigError, match="defines no 'TASK'"):
        load_task(f"{good}:TASK")
    with pytest.raises(TaskError, match="neither a Task nor callable"):
        load_task(f"{good}:NOT_TASK")
    with pytest.raises(TaskError, match=r"not an evonnx\.Task"):
        load_task(f"{good}:Thing")
    assert isinstance(load_task(f"{good}:make"), DetectionTask)
    assert isinstance(load_task(f"{good}:DetectionTask"), DetectionTask)


def test_cli_task_option(detection: tuple[DetectionTask, onnx.ModelProto], tmp_path: Path) -> None:
    from evonnx.cli.main import cli

    _, ancestor = detection
    onnx.save(ancestor, tmp_path / "det.onnx")
    spec = tmp_path / "mytask.py"
    spec.write_text("from worked_tasks import DetectionTask\nTASK = DetectionTask(n_train=64)\n")
    args = ["evolve", str(tmp_path / "det.onnx"), "--task", f"{spec}:TASK", "--out",
            str(tmp_path / "run"), "--generations", "2", "--epochs", "1", "--threads", "1",
            "--max-drop", "1", "--distill", "--deterministic", "--select-on", "test",
            "--patience", "3"]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "lineage.json").read_text())["config"]
    assert config["training"]["distill"] == 4.0 and config["training"]["deterministic"] is True
    assert config["selection"]["select_on"] == "test" and config["selection"]["patience"] == 3
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Protocol: **test**" in report and "distills from the parent (T=4.0)" in report
    records = json.loads((tmp_path / "run" / "lineage.json").read_text())["generations"]
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["gen", "test", "score"])
    for r, line in zip(records, lines[header + 1 : header + 3], strict=True):
        assert line.split()[:2] == [str(r["generation"]), f"{r['accuracy']:.4g}"], line
    assert f"(generation 1: {records[0]['accuracy']:.4g})" in result.output  # no percent
    both = CliRunner().invoke(cli, [*args[:2], "--data", "digits", *args[2:]])
    assert both.exit_code == 1 and "either --data or --task" in both.output


class _Broken(DetectionTask):
    def __init__(self, where: str) -> None:
        super().__init__(n_train=32, n_eval=8)
        self.where = where

    def loss(self, outputs, targets):  # type: ignore[no-untyped-def]
        if self.where == "loss":
            raise KeyError("no such head")
        return super().loss(outputs, targets)

    def score(self, onnx_path: Path, split: str) -> float:
        return float("nan") if self.where == "score" else super().score(onnx_path, split)


@pytest.mark.parametrize(("where", "message"), [("loss", r"loss\(\) failed: KeyError"),
                                                ("score", "not a finite number")])  # fmt: skip
def test_user_task_failures_are_task_errors(
    detection: tuple[DetectionTask, onnx.ModelProto], tmp_path: Path, where: str, message: str
) -> None:
    with pytest.raises(TaskError, match=message):
        evonnx.evolve(detection[1], _Broken(where), tmp_path, replace(CONFIG, generations=2))


def test_over_budget_generation_is_not_bred_from(
    detection: tuple[DetectionTask, onnx.ModelProto],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Validation scores 0.9, 0.8 (over a 0.05 budget), 0.88, 0.7, 0.6: generation 3 breeds
    from 1, generation 4 from 3, generation 5 from 3 again, then two in a row stop the run."""
    from evonnx.evolution import loop as evolution

    scores = iter([0.9, 0.8, 0.88, 0.7, 0.6])
    monkeypatch.setattr(
        evolution.Split, "_score", lambda _s, _p, split: 0.5 if split == "test" else next(scores)
    )
    config = replace(CONFIG, generations=9, max_drop=0.05, patience=2, epochs=1)
    lineage = evonnx.evolve(detection[1], detection[0], tmp_path, config)
    assert [r.parent for r in lineage.records] == [None, 1, 1, 3, 3]
    assert lineage.best.generation == 3
    assert lineage.records[3].nonzero_synapses < lineage.records[2].nonzero_synapses
    assert lineage.records[4].nonzero_synapses < lineage.records[2].nonzero_synapses
