"""Label-free evolution (``evolve --inputs``, :class:`evonnx.FidelityTask`) and the measured
speed-up of every generation (:mod:`evonnx.evolution.speed`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner, Result
from helpers import make_model
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from torch import nn
from torch.nn import functional as F
from zoo import export_torch

import evonnx
from evonnx.cli.main import cli
from evonnx.data import load_builtin
from evonnx.data.unlabelled import ImagePreprocess, load_inputs
from evonnx.errors import ConfigError, DataError, UnsupportedModelError
from evonnx.evolution.lineage import GenerationRecord
from evonnx.evolution.speed import SpeedProbe, slower_despite_fewer_macs
from evonnx.model.files import save_model
from evonnx.retrain.fidelity import run_outputs, split_indices
from evonnx.retrain.fidelity_outputs import (
    SIGMOID_GRADIENT_FLOOR,
    OutputSpec,
    fidelity,
    floored_sigmoid,
    parse_fidelity_losses,
)
from evonnx.retrain.heads import logits_view, sigmoid_heads, softmax_heads

FAST = evonnx.EvolveConfig(
    generations=3, keep=0.7, epochs=2, optimizer="adam", lr=1e-3, distill=None, max_drop=0.5,
    threads=1, seed=1, measure=False,
)  # fmt: skip


def _classifier() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
        nn.Softmax(dim=1),
    )  # fmt: skip


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A digit classifier ending in Softmax, trained here in a second (legacy exporter, fixed
    batch 1), its test images as an .npz and as a folder of PNGs."""
    data = load_builtin("digits")
    torch.manual_seed(0)
    net = _classifier()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    x, y = torch.from_numpy(data.x_train[:400]), torch.from_numpy(data.y_train[:400])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny: one thread is fastest on a busy machine
    try:
        for _ in range(30):
            opt.zero_grad()
            nn.functional.nll_loss(torch.log(net(x) + 1e-9), y).backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("pretrained")
    model = export_torch(net, (1, 1, 8, 8), "legacy")
    save_model(model, folder / "digits.onnx")
    name = model.graph.input[0].name
    np.savez(folder / "digits.npz", **{name: data.x_test[:150]})
    pngs = folder / "pngs"
    pngs.mkdir()
    for i, img in enumerate(data.x_test[:90]):
        Image.fromarray((img[0] * 255).round().astype(np.uint8)).save(pngs / f"{i:03d}.png")
    return {"model": folder / "digits.onnx", "npz": folder / "digits.npz", "pngs": pngs}


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


# --------------------------------------------------------------------------- end to end


def test_label_free_evolve_from_a_folder_of_pngs(
    pretrained: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    res = _invoke("evolve", str(pretrained["model"]), "--inputs", str(pretrained["pngs"]),
                  "--out", str(out), "--generations", "3", "--keep", "0.7", "--epochs", "2",
                  "--optimizer", "adam", "--lr", "0.001", "--max-drop", "0.5", "--threads", "1",
                  "--seed", "1")  # fmt: skip
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "lineage.json").read_text())
    assert saved["data"] == "fidelity:pngs" and saved["score_percent"] is True
    assert saved["config"]["training"]["distill"] is None  # the ancestor is the teacher already
    gens = saved["generations"]
    assert len(gens) == 3 and gens[0]["accuracy"] == 1.0 and gens[0]["val_accuracy"] == 1.0
    # measured by default, beside generation 1, in every surface
    assert gens[0]["speedup"] == 1.0 and all(g["latency_ms"] > 0 for g in gens)
    assert all(g["speedup"] > 0 for g in gens)
    lines = res.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ["gen", "test", "acc."])
    assert "speed-up" in lines[header]
    for g, line in zip(gens, lines[header + 1 :], strict=False):
        if line.split() and line.split()[0] == str(g["generation"]):
            assert f"{g['speedup']:.2f}x" in line
    report = (out / "report.md").read_text()
    assert "| Gen. | speed-up | latency (ms) | MACs ratio | ACC. |" in report
    assert f"| 3 | {gens[2]['speedup']:.2f}x |" in report and "fidelity to generation 1" in report
    # the scores are the task's, recomputed from the written files
    task = evonnx.FidelityTask(pretrained["model"], pretrained["pngs"], seed=1)
    assert task.fingerprint() == saved["data_sha256"]
    for g in gens:
        model = onnx.load(out / g["file"])
        onnx.checker.check_model(model, full_check=True)
        assert task.score(out / g["file"], "test") == pytest.approx(g["accuracy"])
        assert task.score(out / g["file"], "val") == pytest.approx(g["val_accuracy"])
    assert gens[2]["macs"] < gens[0]["macs"]


