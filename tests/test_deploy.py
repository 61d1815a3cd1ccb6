"""Deployment: interleaved benchmarks, re-batching, export (fp32/fp16/opset/TensorRT), CLI."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from helpers import make_model, run
from onnx import TensorProto, helper, numpy_helper
from zoo import build_case, helper_convnet, helper_residual_concat, input_feed

from evonnx.cli.main import cli
from evonnx.deploy import (
    TENSORRT_SUPPORTED_OPS,
    DeployError,
    ProviderError,
    RebatchError,
    benchmark,
    rebatch,
    resolve_provider,
    tensorrt_compatibility,
)
from evonnx.deploy.export import export
from evonnx.errors import EvonnxError, PlanError
from evonnx.model.files import save_model
from evonnx.model.graph import constant_values, opset_of, to_graph
from evonnx.pruning.analysis import analyze
from evonnx.pruning.metrics import compute_metrics
from evonnx.pruning.plan import (
    estimate_macs,
    group_mac_share,
    mac_target_counts,
    mac_target_plan,
    magnitude_plan,
    round_channels,
)
from evonnx.pruning.surgery import apply_plan

AVAILABLE = ort.get_available_providers()
NO_CUDA = "CUDAExecutionProvider" not in AVAILABLE
NO_TRT = "TensorrtExecutionProvider" not in AVAILABLE


def _pruned(model: onnx.ModelProto, keep: float = 0.5) -> onnx.ModelProto:
    analysis = analyze(model)
    plan = magnitude_plan(analysis, constant_values(to_graph(model)), keep)
    return apply_plan(model, analysis, plan)


def _close(a: np.ndarray, b: np.ndarray, rel: float) -> None:
    scale = max(1.0, float(np.max(np.abs(a))))
    np.testing.assert_allclose(b, a, rtol=0, atol=rel * scale)


def _dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in [*out.graph.input, *out.graph.output]:
        vi.type.tensor_type.shape.dim[0].dim_param = "N"
    return out


def _with_hardmax(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with a Hardmax (not in TensorRT's parser) on its output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    y = out.graph.output[0]
    out.graph.node.append(helper.make_node("Hardmax", [y.name], ["h"], name="hardmax"))
    y_new = onnx.ValueInfoProto()
    y_new.CopyFrom(y)
    y_new.name = "h"
    del out.graph.output[:]
    out.graph.output.append(y_new)
    return out


@pytest.fixture(scope="module")
def resnet() -> onnx.ModelProto:
    return build_case("resnet@legacy")


# --------------------------------------------------------------------------- bench


def test_bench_two_models_two_batches() -> None:
    base = helper_convnet()
    small = _pruned(base)
    res = benchmark([base, small], ["base", "small"], batches=(1, 4), warmup=1, runs=5)
    assert res.provider == "cpu" and res.thread_pool == "global"  # isolated child process
    assert [m.name for m in res.models] == ["base", "small"]
    for mt in res.models:
        assert [t.batch for t in mt.timings] == [1, 4]
        for t in mt.timings:
            assert 0 < t.min_ms <= t.median_ms <= t.p90_ms
            assert t.runs == 5
            assert t.throughput == pytest.approx(t.batch / (t.median_ms / 1e3))
    mac_ratio = compute_metrics(base).macs / compute_metrics(small).macs
    assert res.models[0].macs == compute_metrics(base).macs
    assert len(res.speedups) == 2
    for s in res.speedups:
        assert (s.model, s.reference) == ("small", "base")
        ref, own = res.models[0].at(s.batch), res.models[1].at(s.batch)
        assert s.speedup == pytest.approx(ref.median_ms / own.median_ms)
        assert s.mac_ratio == pytest.approx(mac_ratio)
        assert s.realized == pytest.approx(s.speedup / mac_ratio)
    json.dumps(res.to_dict())


def test_bench_mac_ratio_is_per_sample_for_fixed_batches() -> None:
    base = helper_convnet()
    res = benchmark([base, rebatch(base, 3)], batches=(2,), warmup=0, runs=2, isolate=False)
    assert res.thread_pool == "per-session"
    assert res.models[0].macs == res.models[1].macs
    assert res.speedups[0].mac_ratio == pytest.approx(1.0)


def test_bench_rejects_bad_arguments() -> None:
    m = helper_convnet()
    with pytest.raises(DeployError, match="at least two"):
        benchmark([m])
    with pytest.raises(DeployError, match="batch"):
        benchmark([m, m], batches=(0,))
    with pytest.raises(DeployError, match="unique"):
        benchmark([m, m], names=["a", "a"])


def test_bench_reports_models_onnxruntime_cannot_load() -> None:
    custom = helper_convnet()
    custom.graph.node.append(helper.make_node("MyOp", ["y"], ["z"], domain="com.example"))
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(DeployError, match="cannot load broken"):  # raised in the child process
        benchmark([helper_convnet(), custom], ["ok", "broken"], warmup=0, runs=1)


def test_unknown_provider_is_an_error() -> None:
    with pytest.raises(ProviderError, match="unknown provider"):
        resolve_provider("tpu")


@pytest.mark.skipif(not NO_CUDA, reason="CUDAExecutionProvider is available here")
def test_unavailable_provider_is_an_error_not_cpu() -> None:
    m = helper_convnet()
    with pytest.raises(ProviderError, match="not available") as exc:
        benchmark([m, m], ["a", "b"], provider="cuda", runs=1)
    assert isinstance(exc.value, EvonnxError)
    assert "CUDAExecutionProvider" in str(exc.value)


@pytest.mark.skipif(NO_CUDA, reason="needs onnxruntime-gpu with CUDAExecutionProvider and a GPU")
def test_bench_cuda() -> None:
    m = helper_convnet()
    res = benchmark([m, _pruned(m)], provider="cuda", batches=(1, 4), warmup=2, runs=5)
    assert res.thread_pool == "per-session"
    assert res.provider == "cuda" and all(t.median_ms > 0 for t in res.models[0].timings)


@pytest.mark.skipif(NO_TRT, reason="needs onnxruntime-gpu with TensorrtExecutionProvider")
def test_bench_tensorrt() -> None:
    m = helper_convnet()
    res = benchmark([m, _pruned(m)], provider="tensorrt", batches=(1,), warmup=2, runs=5)
    assert res.provider == "tensorrt" and res.speedups[0].speedup > 0


# --------------------------------------------------------------------------- re-batching


def test_rebatch_fixed_batch_one_with_hard_coded_reshape() -> None:
    model = helper_residual_concat()  # input [1, 3, 5, 5], Reshape target [1, 20]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    big = rebatch(model, 3)
    assert big.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert big.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 3
    assert "shape" not in {t.name for t in big.graph.initializer}  # the old target is gone
    samples = [input_feed(model, seed=s)["x"] for s in range(3)]
    (out,) = run(big, {"x": np.concatenate(samples)})
    for i, x in enumerate(samples):
        (ref,) = run(model, {"x": x})
        _close(ref[0], out[i], 1e-5)


def test_rebatch_symbolic_and_same_batch() -> None:
    model = _dynamic_batch(helper_convnet())
    fixed = rebatch(model, 5)
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 5
    assert fixed.graph.output[0].type.tensor_type.shape.dim[0].dim_value == 5
    (out,) = run(fixed, input_feed(fixed))
    assert out.shape == (5, 4)
    same = rebatch(helper_convnet(), 1)
    assert same.SerializeToString() == helper_convnet().SerializeToString()


def test_rebatch_refuses_reshape_that_mixes_the_batch() -> None:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),  # [2, 1, 10]
        helper.make_node("Reshape", ["t", "s"], ["r"]),  # [1, 20]: batch now mixed in
        helper.make_node("MatMul", ["r", "w"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "mix",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [
            numpy_helper.from_array(np.array([1, 20], dtype=np.int64), "s"),
            numpy_helper.from_array(rng.normal(size=(20, 3)).astype(np.float32), "w"),
        ],
    )
    model = make_model(graph)
    with pytest.raises(RebatchError, match="cannot be re-batched"):
        rebatch(model, 4)
    with pytest.raises(RebatchError, match=">= 1"):
        rebatch(model, 0)


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("target", ["onnxruntime", "tensorrt"])
def test_export_fp32_matches(resnet: onnx.ModelProto, target: str) -> None:
    res = export(resnet, target=target)
    assert res.simplifier and res.opset_after == opset_of(resnet)
    feed = input_feed(resnet)
    for a, b in zip(run(resnet, feed), run(res.model, feed), strict=True):
        _close(a, b, 1e-5)
    assert res.tensorrt_compatible


def test_export_fixed_batch_matches_per_sample() -> None:
    model = helper_residual_concat()
    res = export(model, target="tensorrt", batch=4)
    assert res.batch == 4 and res.inputs[0].dims == (4, 3, 5, 5)
    samples = [input_feed(model, seed=s)["x"] for s in range(4)]
    (out,) = run(res.model, {"x": np.concatenate(samples)})
    for i, x in enumerate(samples):
        _close(run(model, {"x": x})[0][0], out[i], 1e-5)


def test_export_fp16_keeps_fp32_io(resnet: onnx.ModelProto) -> None:
    res = export(resnet, fp16=True)
    m = res.model
    float_type = TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == float_type for v in m.graph.input)
    assert all(v.type.tensor_type.elem_type == float_type for v in m.graph.output)
    weights = [t for t in m.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights)
    feed = input_feed(resnet)
    (ref,), (out,) = run(resnet, feed), run(m, feed)
    assert out.dtype == np.float32
    _close(ref, out, 2e-2)


def test_export_converts_opset_for_tensorrt() -> None:
    model = helper_convnet()
    model.opset_import[0].version = 22  # outside TensorRT's parser range
    res = export(model, target="tensorrt")
    assert (res.opset_before, res.opset_after) == (22, 17)
    assert opset_of(res.model) == 17 and any("opset" in n for n in res.notes)
    feed = input_feed(model)
    _close(run(model, feed)[0], run(res.model, feed)[0], 1e-5)
    kept = export(model, target="onnxruntime")
    assert kept.opset_after == 22


def test_export_explicit_opset() -> None:
    model = helper_convnet()
    model.opset_import[0].version = 11
    res = export(model, opset=17)
    assert (res.opset_before, res.opset_after) == (11, 17)
    feed = input_feed(model)
    _close(run(model, feed)[0], run(res.model, feed)[0], 1e-5)


def test_tensorrt_report_flags_unsupported_ops() -> None:
    assert "Hardmax" not in TENSORRT_SUPPORTED_OPS and "Conv" in TENSORRT_SUPPORTED_OPS
    res = export(_with_hardmax(helper_convnet()), target="tensorrt")
    assert not res.tensorrt_compatible
    assert [(u.op_type, u.nodes) for u in res.unsupported] == [("Hardmax", ("hardmax",))]
    d = res.to_dict("m.onnx")
    assert d["tensorrt_compatible"] is False and d["unsupported_ops"][0]["op_type"] == "Hardmax"

    custom = helper_convnet()
    custom.graph.node.append(
        helper.make_node("MyOp", ["y"], ["z"], domain="com.example", name="custom")
    )
    custom.opset_import.append(helper.make_opsetid("com.example", 1))
    (issue,) = tensorrt_compatibility(custom)
    assert (issue.op_type, issue.domain) == ("MyOp", "com.example")
    assert "plugin" in issue.reason


def test_trtexec_command_static_and_dynamic() -> None:
    res = export(helper_convnet(), target="tensorrt", fp16=True, batch=8)
    cmd = res.trtexec_command("out.onnx")
    assert cmd.startswith("trtexec --onnx=out.onnx")
    assert "--fp16" in cmd and "--shapes=x:8x2x8x8" in cmd and "--saveEngine=out.plan" in cmd
    dyn = export(_dynamic_batch(helper_convnet()), target="tensorrt", max_batch=16)
    line = dyn.trtexec_command("d.onnx", "d.engine")
    assert "--fp16" not in line
    for part in ("--minShapes=x:1x2x8x8", "--optShapes=x:16x2x8x8", "--maxShapes=x:16x2x8x8"):
        assert part in line
    assert line.endswith("--saveEngine=d.engine")


def test_export_falls_back_to_graphsurgeon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # import onnxslim -> ImportError
    model = helper_residual_concat()
    res = export(model)
    assert res.simplifier == "onnx-graphsurgeon"
    feed = input_feed(model)
    _close(run(model, feed)[0], run(res.model, feed)[0], 1e-5)


def test_export_fp16_needs_onnxconverter_common(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    with pytest.raises(DeployError, match="onnxconverter-common"):
        export(helper_convnet(), fp16=True)


def test_export_rejects_unknown_target() -> None:
    with pytest.raises(DeployError, match="target"):
        export(helper_convnet(), target="tflite")


# --------------------------------------------------------------------------- plans


def test_round_channels() -> None:
    assert round_channels(13, 64, 8) == 16
    assert round_channels(11, 64, 8) == 16
    assert round_channels(2, 64, 8) == 8
    assert round_channels(60, 62, 8) == 62
    assert round_channels(5, 6, 8) == 5
    assert round_channels(13, 64, None) == 13


def test_magnitude_plan_round_to(resnet: onnx.ModelProto) -> None:
    analysis = analyze(resnet)
    weights = constant_values(to_graph(resnet))
    plan = magnitude_plan(analysis, weights, 0.3, round_to=8)
    for g in analysis.prunable_groups:
        n = len(plan.keep[g.id])
        assert n == g.size or n % 8 == 0
    assert magnitude_plan(analysis, weights, 0.3).keep != plan.keep


@pytest.mark.parametrize(("round_to", "target"), [(None, 3.0), (8, 1.3)])
def test_mac_target_plan(resnet: onnx.ModelProto, round_to: int | None, target: float) -> None:
    analysis = analyze(resnet)  # channels 8/16/24: multiples of 8 leave little to prune
    weights = constant_values(to_graph(resnet))
    counts = mac_target_counts(analysis, weights, target, round_to=round_to)
    plan = mac_target_plan(analysis, weights, target, round_to=round_to)
    pruned = apply_plan(resnet, analysis, plan)
    base = compute_metrics(resnet).macs
    after = compute_metrics(pruned).macs
    assert estimate_macs(analysis, weights, counts) == after
    assert math.isclose(base / after, target, rel_tol=0.2)
    if round_to:
        assert all(n % 8 == 0 or n == analysis.group(g).size for g, n in counts.items())


def test_mac_target_plan_skips_small_groups(resnet: onnx.ModelProto) -> None:
    analysis = analyze(resnet)
    weights = constant_values(to_graph(resnet))
    share = group_mac_share(analysis, weights)
    cut = sorted(share.values())[len(share) // 2]
    counts = mac_target_counts(analysis, weights, 1.5, min_share=cut)
    assert counts and all(share[g] >= cut for g in counts)
    assert set(counts) != {g.id for g in analysis.prunable_groups}
    with pytest.raises(PlanError, match="out of reach"):
        mac_target_counts(analysis, weights, 1e6)
    with pytest.raises(PlanError, match=">= 1"):
        mac_target_counts(analysis, weights, 0.5)


# --------------------------------------------------------------------------- CLI


def test_cli_bench_json(tmp_path: Path) -> None:
    base = helper_convnet()
    a, b = save_model(base, tmp_path / "a.onnx"), save_model(_pruned(base), tmp_path / "b.onnx")
    args = ["bench", str(a), str(b), "--batch", "1,2", "--runs", "3", "--warmup", "1", "--json"]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert [m["name"] for m in data["models"]] == ["a.onnx", "b.onnx"]
    assert [s["batch"] for s in data["speedups"]] == [1, 2]
    assert all(s["realized"] > 0 for s in data["speedups"])
    text = CliRunner().invoke(cli, ["bench", str(a), str(b), "--runs", "2", "--warmup", "0"])
    assert text.exit_code == 0 and "realized" in text.output


def test_cli_bench_errors(tmp_path: Path) -> None:
    a = save_model(helper_convnet(), tmp_path / "a.onnx")
    one = CliRunner().invoke(cli, ["bench", str(a)])
    assert one.exit_code == 1 and "error: " in one.output
    bad = CliRunner().invoke(cli, ["bench", str(a), str(a), "--batch", "1,x"])
    assert bad.exit_code == 1 and "--batch" in bad.output
    if NO_CUDA:
        gpu = CliRunner().invoke(cli, ["bench", str(a), str(a), "--provider", "cuda"])
        assert gpu.exit_code == 1 and "not available" in gpu.output


def test_cli_export(tmp_path: Path) -> None:
    src = save_model(helper_residual_concat(), tmp_path / "m.onnx")
    dst = tmp_path / "out" / "m_trt.onnx"
    args = ["export", str(src), "--target", "tensorrt", "--fp16", "--batch", "2", "-o", str(dst)]
    out = CliRunner().invoke(cli, [*args, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["output"] == str(dst) and data["batch"] == 2 and data["fp16"] is True
    assert f"--onnx={dst}" in data["trtexec"] and "--shapes=x:2x3x5x5" in data["trtexec"]
    written = onnx.load(str(dst))
    assert written.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    text = CliRunner().invoke(cli, ["export", str(src), "-o", str(tmp_path / "plain.onnx")])
    assert text.exit_code == 0 and "wrote" in text.output
    missing = CliRunner().invoke(cli, ["export", str(tmp_path / "nope.onnx"), "-o", str(dst)])
    assert missing.exit_code == 1 and "error: " in missing.output
