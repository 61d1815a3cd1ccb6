"""Every user error is one line on stderr and exit code 1: options, paths, models, data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from helpers import make_model
from onnx import TensorProto, helper, numpy_helper
from zoo import helper_convnet

from evonnx.cli.main import cli
from evonnx.deploy import DeployError, benchmark
from evonnx.model.files import save_model


def _invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def _one_line_error(res: Result, *needles: str) -> None:
    assert res.exit_code == 1, res.output
    assert isinstance(res.exception, SystemExit), res.exception
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _gemm(features: int = 4) -> onnx.ModelProto:
    """One Gemm: nothing to prune (its output channels reach the graph output)."""
    w = numpy_helper.from_array(np.ones((3, features), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1)],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [w],
    )
    return make_model(graph, opset=17)


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    model, data = tmp_path / "model.onnx", tmp_path / "d.npz"
    save_model(helper_convnet(), model)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 2, 8, 8)).astype(np.float32)
    np.savez(data, x_train=x, y_train=np.arange(64) % 4, x_test=x[:8], y_test=np.arange(8) % 4)
    return {"model": model, "data": data}


def _evolve(files: dict[str, Path], *extra: str) -> Result:
    args = ["evolve", str(files["model"]), "--data", str(files["data"]), "--generations", "2",
            "--epochs", "1", "--batch-size", "8", "--threads", "1", *extra]  # fmt: skip
    return _invoke(*args)


# --------------------------------------------------------------------------- options


def test_option_errors_exit_1_with_one_line(files: dict[str, Path], tmp_path: Path) -> None:
    _one_line_error(
        _invoke("prune", str(files["model"]), "--keep", "2", "-o", str(tmp_path / "o.onnx")),
        "--keep",
        "prune --help",
    )
    _one_line_error(_invoke("evolve", str(files["model"])), "Missing option", "--out")
    _one_line_error(_invoke("--bogus", "inspect"), "--bogus")
    _one_line_error(_invoke("nosuch"), "nosuch")
    assert _invoke().exit_code == 0 and "Usage: " in _invoke().output
    assert _invoke("prune", "--help").exit_code == 0


def test_options_without_effect_are_refused(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    model = str(files["model"])
    res = _invoke("prune", model, "--method", "magnitude", "--seed", "3", "-o", str(out))
    _one_line_error(res, "--seed: only with --method genetic")
    res = _invoke("prune", model, "--method", "magnitude", "--cluster-keep", "0.5", "-o", str(out))
    _one_line_error(res, "--cluster-keep")
    res = _invoke("prune", model, "--method", "branches", "--min-channels", "2", "-o", str(out))
    _one_line_error(res, "--min-channels: not with --method branches")
    assert not out.exists()
    task = tmp_path / "task.py"
    task.write_text("")
    res = _invoke("evolve", model, "--task", f"{task}:T", "--val-fraction", "0.2",
                  "--out", str(tmp_path / "run"))  # fmt: skip
    _one_line_error(res, "--val-fraction: a --task brings its own validation split")
    res = _evolve(files, "--select-on", "test", "--val-fraction", "0.2", "--out", str(out))
    _one_line_error(res, "--val-fraction: --select-on test holds out no validation split")
    res = _invoke("demo", "--select-on", "test", "--val-fraction", "0.2", "--out", str(out))
    _one_line_error(res, "--val-fraction")
    assert not out.exists()


# --------------------------------------------------------------------------- models and data


def test_unusable_model_files_are_named(tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    _one_line_error(_invoke("inspect", str(empty)), "is empty (0 bytes)")
    _one_line_error(_invoke("inspect", str(tmp_path)), "is a folder; give the path of an .onnx")
    noise = tmp_path / "noise.onnx"
    noise.write_bytes(np.random.default_rng(0).bytes(400))
    _one_line_error(_invoke("inspect", str(noise)), "not a valid ONNX model")
    _one_line_error(_invoke("inspect", str(tmp_path / "missing.onnx")), "model file not found")


def test_unusable_data_is_named(files: dict[str, Path], tmp_path: Path) -> None:
    noise = tmp_path / "noise.npz"
    noise.write_bytes(np.random.default_rng(0).bytes(3000))
    res = _invoke("evolve", str(files["model"]), "--data", str(noise), "--out", str(tmp_path / "r"))
    _one_line_error(res, "not a readable .npz archive (no zip structure")
    res = _evolve(files, "--val-fraction", "0.01", "--out", str(tmp_path / "r"))
    _one_line_error(res, "leaves 64 to train on and 0 to validate on")
    res = _evolve(files, "--val-fraction", "0.97", "--out", str(tmp_path / "r"))
    _one_line_error(res, "0 to train on")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- output paths


def test_bad_run_folders(files: dict[str, Path], tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    _one_line_error(_evolve(files, "--out", str(a_file)), "is a file, not a folder")
    _one_line_error(_evolve(files, "--out", str(a_file / "run")), "cannot create run folder")
    for pseudo in ("/proc", "/sys"):
        if Path(pseudo).is_dir():
            _one_line_error(_evolve(files, "--out", f"{pseudo}/evonnx-run"), pseudo)
    _one_line_error(_evolve(files, "--out", str(tmp_path / "no"), "--resume"), "nothing to resume")
    _one_line_error(_invoke("demo", "--out", str(a_file)), "is a file, not a folder")
    assert a_file.read_text() == "x"
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "ancestor.onnx").write_bytes(b"x")
    res = _invoke("demo", "--out", str(demo), "--resume", "--arch", "lenet5-caffe")
    _one_line_error(res, "--arch: --resume continues with the ancestor already in")
    _one_line_error(_invoke("demo", "--out", str(demo), "--arch", "vgg"), "--arch", "lenet5-caffe")
    assert (demo / "ancestor.onnx").read_bytes() == b"x"


@pytest.mark.parametrize("text", ["[]", '{"version": 1, "generations": []}', "{"])
def test_malformed_lineage_on_resume(files: dict[str, Path], tmp_path: Path, text: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "lineage.json").write_text(text)
    _one_line_error(_evolve(files, "--out", str(out), "--resume"), "not a readable evonnx lineage")


def test_bad_output_files(files: dict[str, Path], tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for command in (["prune"], ["export", "--target", "onnxruntime"]):
        res = _invoke(*command, str(files["model"]), "-o", str(tmp_path))
        _one_line_error(res, "is a folder; give a file name")
        res = _invoke(*command, str(files["model"]), "-o", str(a_file / "o.onnx"))
        _one_line_error(res, "which is a file, not a folder")
    assert a_file.read_text() == "x"


# --------------------------------------------------------------------------- prune and bench


def test_prune_refuses_when_nothing_is_pruned(tmp_path: Path) -> None:
    gemm, convnet, out = tmp_path / "gemm.onnx", tmp_path / "cn.onnx", tmp_path / "o.onnx"
    save_model(_gemm(), gemm)
    save_model(helper_convnet(), convnet)
    for method in ("genetic", "magnitude", "branches"):
        _one_line_error(_invoke("prune", str(gemm), "--method", method, "-o", str(out)),
                        "nothing was pruned")  # fmt: skip
    _one_line_error(_invoke("prune", str(convnet), "--method", "branches", "-o", str(out)),
                    "no residual branch")  # fmt: skip
    res = _invoke("prune", str(convnet), "--keep", "0.0001", "--synapses", "-o", str(out))
    _one_line_error(res, "zeroes every weight of conv1")
    assert not out.exists()
    assert _invoke("prune", str(convnet), "--keep", "0.5", "-o", str(out)).exit_code == 0
    assert out.exists()


def test_bench_refuses_models_with_different_inputs(tmp_path: Path) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    save_model(_gemm(4), a)
    save_model(_gemm(5), b)
    _one_line_error(_invoke("bench", str(a), str(b)), "b.onnx takes inputs float[N×5]", "N×4")
    with pytest.raises(DeployError, match="takes inputs"):
        benchmark([_gemm(4), helper_convnet()], runs=1, warmup=0, isolate=False)


NO_MAIN_GUARD = """
import sys
from evonnx.deploy import benchmark
from evonnx.model.files import load_model
models = [load_model(p) for p in sys.argv[1:]]
result = benchmark(models, runs=2, warmup=0)  # isolated worker process, no main guard here
print("thread pool", result.thread_pool, "models", len(result.models))
"""


def test_benchmark_from_a_script_without_main_guard(tmp_path: Path) -> None:
    model = tmp_path / "cn.onnx"
    save_model(helper_convnet(), model)
    script = tmp_path / "pipeline.py"
    script.write_text(NO_MAIN_GUARD)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, str(script), str(model), str(model)], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["thread pool global models 2"]