def test_api_fidelity_run_resumes_byte_identically(
    pretrained: dict[str, Path], tmp_path: Path
) -> None:
    task = evonnx.FidelityTask(pretrained["model"], pretrained["npz"], seed=1)
    full = evonnx.evolve(pretrained["model"], task, tmp_path / "full", FAST)
    assert all(r.speedup is None for r in full.records)  # measure=False
    assert full.records[0].accuracy == 1.0 and 0.0 <= full.records[-1].accuracy <= 1.0
    part = evonnx.evolve(pretrained["model"], task, tmp_path / "part", FAST.__class__(
        **{**FAST.__dict__, "generations": 2}))  # fmt: skip
    assert len(part.records) == 2
    # an old run folder (no "measure" in its settings) resumes, now measuring
    path = tmp_path / "part" / "lineage.json"
    old = json.loads(path.read_text())
    del old["config"]["latency"]["measure"]
    path.write_text(json.dumps(old))
    measured = FAST.__class__(**{**FAST.__dict__, "measure": True})
    resumed = evonnx.evolve(pretrained["model"], task, tmp_path / "part", measured, resume=True)
    assert [r.accuracy for r in resumed.records] == [r.accuracy for r in full.records]
    for r in full.records:
        assert (tmp_path / "part" / r.file).read_bytes() == (
            tmp_path / "full" / r.file
        ).read_bytes()
    assert resumed.records[0].speedup == 1.0 and resumed.records[2].speedup is not None


def test_distilling_from_the_parent_under_a_mac_budget(
    pretrained: dict[str, Path], tmp_path: Path
) -> None:
    task = evonnx.FidelityTask(pretrained["model"], pretrained["npz"], seed=2,
                               losses={task_output(pretrained): "kl"}, temperature=2.0)  # fmt: skip
    config = FAST.__class__(**{**FAST.__dict__, "generations": 2, "distill": 2.0, "env": "macs"})
    lineage = evonnx.evolve(pretrained["model"], task, tmp_path, config)
    assert all(np.isfinite(r.accuracy) for r in lineage.records)
    assert "distills from the parent (T=2.0)" in (tmp_path / "report.md").read_text()


def task_output(pretrained: dict[str, Path]) -> str:
    return onnx.load(pretrained["model"]).graph.output[0].name


# --------------------------------------------------------------------------- heads and losses


def test_softmax_head_trains_on_its_input_without_nans(pretrained: dict[str, Path]) -> None:
    from evonnx.converters import to_torch, write_back

    model = onnx.load(pretrained["model"])
    heads = softmax_heads(model)
    (head,) = heads.values()
    assert head.axis == 1 and not head.log
    view = logits_view(model)
    assert [o.name for o in view.graph.output] == [head.logits]
    assert {t.name for t in view.graph.initializer} == {t.name for t in model.graph.initializer}
    x = np.load(pretrained["npz"])[model.graph.input[0].name][:1]
    (logits,) = run_outputs(view, {model.graph.input[0].name: x}, [head.logits], [0])
    (probs,) = run_outputs(model, {model.graph.input[0].name: x}, [head.output], [0])
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    # saturated probabilities: training on the view keeps finite gradients
    task = evonnx.FidelityTask(model, pretrained["npz"])
    module = to_torch(task.training_graph(model))
    with torch.no_grad():
        next(iter(module.onnx_parameters().values())).mul_(50.0)  # logits of ~1e3
    (xb, yb) = next(iter(task.train_batches()))
    loss = task.loss(module(xb), yb)
    loss.backward()
    assert torch.isfinite(loss) and all(
        torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None
    )
    back = write_back(model, module)  # weights trained on the view fit the original graph
    assert [o.name for o in back.graph.output] == [head.output]


