"""The retraining recipe (optimizers, warm-up + cosine, steps, clipping, frozen BatchNorm) and
training on the logits of a Softmax-ended graph."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from helpers import make_model
from onnx import TensorProto, helper, numpy_helper
from test_main import _evolve, _one_line_error, files  # noqa: F401 (fixture)
from test_train import TinyNet, blobs
from torch import nn

from evonnx.cli.main import cli
from evonnx.converters import to_torch
from evonnx.data import Dataset
from evonnx.errors import ConfigError
from evonnx.evolution.lineage import EvolveConfig
from evonnx.execute.jobs import OffspringJob, run_job
from evonnx.retrain import TrainConfig, train
from evonnx.retrain.recipe import lr_factor, make_optimizer
from evonnx.retrain.task import ClassificationTask, Split


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    x, y = blobs(126)
    return Dataset(x[:96], y[:96], x[96:], y[96:], name="blobs")


def net(seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet()


# ------------------------------------------------------------------------------ schedule


def test_warmup_then_cosine() -> None:
    factors = [lr_factor(t, 20, 4, "cosine") for t in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[12] == pytest.approx(0.5) and factors[20] == 0.0
    assert all(a >= b for a, b in itertools.pairwise(factors[4:]))
    assert [lr_factor(t, 20, 2, "constant") for t in (0, 1, 2, 19)] == [0.5, 1.0, 1.0, 1.0]
    assert lr_factor(3, 10, 0, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_learning_rate_follows_the_schedule_per_step(dataset: Dataset) -> None:
    seen: list[float] = []
    model = net()
    config = TrainConfig(steps=10, batch_size=16, lr=0.1, warmup=0.2, seed=0)
    original = torch.optim.SGD.step

    def spy(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    torch.optim.SGD.step = spy  # type: ignore[method-assign]
    try:
        train(model, dataset, config, progress=False)
    finally:
        torch.optim.SGD.step = original  # type: ignore[method-assign]
    expected = [0.1 * lr_factor(t, 10, 2, "cosine") for t in range(10)]
    np.testing.assert_allclose(seen, expected, rtol=1e-12)


def test_steps_instead_of_epochs(dataset: Dataset) -> None:
    result = train(net(), dataset, TrainConfig(steps=9, batch_size=16, seed=0), progress=False)
    assert result.steps == 9 and result.images == 9 * 16
    assert len(result.losses) == 2  # one full pass of 6 batches, then 3 more
    capped = TrainConfig(steps=5, batch_size=16, max_batches=2, seed=0)
    assert train(net(), dataset, capped, progress=False).steps == 5


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_train(dataset: Dataset, name: str) -> None:
    lr = 0.05 if name == "sgd" else 3e-3
    config = TrainConfig(epochs=4, batch_size=16, lr=lr, optimizer=name, weight_decay=0.01)  # type: ignore[arg-type]
    result = train(net(), dataset, config, progress=False)
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_adamw_decouples_weight_decay() -> None:
    p = nn.Parameter(torch.ones(3))
    opt = make_optimizer([p], "adamw", 0.1, 0.9, 0.5)
    assert isinstance(opt, torch.optim.AdamW)
    p.grad = torch.zeros(3)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), 1 - 0.1 * 0.5))


def test_gradient_clipping_bounds_each_update(dataset: Dataset) -> None:
    model = net()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    config = TrainConfig(steps=4, batch_size=16, lr=1.0, momentum=0.0, schedule="constant",
                         clip_grad=1e-3)  # fmt: skip
    train(model, dataset, config, progress=False)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert 0 < float(torch.linalg.norm(after - before)) <= 4e-3 + 1e-6


# ------------------------------------------------------------------------------ BatchNorm


def test_frozen_batch_norm_keeps_torch_running_stats(dataset: Dataset) -> None:
    frozen, free = net(), net()
    stats = frozen.bn.running_mean.clone(), frozen.bn.running_var.clone()
    train(frozen, dataset, TrainConfig(steps=3, batch_size=16, freeze_bn=True), progress=False)
    train(free, dataset, TrainConfig(steps=3, batch_size=16), progress=False)
    assert torch.equal(frozen.bn.running_mean, stats[0])
    assert torch.equal(frozen.bn.running_var, stats[1])
    assert not torch.equal(free.bn.running_mean, stats[0])
    assert not torch.equal(frozen.bn.weight, net().bn.weight)  # scale still trains
    assert frozen.training and frozen.bn.training  # modes restored


def _bn_graph() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.ones(4, np.float32), "scale"),
        numpy_helper.from_array(np.zeros(4, np.float32), "shift"),
        numpy_helper.from_array(np.full(4, 0.3, np.float32), "mean"),
        numpy_helper.from_array(np.full(4, 2.0, np.float32), "var"),
        numpy_helper.from_array(rng.normal(size=(3, 64)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["b"]),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], inits,
    )  # fmt: skip
    return make_model(graph)


def test_frozen_batch_norm_in_converted_graphs(dataset: Dataset) -> None:
    module = to_torch(_bn_graph())
    train(module, dataset, TrainConfig(steps=3, batch_size=16, freeze_bn=True), progress=False)
    buffers = module.onnx_buffers()
    assert torch.equal(buffers["mean"], torch.full((4,), 0.3))
    assert torch.equal(buffers["var"], torch.full((4,), 2.0))
    assert not module.batch_norm_frozen
    x = torch.from_numpy(dataset.x_test)
    module.train()
    module.batch_norm_frozen = True
    with torch.no_grad():
        frozen_out = module(x)
        module.eval()
        torch.testing.assert_close(frozen_out, module(x))  # frozen = eval-mode BatchNorm
    free = to_torch(_bn_graph())
    train(free, dataset, TrainConfig(steps=3, batch_size=16), progress=False)
    assert not torch.equal(free.onnx_buffers()["mean"], torch.full((4,), 0.3))


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "bad",
    [
        {"lr": math.nan},
        {"lr": math.inf},
        {"lr": -1.0},
        {"weight_decay": -0.1},
        {"weight_decay": math.nan},
        {"momentum": math.nan},
        {"momentum": 1.0},
        {"warmup": 1.0},
        {"warmup": math.nan},
        {"steps": 0},
        {"clip_grad": 0.0},
        {"clip_grad": math.inf},
        {"clip_grad": math.nan},
        {"optimizer": "rmsprop"},
        {"schedule": "step"},
    ],
)
def test_bad_settings_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        EvolveConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        TrainConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lr", "nan"], "lr"),
        (["--lr", "inf"], "lr"),
        (["--weight-decay", "nan"], "weight_decay"),
        (["--clip-grad", "nan"], "clip_grad"),
        (["--clip-grad", "-1"], "--clip-grad"),
        (["--warmup", "1"], "--warmup"),
        (["--steps", "0"], "--steps"),
        (["--steps", "5", "--epochs", "2"], "--epochs: --steps sets"),
        (["--optimizer", "adam", "--momentum", "0.5"], "--momentum: only --optimizer sgd"),
        (["--optimizer", "adam", "--nesterov"], "nesterov"),
        (["--momentum", "0", "--nesterov"], "nesterov"),
    ],
)
def test_cli_refuses_bad_recipes(
    files: dict[str, Path],  # noqa: F811
    tmp_path: Path,
    args: list[str],
    needle: str,
) -> None:
    out = tmp_path / "run"
    res = CliRunner().invoke(
        cli,
        ["evolve", str(files["model"]), "--data", str(files["data"]), "--out", str(out), *args],
    )
    _one_line_error(res, needle)
    assert not out.exists()


def test_cli_recipe_is_recorded_in_the_lineage(files: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "run"
    res = _evolve(files, "--out", str(out), "--optimizer", "adamw", "--lr", "3e-4",
                  "--weight-decay", "0.01", "--warmup", "0.2", "--lr-schedule", "constant",
                  "--clip-grad", "2", "--freeze-bn", "--distill", "off")  # fmt: skip
    assert res.exit_code == 0, res.output
    config = json.loads((out / "lineage.json").read_text())["config"]["training"]
    expected = {"optimizer": "adamw", "lr": 3e-4, "weight_decay": 0.01, "warmup": 0.2,
                "schedule": "constant", "clip_grad": 2.0, "freeze_bn": True,
                "steps": None}  # fmt: skip
    assert {k: config[k] for k in expected} == expected


# ---------------------------------------------------------------- Softmax-ended graphs


def _classifier(tail: str | None, seed: int = 0) -> onnx.ModelProto:
    """Flatten -> Gemm (-> Softmax/LogSoftmax) on 1×4×4 blobs."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array((0.3 * rng.normal(size=(3, 16))).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w", "b"], ["z" if tail else "y"], transB=1),
    ]
    if tail:
        nodes.append(helper.make_node(tail, ["z"], ["y"], axis=1))
    graph = helper.make_graph(
        nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w, b],
    )  # fmt: skip
    return make_model(graph)


