"""Issue 18: every writer that rewrites a graph keeps its outputs (export, normalize, prune)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from frozen_graphs import CLASSES, T, frozen_classifier
from onnx import helper, numpy_helper
from zoo import ALL_CASES, cached_case, helper_convnet
from zoo_real import INPUT_SHAPES, REAL_ZOO

from evonnx.cli.main import cli
from evonnx.deploy import export as export_module
from evonnx.deploy.export import export
from evonnx.errors import UnsupportedModelError
from evonnx.model.normalize import normalize
from evonnx.model.outputs import (
    FP16_RTOL,
    RTOL,
    OutputMismatchError,
    compare_outputs,
    input_feed,
    run,
)


def flatten_output(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its first output reshaped to ``[1, -1]``: the reported simplifier bug
    ([T, 1, C] became [1, T*C]), same values, another shape."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    y = out.graph.output[0]
    inner = y.name + "_unflattened"
    for node in out.graph.node:
        node.output[:] = [inner if o == y.name else o for o in node.output]
    out.graph.initializer.append(numpy_helper.from_array(np.array([1, -1], np.int64), "flat2d"))
    out.graph.node.append(helper.make_node("Reshape", [inner, "flat2d"], [y.name], name="slim"))
    y.type.tensor_type.ClearField("shape")
    return out


def scale_output(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """``model`` with its first output multiplied by ``factor`` (same names and shapes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    y = out.graph.output[0].name
    inner = y + "_unscaled"
    for node in out.graph.node:
        node.output[:] = [inner if o == y else o for o in node.output]
    out.graph.initializer.append(
        numpy_helper.from_array(np.array(factor, np.float32), "output_scale")
    )
    out.graph.node.append(helper.make_node("Mul", [inner, "output_scale"], [y], name="scale"))
    return out


def test_compare_outputs_names_shapes_values() -> None:
    model = frozen_classifier()
    assert compare_outputs(model, model).difference is None
    flat = compare_outputs(model, flatten_output(model))
    assert flat.difference is not None and f"[1,{T * CLASSES}]" in flat.difference
    bad = compare_outputs(model, scale_output(model, 1.001)).difference
    assert bad is not None and "relative" in bad
    assert compare_outputs(model, scale_output(model, 1 + 1e-6)).difference is None
    assert compare_outputs(model, scale_output(model, 1.001), values=False).difference is None
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    renamed.graph.output[0].name = "z"
    renamed.graph.node[-1].output[0] = "z"
    assert "names" in str(compare_outputs(model, renamed).difference)


def test_export_skips_a_simplifier_that_changes_an_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The reported failure: the simplifier turned [T, 1, C] into [1, T*C]. The step is
    skipped and reported; the export succeeds from the unsimplified graph."""
    model = frozen_classifier()
    monkeypatch.setattr(export_module, "simplify", lambda m: (flatten_output(m), "onnxslim x"))
    for target in ("onnxruntime", "tensorrt"):
        res = export(model, target=target)
        assert "simplification skipped" in " ".join(res.notes)
        assert res.simplifier.startswith("none")
        feed = input_feed(model)
        assert run(res.model, feed)["y"].shape == (T, 1, CLASSES)
    src, dst = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    out = CliRunner().invoke(cli, ["export", str(src), "-o", str(dst), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert any("changed the outputs" in n for n in data["notes"])
    assert data["outputs_checked"]["checked"] and data["outputs_checked"]["tolerance"] == RTOL
    assert run(onnx.load(str(dst)), input_feed(model))["y"].shape == (T, 1, CLASSES)


def test_export_refuses_a_changed_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A later step (here the fp16 conversion) that changes an output: refused, one line,
    nothing written."""
    model = frozen_classifier()
    real = export_module.to_fp16
    monkeypatch.setattr(export_module, "to_fp16", lambda m: scale_output(real(m), 1.5))
    with pytest.raises(OutputMismatchError, match="differs by"):
        export(model, target="tensorrt", fp16=True)
    src, dst = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, str(src))
    out = CliRunner().invoke(cli, ["export", str(src), "--fp16", "-o", str(dst)])
    assert out.exit_code == 1 and not dst.exists()
    assert out.output.count("\n") == 1 and "the export changed the outputs" in out.output


