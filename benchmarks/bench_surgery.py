"""Analysis + surgery time on a ResNet-50-sized graph (goal: under 1 s together).

Run: ``python benchmarks/bench_surgery.py``; results go to docs/benchmarks.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine, update_section
from resnet50 import resnet50_onnx

from evonnx.model.graph import constant_values, to_graph
from evonnx.pruning.analysis import analyze
from evonnx.pruning.metrics import compute_metrics
from evonnx.pruning.plan import magnitude_plan
from evonnx.pruning.surgery import apply_plan

T = TypeVar("T")


def best_of(n: int, fn: Callable[[], T]) -> tuple[float, T]:
    """Best wall time of ``n`` calls and the last result."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    model = resnet50_onnx()
    weights = constant_values(to_graph(model))
    t_an, analysis = best_of(3, lambda: analyze(model))
    plan = magnitude_plan(analysis, weights, 0.5)
    t_su, pruned = best_of(3, lambda: apply_plan(model, analysis, plan))
    before, after = compute_metrics(model), compute_metrics(pruned)
    groups = len(analysis.groups)
    prunable = len(analysis.prunable_groups)
    body = f"""## Analysis and surgery on ResNet-50 (`benchmarks/bench_surgery.py`)

ResNet-50 (random weights, {before.params / 1e6:.1f} M parameters, legacy exporter, 1x3x224x224),
keep 50% of the channels of every prunable group (L1 magnitude plan). Best of 3 runs on {machine()}.

| step | seconds |
| --- | --- |
| analysis (import, shape inference, channel groups) | {t_an:.3f} |
| surgery (slice, rewrite, export, re-infer shapes, check) | {t_su:.3f} |
| **total** (goal < 1 s) | **{t_an + t_su:.3f}** |

{groups} channel groups, {prunable} prunable;
MACs {before.macs / 1e9:.2f} G -> {after.macs / 1e9:.2f} G ({before.macs / after.macs:.2f}x fewer),
parameters {before.params / 1e6:.1f} M -> {after.params / 1e6:.1f} M.
"""
    update_section("surgery", body)
    print(body)
    assert np.isfinite(t_an + t_su)


if __name__ == "__main__":
    main()
