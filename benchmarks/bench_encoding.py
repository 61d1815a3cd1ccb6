"""Benchmark of the genetic encoding and offspring sampling at ResNet-50 scale.

Builds a synthetic :class:`~evonnx.pruning.groups.Analysis` with ResNet-50's layer sizes (25.5 M
conv/FC
weights, residual groups coupling every block's last conv with the downsample conv) and times
``encode`` (probabilities), ``solve_factor`` (environmental factor) and ``sample`` (one offspring)
for several configurations. With ``--onnx`` it also exports a torch ResNet-50 and times
``synthesize`` on the real graph (``analyze`` timed separately).

Run: ``python benchmarks/bench_encoding.py [--onnx] [--repeat 3] [--no-write]``. Results are
written to the "Genetic encoding" section of ``docs/benchmarks.md`` (between the
``<!-- encoding:start -->`` and ``<!-- encoding:end -->`` markers).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evonnx.genetic import (
    EncodingConfig,
    Genome,
    Offspring,
    Solution,
    encode,
    sample,
    solve_factor,
)
from evonnx.genetic.environments import MacBudget
from evonnx.pruning.groups import Analysis, ChannelGroup, Layer, Member, Role

logger = logging.getLogger(__name__)

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
START, END = "<!-- encoding:start -->", "<!-- encoding:end -->"
STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))  # blocks, width, stride


@dataclass
class _Net:
    """Mutable builder of the synthetic analysis."""

    rng: np.random.Generator
    members: list[list[Member]]
    sizes: list[int]
    frozen: dict[int, str]
    layers: list[Layer]
    weights: dict[str, np.ndarray]

    def group(self, size: int, frozen: str | None = None) -> int:
        self.members.append([])
        self.sizes.append(size)
        if frozen:
            self.frozen[len(self.sizes) - 1] = frozen
        return len(self.sizes) - 1

    def conv(self, name: str, src: int, dst: int, k: int, side: int) -> None:
        cin, cout = self.sizes[src], self.sizes[dst]
        shape = (cout, cin, k, k) if k else (cout, cin)
        fan_in = cin * max(k, 1) ** 2
        self.weights[name] = (self.rng.standard_normal(shape) * (2 / fan_in) ** 0.5).astype(
            np.float32
        )
        self.members[dst].append(Member(Role.PRODUCER, name, name, 0))
        self.members[src].append(Member(Role.CONSUMER, name, name, 1))
        macs = cout * cin * max(k, 1) ** 2 * side * side
        self.layers.append(Layer(name, "Conv" if k else "Gemm", name, 0, 1, dst, (src,), macs))

    def analysis(self) -> Analysis:
        groups = tuple(
            ChannelGroup(i, s, tuple(m), self.frozen.get(i))
            for i, (s, m) in enumerate(zip(self.sizes, self.members, strict=True))
        )
        return Analysis(groups, tuple(self.layers))


def resnet50(seed: int = 0) -> tuple[Analysis, dict[str, np.ndarray]]:
    """Synthetic analysis and He-initialized weights with ResNet-50's layer sizes."""
    net = _Net(np.random.default_rng(seed), [], [], {}, [], {})
    prev = net.group(3, "input channels of the network")
    stem = net.group(64)
    net.conv("stem", prev, stem, 7, 112)
    prev, side = stem, 56
    for s, (blocks, width, stride) in enumerate(STAGES):
        side //= stride
        res = net.group(width * 4)
        for b in range(blocks):
            src = prev if b == 0 else res
            g1, g2 = net.group(width), net.group(width)
            net.conv(f"s{s}b{b}c1", src, g1, 1, side * (stride if b == 0 else 1))
            net.conv(f"s{s}b{b}c2", g1, g2, 3, side)
            net.conv(f"s{s}b{b}c3", g2, res, 1, side)
            if b == 0:
                net.conv(f"s{s}down", prev, res, 1, side)
        prev = res
    out = net.group(1000, "channels reach the graph output")
    net.conv("fc", prev, out, 0, 1)
    return net.analysis(), net.weights


T = TypeVar("T")


