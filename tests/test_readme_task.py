"""The README's custom-task example, run as written (task file and command line)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from click.testing import CliRunner
from torch import nn

from evonnx.cli.main import cli
from evonnx.retrain import TrainConfig, predict_onnx, train

README = Path(__file__).resolve().parent.parent / "README.md"


def _example() -> tuple[str, list[str]]:
    text = README.read_text()
    pattern = r"<!-- task-example:start -->\n```python\n(.*?)```\n<!-- task-example:end -->"
    block = re.search(pattern, text, re.S)
    assert block is not None, "README lost its task example"
    command = re.search(r"^evonnx evolve .*--task my_task\.py:TASK.*$", text, re.M)
    assert command is not None, "README lost the --task command line"
    return block.group(1), shlex.split(command.group(0))[1:]


class DotNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 8 * 8, 24)
        self.out = nn.Linear(24, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.out(torch.relu(self.fc(torch.flatten(x, 1))))


def test_readme_task_example_runs(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    code, args = _example()
    (tmp_path / "my_task.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("readme_task", tmp_path / "my_task.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    task = module.TASK
    torch.manual_seed(0)
    net = DotNet()
    config = TrainConfig(epochs=4, lr=3e-3, optimizer="adam", num_threads=1, device="cpu")
    train(net, task.train_batches(), config, loss_fn=task.loss, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(1, 1, 16, 16),), "dot.onnx", dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--generations", "3", "--epochs", "1",
                                      "--threads", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    lineage = json.loads((tmp_path / "runs" / "dot" / "lineage.json").read_text())
    assert lineage["data"] == "bright-dot" and lineage["config"]["training"]["distill"] == 4.0
    records = lineage["generations"]
    assert len(records) == 3 and records[-1]["ae"] > 1.3
    x, y = task.splits["test"]
    chance = -float(np.mean((y - y.mean(axis=0)) ** 2))  # always predicting the mean
    assert records[0]["accuracy"] > 0.7 * chance  # the trained ancestor does better
    for r in records:  # scores are the negative MSE of the written file, via onnxruntime
        path = tmp_path / "runs" / "dot" / r["file"]
        onnx.checker.check_model(onnx.load(path), full_check=True)
        (pred,) = predict_onnx(path, x)
        assert r["accuracy"] == -float(np.mean((pred - y) ** 2))
