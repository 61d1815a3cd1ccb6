"""onnxruntime's blocked convolutions: latency against channel count on this CPU.

Run: ``python benchmarks/nchwc_block.py [--runs 60]``. Times a 3x3 conv (dense, then
depthwise) and a 1x1 conv after it at 80x80, with 4 to 64 channels, one thread, interleaved
rounds, fastest round. On a CPU with AVX-512 the latency is a staircase of 16-channel steps
(onnxruntime's NCHWc block): the reason ``evonnx.latency.default_step`` is 16 there. Writes the
``nchwc-block`` section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, update_section

from evonnx.latency import default_step
from evonnx.runtimes.base import cpu_name

WIDTHS = tuple(range(4, 68, 4))


def session(width: int, depthwise: bool, size: int = 80) -> tuple[ort.InferenceSession, np.ndarray]:
    """A 3x3 conv (grouped when ``depthwise``), ReLU, 1x1 conv at ``width`` channels."""
    rng = np.random.default_rng(0)
    group = width if depthwise else 1
    w3 = rng.random((width, width // group, 3, 3), dtype=np.float32)
    w1 = rng.random((width, width, 1, 1), dtype=np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w3"], ["c"], pads=[1, 1, 1, 1], group=group),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "w1"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array(w3, "w3"), numpy_helper.from_array(w1, "w1")]
    graph = helper.make_graph(nodes, "block", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess, rng.random((1, width, size, size), dtype=np.float32)


def timings(depthwise: bool, runs: int) -> dict[int, float]:
    """Fastest of ``runs`` interleaved rounds (ms) per width."""
    sessions = {w: session(w, depthwise) for w in WIDTHS}
    best = dict.fromkeys(WIDTHS, float("inf"))
    for _ in range(runs):
        for w, (sess, x) in sessions.items():
            start = time.perf_counter()
            sess.run(None, {"x": x})
            best[w] = min(best[w], (time.perf_counter() - start) * 1e3)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=60)
    args = p.parse_args()
    rows = {"3x3 conv + 1x1 conv": timings(False, args.runs)}
    rows["depthwise 3x3 + 1x1 conv"] = timings(True, args.runs)
    head = "| layers | " + " | ".join(str(w) for w in WIDTHS) + " |"
    lines = [head, "| --- " * (len(WIDTHS) + 1) + "|"]
    for name, t in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{t[w]:.3f}" for w in WIDTHS) + " |")
    body = (
        "## onnxruntime's blocked convolutions (`benchmarks/nchwc_block.py`)\n\n"
        f"{cpu_name()}, {machine()}, onnxruntime {ort.__version__}, one thread, 80x80, fastest "
        f"of {args.runs} interleaved rounds (ms) at each channel count. The latency is a "
        "staircase: channel counts in one step cost the same, so removing channels pays only "
        "when it crosses a step. `evonnx.latency.default_step('ort-cpu')` on this machine: "
        f"**{default_step('ort-cpu')}** (16 with AVX-512, where the NCHWc block is 16 "
        "channels; 8 otherwise); the latency table's grid uses it.\n\n" + "\n".join(lines)
    )
    print(body)
    update_section("nchwc-block", body)


if __name__ == "__main__":
    main()
