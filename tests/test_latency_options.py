"""What the latency CLI says: removable branches, --depth, the budget used, bad targets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from fake_runtime import MacRuntime
from onnx import TensorProto, helper, numpy_helper
from zoo import build_case, helper_convnet

from evonnx.cli.main import cli
from evonnx.runtimes import RuntimeSettings


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("latency-cli")
    out = {"resnet": root / "resnet.onnx", "plain": root / "plain.onnx"}
    onnx.save(build_case("resnet@legacy"), str(out["resnet"]))
    onnx.save(helper_convnet(), str(out["plain"]))
    return out


@pytest.fixture(autouse=True)
def _fake_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import evonnx.latency.budget

    monkeypatch.setenv("EVONNX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(
        evonnx.latency.budget, "make_runtime", lambda s: MacRuntime(RuntimeSettings("ort-cpu"))
    )


def invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(cli, list(args))
    return res.exit_code, res.output


def test_inspect_lists_removable_branches(files: dict[str, Path]) -> None:
    code, text = invoke("inspect", str(files["resnet"]), "--json")
    assert code == 0, text
    data = json.loads(text)
    removable = [g["id"] for g in data["groups"] if g["removable"]]
    assert removable and data["removable_branches"] == removable
    code, text = invoke("inspect", str(files["resnet"]))
    assert f"removable branches {len(removable)} (groups " in text
    assert text.count("removable branch\n") + text.count("removable branch ") >= len(removable)
    code, text = invoke("inspect", str(files["plain"]))
    assert code == 0 and "removable branches 0: no branch" in text
    assert (
        json.loads(invoke("inspect", str(files["plain"]), "--json")[1])["removable_branches"] == []
    )


def test_depth_without_a_removable_branch_is_refused(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "x.onnx"
    code, text = invoke("prune", str(files["plain"]), "--depth", "-o", str(out))
    assert code == 1 and "--depth has no effect" in text and text.count("\n") == 1
    assert not out.exists()
    code, text = invoke(  # the latency default turns depth on only where there is any
        "prune", str(files["plain"]), "--env", "latency", "--speedup", "1.5", "-o", str(out),
    )  # fmt: skip
    assert code == 0, text


def test_latency_summary_reports_the_budget_and_uses_depth(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "fast.onnx"
    code, text = invoke(
        "prune", str(files["resnet"]), "--env", "latency", "--speedup", "2", "-o", str(out),
        "--json",
    )  # fmt: skip
    assert code == 0, text
    data = json.loads(text)
    lat = data["latency"]
    assert data["keep"] == 0.5 and lat["target_speedup"] == 2.0
    assert lat["budget_ms"] == pytest.approx(0.5 * lat["ms"][0])
    assert lat["ms"][1] <= lat["budget_ms"]
    # --no-depth: no branch may go, so fewer groups can be emptied entirely.
    code, text = invoke(
        "prune", str(files["resnet"]), "--env", "latency", "--speedup", "2", "-o", str(out),
        "--json", "--no-depth",
    )  # fmt: skip
    assert code == 0, text


def test_impossible_target_is_refused_up_front(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "x.onnx"
    code, text = invoke(
        "prune", str(files["plain"]), "--env", "latency", "--speedup", "1000", "-o", str(out),
    )  # fmt: skip
    assert code == 1 and "out of reach" in text and text.count("\n") == 1
    reach = float(text.split("measures ")[1].split("x")[0])
    assert 1.0 < reach < 1000
    assert not out.exists()


def test_reach_honours_the_per_layer_floor(files: dict[str, Path], tmp_path: Path) -> None:
    """The smallest offspring keeps every group at its floor: a higher --min-fraction
    reaches less, and the refusal names the floor."""
    reach = {}
    for fraction in ("0", "0.5"):
        code, text = invoke(
            "prune", str(files["plain"]), "--env", "latency", "--speedup", "1000", "-o",
            str(tmp_path / "x.onnx"), "--min-fraction", fraction,
        )  # fmt: skip
        assert code == 1 and f"--min-fraction {fraction}" in text, text
        reach[fraction] = float(text.split("measures ")[1].split("x")[0])
    assert 1.0 < reach["0.5"] < reach["0"]


def _reshaping_model() -> onnx.ModelProto:
    """Convs on a symbolic height and width, flattened into a fixed-size MatMul (runs only
    at 8x8)."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.array([0, -1], dtype=np.int64), "shape"),
        numpy_helper.from_array(rng.standard_normal((512, 10)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["b"], "relu"),
        helper.make_node("Conv", ["b", "w2"], ["c"], "conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Reshape", ["c", "shape"], ["d"], "flatten"),
        helper.make_node("MatMul", ["d", "fc"], ["y"], "fc"),
    ]
    graph = helper.make_graph(nodes, "reshaping", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_model_that_cannot_run_at_the_shape_is_one_line(tmp_path: Path) -> None:
    path, out = tmp_path / "r.onnx", tmp_path / "x.onnx"
    onnx.save(_reshaping_model(), str(path))
    base = ["prune", str(path), "--env", "latency", "--speedup", "1.5", "-o", str(out)]
    code, text = invoke(*base)
    assert code == 1 and text.count("\n") == 1
    assert "input x has symbolic dimensions (1x3x?x?)" in text and "--input-shape x=" in text
    code, text = invoke(*base, "--input-shape", "x=1x3x9x9")
    assert code == 1 and text.count("\n") == 1
    assert "cannot run the model with input x=1x3x9x9" in text
    assert not out.exists()


def test_evolve_latency_env_turns_depth_on_by_default() -> None:
    from evonnx.evolution.lineage import EvolveConfig

    assert EvolveConfig(env="latency").encoding_config().depth
    assert not EvolveConfig(env="latency", depth=False).encoding_config().depth
    assert not EvolveConfig(env="macs").encoding_config().depth
    assert not EvolveConfig(env="latency", cluster="kernel").encoding_config().depth
