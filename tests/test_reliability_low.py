"""Reliability round 3 (issue 19), low-severity items: external data, task batches, MACs,
unrunnable shapes, accurate messages, temporaries of killed writes, memory at --batch."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from helpers import save_npz
from onnx import TensorProto, helper, numpy_helper
from zoo import helper_convnet

import evonnx
from evonnx.cli.main import cli
from evonnx.data import Dataset
from evonnx.errors import ConfigError, DataError, ModelLoadError, TaskError
from evonnx.evolution.lineage import EvolveConfig
from evonnx.model import textio
from evonnx.model.files import load_model
from evonnx.retrain.fidelity import split_indices
from evonnx.retrain.guard import batch_mismatch
from evonnx.retrain.task import ClassificationTask, TrainData

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
    from evonnx.model import shapes
    from evonnx.pruning.analysis import analyze

    if bounded:  # a large batch: the shape run goes at batch 1 and is scaled back
        monkeypatch.setattr(shapes, "RUN_BYTES_LIMIT", 1000)
    model = _conv_gemm_computed_flatten()
    one = {lay.op_type: lay.macs for lay in analyze(model, None, 1).layers}
    four = {lay.op_type: lay.macs for lay in analyze(model, None, 4).layers}
    assert set(one) == {"Conv", "Gemm", "MatMul"} and all(v > 0 for v in one.values())
    assert {op: four[op] / one[op] for op in one} == {"Conv": 4.0, "Gemm": 4.0, "MatMul": 4.0}
    inspected = {b: evonnx.inspect(model, {"x": (b, 3, 8, 8)}).metrics.macs for b in (1, 4)}
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


# --------------------------------------------------------------------------- accurate messages


def _zeroed(name: str) -> onnx.ModelProto:
    model = helper_convnet()
    for t in model.graph.initializer:
        if t.name == name:
            t.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(t)), name))
    return model


def test_an_all_zero_layer_is_named_as_all_zeros(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(_zeroed("w2"), str(model))
    for method in ("genetic", "magnitude"):
        code, output = _invoke("prune", str(model), "--method", method, "--keep", "0.5",
                               "-o", str(tmp_path / "o.onnx"))  # fmt: skip
        line = _one_error_line(output)
        assert code == 1 and "conv2 (weight w2) is all zeros in the input model" in line
        assert "--keep" not in line  # not blamed on the budget
    with caplog.at_level("WARNING"):
        evonnx.evolve(_zeroed("w2"), _data(), tmp_path / "run", replace(CONFIG, generations=1))
    assert "layer conv2 (weight w2) is all zeros" in caplog.text


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-2", "1", "abc"])
def test_speedups_outside_what_is_allowed_say_what_is(tmp_path: Path, value: str) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(helper_convnet(), str(model))
    for args in (
        ["prune", str(model), "--env", "latency", f"--speedup={value}", "-o", str(tmp_path / "o")],
        ["evolve", str(model), "--data", "digits", "--env", "latency",
         f"--target-speedup={value}", "--out", str(tmp_path / "run")],
    ):  # fmt: skip
        code, output = _invoke(*args)
        line = _one_error_line(output)
        assert code == 1 and f"'{value}' is not allowed" in line
        assert "a speed-up is a finite number above 1" in line
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="a speed-up is a finite number above 1"):
        EvolveConfig(env="latency", target_speedup=float("nan"))


def test_an_empty_split_is_named_with_the_counts() -> None:
    x, y = _data().x_train, _data().y_train
    with pytest.raises(DataError, match=r"the test split is empty \(x_test: 0 samples, y_test: "
                       r"0 labels; x_train: 64 samples\)"):  # fmt: skip
        Dataset(x, y, x[:0], y[:0], name="d")
    with pytest.raises(DataError, match="the training split is empty"):
        Dataset(x[:0], y[:0], x, y, name="d")
    says = r"test split takes 1 and the validation split 1, leaving 0 to train on; give at least 3"
    with pytest.raises(DataError, match=r"2 input sample\(s\) .*" + says):
        split_indices(2, 0.1, 0.1, 0)


def test_uint64_labels_are_accepted_when_they_fit_and_named_when_not() -> None:
    x, y = _data().x_train, _data().y_train
    data = Dataset(x, y.astype(np.uint64), x, y.astype(np.uint64), name="u")
    assert data.y_train.dtype == np.int64 and (data.y_train == y).all()
    huge = y.astype(np.uint64) + np.uint64(2**63)
    with pytest.raises(DataError, match=f"label {int(huge.max())} \\(uint64\\) is out of range"):
        Dataset(x, huge, x, y, name="u")


def test_a_dangling_symlink_is_called_one(tmp_path: Path) -> None:
    link, target = tmp_path / "m.onnx", tmp_path / "gone.onnx"
    link.symlink_to(target)
    code, output = _invoke("inspect", str(link))
    assert code == 1 and f"{link} is a dangling symlink to {target}" in _one_error_line(output)
    model = tmp_path / "real.onnx"
    onnx.save(helper_convnet(), str(model))
    inputs = tmp_path / "x.npz"
    inputs.symlink_to(tmp_path / "gone.npz")
    code, output = _invoke("evolve", str(model), "--inputs", str(inputs),
                           "--out", str(tmp_path / "run"))  # fmt: skip
    line = _one_error_line(output)
    assert code == 1 and f"{inputs} is a dangling symlink to {tmp_path / 'gone.npz'}" in line


def test_a_full_disk_names_the_file_being_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, out = tmp_path / "m.onnx", tmp_path / "out" / "pruned.onnx"
    onnx.save(helper_convnet(), str(model))

    def full(*_args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(textio.os, "replace", full)
    code, output = _invoke("prune", str(model), "--keep", "0.5", "-o", str(out))
    assert code == 1
    assert _one_error_line(output) == f"error: No space left on device: {out}"
    assert not out.exists() and not list(out.parent.iterdir())  # no temporary left


def _weights(scale: float) -> bytes:
    model = helper_convnet()
    for t in model.graph.initializer:
        values = numpy_helper.to_array(t)
        t.CopyFrom(numpy_helper.from_array((values * scale).astype(values.dtype), t.name))
    return model.SerializeToString()


def test_ranks_differing_by_float_rounding_are_not_called_divergent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch.distributed as dist

    from evonnx.errors import ExecutorError
    from evonnx.execute import ddp

    same, rounding, diverged = _weights(1.0), _weights(1.0 + 1e-7), _weights(1.01)
    assert ddp.weight_difference(same, rounding)[0] < ddp.WEIGHT_RTOL
    for other, fails in ((rounding, False), (diverged, True)):
        models = [same, other]  # two ranks, simulated: rank 1 runs the collective calls

        def gather(out: list[Any], mine: Any, models: list[bytes] = models) -> None:
            out[:] = [
                hashlib.sha256(models[0]).hexdigest() if isinstance(mine, str) else
                ddp.weight_difference(models[0], models[0]),
                mine,
            ]  # fmt: skip

        def broadcast(objects: list[Any], src: int, models: list[bytes] = models) -> None:
            objects[0] = models[src]

        monkeypatch.setattr(dist, "all_gather_object", gather)
        monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
        if fails:
            with pytest.raises(ExecutorError, match=r"rank\(s\) \[1\] differ from rank 0 by up "
                               r"to [0-9.e-]+ in \w+ \(0\.01 of its largest"):  # fmt: skip
                ddp.check_same_weights(other, (1, 2))
        else:
            ddp.check_same_weights(other, (1, 2))


# --------------------------------------------------------------------------- killed writes

_WRITER = """
import sys, time
from evonnx.execute.signals import handle_signals
from evonnx.model.textio import atomic_path
handle_signals()
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a model")
    print("writing", flush=True)
    time.sleep(60)