def test_classification_trains_a_softmax_ended_graph_on_its_logits(dataset: Dataset) -> None:
    task = ClassificationTask(dataset, val_fraction=0.25)
    model = _classifier("Softmax")
    view = task.training_graph(model)
    assert [n.op_type for n in view.graph.node] == ["Flatten", "Gemm"]
    assert [o.name for o in view.graph.output] == ["z"]
    assert task.training_graph(_classifier(None)) is not None
    x = torch.randn(5, 1, 4, 4)
    torch.testing.assert_close(torch.softmax(to_torch(view)(x), 1), to_torch(model)(x))


@pytest.mark.parametrize("tail", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("distill", [None, 4.0])
def test_softmax_ended_graph_trains_on_its_logits(
    dataset: Dataset, tail: str, distill: float | None
) -> None:
    """The built-in classification task trains a Softmax-ended graph exactly as the same
    graph without the Softmax (finite loss, same weights), and the Softmax stays written."""
    config = EvolveConfig(epochs=3, lr=0.5, optimizer="sgd", batch_size=16, distill=distill,
                          threads=1)  # fmt: skip
    split = Split(ClassificationTask(dataset, val_fraction=0.25), "val")
    trained = {}
    for name, model in (("plain", _classifier(None)), ("softmax", _classifier(tail))):
        job = OffspringJob(model.SerializeToString(), 3, config.training, model.SerializeToString())
        result = run_job(job, split)
        trained[name] = onnx.load_from_string(result.model)
        assert all(math.isfinite(s) for s in result.scores if s is not None)
    assert tail in {n.op_type for n in trained["softmax"].graph.node}
    weights = {k: {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
               for k, m in trained.items()}  # fmt: skip
    untrained = numpy_helper.to_array(_classifier(None).graph.initializer[0])
    assert not np.array_equal(weights["plain"]["w"], untrained)
    for name in ("w", "b"):
        np.testing.assert_allclose(weights["softmax"][name], weights["plain"][name], atol=1e-6)


def test_defaults_are_the_benchmarks_choice() -> None:
    """EvolveConfig's recipe is the one benchmarks/retrain_defaults.py chose (docs/results)."""
    path = Path(__file__).resolve().parent.parent / "docs" / "results" / "retrain_defaults.json"
    results = json.loads(path.read_text())
    chosen = next(r for r in results["recipes"] if r["name"] == results["chosen"]["recipe"])
    d = EvolveConfig()
    fields = ("optimizer", "lr", "warmup", "weight_decay", "freeze_bn", "schedule")
    assert {k: getattr(d, k) for k in fields} == {k: chosen[k] for k in fields}
    assert chosen["name"] in results["chosen"]["safe"]


def test_nesterov_reaches_the_optimizer_of_each_offspring() -> None:
    import torch

    from evonnx.retrain.recipe import make_optimizer

    config = EvolveConfig(nesterov=True)
    assert config.training.nesterov and config.to_dict()["training"]["nesterov"] is True
    train_config = TrainConfig.for_offspring(config.training, 5)
    assert train_config.nesterov and train_config.seed == 5
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = make_optimizer(params, "sgd", 0.1, 0.9, 0.0, train_config.nesterov)
    assert sgd.defaults["nesterov"] is True
    assert make_optimizer(params, "sgd", 0.1, 0.9, 0.0).defaults["nesterov"] is False