def _paddle_classifier(head: str = "Softmax") -> onnx.ModelProto:
    """paddle2onnx style: a batch axis of -1, MatMul + Add, the head, then ``Identity`` nodes
    to the graph output (PP-OCR's orientation classifier ends so)."""
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array(rng.normal(size=(2, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "fc")
    b = numpy_helper.from_array(rng.normal(size=(4,)).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("Flatten", ["r"], ["f"]),
         helper.make_node("MatMul", ["f", "fc"], ["m"]),
         helper.make_node("Add", ["m", "b"], ["logits"]),
         helper.make_node(head, ["logits"], ["p"], **({"axis": 1} if head != "Sigmoid" else {})),
         helper.make_node("Identity", ["p"], ["p2"]),
         helper.make_node("Identity", ["p2"], ["save_infer_model/scale_0.tmp_1"])],
        "paddle", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, 4, 4])],
        [helper.make_tensor_value_info("save_infer_model/scale_0.tmp_1", TensorProto.FLOAT,
                                       [-1, 4])], [w, fc, b],
    )  # fmt: skip
    return make_model(graph)


def test_a_head_behind_identity_nodes_trains_on_its_logits(tmp_path: Path) -> None:
    """A Softmax (or Sigmoid) followed by Identity nodes is still the graph's head: the task
    trains on the logits with KL (not mean squared error on probabilities)."""
    from evonnx.converters import to_torch, write_back

    model = _paddle_classifier()
    out = model.graph.output[0].name
    (head,) = softmax_heads(model).values()
    assert (head.output, head.logits, head.axis) == (out, "logits", 1)
    view = logits_view(model)
    assert [o.name for o in view.graph.output] == ["logits"]
    assert [n.op_type for n in view.graph.node] == ["Conv", "Relu", "Flatten", "MatMul", "Add"]
    x = np.random.default_rng(0).normal(size=(24, 3, 4, 4)).astype(np.float32)
    (logits,) = run_outputs(view, {"x": x}, ["logits"], [0])
    (probs,) = run_outputs(model, {"x": x}, [out], [0])
    np.testing.assert_allclose(probs, np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    task = evonnx.FidelityTask(model, {"x": x})
    assert [s.loss for s in task.specs] == ["kl"] and dict(task.kl_outputs) == {out: "logits"}
    module = to_torch(task.training_graph(model))
    xb, yb = next(iter(task.train_batches()))
    loss = task.loss(module(xb), yb)
    assert float(loss) == pytest.approx(0.0, abs=1e-5)  # the ancestor matches its own logits
    back = write_back(model, module)
    assert [o.name for o in back.graph.output] == [out]
    assert [n.op_type for n in back.graph.node] == [n.op_type for n in model.graph.node]
    save_model(model, tmp_path / "m.onnx")
    assert task.score(tmp_path / "m.onnx", "test") == 1.0
    sig = _paddle_classifier("Sigmoid")
    assert sigmoid_heads(sig) == {out: "logits"}
    assert [o.name for o in logits_view(sig, [out]).graph.output] == ["logits"]


def test_dynamo_exported_classifier_scores_itself_100(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = export_torch(_classifier(), (2, 1, 8, 8), "dynamo")
    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    task = evonnx.FidelityTask(model, {model.graph.input[0].name: x})
    assert [s.loss for s in task.specs] == ["kl"] and task.kl_outputs
    save_model(model, tmp_path / "m.onnx")
    assert task.score(tmp_path / "m.onnx", "test") == 1.0


def _ctc(seed: int = 0, log: bool = True) -> onnx.ModelProto:
    """x [N, 4, T] -> Conv1x1 -> Transpose -> [T, N, 5] -> LogSoftmax(axis 2) (CTC style)."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.normal(size=(6, 4, 1)).astype(np.float32), "w")
    w2 = numpy_helper.from_array(rng.normal(size=(5, 6, 1)).astype(np.float32), "w2")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["c"]),
        helper.make_node("Transpose", ["c"], ["t"], perm=[2, 0, 1]),
        helper.make_node("LogSoftmax" if log else "Softmax", ["t"], ["y"], axis=2),
    ]
    graph = helper.make_graph(
        nodes, "ctc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, "N", 5])], [w, w2],
    )  # fmt: skip
    return make_model(graph)


def test_sequence_outputs_are_scored_per_position(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(40, 4, 7)).astype(np.float32)
    task = evonnx.FidelityTask(_ctc(), {"x": x}, val_fraction=0.25, test_fraction=0.25)
    (spec,) = task.specs
    assert (spec.loss, spec.batch_axis, spec.class_axis) == ("kl", 1, 2)
    other = _ctc(seed=5)
    save_model(other, tmp_path / "other.onnx")
    ref = run_outputs(_ctc(), task.inputs["test"], ["y"], [1])[0]
    got = run_outputs(other, task.inputs["test"], ["y"], [1])[0]
    expected = float(np.mean(ref.argmax(-1) == got.argmax(-1)))  # over samples and steps
    assert 0 < expected < 1
    assert task.score(tmp_path / "other.onnx", "test") == pytest.approx(expected)
    # the training targets are the logits, batch first: [N, T, C]
    xb, yb = next(iter(task.train_batches()))
    assert yb[0].shape[1:] == (7, 5) and xb.shape[1:] == (4, 7)


def _spec(loss: str, class_axis: int | None = None) -> OutputSpec:
    return OutputSpec("y", 0, loss, 0, class_axis, 1.0)  # type: ignore[arg-type]


def test_fidelity_figures() -> None:
    ref = np.array([[0.0, 3.0], [2.0, 1.0], [0.0, 1.0], [5.0, 1.0]])
    got = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0], [5.0, 9.0]])
    assert fidelity(_spec("kl", 1), ref, ref) == 1.0
    assert fidelity(_spec("kl", 1), got, ref) == 0.5  # rows 1 and 3 disagree
    assert fidelity(_spec("mse"), ref, ref) == 1.0
    assert fidelity(_spec("mse"), np.full_like(ref, ref.mean()), ref) == pytest.approx(0.0)
    sigma = np.sqrt(np.mean((ref - ref.mean()) ** 2))
    half = ref + 0.5 * sigma
    assert fidelity(_spec("mse"), half, ref) == pytest.approx(0.5)
    assert fidelity(_spec("l1"), ref + 10 * sigma, ref) == 0.0  # bounded below
    assert fidelity(_spec("mse"), np.ones((3, 2)), np.ones((3, 2))) == 1.0  # constant reference
    assert fidelity(_spec("mse"), np.full((3, 2), np.nan), np.ones((3, 2))) == 0.0


def test_dense_outputs_use_the_regression_loss_and_can_be_overridden() -> None:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(3, 2, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["map"], pads=[1, 1, 1, 1]),
         helper.make_node("ArgMax", ["map"], ["idx"], axis=1)],
        "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("map", TensorProto.FLOAT, ["N", 3, 6, 6]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1, 6, 6])], [w],
    )  # fmt: skip
    model = make_model(graph)
    x = {"x": rng.normal(size=(12, 2, 6, 6)).astype(np.float32)}
    task = evonnx.FidelityTask(model, x)
    assert [(s.name, s.loss) for s in task.specs] == [("map", "mse")]  # idx: int64, not scored
    assert evonnx.FidelityTask(model, x, losses={"map": "kl:1"}).specs[0].class_axis == 1
    assert evonnx.FidelityTask(model, x, losses={"map": "l1"}).specs[0].loss == "l1"
    with pytest.raises(UnsupportedModelError, match="no output"):
        evonnx.FidelityTask(model, x, losses={"map": "off"})
    with pytest.raises(ConfigError, match="batch axis"):
        evonnx.FidelityTask(model, x, losses={"map": "kl:0"})
    assert parse_fidelity_losses(["a=KL:2", "b=off"]) == {
        "a": parse_fidelity_losses(["a=kl:2"])["a"], "b": parse_fidelity_losses(["b=off"])["b"]
    }  # fmt: skip
    for bad in ["a", "a=huber", "a=mse:1"]:
        with pytest.raises(ConfigError):
            parse_fidelity_losses([bad])


def _sigmoid_map(seed: int = 0) -> onnx.ModelProto:
    """Conv -> Sigmoid: a per-pixel probability map (a DB text detector's head, in small)."""
    w = np.random.default_rng(seed).normal(size=(1, 2, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["logit"], pads=[1, 1, 1, 1]),
         helper.make_node("Sigmoid", ["logit"], ["prob"])],
        "db", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 6, 6])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, 6, 6])],
        [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    return make_model(graph)


def test_sigmoid_maps_train_on_their_logits_by_binary_kl_on_request(tmp_path: Path) -> None:
    model = _sigmoid_map()
    x = {"x": np.random.default_rng(1).normal(size=(20, 2, 6, 6)).astype(np.float32)}
    assert evonnx.FidelityTask(model, x).specs[0].loss == "mse"  # the default, on evidence
    task = evonnx.FidelityTask(
        model, x, losses={"prob": "bce"}, val_fraction=0.25, test_fraction=0.25
    )
    (spec,) = task.specs
    assert spec.loss == "bce" and task.kl_outputs == {"prob": "logit"}
    view = task.training_graph(model)
    assert [o.name for o in view.graph.output] == ["logit"]
    assert "Sigmoid" not in {n.op_type for n in view.graph.node}
    assert logits_view(model) is model  # class heads only, unless a Sigmoid output is named
    xb, (yb,) = next(iter(task.train_batches()))
    logits = run_outputs(view, {"x": xb.numpy()}, ["logit"], [0])[0]
    np.testing.assert_allclose(yb.numpy(), logits, rtol=1e-5, atol=1e-5)  # targets: logits
    assert float(task.loss(yb, (yb,))) == pytest.approx(0.0, abs=1e-6)  # zero on the teacher
    student = (yb + 1.0).requires_grad_()
    loss = task.loss(student, (yb,))
    loss.backward()
    assert float(loss) > 0 and float(student.grad.abs().sum()) > 0  # type: ignore[union-attr]
    save_model(model, tmp_path / "same.onnx")
    assert task.score(tmp_path / "same.onnx", "test") == pytest.approx(1.0)
    save_model(_sigmoid_map(seed=3), tmp_path / "other.onnx")
    ref = run_outputs(model, task.inputs["test"], ["prob"], [0])[0]
    got = run_outputs(_sigmoid_map(seed=3), task.inputs["test"], ["prob"], [0])[0]
    figure = 1 - np.sqrt(np.mean((got - ref) ** 2)) / ref.std()  # on the probabilities
    assert task.score(tmp_path / "other.onnx", "test") == pytest.approx(max(0.0, figure), abs=1e-5)
    dense = _sigmoid_map()
    dense.graph.node[1].op_type = "Relu"
    with pytest.raises(ConfigError, match="bce needs a Sigmoid"):
        evonnx.FidelityTask(dense, x, losses={"prob": "bce"})


def test_sigmoid_maps_train_by_default_on_probabilities_through_their_logits(
    tmp_path: Path,
) -> None:
    model = _sigmoid_map()
    x = {"x": np.random.default_rng(1).normal(size=(40, 2, 6, 6)).astype(np.float32)}
    task = evonnx.FidelityTask(model, x, val_fraction=0.25, test_fraction=0.25, batch_size=10)
    (spec,) = task.specs
    assert spec.loss == "mse" and spec.sigmoid and task.kl_outputs == {"prob": "logit"}
    probs = run_outputs(model, task.inputs["train"], ["prob"], [0])[0]
    assert spec.scale == pytest.approx(float(probs.std()), rel=1e-5)  # of the probabilities
    save_model(model, tmp_path / "same.onnx")
    assert task.score(tmp_path / "same.onnx", "test") == pytest.approx(1.0)
    _, (yb,) = next(iter(task.train_batches()))
    assert float(task.loss(yb, (yb,))) == pytest.approx(0.0, abs=1e-7)
    # a pruned offspring whose map saturated: every logit far below 0, the map blank
    blank = torch.full_like(yb, -20.0, requires_grad=True)
    loss = task.loss(blank, (yb,))
    loss.backward()
    stuck = torch.full_like(yb, -20.0, requires_grad=True)
    F.mse_loss(torch.sigmoid(stuck), torch.sigmoid(yb)).backward()
    assert float(loss) > 0.5
    grads = float(blank.grad.abs().mean()), float(stuck.grad.abs().mean())  # type: ignore[union-attr]
    assert grads[0] > 1e4 * grads[1]

    # a head whose bias pruning threw far off learns back; through a plain Sigmoid it cannot
    def trained(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
        conv = torch.nn.Conv2d(2, 1, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(numpy_helper.to_array(model.graph.initializer[0])))
            conv.bias.fill_(-30.0)
        conv.weight.requires_grad_(False)
        opt = torch.optim.Adam([conv.bias], lr=0.5)
        for _ in range(40):
            for xb, (yb,) in task.train_batches():
                opt.zero_grad()
                loss(conv(xb), yb).backward()
                opt.step()
        got = torch.sigmoid(conv(torch.from_numpy(task.inputs["test"]["x"]))).detach()
        return fidelity(spec, got.numpy(), task.targets["test"][0])

    floored = trained(lambda out, ref: task.loss(out, (ref,)))
    plain = trained(lambda out, ref: F.mse_loss(torch.sigmoid(out), torch.sigmoid(ref)))
    assert floored > 0.8 and plain == 0.0, (floored, plain)


def test_floored_sigmoid_keeps_the_value_and_floors_the_gradient() -> None:
    z = torch.tensor([-30.0, -3.0, 0.0, 2.0, 30.0], requires_grad=True)
    p = floored_sigmoid(z)
    torch.testing.assert_close(p, torch.sigmoid(z))
    p.sum().backward()
    slope = torch.sigmoid(z) * (1 - torch.sigmoid(z))
    torch.testing.assert_close(z.grad, slope.clamp(min=SIGMOID_GRADIENT_FLOOR).detach())
    assert float(z.grad[2]) == pytest.approx(0.25)  # type: ignore[index]


# --------------------------------------------------------------------------- splits


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 400), val=st.floats(0, 0.45), test=st.floats(0.01, 0.45),
       seed=st.integers(0, 2**31))  # fmt: skip
