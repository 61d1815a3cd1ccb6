"""Reliability round 3 (issue 19), low-severity items: external data, task batches, MACs,
unrunnable shapes, accurate messages, temporaries of killed writes, memory at --batch."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper
from zoo import helper_convnet

import evonnx
from evonnx.data import Dataset
from evonnx.errors import ModelLoadError, TaskError
from evonnx.cli.main import cli
from evonnx.graph import load_model
from evonnx.guard import batch_mismatch
from evonnx.lineage import EvolveConfig
from evonnx.task import ClassificationTask, TrainData

CONFIG = EvolveConfig(generations=2, epochs=1, lr=0.05, batch_size=16, seed=3, threads=1)


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def _one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


def _data(seed: int = 0, n: int = 64) -> Dataset:
    rng = np.random.default_rng(seed)
    templates = rng.normal(size=(4, 2, 8, 8)).astype(np.float32)

    def split(k: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(k) % 4
        return templates[y] + 0.5 * rng.normal(size=(k, 2, 8, 8)).astype(np.float32), y

    return Dataset(*split(n), *split(n // 2), name="tiny")


# ------------------------------------------------------------------- external data locations


def _external_model(folder: Path, location: str | None) -> Path:
    """``helper_convnet`` with its weights in ``m.onnx.data``, every location then set to
    ``location`` (``None``: the location entry removed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save(
        helper_convnet(), str(path), save_as_external_data=True,
        location="m.onnx.data", size_threshold=0,
    )  # fmt: skip
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        kept = [(e.key, e.value) for e in t.external_data if e.key != "location"]
        del t.external_data[:]
        if location is not None:
            t.external_data.add(key="location", value=location)
        for key, value in kept:
            t.external_data.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("command", ["inspect", "prune", "export"])
def test_an_external_location_outside_the_folder_is_one_line_without_an_oracle(
    tmp_path: Path, command: str
) -> None:
    outside = tmp_path / "outside.data"
    model = _external_model(tmp_path / "model", "../outside.data")
    extra = [] if command == "inspect" else ["-o", str(tmp_path / "out.onnx")]
    extra += ["--keep", "0.5"] if command == "prune" else []
    code_missing, out_missing = _invoke(command, str(model), *extra)
    outside.write_bytes((tmp_path / "model" / "m.onnx.data").read_bytes())
    code_present, out_present = _invoke(command, str(model), *extra)
    assert code_missing == code_present == 1
    line = _one_error_line(out_missing)
    assert line == _one_error_line(out_present)
    assert "outside the model's folder" in line and "../outside.data" in line
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize(
    ("location", "says"),
    [
        (None, "no location"),
        ("", "no location"),
        ("/etc/passwd", "outside the model's folder"),
        ("sub/../../outside.data", "outside the model's folder"),
        ("missing.data", "is missing next to the model"),
        ("bad\x00name", "malformed location"),
    ],
)
def test_malformed_external_locations_are_model_load_errors(
    tmp_path: Path, location: str | None, says: str
) -> None:
    model = _external_model(tmp_path, location)
    with pytest.raises(ModelLoadError, match=says):
        load_model(model)


def test_a_link_to_outside_the_folder_reads_as_outside_whether_or_not_it_resolves(
    tmp_path: Path,
) -> None:
    messages = []
    for name, target in (("a", tmp_path / "real.data"), ("b", tmp_path / "none.data")):
        model = _external_model(tmp_path / name, "link.data")
        (tmp_path / "real.data").write_bytes((tmp_path / name / "m.onnx.data").read_bytes())
        (tmp_path / name / "link.data").symlink_to(target)
        with pytest.raises(ModelLoadError, match="outside the model's folder") as info:
            load_model(model)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


# --------------------------------------------------------------------------- task batches


class _MismatchTask(ClassificationTask):
    """32 inputs with 16 labels in its first batch; its loss quietly trims the outputs."""

    def __init__(self) -> None:
        super().__init__(_data(), 0.25, 0)
        self.name = "mismatch"

    def train_batches(self) -> TrainData:
        x, y = torch.from_numpy(self.fit.x_train), torch.from_numpy(self.fit.y_train)
        return [(x[:16], y[:16]), (x[16:48], y[16:32])]

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        return F.cross_entropy(outputs[: len(targets)], targets)


def test_batches_of_mismatched_sizes_are_refused_naming_task_and_batch(tmp_path: Path) -> None:
    config = replace(CONFIG, distill=None)
    with pytest.raises(TaskError, match=r"task 'mismatch': train_batches\(\) batch 2 has 32 "
                       r"inputs but targets of shape \(16,\)"):  # fmt: skip
        evonnx.evolve(helper_convnet(), _MismatchTask(), tmp_path / "run", config)


def test_batch_sizes_are_judged_only_where_certain() -> None:
    x = torch.zeros(8, 3)
    assert batch_mismatch(x, torch.zeros(4)) is not None
    assert batch_mismatch((x, x), {"a": torch.zeros(4), "b": torch.zeros(4, 2)}) is not None
    assert batch_mismatch(x, torch.zeros(8)) is None
    assert batch_mismatch(x, torch.zeros(5, 8, 2)) is None  # time-major [T, N, C]
    assert batch_mismatch(x, [torch.zeros(k, 4) for k in range(8)]) is None  # per-sample boxes
    assert batch_mismatch((x, torch.zeros(2)), torch.zeros(4)) is None  # inputs disagree
    assert batch_mismatch(x, torch.tensor(1.0)) is None


class _ConstantLossTask(ClassificationTask):
    """A loss that ignores the outputs (a constant without gradient)."""

    def __init__(self) -> None:
        super().__init__(_data(), 0.25, 0)
        self.name = "constant"

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        return torch.tensor(1.0)


@pytest.mark.parametrize("distill", [4.0, None])
def test_a_constant_task_loss_is_refused_also_when_distilling(
    tmp_path: Path, distill: float | None
) -> None:
    config = replace(CONFIG, distill=distill)
    with pytest.raises(TaskError, match=r"task 'constant': loss\(\) returned a constant 1 "):
        evonnx.evolve(helper_convnet(), _ConstantLossTask(), tmp_path / "run", config)


# --------------------------------------------------------------------------- MACs at a batch


def _conv_gemm_computed_flatten() -> onnx.ModelProto:
    """Conv -> Reshape to [N, -1] (N read with Shape: static inference cannot follow it)
    -> Gemm, and a MatMul on the conv output; symbolic batch."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(8 * 6 * 6, 10)).astype(np.float32), "g"),
        numpy_helper.from_array(rng.normal(size=(6, 5)).astype(np.float32), "m"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Shape", ["c"], ["s"], name="shape"),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0, name="gather"),
        helper.make_node("Concat", ["n", "minus1"], ["target"], axis=0, name="concat"),
        helper.make_node("Reshape", ["c", "target"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "g"], ["y"], name="fc"),
        helper.make_node("MatMul", ["c", "m"], ["z"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes, "conv_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("bounded", [False, True])
def test_every_layer_kind_scales_its_macs_with_the_batch(
    monkeypatch: pytest.MonkeyPatch, bounded: bool
) -> None:
    from evonnx import shapes
    from evonnx.analysis import analyze

    if bounded:  # a large batch: the shape run goes at batch 1 and is scaled back
        monkeypatch.setattr(shapes, "RUN_BYTES_LIMIT", 1000)
    model = _conv_gemm_computed_flatten()
    one = {lay.op_type: lay.macs for lay in analyze(model, None, 1).layers}
    four = {lay.op_type: lay.macs for lay in analyze(model, None, 4).layers}
    assert set(one) == {"Conv", "Gemm", "MatMul"} and all(v > 0 for v in one.values())
    assert {op: four[op] / one[op] for op in one} == {"Conv": 4.0, "Gemm": 4.0, "MatMul": 4.0}
    inspected = {
        b: evonnx.inspect(model, {"x": (b, 3, 8, 8)}).metrics.macs for b in (1, 4)
    }
    assert inspected[4] == 4 * inspected[1] == 4 * sum(one.values())


# --------------------------------------------------------------------------- unrunnable shapes


def _flatten_gemm_any_size() -> onnx.ModelProto:
    """Conv -> Reshape [N, -1] -> Gemm of 8·6·6 inputs: it runs only at 8×8 images, though
    its input declares symbolic height and width."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(8 * 6 * 6, 10)).astype(np.float32), "g"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Reshape", ["c", "flat"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "g"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "any_size",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    "command",
    [
        ["inspect"],
        ["prune", "--keep", "0.5", "-o", "OUT"],
        ["prune", "--env", "latency", "--speedup", "1.5", "-o", "OUT"],
        ["export", "-o", "OUT"],
        ["bench", "MODEL", "--runs", "2", "--warmup", "0"],
    ],
)
def test_an_unrunnable_input_shape_is_one_line_naming_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], command: list[str]
) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(_flatten_gemm_any_size(), str(model))
    out = tmp_path / "out.onnx"
    args = [str(out) if a == "OUT" else str(model) if a == "MODEL" else a for a in command]
    code, output = _invoke(args[0], str(model), *args[1:], "--input-shape", "x=1x3x7x7")
    assert code == 1, output
    line = _one_error_line(output)
    assert "cannot run the model with input x=1x3x7x7" in line and "Gemm" in line
    assert "onnxruntime:" not in capfd.readouterr().err  # no onnxruntime log dump
    assert not out.exists()
    code, output = _invoke("inspect", str(model), "--input-shape", "x=1x3x8x8")
    assert code == 0, output
