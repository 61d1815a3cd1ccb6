"""Measured speed-up of offspring at 2x and 4x target speed-up on onnxruntime CPU.

Run: ``python benchmarks/speedup.py [--networks resnet56,...,yolov8,yolox,dbnet,picodet,
svtr,crnn] [--threads 1,0] [--batches 1,32] [--targets 2,4] [--recognizer-targets 1.5]
[--methods latency,...] [--busy no|yes|both] [--statistic min|median] [--runs N]
[--fit-runs N] [--time-cap S] [--no-mnist] [--no-write]``.
Results go to docs/benchmarks.md (section ``speedup``) and docs/results/speedup.json.

Networks are exported as users export them: legacy exporter, symbolic batch axis; the
look-alikes of real detectors and recognizers (``tests/zoo_real.py``,
``tests/zoo_lookalikes.py``) also with symbolic spatial or width axes, measured at a real
input size. ``--busy yes`` runs every measurement with a CPU-bound neighbour process pinned to
core 0 (``both``: the quiet rows, then the busy ones); every row records the statistic used,
whether it was busy and the machine's load.

For every network, thread setting and batch size, up to four offspring per target speed-up S:

* **latency**: the genetic encoding under :class:`evonnx.genetic.environments.LatencyBudget`
(latency
  predicted from the per-layer lookup table, channel counts on latency steps, depth clusters),
  measured end to end and trimmed until its measured speed-up is at least S
  (:func:`evonnx.api.synthesize_latency`);
* **MACs**: the genetic encoding under a MAC budget of 1/S (structured offspring);
* **branches**: whole residual branches removed, weakest first, to 1/S of the MACs;
* **Torch-Pruning**: Torch-Pruning's L1 ``MagnitudePruner`` (uniform ratio, the head kept) at
  the MAC count of the latency offspring, within 2% as evonnx counts MACs (skipped, and said
  so, when ``torch-pruning`` is not installed: ``pip install -c constraints.txt -e ".[bench]"``).

They run interleaved with the ancestor (ort-cpu: in one process with one onnxruntime thread
pool, as :func:`evonnx.deploy.bench.benchmark` measures; ``--runtime torch-cuda --fp16`` on a
GPU machine: CUDA-graph replay), in three comparisons; each speed-up is their median
(:func:`compared`). Slow models get fewer timed runs: about ``--time-cap``
seconds per model and comparison, at least 5 (ResNet-50 at batch 32). The MACs and branches
offspring do not depend on threads or batch and are built once per target, Torch-Pruning's
once per MAC count. Realized = measured speed-up / target. The lookup table's prediction
error compares the latency offspring's predicted latency with its latency in that run: the
predictor (table layer sum, MACs, activations and live layers, fitted on the parent and
calibration offspring measured side by side and refitted on every later measurement) gives
the offspring's speed-up before the offspring is measured; times this run's ancestor latency,
that is its predicted latency (out of sample, and free of the load drift between runs).
A LeNet-5 trained on the built-in MNIST subset is then evolved under the latency
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cifar_models import MobileNetV2Cifar, ResNetCifar, VGGCifar, randomize_bn
from contention import neighbour
from report import machine, update_section
from resnet50 import ResNet50

from evonnx import api
from evonnx.errors import EvonnxError
from evonnx.genetic import EncodingConfig
from evonnx.genetic.environments import MacBudget
from evonnx.latency import LatencySettings
from evonnx.model.graph import constant_values, to_graph
from evonnx.model.inputs import apply_input_shapes
from evonnx.model.textio import write_text_atomic
from evonnx.pruning.analysis import analyze
from evonnx.pruning.metrics import compute_metrics
from evonnx.pruning.plan import branch_plan
from evonnx.pruning.surgery import apply_plan
from evonnx.runtimes import RuntimeSettings, make_runtime
from evonnx.runtimes.base import Runtime

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "speedup.json"
NETWORKS: dict[str, tuple[str, Callable[[], nn.Module], int]] = {
    "resnet56": ("ResNet-56", lambda: ResNetCifar(9), 32),
    "vgg16": ("VGG-16-BN", VGGCifar, 32),
    "mobilenetv2": ("MobileNetV2", MobileNetV2Cifar, 32),
    "resnet50": ("ResNet-50", ResNet50, 224),
}

TESTS = Path(__file__).resolve().parent.parent / "tests"
LOOKALIKES: dict[str, tuple[str, str, str, tuple[int, ...]]] = {
    "yolov8": ("YOLOv8-style @320", "zoo_real", "yolov8", (1, 3, 320, 320)),
    "yolox": ("YOLOX-style @320", "zoo_lookalikes", "yolox", (1, 3, 320, 320)),
    "dbnet": ("DB-style @320", "zoo_real", "dbnet", (1, 3, 320, 320)),
    "picodet": ("PicoDet-style @320", "zoo_lookalikes", "picodet:2", (1, 3, 320, 320)),
    "svtr": ("SVTR/CTC recognizer 48x320", "zoo_lookalikes", "svtr", (1, 3, 48, 320)),
    "crnn": ("CRNN recognizer 32x320", "zoo_lookalikes", "crnn", (1, 3, 32, 320)),
}
"""Look-alikes of real graphs (tests/zoo_real.py, tests/zoo_lookalikes.py): exported with
symbolic batch and spatial (detectors) or width (recognizers) axes, measured at a real input
size given as the user gives it (``--input-shape x=...``). ``fn:k`` builds ``fn(k)``: the
PicoDet-style graph at width scale 2 (0.3 G MACs at 320, PicoDet-XS's size; the tests' scale 4
has 80 M MACs, so small that per-node costs dominate and no 2x is left in it)."""
RECOGNIZERS = ("svtr", "crnn")
"""Look-alikes whose targets are ``--recognizer-targets`` (a recognizer's LSTM or attention
is not prunable, so less is there to remove)."""


MNIST_BATCH = 32
PREDICTOR = (
    "How the latency is predicted: single layers timed alone (the lookup table) miss what the "
    "graph costs around them (onnxruntime's layout reorders a layer pays alone but not inside "
    "the graph, elementwise ops, per-node costs), so the predictor is a non-negative linear fit "
    "of the table's layer sum, the MACs, the activations, the live layers and the Adds that "
    "removed branches leave behind, on the parent and "
    "calibration offspring (thinned, branches removed) measured side by side, refitted on "
    "every later measurement; the error is that of the offspring's speed-up predicted before "
    "it was measured, times the ancestor's latency in the comparison run."
)
HEADER = (
    "| network | threads | batch | busy | load | target | method | MAC ratio "
    "| ancestor / offspring ms | speed-up | realized | table error | runs | fit s |\n"
    + "| --- " * 14
    + "|"
)
BAND = (0.9, 1.25)
"""Goal: a latency offspring's realized speed-up (measured / target) lies in this band."""