def test_splits_are_disjoint_and_seeded(n: int, val: float, test: float, seed: int) -> None:
    try:
        parts = split_indices(n, val, test, seed)
    except DataError:
        assert n - max(1, round(test * n)) - (max(1, round(val * n)) if val > 0 else 0) < 1
        return
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(n))  # disjoint and complete
    assert len(parts["test"]) >= 1 and len(parts["train"]) >= 1
    assert (len(parts["val"]) == 0) == (val == 0)
    again = split_indices(n, val, test, seed)
    assert all(np.array_equal(parts[k], again[k]) for k in parts)


def test_task_never_trains_on_held_out_inputs(pretrained: dict[str, Path]) -> None:
    task = evonnx.FidelityTask(pretrained["model"], pretrained["npz"], seed=4)
    rows = {
        part: {a.tobytes() for a in next(iter(arr.values()))} for part, arr in task.inputs.items()
    }
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"]
    assert not rows["val"] & rows["test"]
    seen = {x.numpy().tobytes() for xb, _ in task.train_batches() for x in xb}
    assert seen <= rows["train"] and len(seen) >= len(rows["train"]) - 1


# --------------------------------------------------------------------------- image folders


def _image_model(layout: str, channels: int, size: tuple[int, int] | None) -> onnx.ModelProto:
    h, w = size if size is not None else ("H", "W")
    shape = ["N", channels, h, w] if layout == "NCHW" else ["N", h, w, channels]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["img"], ["out"])], "img",
        [helper.make_tensor_value_info("img", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, shape)],
    )  # fmt: skip
    return make_model(graph)