"""


def _killed_writer(target: Path, sig: int) -> subprocess.CompletedProcess[str]:
    """A process writing ``target`` atomically, sent ``sig`` mid-write."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "writing\n"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(textio.TMP_SUFFIX))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_write_stopped_by_a_signal_leaves_no_temporary(tmp_path: Path, sig: int) -> None:
    done = _killed_writer(tmp_path / "out.onnx", sig)
    assert done.returncode != 0 and not (tmp_path / "out.onnx").exists()
    assert _temporaries(tmp_path) == []


def test_ctrl_c_inside_the_writer_removes_its_temporary(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), textio.atomic_path(tmp_path / "o.onnx") as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["prune", "export"])
def test_temporaries_of_a_killed_write_are_swept_by_the_next_write_of_that_output(
    tmp_path: Path, command: str
) -> None:
    model, out = tmp_path / "m.onnx", tmp_path / "o" / "pruned.onnx"
    onnx.save(helper_convnet(), str(model))
    out.parent.mkdir()
    _killed_writer(out, signal.SIGKILL)
    (stale,) = _temporaries(out.parent)
    others = [f".other.onnx.0123abcd{textio.TMP_SUFFIX}", ".pruned.onnx.tmp", "pruned.onnx.bak"]
    for name in others:
        (out.parent / name).write_bytes(b"not ours to remove")
    with textio.atomic_path(out.parent / "pruned.onnx.data") as live:  # a write in progress
        live.write_bytes(b"being written")
        args = ["--keep", "0.5"] if command == "prune" else []
        code, output = _invoke(command, str(model), *args, "-o", str(out))
        assert code == 0, output
        assert not (out.parent / stale).exists() and live.exists()
    assert out.exists() and all((out.parent / name).exists() for name in others)


