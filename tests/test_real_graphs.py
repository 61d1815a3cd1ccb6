"""Real-world graphs: normalization, Split/C2f, MobileNetV3, DB, ViT, input shapes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from helpers import assert_same, check_function_kept, make_model, random_plan, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from zoo_real import (
    CNNS,
    COVERAGE_FLOOR,
    INPUT_SHAPES,
    IR_VERSION,
    NEEDS_OP,
    REAL_SHAPES,
    REAL_ZOO,
)

import evonnx
from evonnx.cli.main import cli
from evonnx.converters import to_torch
from evonnx.converters.ops import OPS
from evonnx.data import Dataset
from evonnx.errors import ConfigError, UnsupportedModelError
from evonnx.evolution.lineage import EvolveConfig
from evonnx.model.inputs import apply_input_shapes, parse_input_shapes
from evonnx.model.normalize import normalize
from evonnx.pruning.analysis import analyze
from evonnx.pruning.groups import Analysis, Role
from evonnx.retrain.task import Task

CONVERTED = [name for name in REAL_ZOO if NEEDS_OP.get(name, "Conv") in OPS]
"""Graphs the ONNX->torch converter runs (all, once it converts every op they use)."""


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real")


def _raw(name: str, real_dir: Path) -> Path:
    path = real_dir / f"{name}.onnx"
    if not path.exists():
        onnx.save(REAL_ZOO[name](), str(path))
    return path


def _feed(name: str, model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inp = model.graph.input[0]
    dims = INPUT_SHAPES.get(name) or tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    return {inp.name: rng.normal(size=dims).astype(np.float32)}


def _coverage(path: Path, *args: str) -> dict:
    res = CliRunner().invoke(cli, ["inspect", str(path), "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


# --------------------------------------------------------------------------- normalization


def test_identity_weights_are_folded_and_train(real_dir: Path) -> None:
    path = _raw("resnet_nofold", real_dir)
    raw = onnx.load(str(path))
    assert sum(n.op_type == "Identity" for n in raw.graph.node) > 20
    assert not analyze(raw).prunable_groups
    raw_module = to_torch(raw).train()  # BN statistics behind Identity stay buffers
    raw_module(torch.randn(2, 3, 16, 16)).sum().backward()
    source = {n.output[0]: n.input[0] for n in raw.graph.node if n.op_type == "Identity"}
    stats = set()
    for node in (n for n in raw.graph.node if n.op_type == "BatchNormalization"):
        for name in node.input[3:]:
            while name in source:  # Identity chains lead back to an initializer
                name = source[name]
            stats.add(name)
    assert stats and stats <= set(raw_module.onnx_buffers())
    model = evonnx.load(path)
    assert not any(n.op_type == "Identity" for n in model.graph.node)
    assert model.ir_version == raw.ir_version and model.opset_import == raw.opset_import
    module = to_torch(model).train()
    module(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(p.grad is not None for p in module.onnx_parameters().values())
    assert analyze(model).coverage >= 0.9


def test_paddle_style_bias_and_constants(real_dir: Path) -> None:
    raw = onnx.load(str(_raw("mobilenetv3_paddle", real_dir)))
    n_conv = sum(n.op_type == "Conv" for n in raw.graph.node)
    assert not raw.graph.initializer
    assert len(to_torch(raw).onnx_parameters()) >= 2 * n_conv  # Constant-node weights train
    model, report = normalize(raw)
    assert report.biases_folded == n_conv and report.checked and report.max_rel_error < 1e-5
    assert not any(n.op_type in ("Constant", "Reshape") for n in model.graph.node)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION
    feed = _feed("mobilenetv3_paddle", raw)
    assert_same(run(raw, feed), run(model, feed))
    assert len(to_torch(model).onnx_parameters()) >= 2 * n_conv
    assert analyze(model).coverage >= 0.9
    assert normalize(model)[0] is model  # idempotent and free when nothing is left


def test_normalize_refuses_a_wrong_result(monkeypatch: pytest.MonkeyPatch) -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w")
    c = numpy_helper.from_array(np.array([1.0, 2.0], np.float32).reshape(1, 2, 1, 1), "c")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Add", ["a", "c"], ["y"])],
        "g",
        [x],
        [y],
        [w, c],
    )
    model = make_model(graph)
    out, report = normalize(model)
    assert report.biases_folded == 1 and [n.op_type for n in out.graph.node] == ["Conv"]
    import evonnx.model.normalize as norm

    def broken(graph: object) -> int:
        n = real(graph)
        for node in graph.nodes:  # type: ignore[attr-defined]
            if node.op == "Conv":
                node.inputs[2].values = node.inputs[2].values + 1.0
        return n

    real = norm._fold_bias_adds
    monkeypatch.setattr(norm, "_fold_bias_adds", broken)
    with pytest.raises(UnsupportedModelError, match="changed the model's outputs"):
        normalize(model)


# --------------------------------------------------------------------------- every real graph


@pytest.mark.parametrize("name", list(REAL_ZOO))
@settings(
    max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(keep=st.floats(0.1, 1.0), seed=st.integers(0, 2**16))
def test_real_random_keep(name: str, real_dir: Path, keep: float, seed: int) -> None:
    model = evonnx.load(_raw(name, real_dir))
    analysis = analyze(
        apply_input_shapes(model, {"x": INPUT_SHAPES[name]}) if name in INPUT_SHAPES else model
    )
    feed = _feed(name, model, seed)
    pruned = _prune_and_check(model, analysis, keep, seed, feed)
    assert pruned.ir_version == IR_VERSION
    if name in CONVERTED:
        _assert_converter_matches(pruned, feed)


def _prune_and_check(
    model: onnx.ModelProto,
    analysis: Analysis,
    keep: float,
    seed: int,
    feed: dict[str, np.ndarray],
) -> onnx.ModelProto:
    """A random plan's offspring: checker, and the dead-channel invariant on onnxruntime."""
    plan = random_plan(analysis, keep, np.random.default_rng(seed))
    return check_function_kept(model, analysis, plan, feed)


