"""Issue 18: frozen layers stay byte-identical, a per-layer floor, one A-E (prune, evolve)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from frozen_graphs import frozen_classifier
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo import ALL_CASES, cached_case

from evonnx import api
from evonnx.cli.main import cli
from evonnx.data import Dataset
from evonnx.errors import PlanError
from evonnx.evolution.lineage import EvolveConfig
from evonnx.genetic import EncodingConfig, efficiency, model_weights
from evonnx.genetic.environments import MacBudget
from evonnx.pruning.analysis import analyze
from evonnx.pruning.groups import Analysis
from evonnx.pruning.metrics import compute_metrics
from evonnx.pruning.plan import floor_channels

FROZEN = ("wfc", "bfc")  # the classifier's weight and bias


def frozen_layers(analysis: Analysis) -> set[str]:
    """Weights of layers that touch no prunable group."""
    prunable = {g.id for g in analysis.prunable_groups}
    return {
        lay.weight
        for lay in analysis.layers
        if lay.out_group not in prunable and not prunable & set(lay.in_groups)
    }


def assert_untouched(before: onnx.ModelProto, after: onnx.ModelProto, names: set[str]) -> None:
    """The named constants are byte-identical (dtype, shape and bytes)."""
    a, b = model_weights(before, names), model_weights(after, names)
    for name in names:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), f"{name} changed"


GENETIC = {
    "structured": EncodingConfig(keep=0.8, synapse_level=False),
    "synapses": EncodingConfig(keep=0.6),
    "kernel": EncodingConfig(keep=0.7, cluster_mode="kernel", synapse_level=False),
    "kernel-synapses": EncodingConfig(keep=0.6, cluster_mode="kernel"),
    "macs": EncodingConfig(environment=MacBudget(0.6), synapse_level=False),
}


@pytest.mark.parametrize("name", list(GENETIC))
def test_frozen_classifier_untouched_by_genetic(name: str) -> None:
    model = frozen_classifier()
    assert frozen_layers(analyze(model)) == {"wfc"}
    for seed in range(4):
        result = api.synthesize(model, GENETIC[name], seed=seed)
        assert_untouched(model, result.model, set(FROZEN))
        assert result.after.params < result.before.params or result.offspring.masks


def test_frozen_classifier_untouched_by_magnitude() -> None:
    model = frozen_classifier()
    result = api.prune(model, 0.5)
    assert_untouched(model, result.model, set(FROZEN))
    assert result.after.params < result.before.params


def test_evolve_offspring_leave_frozen_layer_untouched() -> None:
    """The offspring evolve synthesizes (before retraining) keep the frozen layer."""
    from evonnx.evolution.loop import _offspring

    model = frozen_classifier()
    analysis = analyze(model)
    for config in (EvolveConfig(keep=0.6), EvolveConfig(keep=0.7, env="macs")):
        for seed in range(3):
            job = _offspring(model, analysis, config, seed)
            child = onnx.load_from_string(job.child)
            assert_untouched(model, child, set(FROZEN))
            assert compute_metrics(child).nonzero_synapses < compute_metrics(model).synapses


def test_frozen_synapses_only_when_asked() -> None:
    model = frozen_classifier()
    cfg = replace(GENETIC["synapses"], frozen_synapses=True)
    result = api.synthesize(model, cfg, seed=0)
    assert "wfc" in result.offspring.masks  # opted in: the classifier loses synapses too


def test_unreachable_budget_is_refused_with_the_reachable_figure(tmp_path: Path) -> None:
    """The frozen classifier holds 35% of the synapses: keeping 30% without zeroing it is out
    of reach; the error names the figure that is reachable, and nothing is written."""
    model = frozen_classifier()
    with pytest.raises(PlanError, match=r"out of reach.*keep at least 0\.\d+"):
        api.synthesize(model, EncodingConfig(keep=0.3, synapse_level=False), seed=0)
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    res = CliRunner().invoke(cli, ["prune", str(src), "--keep", "0.3", "-o", str(out)])
    assert res.exit_code == 1 and not out.exists()
    assert res.output.count("\n") == 1 and "out of reach" in res.output
    reachable = float(res.output.split("keep at least ")[1].split(";")[0])
    res = CliRunner().invoke(
        cli, ["prune", str(src), "--keep", f"{reachable + 0.01:.3f}", "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    with pytest.raises(PlanError, match="below the per-layer floor"):
        api.prune(model, 0.2)


def test_prune_summary_names_layers_that_shrank_most(tmp_path: Path) -> None:
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(frozen_classifier(), str(src))
    args = ["prune", str(src), "--keep", "0.7", "-o", str(out), "--method", "magnitude"]
    res = CliRunner().invoke(cli, [*args, "--json"])
    assert res.exit_code == 0, res.output
    shrunk = json.loads(res.output)["shrunk_most"]
    assert shrunk and {s["layer"] for s in shrunk} <= {"conv1", "conv2"}
    assert all(s["filters"][1] < s["filters"][0] for s in shrunk)
    assert [s["kept"] for s in shrunk] == sorted(s["kept"] for s in shrunk)
    res = CliRunner().invoke(cli, args)
    assert "shrank most: conv" in res.output


@settings(max_examples=25, deadline=None)
@given(
    keep=st.floats(0.05, 1.0),
    floor=st.sampled_from([0.0, 0.1, 0.25, 0.5]),
    how=st.sampled_from(["structured", "synapses", "kernel", "macs", "magnitude"]),
    seed=st.integers(0, 2**16),
)
def test_floor_holds(keep: float, floor: float, how: str, seed: int) -> None:
    """No prunable group goes below its floor; a budget out of reach is refused."""
    model = frozen_classifier(seed=seed % 7)
    analysis = analyze(model)
    try:
        if how == "magnitude":
            result = api.prune(model, keep, min_fraction=floor)
        else:
            cfg = GENETIC[how]
            env = MacBudget(keep) if how == "macs" else None
            cfg = replace(cfg, keep=keep, environment=env, min_fraction=floor)
            result = api.synthesize(model, cfg, seed=seed)
    except PlanError as exc:
        assert "out of reach" in str(exc) or "below the per-layer floor" in str(exc)
        frozen = sum(int(np.count_nonzero(w)) for w in model_weights(model, {"wfc"}).values())
        share = frozen / compute_metrics(model).nonzero_synapses  # what no budget may touch
        assert floor > 0 or how != "synapses" or keep < share + 0.01, exc
        return
    for g in analysis.prunable_groups:
        assert len(result.plan.kept(g)) >= floor_channels(g.size, 1, floor)
    assert_untouched(model, result.model, set(FROZEN))


@pytest.mark.parametrize("case", ALL_CASES)
def test_zoo_frozen_layers_untouched(case: str, zoo_dir: Path) -> None:
    """In every zoo graph, a layer that touches no prunable group is byte-identical."""
    model = cached_case(case, zoo_dir)
    analysis = analyze(model)
    frozen = frozen_layers(analysis)
    assert {lay.weight for lay in analysis.frozen_layers} == frozen  # what evolve holds
    assert frozen <= analysis.frozen_initializers()
    for run in (
        lambda: api.synthesize(model, EncodingConfig(keep=0.6), seed=1),
        lambda: api.synthesize(model, EncodingConfig(keep=0.8, synapse_level=False), seed=1),
        lambda: api.prune(model, 0.5),
    ):
        try:
            result = run()
        except PlanError as exc:
            assert "out of reach" in str(exc)
            continue
        assert_untouched(model, result.model, frozen)


# ----------------------------------------------------------------------------- one A-E


def test_one_ae_on_an_input_with_zero_weights(tmp_path: Path) -> None:
    """A sparse input: prune's summary, the lineage's record and efficiency() agree, and
    weights that were zero before never count as removed."""
    from evonnx.evolution.loop import _record

    model = frozen_classifier(zeros=0.3)
    before = compute_metrics(model)
    assert before.nonzero_synapses < 0.8 * before.synapses
    gen1 = _record(1, None, None, "gen_001.onnx", (0.5, None), before, before, (), ())
    assert gen1.ae == 1.0 and gen1.ce == 1.0  # today's input is generation 1: nothing removed
    src, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    res = CliRunner().invoke(
        cli, ["prune", str(src), "--keep", "0.7", "--synapses", "-o", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    after = compute_metrics(onnx.load(str(out)))
    eff = efficiency(before, after)
    record = _record(2, 1, 0, "gen_002.onnx", (0.5, None), before, after, (), ())
    assert data["ae"] == pytest.approx(eff.architectural) == pytest.approx(record.ae)
    assert data["ce"] == pytest.approx(eff.cluster) == pytest.approx(record.ce)
    assert eff.architectural == pytest.approx(before.nonzero_synapses / after.nonzero_synapses)
    assert data["synapses"] == [before.nonzero_synapses, after.nonzero_synapses]
    assert np.isclose(eff.architectural, 1 / 0.7, rtol=0.15)  # about what --keep asked


# ----------------------------------------------------------------------------- evolve


def _ln_classifier() -> onnx.ModelProto:
    """conv -> pool -> fc1 -> LayerNorm -> fc2: the LayerNorm freezes fc1's outputs, so fc2
    (input and output groups frozen) is a large frozen layer; the conv and fc1 are prunable."""
    import io
    import warnings

    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.fc1, self.ln = nn.Linear(8 * 4 * 4, 96), nn.LayerNorm(96)
            self.fc2 = nn.Linear(96, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1)
            return self.fc2(torch.relu(self.ln(self.fc1(h))))

    torch.manual_seed(0)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.zeros(1, 1, 8, 8),), buf, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


def _tiny_data() -> Dataset:
    rng = np.random.default_rng(0)
    templates = rng.normal(size=(3, 1, 8, 8)).astype(np.float32)
    y_train, y_test = rng.integers(0, 3, 128), rng.integers(0, 3, 48)
    noise = rng.normal(size=(176, 1, 8, 8)).astype(np.float32) * 0.5
    return Dataset(templates[y_train] + noise[:128], y_train, templates[y_test] + noise[128:],
                   y_test, name="tiny")  # fmt: skip


@pytest.mark.parametrize("init", ["inherit", "random"])
def test_evolve_keeps_frozen_layers_byte_identical(init: str, tmp_path: Path) -> None:
    """Retraining does not touch a frozen layer: it is not trained (nor re-initialized) and
    the first offspring (gen_002.onnx; gen_001 is the input) holds its initializers byte for
    byte; the other layers did train."""
    model = _ln_classifier()
    analysis = analyze(model)
    frozen = analysis.frozen_initializers()
    weights = {lay.weight for lay in analysis.frozen_layers}
    fc2 = [lay for lay in analysis.layers if "fc2" in lay.node]
    assert len(fc2) == 1 and fc2[0].weight in weights and len(frozen) == 2  # weight and bias
    config = EvolveConfig(
        generations=2, epochs=1, lr=0.05, optimizer="sgd", warmup=0.0, freeze_bn=False,
        batch_size=32, seed=3, threads=1, distill=None, init=init,  # type: ignore[arg-type]
    )  # fmt: skip
    lineage = api.evolve(model, _tiny_data(), tmp_path, config)
    assert [r.file for r in lineage.records] == ["gen_001.onnx", "gen_002.onnx"]
    child = onnx.load(str(tmp_path / "gen_002.onnx"))
    assert_untouched(model, child, set(frozen))
    before = {t.name: t.SerializeToString() for t in model.graph.initializer}
    after = {t.name: t.SerializeToString() for t in child.graph.initializer}
    trained = [n for n in after if n in before and n not in frozen and after[n] != before[n]]
    assert trained  # the other layers did change


def test_hold_and_reinitialize_leave_frozen_weights() -> None:
    """The retraining side: held parameters take no gradient, re-initialization skips them."""
    import torch

    from evonnx.converters import to_torch
    from evonnx.execute.jobs import hold, keep_initializers, reinitialize

    model = _ln_classifier()
    frozen = tuple(sorted(analyze(model).frozen_initializers()))
    module = to_torch(model, freeze_zeros=True)
    params = module.onnx_parameters()
    before = {n: p.detach().clone() for n, p in params.items()}
    reinitialize(module, 1, set(frozen))
    hold(module, frozen)
    for name, p in params.items():
        same = torch.equal(p.detach(), before[name])
        assert (name in frozen) == (not p.requires_grad)
        if name in module.weight_names():
            assert same == (name in frozen), name
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for t in copy.graph.initializer:
        t.raw_data = b"\0" * len(t.raw_data)
    kept = keep_initializers(copy, model, frozen)
    assert_untouched(model, kept, set(frozen))