def _time(fn: Callable[[], T], repeat: int) -> tuple[float, T]:
    """Best wall time of ``repeat`` calls (robust on a shared machine) and the last result."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def _sampler(genome: Genome, sol: Solution) -> Callable[[], Offspring]:
    """One offspring per call, each from the next seed."""
    seeds = iter(range(10**6))
    return lambda: sample(genome, np.random.default_rng(next(seeds)), sol)


CONFIGS: dict[str, EncodingConfig] = {
    "filter, SynapseBudget(0.8) (default)": EncodingConfig(),
    "filter, round_to=8": EncodingConfig(round_to=8),
    "filter, SynapseBudget(0.5)": EncodingConfig(keep=0.5),
    "filter, structured (synapse_level=False)": EncodingConfig(synapse_level=False),
    "kernel, SynapseBudget(0.8)": EncodingConfig(cluster_mode="kernel"),
    "filter, MacBudget(0.7)": EncodingConfig(environment=MacBudget(0.7)),
}


def _channels_kept(analysis: Analysis, off: Offspring) -> float:
    groups = analysis.prunable_groups
    return sum(len(off.plan.kept(g)) for g in groups) / max(1, sum(g.size for g in groups))


def bench_synthetic(repeat: int) -> list[str]:
    analysis, weights = resnet50()
    total = sum(w.size for w in weights.values())
    rows = [
        f"Synthetic ResNet-50 analysis: {len(analysis.layers)} conv/FC layers, {total:,} weights, "
        f"{len(analysis.prunable_groups)} prunable groups. Best of {repeat} runs.",
        "",
        "| configuration | encode (s) | solve λ (s) | sample (s) | total (s) | λ "
        "| expected / target | realized / target | channels kept |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, cfg in CONFIGS.items():
        t_enc, genome = _time(partial(encode, analysis, weights, cfg), repeat)
        t_sol, sol = _time(partial(solve_factor, genome), repeat)
        t_smp, off = _time(_sampler(genome, sol), repeat)
        exp = off.expected_cost / off.budget
        real = off.realized_cost / off.budget
        rows.append(
            f"| {label} | {t_enc:.3f} | {t_sol:.3f} | {t_smp:.3f} | "
            f"{t_enc + t_sol + t_smp:.3f} | {off.factor:.4f} | {exp:.5f} | {real:.5f} | "
            f"{_channels_kept(analysis, off):.3f} |"
        )
        print(rows[-1], flush=True)
    return rows


def bench_onnx(repeat: int) -> list[str]:
    """Export a torch ResNet-50, analyze it and time ``synthesize`` on the real graph."""
    from resnet50 import resnet50_onnx

    from evonnx.genetic import synthesize
    from evonnx.pruning.analysis import analyze

    t0 = time.perf_counter()
    proto = resnet50_onnx()
    t_export = time.perf_counter() - t0
    t_an, analysis = _time(partial(analyze, proto), 1)
    seeds = iter(range(10**6))
    t_syn, off = _time(
        lambda: synthesize(proto, analysis, EncodingConfig(), np.random.default_rng(next(seeds))),
        repeat,
    )
    n = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    row = (
        f"Torch ResNet-50 exported to ONNX ({n:,} initializer values; export {t_export:.1f} s): "
        f"`analyze` {t_an:.2f} s; `synthesize` (read weights + encode + solve + sample, "
        f"default config) {t_syn:.3f} s best of {repeat}; realized/target synapses "
        f"{off.realized_cost / off.budget:.5f}, channels kept "
        f"{_channels_kept(analysis, off):.3f} (random-init filters have near-equal strengths, "
        f"so at keep=0.8 the cut comes from synapses)."
    )
    print(row, flush=True)
    return ["", row]


def write_section(lines: list[str]) -> None:
    """Replace (or append) the encoding section of docs/benchmarks.md."""
    body = "\n".join([START, "## Genetic encoding", "", *lines, END])
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + body + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--onnx", action="store_true", help="also export and time a ResNet-50")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    lines = [
        f"`python benchmarks/bench_encoding.py{' --onnx' if args.onnx else ''}` "
        f"on {machine}, numpy {np.__version__} (goal: encoding + sampling < 2 s).",
        "",
        "*encode*: eq. 4/5 probabilities from the weight arrays; *solve λ*: the environmental "
        "factor; *sample*: one offspring (clusters, constraints, synapses, dead channels, "
        "trimming to the budget). *channels kept*: fraction of prunable channels in the plan.",
        "",
        *bench_synthetic(args.repeat),
    ]
    if args.onnx:
        lines += bench_onnx(args.repeat)
    if not args.no_write:
        write_section(lines)


if __name__ == "__main__":
    main()