def _write_images(
    folder: Path, mode: str, n: int = 3, size: tuple[int, int] = (4, 6)
) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = []
    for i in range(n):
        shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
        arr = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(arr, mode).save(folder / f"{i}.png")
        arrays.append(arr)
    return arrays


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_image_folder_preprocessing(layout: str, tmp_path: Path) -> None:
    arrays = _write_images(tmp_path / "rgb", "RGB")  # 6 high, 4 wide
    model = _image_model(layout, 3, None)
    pre = ImagePreprocess(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), bgr=True)
    x = load_inputs(tmp_path / "rgb", model, pre)["img"]
    expected = (np.stack(arrays)[..., ::-1] / 255.0 - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5]
    if layout == "NCHW":
        expected = expected.transpose(0, 3, 1, 2)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    # resized to the graph's fixed size (bilinear), and to --resize otherwise
    fixed = load_inputs(tmp_path / "rgb", _image_model(layout, 3, (3, 2)))["img"]
    assert fixed.shape == ((3, 3, 3, 2) if layout == "NCHW" else (3, 3, 2, 3))
    resized = load_inputs(tmp_path / "rgb", model, ImagePreprocess(resize=(5, 7)))["img"]
    assert resized.shape[1:] == ((3, 5, 7) if layout == "NCHW" else (5, 7, 3))