@dataclass(frozen=True)
class Net:
    """A benchmark network: its torch module (the exported weights) and ONNX graph."""

    name: str
    module: nn.Module | None
    model: onnx.ModelProto
    size: int
    key: str = ""


def build(key: str, seed: int = 0, dynamic: bool = True) -> Net:
    """The network with random weights and BatchNorm statistics, exported (legacy exporter;
    with ``dynamic``, a symbolic batch axis, as exports usually are); a look-alike at its
    input size."""
    if key in LOOKALIKES:
        name, module_name, spec, shape = LOOKALIKES[key]
        fn, _, arg = spec.partition(":")
        sys.path.insert(0, str(TESTS))
        import importlib

        source = importlib.import_module(module_name)
        raw = getattr(source, fn)(*([int(arg)] if arg else []))
        inp = raw.graph.input[0].name
        return Net(name, None, apply_input_shapes(raw, {inp: shape}), shape[-1], key)
    name, factory, size = NETWORKS[key]
    torch.manual_seed(seed)
    module = factory().eval()
    randomize_bn(module, seed)
    return Net(name, module, export(module, size, dynamic), size, key)


def export(module: nn.Module, size: int, dynamic: bool = True) -> onnx.ModelProto:
    buf = io.BytesIO()
    axes = {"x": {0: "N"}, "y": {0: "N"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = torch.randn(1, 3, size, size)
        torch.onnx.export(
            module.eval(), (x,), buf, dynamo=False, opset_version=17,  # type: ignore[arg-type]
            input_names=["x"], output_names=["y"], dynamic_axes=axes,
        )  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


def macs(model: onnx.ModelProto) -> int:
    return compute_metrics(model).macs


def module_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Conv and Linear MACs of one sample, counted as :func:`evonnx.pruning.metrics.compute_metrics`
    counts the exported graph's Conv/Gemm layers (so ratios compare like with like)."""
    total = 0

    def hook(mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            total += out[0].numel() * mod.weight[0].numel()  # per output: cin/groups * kh * kw
        elif isinstance(mod, nn.Linear):
            total += out[0].numel() * mod.in_features

    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        module(x[:1])
    for h in handles:
        h.remove()
    return total


TP_TOLERANCE = 0.02
"""Torch-Pruning's offspring is within 2% of the latency offspring's MAC count."""


def torch_pruning(net: Net, target_macs: int) -> tuple[onnx.ModelProto, int] | None:
    """Torch-Pruning L1 offspring at ``target_macs`` MACs (within :data:`TP_TOLERANCE`, or the
    closest of a few tries) and its pruning steps; None if Torch-Pruning is not installed.

    MACs are counted on the torch module exactly as on the ONNX graph (:func:`module_macs`);
    the uniform ratio is solved by a secant on ``MACs = base * (1 - ratio) ** k``.
    """
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    module = net.module
    if module is None:  # a look-alike: only its ONNX graph
        return None
    x = torch.randn(1, 3, net.size, net.size)
    base = module_macs(module, x)

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(module)
        head = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
        imp = tp.importance.MagnitudeImportance(p=1)
        tp.pruner.MagnitudePruner(
            m, x, importance=imp, pruning_ratio=ratio, ignored_layers=head
        ).step()
        return m

    lo, hi = 0.0, 0.95  # MACs(lo) > target >= MACs(hi)
    ratio = 1.0 - (target_macs / base) ** 0.5  # MACs shrink about quadratically
    best: tuple[float, nn.Module] | None = None
    tries = 0
    while tries < 6:
        tries += 1
        m = pruned(ratio)
        count = module_macs(m, x)
        miss = abs(count / target_macs - 1.0)
        if best is None or miss < best[0]:
            best = (miss, m)
        if miss <= TP_TOLERANCE:
            break
        lo, hi = (ratio, hi) if count > target_macs else (lo, ratio)
        k = np.log(count / base) / np.log(1.0 - ratio) if 0 < count < base else 2.0
        guess = 1.0 - (target_macs / base) ** (1.0 / max(k, 1e-3))
        ratio = guess if lo < guess < hi else (lo + hi) / 2
    assert best is not None
    return export(best[1], net.size), tries


@dataclass
class Reuse:
    """Offspring that do not depend on the thread count or batch, built once per network."""

    fixed: dict[float, dict[str, onnx.ModelProto]] = field(default_factory=dict)
    """MACs and branches offspring per target speed-up."""
    tp: list[tuple[int, onnx.ModelProto]] = field(default_factory=list)
    """Torch-Pruning offspring with their MAC counts."""


def offspring(
    net: Net,
    target: float,
    latency: LatencySettings,
    reuse: Reuse,
    log: Callable[[str], None],
    methods: tuple[str, ...] = ("latency", "MACs", "branches", "Torch-Pruning"),
) -> tuple[dict[str, onnx.ModelProto], dict[str, Any]]:
    """Offspring of every method at one target speed-up, and the latency one's prediction."""
    out: dict[str, onnx.ModelProto] = {}
    t0 = time.perf_counter()
    lat = api.synthesize_latency(
        net.model, target, latency, EncodingConfig(synapse_level=False, depth=True)
    )
    out["latency"] = lat.model
    assert lat.latency is not None
    info = {  # predicted before the offspring was first measured with this prediction
        "predicted_speedup": lat.latency.before_ms / (lat.latency.predicted_ms or float("nan")),
        "fit_speedup": lat.latency.speedup,
        "fit_s": time.perf_counter() - t0,
    }
    log(f"  latency offspring: {time.perf_counter() - t0:.1f} s, fit {lat.latency.speedup:.2f}x")
    if methods == ("latency",):
        return out, info
    if target not in reuse.fixed:
        fixed = {}
        mac_env = EncodingConfig(environment=MacBudget(1.0 / target), synapse_level=False)
        fixed["MACs"] = api.synthesize(net.model, mac_env).model
        analysis = analyze(net.model)
        if any(g.removable for g in analysis.groups):
            plan = branch_plan(analysis, constant_values(to_graph(net.model)), target)
            fixed["branches"] = apply_plan(net.model, analysis, plan)
        reuse.fixed[target] = fixed
    out.update(reuse.fixed[target])
    if net.module is None:
        return out, info
    t0 = time.perf_counter()
    want = macs(lat.model)
    near = [m for n, m in reuse.tp if abs(n / want - 1.0) <= TP_TOLERANCE]
    if near:
        out["Torch-Pruning"] = near[0]
    else:
        tp_out = torch_pruning(net, want)
        if tp_out is not None:
            out["Torch-Pruning"], tries = tp_out
            reuse.tp.append((macs(out["Torch-Pruning"]), out["Torch-Pruning"]))
            log(f"  Torch-Pruning offspring: {time.perf_counter() - t0:.1f} s, {tries} tries")
    return out, info


MIN_RUNS = 5
"""Fewest timed runs per model of a comparison (slow models get few within ``--time-cap``)."""


def run_counts(ancestor_ms: float, args: argparse.Namespace) -> tuple[int, int, int]:
    """Timed runs of the comparison and of the fit, and warm-up rounds, for a model that
    takes about ``ancestor_ms``: about ``--time-cap`` seconds per model for the comparison (a
    quarter of it while fitting), at most ``--runs`` (``--fit-runs``), at least
    :data:`MIN_RUNS` (3 while fitting); one warm-up round for models slower than 100 ms."""
    per_model = args.time_cap * 1e3 / max(ancestor_ms, 1e-3)
    runs = int(min(args.runs, max(MIN_RUNS, per_model)))
    fit_runs = int(min(args.fit_runs, max(3, per_model / 4)))
    return runs, fit_runs, 3 if ancestor_ms < 100 else 1


def measure_network(
    net: Net, args: argparse.Namespace, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """One record per (threads, batch, target, method), quiet and (``--busy``) with a
    CPU-bound neighbour on core 0 running through the fit and the comparison."""
    records = []
    threads_list = args.threads if args.runtime == "ort-cpu" else [0]
    targets = args.recognizer_targets if net.key in RECOGNIZERS else args.targets
    reuse = Reuse()
    for busy in args.busy_modes:
        for threads in threads_list:
            for batch in args.batches:
                for target in targets:
                    if busy:
                        with neighbour():
                            records += measure_one(
                                net, args, threads, batch, target, reuse, log, True
                            )
                    else:
                        records += measure_one(net, args, threads, batch, target, reuse, log, False)
    return records


def measure_one(
    net: Net,
    args: argparse.Namespace,
    threads: int,
    batch: int,
    target: float,
    reuse: Reuse,
    log: Callable[[str], None],
    busy: bool,
) -> list[dict[str, Any]]:
    """The records of one network, thread count, batch size and target."""
    probe = RuntimeSettings(
        args.runtime, threads=threads, fp16=args.fp16, warmup=1, runs=2, statistic=args.statistic
    )
    (probe_ms,) = make_runtime(probe).latencies([net.model], batch)
    runs, fit_runs, warmup = run_counts(probe_ms, args)
    fit = replace(probe, warmup=warmup, runs=fit_runs)
    latency = LatencySettings(fit, batch=batch)
    compare = make_runtime(replace(fit, runs=runs))
    head = {
        "network": net.name, "runtime": args.runtime + (" fp16" if args.fp16 else ""),
        "threads": threads, "batch": batch, "target_speedup": target, "busy": busy,
        "statistic": args.statistic, "load": os.getloadavg()[0],
    }  # fmt: skip
    log(
        f"{net.name} threads {threads or 'default'} batch {batch} target {target}x"
        f"{' busy' if busy else ''} (ancestor about {probe_ms:.3g} ms: {runs} runs, {fit_runs} "
        f"while fitting; load {head['load']:.1f})"
    )
    try:
        models, info = offspring(net, target, latency, reuse, log, tuple(args.methods))
    except EvonnxError as exc:  # out of reach, or not supported yet: a row that says so
        log(f"  refused: {exc}")
        return [{**head, "method": "latency", "error": str(exc)}]
    ancestor_ms, speedups = compared(compare, [net.model, *models.values()], batch)
    base_macs = macs(net.model)
    out = []
    for (method, model), speedup in zip(models.items(), speedups, strict=True):
        ms = ancestor_ms / speedup
        rec = {
            **head,
            "method": method,
            "mac_ratio": base_macs / macs(model),
            "measured_speedup": speedup,
            "realized": speedup / target,
            "latency_ms": ms,
            "ancestor_ms": ancestor_ms,
            "runs": runs,
        }
        if method == "latency":  # out of sample: this run's ancestor over the
            pred = ancestor_ms / info["predicted_speedup"]  # predicted speed-up
            rec["predicted_speedup"] = info["predicted_speedup"]
            rec["predicted_ms"] = pred
            rec["prediction_error"] = abs(pred - ms) / ms
            rec["fit_s"] = info["fit_s"]
        out.append(rec)
    return out


COMPARISONS = 3
"""Side-by-side comparisons per row; its speed-ups are their medians (one comparison on a
2-core VM can fall into a spell of the host's contention and read 30% off)."""


def compared(
    runtime: Runtime, models: list[onnx.ModelProto], batch: int
) -> tuple[float, list[float]]:
    """The ancestor's (first model's) latency and every other model's speed-up over it: the
    medians of :data:`COMPARISONS` side-by-side comparisons."""
    readings = np.array([runtime.latencies(models, batch) for _ in range(COMPARISONS)])
    speedups = np.median(readings[:, :1] / readings[:, 1:], axis=0)
    return float(np.median(readings[:, 0])), [float(x) for x in speedups]


def mnist_runs(args: argparse.Namespace, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """LeNet-5 on the MNIST subset, evolved under the latency and the MAC environments."""
    from evonnx.evolution.lineage import EvolveConfig
    from evonnx.retrain.demo import train_demo_ancestor

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


TP_GOAL_NETWORKS = ("ResNet-56", "MobileNetV2")
"""Where evonnx's latency offspring must be 1.3x as fast as Torch-Pruning's (issue 9)."""


def versus_torch_pruning(records: list[dict[str, Any]]) -> str:
    """The latency offspring's measured speed-up over Torch-Pruning's at the same MACs."""
    ratios: dict[str, list[float]] = {}
    macs_off: list[float] = []
    by_key: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for r in records:
        if "error" not in r:
            key = (r["network"], r["threads"], r["batch"], r["target_speedup"])
            by_key.setdefault(key, {})[r["method"]] = r
    for (network, *_), rows in by_key.items():
        if "latency" in rows and "Torch-Pruning" in rows:
            lat, tp = rows["latency"], rows["Torch-Pruning"]
            ratios.setdefault(network, []).append(lat["measured_speedup"] / tp["measured_speedup"])
            macs_off.append(abs(tp["mac_ratio"] / lat["mac_ratio"] - 1.0))
    if not ratios:
        return ""
    parts = [
        f"{net} {min(v):.2f}-{max(v):.2f}" + (" (goal >= 1.3)" if net in TP_GOAL_NETWORKS else "")
        for net, v in ratios.items()
    ]
    return (
        "Latency offspring's measured speed-up over Torch-Pruning's at the same MAC count "
        f"(MAC counts within {100 * max(macs_off):.1f}%): {'; '.join(parts)}.\n"
    )


def _row(r: dict[str, Any]) -> str:
    lead = (
        f"| {r['network']} | {r['threads'] or 'default'} | {r['batch']} | "
        f"{'yes' if r.get('busy') else 'no'} | {r.get('load', float('nan')):.1f} | "
        f"{r['target_speedup']:g}x | {r['method']} | "
    )
    if "error" in r:
        return lead + f"refused: {r['error']} | | | | | | |"
    err = f"{100 * r['prediction_error']:.1f}%" if "prediction_error" in r else ""
    fit_s = f"{r['fit_s']:.0f}" if "fit_s" in r else ""
    return lead + (
        f"{r['mac_ratio']:.2f}x | {r['ancestor_ms']:.3g} / {r['latency_ms']:.3g} | "
        f"{r['measured_speedup']:.2f}x | **{r['realized']:.2f}** | {err} | {r['runs']} | "
        f"{fit_s} |"
    )


def summary(records: list[dict[str, Any]]) -> str:
    """Realized band, refusals and prediction error of the latency rows."""
    rows = [r for r in records if r["method"] == "latency"]
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return ""
    real = [r["realized"] for r in ok]
    inside = sum(BAND[0] <= v <= BAND[1] for v in real)
    errors = [r["prediction_error"] for r in ok]
    busy = [r["realized"] for r in ok if r.get("busy")]
    busy_text = f"; busy rows {min(busy):.2f}-{max(busy):.2f}" if busy else ""
    return (
        f"Latency offspring: realized {min(real):.2f}-{max(real):.2f} of the target{busy_text}; "
        f"{inside} of {len(rows)} latency rows within {BAND[0]}-{BAND[1]} (goal: all), "
        f"{len(rows) - len(ok)} refused; lookup-table prediction error median "
        f"{100 * float(np.median(errors)):.1f}% (max {100 * max(errors):.1f}%; goal <= 10%). "
        f"{PREDICTOR}"
    )


def markdown(records: list[dict[str, Any]], mnist: list[dict[str, Any]], meta: str) -> str:
    rows = [_row(r) for r in records]
    tp_note = (
        ""
        if any(r["method"] == "Torch-Pruning" for r in records)
        or all(r["method"] == "latency" for r in records)
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
    return f"""## Measured speed-up at a target (`benchmarks/speedup.py`)

{meta}

{summary(records)}
{versus_torch_pruning(records)}
{tp_note}
{HEADER}
{chr(10).join(rows)}
{mnist_table}"""


def _csv(text: str, cast: Callable[[str], Any]) -> list[Any]:
    return [cast(v) for v in text.split(",") if v]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--networks",
        default="resnet56,vgg16,mobilenetv2,resnet50,yolov8,yolox,dbnet,picodet,svtr,crnn",
    )
    parser.add_argument("--runtime", default="ort-cpu", help="ort-cpu, torch-cuda, ...")
    parser.add_argument("--fp16", action="store_true", help="fp16 (torch-cuda, tensorrt)")
    parser.add_argument(
        "--statistic", default="min", choices=("min", "median"),
        help="latency of a model: its fastest run (default: robust on a shared machine) or median",
    )  # fmt: skip
    parser.add_argument("--threads", default="1,0", help="ort-cpu threads (0: default)")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--targets", default="2,4")
    parser.add_argument(
        "--recognizer-targets", default="1.5", help="targets of the recognizer look-alikes"
    )
    parser.add_argument(
        "--methods", default="latency,MACs,branches,Torch-Pruning",
        help="offspring to build (latency alone is fastest)",
    )  # fmt: skip
    parser.add_argument(
        "--busy", default="no", choices=("no", "yes", "both"),
        help="measure with a CPU-bound neighbour process on core 0 (both: quiet rows, then "
        "busy rows)",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, default=50, help="timed runs of the comparison")
    parser.add_argument("--fit-runs", type=int, default=20, help="timed runs while fitting")
    parser.add_argument(
        "--time-cap", type=float, default=10.0,
        help="seconds of timed runs per model and comparison (fewer runs for slow models)",
    )  # fmt: skip
    parser.add_argument("--generations", type=int, default=6, help="MNIST generations")
    parser.add_argument("--no-mnist", action="store_true", help="skip the trained LeNet-5")
    parser.add_argument("--no-write", action="store_true", help="print, do not update docs")
    parser.add_argument(
        "--append", action="store_true", help="add the rows to docs/results/speedup.json's"
    )
    args = parser.parse_args()
    args.threads = _csv(args.threads, int)
    args.batches = _csv(args.batches, int)
    args.targets = _csv(args.targets, float)
    args.recognizer_targets = _csv(args.recognizer_targets, float)
    args.methods = _csv(args.methods, str)
    args.busy_modes = {"no": [False], "yes": [True], "both": [False, True]}[args.busy]
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
    command = (
        f"`python benchmarks/speedup.py {' '.join(sys.argv[1:])}` (1-minute load "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after, "
        f"{time.perf_counter() - t0:.0f} s)"
    )
    commands = [command]
    if args.append and RESULTS.exists():  # one table from several runs of this session
        old = json.loads(RESULTS.read_text())
        records = old.get("rows", []) + records
        mnist = old.get("mnist", []) + mnist
        commands = old.get("commands", []) + commands
    body = markdown(records, mnist, meta_text(args, commands))
    print(body)
    if not args.no_write:
        update_section("speedup", body)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        data = {"meta": meta_text(args, commands), "commands": commands, "rows": records,
                "mnist": mnist}  # fmt: skip
        write_text_atomic(RESULTS, json.dumps(data, indent=1) + "\n")


def meta_text(args: argparse.Namespace, commands: list[str]) -> str:
    return (
        f"Runtime {args.runtime}{' fp16' if args.fp16 else ''} (onnxruntime {ort.__version__}) "
        f"on {machine()}; random weights and BatchNorm statistics, legacy exporter with a "
        f"symbolic batch axis (look-alikes: symbolic spatial or width axes too, given at the "
        f"input size in the network column, as `--input-shape` gives them; the PicoDet-style "
        f"one at width scale 2, 0.3 G MACs at 320 like PicoDet-XS), CIFAR networks at "
        f"32x32, ResNet-50 at 224x224; default settings of the latency environment (depth "
        f"clusters on, `{args.statistic}` statistic). Busy rows: a CPU-bound neighbour process "
        f"pinned to core 0 runs through the fit and the comparison. "
        f"Each speed-up is the median of {COMPARISONS} side-by-side comparisons (from stop 28), "
        f"each the {args.statistic} of up to {args.runs} interleaved runs per model, fewer "
        f"for slow models (about {args.time_cap:g} s of timed runs per model and comparison, at "
        f"least {MIN_RUNS}: the runs column; {args.fit_runs} or fewer while fitting). The "
        f"machine is shared with other engineers' jobs (the load column is the 1-minute load "
        f"when the row started, on 2 cores). Commands: {'; '.join(commands)}."
    )


if __name__ == "__main__":
    main()
