"""Measured speed-up of offspring at 2x and 4x target speed-up on onnxruntime CPU.

Run: ``python benchmarks/speedup.py [--networks resnet56,vgg16,mobilenetv2,resnet50]
[--threads 1,0] [--batches 1,32] [--targets 2,4] [--runs N] [--no-mnist] [--no-write]``.
Results go to docs/benchmarks.md (section ``speedup``) and docs/results/speedup.json.

For every network, thread setting and batch size, four offspring per target speed-up S:

* **latency**: the genetic encoding under :class:`evonnx.environments.LatencyBudget` (latency
  predicted from the per-layer lookup table, channel counts on latency steps, depth clusters),
  measured end to end and trimmed until its measured speed-up is at least S
  (:func:`evonnx.api.synthesize_latency`);
* **MACs**: the genetic encoding under a MAC budget of 1/S (structured offspring);
* **branches**: whole residual branches removed, weakest first, to 1/S of the MACs;
* **Torch-Pruning**: Torch-Pruning's L1 ``MagnitudePruner`` (uniform ratio, the head kept) at
  the MAC count of the latency offspring (skipped, and said so, when ``torch-pruning`` is not
  installed: ``pip install -c constraints.txt -e ".[bench]"``).

They run interleaved with the ancestor (ort-cpu: in one process with one onnxruntime thread
pool, as :func:`evonnx.deploy.bench.benchmark` measures; ``--runtime torch-cuda --fp16`` on a
GPU machine: CUDA-graph replay). Realized = measured speed-up / target. The lookup
table's prediction error compares the latency offspring's predicted latency with its latency
in that run. A LeNet-5 trained on the built-in MNIST subset is then evolved under the latency
and the MAC environments, each generation measured against the ancestor.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifar_models import MobileNetV2Cifar, ResNetCifar, VGGCifar, randomize_bn
from report import machine, update_section
from resnet50 import ResNet50

from evonnx import api
from evonnx.analysis import analyze
from evonnx.environments import MacBudget
from evonnx.errors import PlanError
from evonnx.genetic import EncodingConfig
from evonnx.graph import constant_values, to_graph
from evonnx.latency import LatencySettings
from evonnx.metrics import compute_metrics
from evonnx.plan import branch_plan
from evonnx.runtimes import RuntimeSettings, make_runtime
from evonnx.surgery import apply_plan
from evonnx.textio import write_text_atomic

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "speedup.json"
NETWORKS: dict[str, tuple[str, Callable[[], nn.Module], int]] = {
    "resnet56": ("ResNet-56", lambda: ResNetCifar(9), 32),
    "vgg16": ("VGG-16-BN", VGGCifar, 32),
    "mobilenetv2": ("MobileNetV2", MobileNetV2Cifar, 32),
    "resnet50": ("ResNet-50", ResNet50, 224),
}


MNIST_BATCH = 32
HEADER = (
    "| network | threads | batch | target | method | MAC ratio | ancestor / offspring ms "
    "| speed-up | realized | table error |\n" + "| --- " * 10 + "|"
)


@dataclass(frozen=True)
class Net:
    """A benchmark network: its torch module (the exported weights) and ONNX graph."""

    name: str
    module: nn.Module
    model: onnx.ModelProto
    size: int


def build(key: str, seed: int = 0) -> Net:
    """The network with random weights and BatchNorm statistics, exported (legacy exporter)."""
    name, factory, size = NETWORKS[key]
    torch.manual_seed(seed)
    module = factory().eval()
    randomize_bn(module, seed)
    return Net(name, module, export(module, size), size)


def export(module: nn.Module, size: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = torch.randn(1, 3, size, size)
        torch.onnx.export(module.eval(), (x,), buf, dynamo=False, opset_version=17)  # type: ignore[arg-type]
    return onnx.load_from_string(buf.getvalue())


def macs(model: onnx.ModelProto) -> int:
    return compute_metrics(model).macs


def torch_pruning(net: Net, target_macs: int) -> onnx.ModelProto | None:
    """Torch-Pruning L1 offspring with at most ``target_macs`` MACs (None if not installed)."""
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    x = torch.randn(1, 3, net.size, net.size)
    base = macs(net.model)

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(net.module)
        head = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
        imp = tp.importance.MagnitudeImportance(p=1)
        tp.pruner.MagnitudePruner(
            m, x, importance=imp, pruning_ratio=ratio, ignored_layers=head
        ).step()
        return m

    lo, hi = 0.0, 0.95  # MACs(lo) > target >= MACs(hi) for the bisection
    ratio = 1.0 - (target_macs / base) ** 0.5  # MACs shrink about quadratically
    for _ in range(7):
        ratio = min(max(ratio, lo + 1e-3), hi - 1e-3)
        m = pruned(ratio)
        count, _ = tp.utils.count_ops_and_params(m, x)
        if count > target_macs:
            lo = ratio
        else:
            hi = ratio
            if count > 0.97 * target_macs:
                break
        ratio = (lo + hi) / 2
    return export(pruned(hi), net.size)


def offspring(
    net: Net, target: float, latency: LatencySettings, log: Callable[[str], None]
) -> tuple[dict[str, onnx.ModelProto], dict[str, Any]]:
    """Offspring of every method at one target speed-up, and the latency one's prediction."""
    out: dict[str, onnx.ModelProto] = {}
    t0 = time.perf_counter()
    lat = api.synthesize_latency(
        net.model, target, latency, EncodingConfig(synapse_level=False, depth=True)
    )
    out["latency"] = lat.model
    assert lat.latency is not None
    info = {"predicted_ms": lat.latency.predicted_ms, "fit_speedup": lat.latency.speedup}
    log(f"  latency offspring: {time.perf_counter() - t0:.1f} s, fit {lat.latency.speedup:.2f}x")
    mac_env = EncodingConfig(environment=MacBudget(1.0 / target), synapse_level=False)
    out["MACs"] = api.synthesize(net.model, mac_env).model
    analysis = analyze(net.model)
    if any(g.removable for g in analysis.groups):
        plan = branch_plan(analysis, constant_values(to_graph(net.model)), target)
        out["branches"] = apply_plan(net.model, analysis, plan)
    t0 = time.perf_counter()
    tp_model = torch_pruning(net, macs(lat.model))
    if tp_model is not None:
        out["Torch-Pruning"] = tp_model
        log(f"  Torch-Pruning offspring: {time.perf_counter() - t0:.1f} s")
    return out, info


