"""Which latency estimator survives a CPU-bound neighbour: an A/B experiment.

Run: ``python benchmarks/contention.py [--repeats N] [--runs N] [--no-write]``.

A parent (ResNet-56, legacy exporter, dynamic batch) and a magnitude-pruned offspring of it
are measured side by side on ort-cpu ``--repeats`` times, on the machine as it is ("quiet")
and with a CPU-bound neighbour process pinned to one core ("busy"), at 1 thread and the
default thread count. From the same interleaved rounds each estimator gives a speed-up:

* ``median`` / ``min``: each model's median (fastest) round, then their ratio;
* ``paired median``: the median over rounds of parent round / offspring round (a round runs
  both models back to back, so both see the same machine state);
* ``paired q25``: the lower quartile of the same per-round ratios.

Reported per estimator: the mean speed-up, its spread over repeats (max / min - 1) and the
shift of the busy mean from the quiet one. Results go to docs/benchmarks.md (section
``contention``) and docs/results/contention.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine, update_section

from evonnx import api
from evonnx.model.textio import write_text_atomic
from evonnx.runtimes import RuntimeSettings, make_runtime

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "contention.json"
ESTIMATORS: dict[str, Callable[[np.ndarray], float]] = {
    "median": lambda r: float(np.median(r[0]) / np.median(r[1])),
    "min": lambda r: float(r[0].min() / r[1].min()),
    "paired median": lambda r: float(np.median(r[0] / r[1])),
    "paired q25": lambda r: float(np.quantile(r[0] / r[1], 0.25)),
}


@contextmanager
def neighbour(core: int = 0) -> Iterator[None]:
    """A CPU-bound process (a Python busy loop) pinned to ``core`` while the block runs."""
    code = "while True: pass"
    proc = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", code])
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


def resnet56() -> onnx.ModelProto:
    """ResNet-56 with random trained-like BatchNorm, exported with a dynamic batch axis."""
    from speedup import build

    return build("resnet56", dynamic=True).model


def measure(
    parent: onnx.ModelProto, child: onnx.ModelProto, threads: int, runs: int, repeats: int
) -> dict[str, list[float]]:
    rt = make_runtime(RuntimeSettings("ort-cpu", threads=threads, warmup=3, runs=runs))
    out: dict[str, list[float]] = {k: [] for k in ESTIMATORS}
    for _ in range(repeats):
        rounds = rt.rounds([parent, child], 1)
        for k, f in ESTIMATORS.items():
            out[k].append(f(rounds))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    parent = resnet56()
    child = api.prune(parent, 0.55).model
    load = os.getloadavg()[0]
    records: list[dict[str, Any]] = []
    for threads in (1, 0):
        for busy in (False, True):
            if busy:
                with neighbour():
                    got = measure(parent, child, threads, args.runs, args.repeats)
            else:
                got = measure(parent, child, threads, args.runs, args.repeats)
            for k, v in got.items():
                records.append({"threads": threads, "busy": busy, "estimator": k, "speedups": v})
                print(threads, busy, k, np.round(v, 3), flush=True)
    body = markdown(records, args, load)
    print(body)
    if not args.no_write:
        update_section("contention", body)
        write_text_atomic(RESULTS, json.dumps({"rows": records}, indent=1) + "\n")


def markdown(records: list[dict[str, Any]], args: argparse.Namespace, load: float) -> str:
    by = {(r["threads"], r["busy"], r["estimator"]): r["speedups"] for r in records}
    rows = []
    for threads in (1, 0):
        for k in ESTIMATORS:
            quiet, busy = by[(threads, False, k)], by[(threads, True, k)]
            spread = [max(v) / min(v) - 1 for v in (quiet, busy)]
            shift = np.mean(busy) / np.mean(quiet) - 1
            rows.append(
                f"| {threads or 'default'} | {k} | {np.mean(quiet):.2f}x | "
                f"{100 * spread[0]:.1f}% | {np.mean(busy):.2f}x | {100 * spread[1]:.1f}% | "
                f"{100 * shift:+.1f}% |"
            )
    return f"""## Latency estimators under contention (`benchmarks/contention.py`)

ResNet-56 (dynamic batch) and a magnitude-pruned offspring (keep 0.55) measured side by side
on ort-cpu at batch 1, {args.repeats} times {args.runs} interleaved rounds, on the shared
machine as it is (1-minute load {load:.2f} at the start) and with a CPU-bound neighbour
pinned to core 0 ("busy"), on {machine()}. Spread: max / min - 1 of the repeats' speed-ups;
shift: busy mean over quiet mean - 1.

| threads | estimator | quiet speed-up | quiet spread | busy speed-up | busy spread | shift |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}
"""


if __name__ == "__main__":
    main()