# --------------------------------------------------------------------------- memory at --batch


def test_a_latency_batch_past_the_memory_is_refused_with_the_figure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from evonnx.model import memory

    model, data = tmp_path / "m.onnx", tmp_path / "tiny.npz"
    onnx.save(helper_convnet(), str(model))
    save_npz(_data(), data)
    per_sample = memory.batch_bytes(helper_convnet(), 1)
    inputs = 2 * 8 * 8  # x: 1x2x8x8, drawn as float64 then float32
    assert per_sample >= inputs * 12 and memory.batch_bytes(helper_convnet(), 7) == 7 * per_sample
    available = 100_000 * per_sample // 2  # half of what batch 100000 needs
    monkeypatch.setattr(memory, "available_bytes", lambda: available)
    need = f"needs {100_000 * per_sample / memory.GIB:.3g} GiB of memory"
    for args in (
        ["prune", str(model), "--env", "latency", "--speedup", "2", "--batch", "100000",
         "-o", str(tmp_path / "o.onnx")],
        ["prune", str(model), "--keep", "0.5", "--runtime", "ort-cpu", "--batch", "100000",
         "-o", str(tmp_path / "o.onnx")],
        ["bench", str(model), str(model), "--batch", "1,100000"],
        ["evolve", str(model), "--data", str(data), "--env", "latency", "--batch", "100000",
         "--out", str(tmp_path / "run")],
    ):  # fmt: skip
        code, output = _invoke(*args)
        line = _one_error_line(output)
        assert code == 1 and line.startswith("error: --batch 100000 (") and need in line, line
    assert not (tmp_path / "o.onnx").exists() and not (tmp_path / "run").exists()


def test_checked_batches_keep_the_kind_of_iterable() -> None:
    from collections.abc import Iterator, Sized

    from evonnx.retrain.guard import checked_batches

    batch = (torch.zeros(2, 3), torch.zeros(2))

    class Unsized:
        def __iter__(self) -> Iterator[Any]:
            return iter([batch, batch])

    sized = checked_batches([batch] * 3, "t")
    assert isinstance(sized, Sized) and len(sized) == 3 and len(list(sized)) == 3
    unsized = checked_batches(Unsized(), "t")
    assert not isinstance(unsized, Sized) and len(list(unsized)) == len(list(unsized)) == 2
    once = checked_batches(iter([batch]), "t")
    assert iter(once) is once and len(list(once)) == 1 and list(once) == []
