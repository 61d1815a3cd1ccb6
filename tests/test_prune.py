"""`evonnx prune`: physical shrinking by default, --synapses, --round-to, latency options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from fake_runtime import MacRuntime
from onnx import numpy_helper
from zoo import build_case

from evonnx.cli.main import cli
from evonnx.pruning.metrics import compute_metrics
from evonnx.runtimes import RuntimeSettings


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prune") / "resnet.onnx"
    onnx.save(build_case("resnet@legacy"), str(path))
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVONNX_CACHE_DIR", str(tmp_path / "cache"))


def prune(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, ["prune", *args])
    return res.exit_code, res.output


def test_prune_shrinks_physically_by_default(resnet_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "small.onnx"
    code, text = prune(str(resnet_file), "--keep", "0.5", "-o", str(out), "--json")
    assert code == 0, text
    data = json.loads(text)
    assert data["zeroed"]["synapses"] == 0 and data["removed"]["params"] > 0
    assert out.stat().st_size < 0.75 * resnet_file.stat().st_size
    m = compute_metrics(onnx.load(str(out)))
    assert m.synapses == m.nonzero_synapses  # no zeros inside kept filters
    assert m.nonzero_synapses <= 0.5 * compute_metrics(onnx.load(str(resnet_file))).synapses


def test_prune_synapses_flag_zeroes_inside_filters(resnet_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "zeroed.onnx"
    code, text = prune(str(resnet_file), "--keep", "0.5", "--synapses", "-o", str(out), "--json")
    assert code == 0, text
    data = json.loads(text)
    m = compute_metrics(onnx.load(str(out)))
    assert data["zeroed"]["synapses"] == m.synapses - m.nonzero_synapses > 0
    code, text = prune(str(resnet_file), "--keep", "0.5", "--synapses", "-o", str(out))
    assert code == 0 and "zeroed" in text and "removed" in text


def test_prune_round_to_applies_to_magnitude(resnet_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "rounded.onnx"
    code, text = prune(
        str(resnet_file), "--method", "magnitude", "--keep", "0.3", "--round-to", "4",
        "-o", str(out),
    )  # fmt: skip
    assert code == 0, text
    pruned = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    src = onnx.load(str(resnet_file))
    original = {t.name: numpy_helper.to_array(t) for t in src.graph.initializer}
    shrunk = [n for n, w in pruned.items() if w.ndim == 4 and w.shape[0] < original[n].shape[0]]
    assert shrunk and all(pruned[n].shape[0] % 4 == 0 for n in shrunk)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--speedup", "2"], "--speedup needs --env latency"),
        (["--env", "latency"], "--env latency needs --speedup"),
        (["--method", "magnitude", "--synapses"], "--synapses: only with --method genetic"),
        (["--method", "branches", "--round-to", "8"], "round_to"),
        (["--batch", "4"], "need --runtime"),
        (["--latency-statistic", "median"], "need --runtime"),
        (["--runtime", "ort-cpu", "--fp16"], "fp16"),
        (["--depth", "--cluster", "kernel"], "depth"),
    ],
)
def test_prune_refuses_options_without_effect(
    resnet_file: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "x.onnx"
    code, text = prune(str(resnet_file), "-o", str(out), *args)
    assert code != 0 and message in text
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_prune_unavailable_runtime_is_one_line_error(resnet_file: Path, tmp_path: Path) -> None:
    code, text = prune(
        str(resnet_file), "-o", str(tmp_path / "x.onnx"), "--env", "latency", "--speedup", "2",
        "--runtime", "torch-cuda",
    )  # fmt: skip
    assert code == 1 and text.count("\n") == 1 and "CUDA" in text


def test_prune_measures_when_a_runtime_is_given(resnet_file: Path, tmp_path: Path) -> None:
    code, text = prune(
        str(resnet_file), "--keep", "0.5", "-o", str(tmp_path / "m.onnx"), "--json",
        "--runtime", "ort-cpu", "--runtime-threads", "1", "--batch", "2",
    )  # fmt: skip
    assert code == 0, text
    lat = json.loads(text)["latency"]
    assert lat["runtime"] == "ort-cpu" and lat["batch"] == 2
    assert all(v > 0 for v in lat["ms"]) and lat["speedup"] == lat["ms"][0] / lat["ms"][1]


def test_prune_latency_env_reaches_the_speedup(
    resnet_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import evonnx.latency.budget

    monkeypatch.setattr(
        evonnx.latency.budget, "make_runtime", lambda s: MacRuntime(RuntimeSettings("ort-cpu"))
    )
    out = tmp_path / "fast.onnx"
    code, text = prune(
        str(resnet_file), "--env", "latency", "--speedup", "2", "--depth", "-o", str(out),
        "--json", "--runtime", "ort-cpu",
    )  # fmt: skip
    assert code == 0, text
    lat = json.loads(text)["latency"]
    assert lat["speedup"] >= 2.0 and lat["predicted_ms"] > 0
    assert lat["prediction_error"] == pytest.approx(
        abs(lat["predicted_ms"] - lat["ms"][1]) / lat["ms"][1]
    )
    measured = MacRuntime(RuntimeSettings()).latencies([onnx.load(str(out))], 1)[0]
    assert measured == pytest.approx(lat["ms"][1])
    assert np.isfinite(lat["ms"][0])