def test_grayscale_folder_for_a_one_channel_model(tmp_path: Path) -> None:
    arrays = _write_images(tmp_path / "gray", "L")
    x = load_inputs(tmp_path / "gray", _image_model("NCHW", 1, None),
                    ImagePreprocess(mean=(0.5,), std=(0.5,)))["img"]  # fmt: skip
    np.testing.assert_allclose(x[:, 0], (np.stack(arrays) / 255.0 - 0.5) / 0.5, atol=1e-6)


# --------------------------------------------------------------------------- bad input


def _refused(res: Result, out: Path, *needles: str) -> None:
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists()  # validated before the run folder is created


def test_bad_inputs_are_one_line_errors_and_write_nothing(
    pretrained: dict[str, Path], tmp_path: Path
) -> None:
    model, out = str(pretrained["model"]), tmp_path / "run"

    def evolve(*args: str) -> Result:
        return _invoke("evolve", model, "--out", str(out), *args)

    (tmp_path / "empty").mkdir()
    _refused(evolve("--inputs", str(tmp_path / "empty")), out, "no readable image")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not a png")
    _refused(evolve("--inputs", str(tmp_path / "junk")), out, "no readable image")
    _write_images(tmp_path / "rgb", "RGB", size=(8, 8))
    _refused(evolve("--inputs", str(tmp_path / "rgb")), out, "3-channel image", "takes 1 channel")
    np.savez(tmp_path / "other.npz", images=np.zeros((9, 1, 8, 8), np.float32))
    _refused(evolve("--inputs", str(tmp_path / "other.npz")), out, "name each array after")
    np.savez(
        tmp_path / "few.npz",
        **{onnx.load(model).graph.input[0].name: np.zeros((2, 1, 8, 8), np.float32)},
    )
    _refused(evolve("--inputs", str(tmp_path / "few.npz")), out, "cannot be split")
    _refused(evolve("--inputs", str(pretrained["npz"]), "--resize", "8x8"), out, "--resize")
    _refused(evolve("--inputs", str(pretrained["pngs"]), "--resize", "9x9"), out, "disagrees")
    _refused(evolve("--inputs", str(pretrained["pngs"]), "--mean", "0,0"), out, "--mean has 2")
    _refused(evolve("--inputs", str(pretrained["npz"]), "--fidelity-loss", "nope=kl"), out, "nope")
    _refused(evolve("--data", "digits", "--test-fraction", "0.2"), out, "--test-fraction")
    _refused(evolve("--data", "digits", "--inputs", str(pretrained["npz"])), out, "--inputs")
    # a model whose outputs cannot be scored (int64 only)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]),
         helper.make_node("ArgMax", ["c"], ["y"], axis=1)],
        "argmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["N", 1, 8, 8])],
        [numpy_helper.from_array(np.ones((3, 1, 1, 1), np.float32), "w")],
    )  # fmt: skip
    save_model(make_model(graph), tmp_path / "argmax.onnx")
    np.savez(tmp_path / "x.npz", x=np.zeros((9, 1, 8, 8), np.float32))
    res = _invoke("evolve", str(tmp_path / "argmax.onnx"), "--inputs", str(tmp_path / "x.npz"),
                  "--out", str(out))  # fmt: skip
    _refused(res, out, "no output of this model can be scored")


