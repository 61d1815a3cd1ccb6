"""A model just over 2 GB: load, prune and save with external data, peak memory bounded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

WIDTH = 4096
LAYERS = 33  # 33 x 64 MiB = 2.06 GiB of float32 weights, over protobuf's 2 GiB limit


def write_big_model(path: Path) -> int:
    """A chain of ``LAYERS`` Gemm layers whose weights live in ``<name>.data``.

    The data file is written tensor by tensor, so the test process never holds the model.
    Returns the weight bytes.
    """
    data = path.with_name(f"{path.name}.data")
    rng = np.random.default_rng(0)
    inits, nodes, offset = [], [], 0
    with data.open("wb") as f:
        for i in range(LAYERS):
            w = rng.random((WIDTH, WIDTH), dtype=np.float32)
            f.write(w.tobytes())
            t = onnx.TensorProto(name=f"w{i}", data_type=onnx.TensorProto.FLOAT, dims=w.shape)
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", offset), ("length", w.nbytes)):
                entry = t.external_data.add()
                entry.key, entry.value = key, str(value)
            offset += w.nbytes
            inits.append(t)
            src = "x" if i == 0 else f"r{i - 1}"
            nodes.append(helper.make_node("Gemm", [src, f"w{i}"], [f"h{i}"]))
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, WIDTH])],
        [helper.make_tensor_value_info(f"r{LAYERS - 1}", onnx.TensorProto.FLOAT, [1, WIDTH])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return offset


CHILD = """
import json, resource, sys
import evonnx
from evonnx.model.files import load_model
model = evonnx.load(sys.argv[1])
result = evonnx.prune(model, 0.9)
evonnx.save(result.model, sys.argv[2])
print(json.dumps({
    "maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    "ir_version": result.model.ir_version,
    "groups": len(result.plan.keep),
}))
"""


@pytest.mark.slow
def test_over_2gb_prunes_with_external_data(tmp_path: Path) -> None:
    src, out = tmp_path / "big.onnx", tmp_path / "pruned.onnx"
    weights = write_big_model(src)
    assert weights > 2**31
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(src), str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ir_version"] == 8 and report["groups"] == LAYERS - 1
    assert report["maxrss_bytes"] <= 3 * weights, report["maxrss_bytes"] / weights
    data = out.with_name("pruned.onnx.data")
    assert data.is_file() and data.stat().st_size > 0.7 * weights
    pruned = onnx.load(str(out), load_external_data=False)
    dims = [list(t.dims) for t in pruned.graph.initializer]
    kept = dims[0][1]
    assert dims[0][0] == WIDTH and 0.85 * WIDTH < kept < 0.95 * WIDTH
    assert dims[-1] == [kept, WIDTH]
    onnx.checker.check_model(str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "big.onnx",
        "big.onnx.data",
        "pruned.onnx",
        "pruned.onnx.data",
    ]


def test_writers_keep_external_data_when_the_input_used_it(tmp_path: Path) -> None:
    """A model given with a ``.data`` file comes out of prune and export with one as well."""
    from click.testing import CliRunner
    from helpers import make_model

    from evonnx.cli.main import cli
    from evonnx.model.files import keeps_external_data, save_model

    rng = np.random.default_rng(0)
    width = 64  # 16 KiB per weight: large enough to go to the .data file
    nodes, inits = [], []
    for i in range(3):
        src_name = "x" if i == 0 else f"r{i - 1}"
        w = rng.normal(size=(width, width)).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Gemm", [src_name, f"w{i}"], [f"h{i}"]))
        nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"]))
    model = make_model(
        helper.make_graph(
            nodes,
            "mlp",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, width])],
            [helper.make_tensor_value_info("r2", onnx.TensorProto.FLOAT, [1, width])],
            inits,
        )
    )
    src = tmp_path / "net.onnx"
    save_model(model, src, external_data=True)
    assert keeps_external_data(src) is True
    inline = tmp_path / "inline.onnx"
    save_model(model, inline)
    assert keeps_external_data(inline) is None
    for args, name in (
        (["prune", str(src), "--method", "magnitude", "--keep", "0.5"], "pruned.onnx"),
        (["export", str(src), "--target", "onnxruntime"], "exported.onnx"),
    ):
        out = tmp_path / name
        result = CliRunner().invoke(cli, [*args, "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert out.with_name(f"{name}.data").is_file()
        assert keeps_external_data(out) is True
        onnx.checker.check_model(str(out), full_check=True)
    result = CliRunner().invoke(
        cli, ["prune", str(inline), "--method", "magnitude", "-o", str(tmp_path / "p2.onnx")]
    )
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "p2.onnx.data").exists()
