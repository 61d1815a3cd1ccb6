"""Loading errors, metrics, the Python API and the inspect/prune CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from helpers import run
from onnx import numpy_helper
from zoo import build_case, helper_convnet, input_feed

import evonnx
from evonnx.cli.main import cli
from evonnx.errors import ModelLoadError, UnsupportedModelError
from evonnx.model.files import load_model, save_model
from evonnx.pruning.metrics import compute_metrics


@pytest.fixture()
def convnet_file(tmp_path: Path) -> Path:
    path = tmp_path / "convnet.onnx"
    onnx.save(helper_convnet(), str(path))
    return path


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope.onnx")


def test_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf\xff\xff")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_model(bad)


def test_missing_external_data(tmp_path: Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(
        helper_convnet(),
        str(path),
        save_as_external_data=True,
        location="ext.data",
        size_threshold=0,
    )
    assert load_model(path).graph.initializer[0].raw_data
    (tmp_path / "ext.data").unlink()
    with pytest.raises(ModelLoadError, match="external data"):
        load_model(path)


def test_unsupported_opset(tmp_path: Path) -> None:
    model = helper_convnet()
    model.opset_import[0].version = 7
    path = tmp_path / "old.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UnsupportedModelError, match="opset 7"):
        load_model(path)


def test_checker_failure(tmp_path: Path) -> None:
    model = helper_convnet()
    model.graph.node[0].input[1] = "does_not_exist"
    path = tmp_path / "broken.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="checker"):
        load_model(path)


def test_save_is_atomic(tmp_path: Path) -> None:
    path = save_model(helper_convnet(), tmp_path / "sub" / "m.onnx")
    assert path.is_file() and not list(path.parent.glob(".*tmp"))


def test_lenet_metrics() -> None:
    m = compute_metrics(build_case("lenet5@legacy"))
    synapses = 6 * 25 + 16 * 6 * 25 + 120 * 400 + 84 * 120 + 10 * 84
    assert m.synapses == synapses == m.nonzero_synapses
    assert m.params == synapses + 6 + 16 + 120 + 84 + 10
    assert m.clusters == m.live_clusters == 6 + 16 + 120 + 84 + 10
    conv1 = m.layers[0]
    assert conv1.macs == 6 * 28 * 28 * 25
    assert m.macs == 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 48000 + 10080 + 840


def test_metrics_count_zeros() -> None:
    model = helper_convnet()
    for t in model.graph.initializer:
        if t.name == "w2":
            w = numpy_helper.to_array(t).copy()
            w[0] = 0
            w[1, 0] = 0
            t.CopyFrom(numpy_helper.from_array(w, "w2"))
    m = compute_metrics(model)
    w2 = next(lay for lay in m.layers if lay.weight == "w2")
    assert w2.live_clusters == 4 and w2.nonzero_synapses == w2.synapses - 54 - 9
    assert w2.kernels == 30 and w2.live_kernels == 30 - 6 - 1


def test_api_prune_reduces_and_runs() -> None:
    model = build_case("resnet@legacy")
    result = evonnx.prune(model, keep=0.5)
    assert result.after.macs < result.before.macs / 2
    assert result.after.params < result.before.params
    out = run(result.model, input_feed(model))
    assert out[0].shape == (1, 10)


def test_cli_inspect_table(convnet_file: Path) -> None:
    res = CliRunner().invoke(cli, ["inspect", str(convnet_file)])
    assert res.exit_code == 0, res.output
    assert "conv1" in res.output and "frozen: channels reach the graph output y" in res.output
    assert "prunable groups 2/4" in res.output


def test_cli_inspect_kernel_clusters(convnet_file: Path) -> None:
    res = CliRunner().invoke(cli, ["inspect", str(convnet_file), "--cluster", "kernel"])
    assert res.exit_code == 0, res.output
    assert "live/kernels" in res.output
    assert "12/12" in res.output and "30/30" in res.output  # conv1: 6x2, conv2: 5x6 kernels


def test_cli_inspect_json(convnet_file: Path) -> None:
    res = CliRunner().invoke(cli, ["inspect", str(convnet_file), "--json"])
    data = json.loads(res.output)
    assert [g["prunable"] for g in data["groups"]].count(True) == 2
    assert data["metrics"]["synapses"] == 6 * 2 * 9 + 5 * 6 * 9 + 4 * 80


def test_cli_prune(convnet_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "p.onnx"
    res = CliRunner().invoke(
        cli,
        [
            "prune",
            str(convnet_file),
            "--method",
            "magnitude",
            "--keep",
            "0.5",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["macs"][1] < data["macs"][0]
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    w1 = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}["w1"]
    assert w1.shape[0] == 3
    feed = {"x": np.ones((1, 2, 8, 8), np.float32)}
    assert run(pruned, feed)[0].shape == (1, 4)


def test_cli_errors_are_clean(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["inspect", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 1
    assert "error: model file not found" in res.output and "Traceback" not in res.output
    res = runner.invoke(cli, ["--verbose", "inspect", str(tmp_path / "missing.onnx")])
    assert res.exit_code == 1 and isinstance(res.exception, ModelLoadError)


def test_cli_prune_bad_keep(convnet_file: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(
        cli, ["prune", str(convnet_file), "--keep", "1.5", "-o", str(tmp_path / "x.onnx")]
    )
    assert res.exit_code == 1 and "keep" in res.output
    assert not (tmp_path / "x.onnx").exists()


def test_cli_prune_genetic_respects_budget_and_seed(convnet_file: Path, tmp_path: Path) -> None:
    outs = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = tmp_path / f"{name}.onnx"
        res = CliRunner().invoke(
            cli,
            [
                "prune",
                str(convnet_file),
                "--keep",
                "0.5",
                "--seed",
                seed,
                "-o",
                str(out),
                "--json",
            ],
        )
        assert res.exit_code == 0, res.output
        data = json.loads(res.output)
        assert data["method"] == "genetic"
        assert data["synapses"][1] <= 0.5 * data["synapses"][0]
        onnx.checker.check_model(onnx.load(str(out)), full_check=True)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] and outs[0] != outs[2]


def test_cli_prune_branches(tmp_path: Path) -> None:
    src = tmp_path / "resnet.onnx"
    onnx.save(build_case("resnet@legacy"), str(src))
    out = tmp_path / "deep.onnx"
    res = CliRunner().invoke(
        cli, ["prune", str(src), "--method", "branches", "--keep", "0.7", "-o", str(out), "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["macs"][1] <= 0.7 * data["macs"][0] and data["groups_pruned"] >= 1
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned, full_check=True)
    assert len(pruned.graph.node) < len(build_case("resnet@legacy").graph.node)