def test_a_task_built_on_another_model_is_refused(
    pretrained: dict[str, Path], tmp_path: Path
) -> None:
    task = evonnx.FidelityTask(pretrained["model"], pretrained["npz"])
    torch.manual_seed(9)
    other = export_torch(_classifier(), (1, 1, 8, 8), "legacy")
    with pytest.raises(ConfigError, match="teacher outputs"):
        evonnx.evolve(other, task, tmp_path / "run", FAST)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- speed


def test_probe_measures_beside_generation_1(pretrained: dict[str, Path]) -> None:
    model = onnx.load(pretrained["model"])
    probe = SpeedProbe(model, runs=3, warmup=1)
    ms, speedup = probe.measure(model) or (0.0, 0.0)
    assert ms > 0 and speedup == 1.0
    ms2, _ = probe.measure(evonnx.prune(model, 0.5).model) or (0.0, 0.0)
    assert ms2 > 0
    record = GenerationRecord(2, 1, 0, "gen_002.onnx", 0.9, 2.0, 1.0, 1.5, 1, 1, 1, 1, 1, 1, 0.0)
    assert not slower_despite_fewer_macs(record)  # not measured
    assert slower_despite_fewer_macs(GenerationRecord(**{**record.__dict__, "speedup": 0.95}))
    assert not slower_despite_fewer_macs(GenerationRecord(**{**record.__dict__, "speedup": 1.2}))
    same = GenerationRecord(**{**record.__dict__, "mac_ratio": 1.0, "speedup": 0.9})
    assert not slower_despite_fewer_macs(same)