def _assert_converter_matches(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> None:
    expected = run(model, feed)
    module = to_torch(model).eval()
    with torch.no_grad():
        out = module(*(torch.from_numpy(v) for v in feed.values()))
    actual = [out] if isinstance(out, torch.Tensor) else list(out)
    for a, e in zip(actual, expected, strict=True):
        scale = max(1.0, float(np.max(np.abs(e))))
        assert float(np.max(np.abs(a.numpy() - e))) <= 1e-5 * scale


@pytest.mark.parametrize("name", CONVERTED)
def test_converter_fidelity(name: str, real_dir: Path) -> None:
    model = evonnx.load(_raw(name, real_dir))
    _assert_converter_matches(model, _feed(name, model))


@pytest.mark.parametrize("name", CNNS)
def test_cnn_coverage_from_inspect_json(name: str, real_dir: Path) -> None:
    """The coverage goal, at the real input shape, as ``inspect --json`` reports it."""
    shape = REAL_SHAPES[name]
    report = _coverage(_raw(name, real_dir), "--input-shape", f"x={'x'.join(map(str, shape))}")
    floor = COVERAGE_FLOOR.get(name, 0.9)
    assert report["coverage"] >= floor, [g["frozen"] for g in report["groups"] if g["frozen"]]
    assert report["metrics"]["macs_known"] and report["metrics"]["macs"] > 0


def test_no_normalize_is_reported(real_dir: Path) -> None:
    path = _raw("resnet_nofold", real_dir)
    assert _coverage(path, "--no-normalize")["coverage"] < 0.1
    report = _coverage(path)
    assert report["normalization"]["identities_removed"] > 20
    text = CliRunner().invoke(cli, ["inspect", str(path)]).output
    assert "prunable channels" in text and "Identity" in text


# --------------------------------------------------------------------------- Split / C2f


def test_c2f_split_is_pruned_end_to_end(real_dir: Path) -> None:
    model = evonnx.load(_raw("yolov8", real_dir))
    shaped = apply_input_shapes(model, {"x": INPUT_SHAPES["yolov8"]})
    analysis = analyze(shaped)
    splits = [n for n in model.graph.node if n.op_type == "Split"]
    assert splits
    split_members = [
        m
        for g in analysis.prunable_groups
        for m in g.by_role(Role.SHAPE)
        if m.node == splits[0].name
    ]
    assert {m.axis for m in split_members} == {0, 1}
    result = evonnx.prune(model, 0.5, input_shapes={"x": INPUT_SHAPES["yolov8"]})
    pruned = result.model
    sizes = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    for node in (n for n in pruned.graph.node if n.op_type == "Split"):
        assert sizes[node.input[1]].tolist()[0] < sizes[node.input[1]].tolist()[1] * 2
    assert result.after.macs < result.before.macs
    feed = _feed("yolov8", model)
    assert run(pruned, feed)[0].shape == run(model, feed)[0].shape
    assert pruned.graph.input[0].type.tensor_type.shape.dim[2].dim_param == "height"


def test_split_group_cut_at_boundary() -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2, 4, 4])
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(5, 3, 1, 1)).astype(np.float32), "w3"),
        numpy_helper.from_array(rng.normal(size=(2, 13, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([3, 6, 4], np.int64), "sizes"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Conv", ["x", "w3"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
        helper.make_node("Split", ["ab", "sizes"], ["s0", "s1", "s2"], axis=1),
        helper.make_node("Relu", ["s1"], ["r1"]),
        helper.make_node("Concat", ["s2", "r1", "s0"], ["m"], axis=1),
        helper.make_node("Conv", ["m", "w2"], ["y"]),
    ]
    model = make_model(helper.make_graph(nodes, "g", [x], [y], inits))
    a = analyze(model)
    assert sorted(g.size for g in a.prunable_groups) == [1, 3, 4, 5]
    for keep, seed in ((0.5, 0), (0.3, 1)):
        _prune_and_check(
            model, a, keep, seed, {"x": rng.normal(size=(1, 3, 4, 4)).astype(np.float32)}
        )


# --------------------------------------------------------------------------- transformer


def test_vit_mlp_and_attention_head_dims_prunable(real_dir: Path) -> None:
    """Separate q, k, v projections reshaped to [N, S, heads, head_dim]: q and k share one
    group of head dims (their dot product), v another read by proj; the LayerNorm stream stays
    whole. Pruning keeps the function (folds exact: v's constants pass the Softmax)."""
    from evonnx.pruning.surgery import apply_plan_report

    model = evonnx.load(_raw("vit_block", real_dir))
    a = analyze(model)
    sizes = [g.size for g in a.prunable_groups]
    assert 128 in sizes  # the MLP's hidden layer
    frozen = [g.frozen or "" for g in a.groups if not g.prunable]
    assert any("normalizes over the channel axis" in f for f in frozen)
    assert not any("attention" in f or "reshapes the channel axis" in f for f in frozen)
    heads = {}
    for lay in a.layers:
        for name in ("/q/", "/k/", "/v/"):
            if name in lay.node and lay.out_group is not None:
                heads[name] = a.group(lay.out_group)
    assert heads["/q/"].id == heads["/k/"].id != heads["/v/"].id
    assert all(g.prunable and g.size == 16 and g.filters == 32 for g in heads.values())
    assert any("proj" in m.node for m in heads["/v/"].by_role(Role.CONSUMER))
    feed = {"x": np.random.default_rng(0).normal(size=(1, 3, 16, 16)).astype(np.float32)}
    plan = random_plan(a, 0.5, np.random.default_rng(2))
    assert apply_plan_report(model, a, plan, exact_border=True)[1].exact
    for keep, seed in ((0.5, 0), (0.25, 1)):
        _prune_and_check(model, a, keep, seed, feed)


# --------------------------------------------------------------------------- input shapes


def test_parse_input_shapes() -> None:
    assert parse_input_shapes(["images=1x3x640x640", "a=b=2x3"]) == {
        "images": (1, 3, 640, 640),
        "a=b": (2, 3),
    }
    for bad in (["x"], ["x=1x0"], ["=1x2"], ["x=1xa"], ["x=1", "x=2"]):
        with pytest.raises(ConfigError):
            parse_input_shapes(bad)


def test_symbolic_shapes_make_macs_unknown(real_dir: Path, tmp_path: Path) -> None:
    path = _raw("dbnet", real_dir)
    report = _coverage(path)
    assert not report["metrics"]["macs_known"] and report["metrics"]["unknown_macs"]
    text = CliRunner().invoke(cli, ["inspect", str(path)]).output
    assert "MACs unknown" in text and "--input-shape" in text
    out = tmp_path / "p.onnx"
    res = CliRunner().invoke(cli, ["prune", str(path), "-o", str(out), "--env", "macs"])
    assert res.exit_code == 1 and "--input-shape" in res.output and not out.exists()
    res = CliRunner().invoke(
        cli, ["prune", str(path), "-o", str(out), "--method", "branches", "--keep", "0.5"]
    )
    assert res.exit_code == 1 and "--input-shape" in res.output
    args = ["prune", str(path), "-o", str(out), "--env", "macs", "--keep", "0.5", "--json"]
    res = CliRunner().invoke(cli, [*args, "--input-shape", "x=1x3x64x64"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert summary["mac_ratio"] >= 1.8
    for bad in ("y=1x3x64x64", "x=1x3x64", "x=2x4x64x64"):
        res = CliRunner().invoke(cli, ["inspect", str(path), "--input-shape", bad])
        assert res.exit_code == 1 and res.output.startswith("error:")


def test_analysis_ops_are_converted_or_inference_only() -> None:
    from evonnx.converters.ops import INFERENCE_ONLY, OPS
    from evonnx.pruning.analysis import RULES

    pending = set(NEEDS_OP.values()) - set(OPS)  # the converter gains these separately
    missing = set(RULES) - set(OPS) - pending
    assert missing <= set(INFERENCE_ONLY), sorted(missing - set(INFERENCE_ONLY))
    assert not set(INFERENCE_ONLY) & set(OPS)  # stale entries
    assert all(reason for reason in INFERENCE_ONLY.values())


# --------------------------------------------------------------------------- evolve smoke


class _Regression(Task):
    """Regress the ancestor's own outputs on random images (any output shape)."""

    name = "regress"

    def __init__(self, model: onnx.ModelProto, shape: tuple[int, ...]) -> None:
        rng = np.random.default_rng(0)
        self.x = rng.normal(size=(8, *shape[1:])).astype(np.float32)
        one, two = (self._predict(model, n).shape for n in (1, 2))
        # the output's batch axis: the one that grows with the batch (a CRNN's is axis 1)
        self.axis = next(a for a, (p, q) in enumerate(zip(one, two, strict=True)) if p != q)
        self.y = self._predict(model)

    def _predict(self, model: onnx.ModelProto | Path, n: int = 8) -> np.ndarray:
        # onnxruntime directly: predict_onnx concatenates along axis 0 (batch-first outputs)
        import onnxruntime as ort

        data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {session.get_inputs()[0].name: self.x[:n]})[0])

    def train_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        y = torch.from_numpy(self.y)
        return [
            (torch.from_numpy(self.x[i : i + 4]), y.narrow(self.axis, i, 4).contiguous())
            for i in (0, 4)
        ]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(outputs, targets)

    def score(self, onnx_path: Path, split: str) -> float:
        return -float(np.mean((self._predict(onnx_path) - self.y) ** 2))


def _classes(model: onnx.ModelProto, shape: tuple[int, ...]) -> Dataset:
    rng = np.random.default_rng(0)
    n = 40
    x = rng.normal(size=(n, *shape[1:])).astype(np.float32)
    y = np.arange(n) % 5
    return Dataset(x[:32], y[:32], x[32:], y[32:], name="random")


@pytest.mark.parametrize("name", CONVERTED)
def test_evolve_one_generation(name: str, real_dir: Path, tmp_path: Path) -> None:
    path = _raw(name, real_dir)
    model = evonnx.load(path)
    shape = INPUT_SHAPES.get(name) or tuple(
        d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim
    )
    config = EvolveConfig(
        generations=2, epochs=1, batch_size=4, threads=1, keep=0.7, select_on="test", max_drop=1.0
    )
    data = _Regression(model, shape) if name in INPUT_SHAPES else _classes(model, shape)
    lineage = evonnx.evolve(path, data, tmp_path / "run", config)
    assert [r.generation for r in lineage.records] == [1, 2]
    child = onnx.load(str(tmp_path / "run" / lineage.records[1].file))
    onnx.checker.check_model(child, full_check=True)
    assert lineage.records[1].nonzero_synapses < lineage.records[0].nonzero_synapses
    gen1 = onnx.load(str(tmp_path / "run" / lineage.records[0].file))
    frozen = analyze(gen1).frozen_initializers()  # retraining leaves them byte-identical
    values = [
        {t.name: numpy_helper.to_array(t) for t in m.graph.initializer if t.name in frozen}
        for m in (gen1, child)
    ]
    assert values[0].keys() == values[1].keys() == frozen
    for name, v in values[0].items():
        w = values[1][name]
        assert v.dtype == w.dtype and v.shape == w.shape and v.tobytes() == w.tobytes(), name
    if name in INPUT_SHAPES:  # symbolic H/W took the data's sample shape: MACs are known
        assert lineage.records[0].macs > 0 and lineage.records[1].mac_ratio > 1.0


# --------------------------------------------------------------------------- bench / export


def test_bench_and_export_take_input_shapes(real_dir: Path, tmp_path: Path) -> None:
    path = _raw("dbnet", real_dir)
    pruned = tmp_path / "pruned.onnx"
    res = CliRunner().invoke(
        cli, ["prune", str(path), "-o", str(pruned), "--method", "magnitude", "--keep", "0.5"]
    )
    assert res.exit_code == 0, res.output
    bench = ["bench", str(path), str(pruned), "--runs", "2", "--warmup", "0", "--json"]
    res = CliRunner().invoke(cli, bench)
    assert res.exit_code == 1 and "symbolic" in res.output
    res = CliRunner().invoke(cli, [*bench, "--input-shape", "x=1x3x64x64"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "export.onnx"
    res = CliRunner().invoke(
        cli, ["export", str(path), "-o", str(out), "--input-shape", "x=1x3x64x64", "--json"]
    )
    assert res.exit_code == 0, res.output
    exported = onnx.load(str(out))
    dims = [d.dim_value for d in exported.graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 64, 64] and exported.ir_version == IR_VERSION  # batch symbolic


# --------------------------------------------------------------------------- writers, splits


@pytest.mark.parametrize("name", ["mobilenetv3_paddle", "resnet_nofold"])
def test_every_writer_keeps_the_ir_version(name: str, real_dir: Path, tmp_path: Path) -> None:
    from evonnx.deploy.export import export
    from evonnx.model.batch import rebatch

    model = evonnx.load(_raw(name, real_dir))
    pruned = evonnx.prune(model, 0.5).model
    outputs = {
        "normalize": model,
        "surgery": pruned,
        "export": export(pruned).model,
        "fp16": export(pruned, fp16=True).model,
        "rebatch": rebatch(pruned, 4),
    }
    for what, out in outputs.items():
        assert out.ir_version == IR_VERSION, what
        path = evonnx.save(out, tmp_path / f"{what}.onnx")
        assert onnx.load(str(path)).ir_version == IR_VERSION, what
    external = evonnx.save(pruned, tmp_path / "ext.onnx", external_data=True)
    assert (tmp_path / "ext.onnx.data").stat().st_size > 0
    again = evonnx.load(external)
    assert again.ir_version == IR_VERSION
    feed = _feed(name, model)
    assert_same(run(pruned, feed), run(again, feed))


def test_split_sizes_made_explicit_and_shared_shapes_unshared() -> None:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 3, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(size=(3, 8, 1, 1)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([1, 4, 16], np.int64), "shape"),
        numpy_helper.from_array(np.array([1, 4, 4, 4], np.int64), "back"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Split", ["a"], ["s0", "s1"], axis=1, num_outputs=2),
        helper.make_node("Reshape", ["s0", "shape"], ["r0"]),
        helper.make_node("Reshape", ["s1", "shape"], ["r1"]),
        helper.make_node("Sigmoid", ["r1"], ["g1"]),
        helper.make_node("Reshape", ["r0", "back"], ["q0"]),
        helper.make_node("Reshape", ["g1", "back"], ["q1"]),
        helper.make_node("Concat", ["q1", "q0"], ["m"], axis=1),
        helper.make_node("Conv", ["m", "w2"], ["y"]),
    ]
    model = make_model(helper.make_graph(nodes, "g", [x], [y], inits), opset=18)
    before = analyze(model)
    assert not any(g.prunable for g in before.groups if g.size == 8)
    out, report = normalize(model)
    assert report.splits_sized == 1 and report.constants_unshared == 2 and report.checked
    assert out.opset_import == model.opset_import and out.ir_version == model.ir_version
    a = analyze(out)
    assert sorted(g.size for g in a.prunable_groups) == [4, 4]
    _prune_and_check(out, a, 0.5, 0, {"x": rng.normal(size=(1, 3, 4, 4)).astype(np.float32)})


def test_every_test_graph_is_portable(zoo_case: tuple[str, onnx.ModelProto]) -> None:
    """IR <= 9 and opset <= 20: what onnxruntime 1.18 accepts."""
    _, model = zoo_case
    assert model.ir_version <= 9
    assert all(o.version <= 20 for o in model.opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.parametrize("name", list(REAL_ZOO))
def test_real_graph_is_portable(name: str, real_dir: Path) -> None:
    model = onnx.load(str(_raw(name, real_dir)))
    assert model.ir_version <= 9 and all(o.version <= 20 for o in model.opset_import)


def test_evolve_cli_checks_input_shapes(real_dir: Path, tmp_path: Path) -> None:
    path = _raw("resnet_nofold", real_dir)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 3, 16, 16)).astype(np.float32), np.arange(120) % 10
    np.savez(tmp_path / "d.npz", x_train=x[:100], y_train=y[:100], x_test=x[100:], y_test=y[100:])
    data = str(tmp_path / "d.npz")
    args = ["evolve", str(path), "--data", data, "--out", str(tmp_path / "run")]
    res = CliRunner().invoke(cli, [*args, "--input-shape", "images=1x3x16x16"])
    assert res.exit_code == 1 and res.output.startswith("error:") and "not inputs" in res.output
    res = CliRunner().invoke(cli, [*args, "--no-normalize"])
    assert res.exit_code == 1 and "nothing in this model can be pruned" in res.output.lower()
