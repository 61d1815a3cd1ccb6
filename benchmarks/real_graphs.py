"""Real-world-style graphs: prunable-channel coverage before/after normalization, fidelity.

Builds the graphs of ``tests/zoo_real.py`` (YOLOv8-style C2f detector, paddle-style and
torch-exported MobileNetV3-small, DB text detector, ResNet behind Identity nodes, ViT block,
and the YOLOX-, PicoDet-, PP-LCNet-, SVTR/CTC- and CNN+LSTM-style look-alikes of
``tests/zoo_lookalikes.py``), then reports, as ``evonnx inspect --json`` does, the share of
channels in prunable groups at the real input shape (``REAL_SHAPES``, given with
``--input-shape``) without (``--no-normalize``) and with load-time normalization, and without
any ``--input-shape``; what normalization changed, MACs, and the converter's largest relative
difference to onnxruntime (where the converter runs every op of the graph). Writes the
``realgraphs`` section of docs/benchmarks.md and ``docs/results/real_graphs.json``.

Usage: ``python benchmarks/real_graphs.py``
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from report import machine, update_section  # noqa: E402
from zoo_real import CNNS, NEEDS_OP, REAL_SHAPES, REAL_ZOO  # noqa: E402

import evonnx  # noqa: E402
from evonnx.converters import to_torch  # noqa: E402
from evonnx.converters.ops import OPS  # noqa: E402
from evonnx.model.textio import write_text_atomic  # noqa: E402

RESULTS = HERE.parent / "docs" / "results" / "real_graphs.json"


def _fidelity(model: onnx.ModelProto, shape: tuple[int, ...]) -> float:
    import onnxruntime as ort

    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        actual = to_torch(model).eval()(torch.from_numpy(x)).numpy()
    return float(np.max(np.abs(actual - expected)) / max(1.0, float(np.max(np.abs(expected)))))


def measure(name: str, folder: Path) -> dict[str, object]:
    """Coverage, normalization and fidelity of one graph."""
    path = folder / f"{name}.onnx"
    onnx.save(REAL_ZOO[name](), str(path))
    raw = evonnx.load(path, normalize=False)
    shape = REAL_SHAPES[name]
    shapes = {raw.graph.input[0].name: shape}
    before = evonnx.inspect(raw, shapes, normalize=False)
    t0 = time.perf_counter()
    after = evonnx.inspect(path, shapes)
    seconds = time.perf_counter() - t0
    symbolic = evonnx.inspect(path)
    assert after.normalization is not None
    needs = NEEDS_OP.get(name)
    return {
        "graph": name,
        "cnn": name in CNNS,
        "input_shape": list(shape),
        "channels": after.analysis.channels,
        "coverage_raw": before.analysis.coverage,
        "coverage": after.analysis.coverage,
        "coverage_without_input_shape": symbolic.analysis.coverage,
        "normalization": after.normalization.summary().removeprefix("normalized: "),
        "inspect_seconds": seconds,
        "macs": after.metrics.macs,
        "macs_known_without_shape": symbolic.metrics.macs_known,
        "converter_rel_error": None
        if needs and needs not in OPS
        else _fidelity(evonnx.load(path), shape),
        "converter_missing_op": needs if needs and needs not in OPS else None,
    }


def main() -> None:
    """Measure every graph, write the markdown section and the JSON results."""
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, Path(tmp)) for name in REAL_ZOO]
    lines = [
        "## Real-world graphs (`benchmarks/real_graphs.py`)",
        "",
        "Small graphs in the style of real exports (`tests/zoo_real.py`, "
        "`tests/zoo_lookalikes.py`; random weights, "
        f"torch {torch.__version__} legacy exporter, opset 17, IR 8) on {machine()}. "
        "*coverage*: channels in prunable groups / all channels in groups, as "
        "`evonnx inspect --json --input-shape x=...` reports it at the real input shape, with "
        "`--no-normalize` and with the default load-time normalization; *no shape*: the same "
        "without `--input-shape` (symbolic axes block the shapes; the frozen reasons name the "
        "input and the flag). Shapes static inference cannot give (computed Reshapes, "
        "attention, LSTM) come from one onnxruntime run at that shape. "
        "*converter*: largest |torch - onnxruntime| / max(1, max |onnxruntime|) at the output.",
        "",
        "| graph | input shape | channels | coverage, raw | **coverage** | no shape "
        "| normalization | MACs | MACs without --input-shape | converter |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- | ---: |",
    ]
    for r in rows:
        conv = (
            f"no {r['converter_missing_op']} op yet"
            if r["converter_rel_error"] is None
            else f"{r['converter_rel_error']:.1e}"
        )
        lines.append(
            f"| {r['graph']}{'' if r['cnn'] else ' (not CNN-style)'} "
            f"| {'x'.join(map(str, r['input_shape']))} | {r['channels']} "  # type: ignore[call-overload]
            f"| {r['coverage_raw']:.2f} | **{r['coverage']:.2f}** "
            f"| {r['coverage_without_input_shape']:.2f} | {r['normalization']} "
            f"| {int(r['macs']) / 1e6:.1f} M "  # type: ignore[call-overload]
            f"| {'known' if r['macs_known_without_shape'] else 'unknown'} | {conv} |"
        )
    lines += [
        "",
        "Coverage goal >= 0.9 on the CNN-style graphs and the recognizers. Channels count "
        "as output filters: `svtr`'s fused QKV projection, reshaped into (3, heads, dims), "
        "is one group of head dims (each removes that dim from q, k and v of every head, "
        "3 x heads filters); `crnn`'s LSTM reads the backbone's last width through its W "
        "input columns (its hidden units stay whole). What stays frozen: the input, "
        "the LayerNorm stream of the transformers, softmax/graph outputs.",
    ]
    update_section("realgraphs", "\n".join(lines))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(RESULTS, json.dumps({"machine": machine(), "graphs": rows}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