def test_normalize_refuses_a_changed_model(monkeypatch: pytest.MonkeyPatch) -> None:
    from evonnx.model import normalize as normalize_module

    model = frozen_classifier()  # with something to normalize: a weight behind an Identity
    model.graph.node.insert(0, helper.make_node("Identity", ["wfc"], ["wfc_id"], name="id"))
    for node in model.graph.node[1:]:
        node.input[:] = ["wfc_id" if i == "wfc" else i for i in node.input]
    real = normalize_module.from_graph
    monkeypatch.setattr(normalize_module, "from_graph", lambda g, m: flatten_output(real(g, m)))
    with pytest.raises(UnsupportedModelError, match=r"changed the model's outputs.*shape"):
        normalize(model)


def test_prune_refuses_a_changed_output(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from evonnx import api

    real = api.apply_plan_report

    def broken(*args: object, **kwargs: object) -> tuple[onnx.ModelProto, object]:
        out, folds = real(*args, **kwargs)  # type: ignore[arg-type]
        return flatten_output(out), folds

    monkeypatch.setattr(api, "apply_plan_report", broken)
    src, dst = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(frozen_classifier(), str(src))
    for method in ("genetic", "magnitude"):
        args = ["prune", str(src), "--method", method, "--keep", "0.8", "-o", str(dst)]
        out = CliRunner().invoke(cli, args)
        assert out.exit_code == 1 and not dst.exists(), out.output
        assert "pruning changed the outputs" in out.output and out.output.count("\n") == 1


def _symbolic(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every input and output dimension symbolic (batch N, then H, W, ...)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for vi in [*out.graph.input, *out.graph.output]:
        for ax, d in enumerate(vi.type.tensor_type.shape.dim):
            if ax == 0 or ax >= 2:
                d.dim_param = "N" if ax == 0 else f"{vi.name}_d{ax}"
    return out


def test_trtexec_shapes_for_symbolic_dims() -> None:
    model = _symbolic(helper_convnet())
    res = export(model, target="tensorrt", max_batch=4)
    line = res.trtexec_command("m.onnx")
    for part in ("--minShapes=x:1x2x32x32", "--optShapes=x:4x2x32x32", "--maxShapes=x:4x2x32x32"):
        assert part in line
    assert any("--input-shape" in n for n in res.notes)
    res = export(model, target="tensorrt", input_shapes={"x": (1, 2, 8, 8)}, batch=2)
    assert "--shapes=x:2x2x8x8" in res.trtexec_command() or "x:2x2x8x8" in res.trtexec_command()
    assert res.check is not None and res.check.shapes == {"x": (2, 2, 8, 8)}


def _frozen_case(_: Path) -> onnx.ModelProto:
    return frozen_classifier()


def _real_case(name: str, cache: Path) -> onnx.ModelProto:
    path = cache / f"real_{name}.onnx"
    if not path.exists():
        onnx.save(REAL_ZOO[name](), str(path))
    return onnx.load(str(path))


ZOO = [*ALL_CASES, *(f"real:{n}" for n in REAL_ZOO), "frozen_classifier"]
TARGETS = [("onnxruntime", False), ("tensorrt", True)]


@pytest.mark.parametrize("target,fp16", TARGETS, ids=["ort", "trt-fp16"])
@pytest.mark.parametrize("case", ZOO)
def test_zoo_exports_keep_outputs(case: str, target: str, fp16: bool, zoo_dir: Path) -> None:
    """Goal: no export of a zoo graph changes an output's shape or its values beyond the
    tolerance (checked here independently of the export's own check)."""
    if case == "frozen_classifier":
        model = _frozen_case(zoo_dir)
    elif case.startswith("real:"):
        model = _real_case(case[5:], zoo_dir)
    else:
        model = cached_case(case, zoo_dir)
    name = case.removeprefix("real:")
    shapes = {model.graph.input[0].name: INPUT_SHAPES[name]} if name in INPUT_SHAPES else None
    res = export(model, target=target, fp16=fp16, input_shapes=shapes)
    assert res.check is not None and res.check.checked and res.check.difference is None
    feed = input_feed(res.model, shapes, seed=3)
    before, after = run(model, feed), run(res.model, feed)
    assert list(before) == list(after)
    tol = FP16_RTOL if fp16 else RTOL
    for k, x in before.items():
        assert after[k].shape == x.shape, k
        scale = max(float(np.max(np.abs(x))), 1e-6) if x.size else 1.0
        assert float(np.max(np.abs(after[k] - x), initial=0.0)) <= tol * scale, k
    assert res.check.max_rel_error <= tol