def measure_network(
    net: Net, args: argparse.Namespace, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One record per (threads, batch, target, method)."""
    records = []
    base_macs = macs(net.model)
    threads_list = args.threads if args.runtime == "ort-cpu" else [0]
    for threads in threads_list:
        for batch in args.batches:
            fit = RuntimeSettings(
                args.runtime, threads=threads, fp16=args.fp16, warmup=3, runs=args.fit_runs,
                statistic=args.statistic,
            )  # fmt: skip
            latency = LatencySettings(fit, batch=batch)
            compare = make_runtime(replace(fit, runs=args.runs))
            for target in args.targets:
                log(f"{net.name} threads {threads or 'default'} batch {batch} target {target}x")
                try:
                    models, info = offspring(net, target, latency, log)
                except PlanError as exc:  # the target is out of reach: a row that says so
                    log(f"  out of reach: {exc}")
                    records.append(
                        {"network": net.name, "method": "latency", "runtime": args.runtime,
                         "threads": threads, "batch": batch, "target_speedup": target,
                         "error": str(exc)}
                    )  # fmt: skip
                    continue
                ancestor_ms, *times = compare.latencies([net.model, *models.values()], batch)
                for (method, model), ms in zip(models.items(), times, strict=True):
                    rec = {
                        "network": net.name,
                        "method": method,
                        "runtime": args.runtime + (" fp16" if args.fp16 else ""),
                        "threads": threads,
                        "batch": batch,
                        "target_speedup": target,
                        "mac_ratio": base_macs / macs(model),
                        "measured_speedup": ancestor_ms / ms,
                        "realized": ancestor_ms / ms / target,
                        "latency_ms": ms,
                        "ancestor_ms": ancestor_ms,
                    }
                    if method == "latency":
                        pred = info["predicted_ms"]
                        rec["predicted_ms"] = pred
                        rec["prediction_error"] = abs(pred - ms) / ms
                    records.append(rec)
    return records


def mnist_runs(args: argparse.Namespace, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """LeNet-5 on the MNIST subset, evolved under the latency and the MAC environments."""
    from evonnx.demo import train_demo_ancestor
    from evonnx.lineage import EvolveConfig

    out = []
    with tempfile.TemporaryDirectory(prefix="evonnx-speedup-") as tmp:
        ancestor = train_demo_ancestor(Path(tmp) / "lenet5.onnx", progress=False).path
        for env in ("latency", "macs"):
            config = EvolveConfig(
                generations=args.generations, env=env, keep=0.7, epochs=2, optimizer="adam",
                lr=0.001, batch_size=32, threads=1, runtime="ort-cpu", runtime_threads=1,
                latency_batch=MNIST_BATCH, latency_statistic=args.statistic,
            )  # fmt: skip
            t0 = time.perf_counter()
            lineage = api.evolve(ancestor, "mnist-demo", Path(tmp) / env, config)
            log(f"MNIST {env}: {time.perf_counter() - t0:.0f} s")
            out += [
                {"env": env, "generation": r.generation, "accuracy": r.accuracy,
                 "speedup": r.speedup, "mac_ratio": r.mac_ratio}
                for r in lineage.records
            ]  # fmt: skip
    return out


def markdown(records: list[dict[str, Any]], mnist: list[dict[str, Any]], meta: str) -> str:
    rows = [
        f"| {r['network']} | {r['threads'] or 'default'} | {r['batch']} | "
        f"{r['target_speedup']:g}x | latency | out of reach: {r['error']} | | | | |"
        if "error" in r
        else f"| {r['network']} | {r['threads'] or 'default'} | {r['batch']} | "
        f"{r['target_speedup']:g}x | {r['method']} | {r['mac_ratio']:.2f}x | "
        f"{r['ancestor_ms']:.3g} / {r['latency_ms']:.3g} | {r['measured_speedup']:.2f}x | "
        f"**{r['realized']:.2f}** | "
        + (f"{100 * r['prediction_error']:.1f}%" if "prediction_error" in r else "")
        + " |"
        for r in records
    ]
    errors = [r["prediction_error"] for r in records if "prediction_error" in r]
    lat = [r["realized"] for r in records if r["method"] == "latency" and "error" not in r]
    tp_note = (
        ""
        if any(r["method"] == "Torch-Pruning" for r in records)
        else "\n**Torch-Pruning is not installed**: its rows are missing "
        '(`pip install -c constraints.txt -e ".[bench]"`).\n'
    )
    mnist_rows = "\n".join(
        f"| {m['env']} | {m['generation']} | {100 * m['accuracy']:.2f} | "
        f"{m['speedup']:.2f}x | {m['mac_ratio']:.2f}x |"
        if "error" not in m
        else f"| the MNIST run failed: {m['error']} | | | | |"
        for m in mnist
    )
    mnist_table = (
        f"""
LeNet-5 trained on the built-in MNIST subset, evolved (keep 0.7 per generation) under the
latency environment and under the MAC environment; every generation measured against the
ancestor on ort-cpu, 1 thread, batch {MNIST_BATCH} (at batch 1 LeNet-5 is all per-run overhead):

| env | gen. | ACC. | measured speed-up | MAC ratio |
| --- | --- | --- | --- | --- |
{mnist_rows}
"""
        if mnist
        else ""
    )
    summary = (
        f"Latency offspring: realized {min(lat):.2f}-{max(lat):.2f} of the target (goal >= 0.9); "
        f"lookup-table prediction error median {100 * float(np.median(errors)):.1f}% "
        f"(max {100 * max(errors):.1f}%; goal <= 10%)."
        if lat and errors
        else ""
    )
    return f"""## Measured speed-up at a target (`benchmarks/speedup.py`)

{meta}

{summary}
{tp_note}
{HEADER}
{chr(10).join(rows)}
{mnist_table}"""


def _csv(text: str, cast: Callable[[str], Any]) -> list[Any]:
    return [cast(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="resnet56,vgg16,mobilenetv2,resnet50")
    parser.add_argument("--runtime", default="ort-cpu", help="ort-cpu, torch-cuda, ...")
    parser.add_argument("--fp16", action="store_true", help="fp16 (torch-cuda, tensorrt)")
    parser.add_argument(
        "--statistic", default="min", choices=("min", "median"),
        help="latency of a model: its fastest run (default: robust on a shared machine) or median",
    )  # fmt: skip
    parser.add_argument("--threads", default="1,0", help="ort-cpu threads (0: default)")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--targets", default="2,4")
    parser.add_argument("--runs", type=int, default=50, help="timed runs of the comparison")
    parser.add_argument("--fit-runs", type=int, default=20, help="timed runs while fitting")
    parser.add_argument("--generations", type=int, default=6, help="MNIST generations")
    parser.add_argument("--no-mnist", action="store_true", help="skip the trained LeNet-5")
    parser.add_argument("--no-write", action="store_true", help="print, do not update docs")
    args = parser.parse_args()
    args.threads = _csv(args.threads, int)
    args.batches = _csv(args.batches, int)
    args.targets = _csv(args.targets, float)
    with tempfile.TemporaryDirectory(prefix="evonnx-table-") as cache:
        os.environ.setdefault("EVONNX_CACHE_DIR", cache)  # a fresh table unless one is given
        run(args)


def run(args: argparse.Namespace) -> None:
    def log(msg: str) -> None:
        print(msg, flush=True)

    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    records = []
    for key in _csv(args.networks, str):
        records += measure_network(build(key), args, log)
    mnist: list[dict[str, Any]] = []
    if not args.no_mnist:
        try:
            mnist = mnist_runs(args, log)
        except Exception as exc:  # keep the CIFAR table; say what failed
            log(f"MNIST part failed: {type(exc).__name__}: {exc}")
            mnist = [{"error": f"{type(exc).__name__}: {exc}"}]
    meta = (
        f"Runtime {args.runtime}{' fp16' if args.fp16 else ''} (onnxruntime {ort.__version__}) "
        f"on {machine()}; random weights, legacy exporter, CIFAR networks at 32x32, ResNet-50 "
        f"at 224x224. The {args.statistic} of {args.runs} interleaved runs per model (on a shared "
        f"machine a run longer than a time slice is often preempted, which inflates the median of "
        f"slow models more than that of fast ones). The machine is shared "
        f"(1-minute load {load_before:.2f} before, {os.getloadavg()[0]:.2f} after the "
        f"{time.perf_counter() - t0:.0f} s run). Command: `python benchmarks/speedup.py "
        f"{' '.join(sys.argv[1:])}`."
    )
    body = markdown(records, mnist, meta)
    print(body)
    if not args.no_write:
        update_section("speedup", body)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        data = {"meta": meta, "rows": records, "mnist": mnist}
        write_text_atomic(RESULTS, json.dumps(data, indent=1) + "\n")


if __name__ == "__main__":
    main()
