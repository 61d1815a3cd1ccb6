"""The evolution loop: synthesize, physically prune, retrain, evaluate, repeat.

Each generation ``g`` samples ``population`` offspring from generation ``g - 1`` with the
genetic encoding, removes their dead clusters through the surgery pass, retrains them in
torch (inheriting the surviving weights or from scratch), writes the trained weights back
into the ONNX graph and scores the written graph with onnxruntime. The fittest offspring
becomes ``DIR/gen_NNN.onnx``. Every file is written atomically and ``lineage.json`` is only
updated after the generation's model is on disk, so a killed run resumes from the last
finished generation. The run holds the folder's lock (:mod:`evonnx.evolution.rundir`) throughout; a
resume removes a killed run's temporaries, rewrites the lineage files it may have left stale
and refuses data whose fingerprint differs from the one in ``lineage.json``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from evonnx.data.dataset import Dataset
from evonnx.errors import (
    LatencyBudgetError,
    NonFiniteError,
    OutputMismatchError,
    RunDirectoryError,
    TaskError,
    UnsupportedModelError,
)
from evonnx.evolution.lineage import RESUMABLE, GenerationRecord, Lineage
from evonnx.evolution.rundir import leftovers, run_folder, sweep
from evonnx.evolution.speed import (
    Measures,
    SpeedProbe,
    describe_probe,
    slower_despite_fewer_macs,
    warn_if_slower,
)
from evonnx.evolution.validate import (
    check_finite_weights,
    check_float32,
    check_resources,
    check_round_to,
    warn_zero_layers,
)
from evonnx.execute.executors import Executor, make_executor
from evonnx.execute.jobs import OUTPUTS_CHANGED, JobResult, OffspringJob, run_checked
from evonnx.execute.signals import InterruptWatch, watch_interrupts
from evonnx.genetic.sample import synthesize
from evonnx.latency.run import RunLatency
from evonnx.model.batch import batch_info, dynamic_batch
from evonnx.model.files import load_model, save_model
from evonnx.model.inputs import fill_symbolic_dims, sample_shapes
from evonnx.model.memory import check_batch_fits
from evonnx.model.textio import write_bytes_atomic, write_text_atomic
from evonnx.pruning.analysis.driver import analyze
from evonnx.pruning.metrics import ModelMetrics, compute_metrics, efficiency
from evonnx.pruning.surgery import apply_plan
from evonnx.retrain.guard import user_code
from evonnx.retrain.task import Split, Task, split_data

if TYPE_CHECKING:
    from evonnx.evolution.settings import EvolveConfig
    from evonnx.latency.budget import Target
    from evonnx.pruning.groups import Analysis

logger = logging.getLogger(__name__)

ProgressFn = Callable[[GenerationRecord], None]


def model_sha256(model: onnx.ModelProto) -> str:
    """Content hash of a model (identifies the ancestor of a run)."""
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def generation_seed(seed: int, generation: int, candidate: int) -> int:
    """Independent, reproducible seed of one offspring."""
    state = np.random.SeedSequence([seed, generation, candidate]).generate_state(1)
    return int(state[0])


def evolve(
    ancestor: onnx.ModelProto | str | Path,
    data: Dataset | Task,
    out_dir: str | Path,
    config: EvolveConfig,
    resume: bool = False,
    progress: bool = True,
    on_generation: ProgressFn | None = None,
) -> Lineage:
    """Evolve ``ancestor`` until ``config.generations`` or the score budget (``max_drop``) is
    spent.

    Args:
        ancestor: The generation-1 model (a ModelProto or a path).
        data: A :class:`~evonnx.retrain.task.Task`, or a data set for the built-in
            :class:`~evonnx.retrain.task.ClassificationTask` (``config.val_fraction`` of its
            training
            split held out for validation). Scores are computed on the written ONNX files.
        out_dir: Run directory (``gen_NNN.onnx``, ``lineage.json``/``.csv``, ``report.md``).
        config: Run settings.
        resume: Continue the run already in ``out_dir``.
        progress: Show progress bars on a terminal.
        on_generation: Called with each record: those already finished (generation 1, or
            the generations of a resumed run), then each new one.

    Returns:
        The lineage of every finished generation.

    Raises:
        RunDirectoryError: ``out_dir`` holds another run (or a run while ``resume`` is off).
        DataError: The data does not fit the model.
        UnsupportedModelError: Nothing in the model can be pruned.
    """
    model = ancestor if isinstance(ancestor, onnx.ModelProto) else load_model(ancestor)
    check_finite_weights(model, "the ancestor")
    check_float32(model)
    out = Path(out_dir)
    sha = model_sha256(model)
    model = _trainable(model)
    name = data.name if isinstance(data, (Task, Dataset)) else "task"
    with user_code(name, "has_validation"):
        split = split_data(data, config.selection, config.seed)
    with user_code(name, "train_batches()"):
        model = fill_symbolic_dims(model, sample_shapes(split.task.train_batches()))
    _check_fit(model, split.task, config)
    check_resources(config)
    if config.measurement() is not None:
        check_batch_fits(model, config.latency_batch)
    # every resource before the first write: a Ray cluster is reached (or started) here
    executor = make_executor(config.execution, progress, config.threads, config.population)
    try:
        with watch_interrupts() as watch, run_folder(out, resume):
            return _run(model, sha, split, out, config, resume, executor, watch, on_generation)
    finally:
        executor.close()


def _run(
    model: onnx.ModelProto,
    sha: str,
    split: Split,
    out: Path,
    config: EvolveConfig,
    resume: bool,
    executor: Executor,
    watch: InterruptWatch,
    on_generation: ProgressFn | None,
) -> Lineage:
    """The generations of a run, in its locked folder."""
    lineage = _start(model, sha, split, out, config, resume)
    first_model = load_model(out / lineage.records[0].file)
    gen1 = compute_metrics(first_model)
    warn_zero_layers(gen1)
    hw = _run_latency(config, first_model, executor)  # on Ray, measured by jobs of its own
    probe = hw if hw is not None else _speed_probe(config, first_model)
    if probe is not None and lineage.records[0].latency_ms is None:
        first = _measured(probe, lineage.records[0], first_model)
        lineage = replace(lineage, records=(first, *lineage.records[1:]))
        if hw is not None or not _should_continue(lineage):  # else with generation 2
            _write_lineage(out, lineage)
    if on_generation is not None:
        for done in lineage.records:
            on_generation(done)
    parent, parent_gen = None, 0
    while _should_continue(lineage):
        watch.check()  # a Ctrl-C some library swallowed still stops the run here
        gen = lineage.records[-1].generation + 1
        base = lineage.best  # breed from the latest generation within max_drop
        if parent is None or base.generation != parent_gen:
            parent = load_model(out / base.file)
        try:
            record, parent = _generation(
                parent, gen, split, config, gen1, out, executor, hw, base.generation, probe,
                first_model, base.speedup,
            )  # fmt: skip
        except LatencyBudgetError as exc:  # no faster offspring exists: evolution ends
            logger.warning("stopping before generation %d: %s", gen, exc)
            break
        parent_gen = gen
        lineage = replace(lineage, records=(*lineage.records, record))
        _write_lineage(out, lineage)
        if on_generation is not None:
            on_generation(record)
    return lineage


def _trainable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ancestor with a symbolic batch dimension, so it trains at any batch size."""
    if batch_info(model).fixed is None:
        return model
    logger.info("the ancestor hard-codes its batch size; generation 1 gets a dynamic batch")
    return dynamic_batch(model)


def _check_fit(model: onnx.ModelProto, task: Task, config: EvolveConfig) -> None:
    with user_code(task.name, "check()"):
        task.check(model)
    analysis = analyze(model)
    check_round_to(analysis, config.round_to)
    if not analysis.prunable_groups:
        raise UnsupportedModelError(
            "nothing in this model can be pruned (run `evonnx inspect` to see why each "
            "channel group is frozen)"
        )


def _should_continue(lineage: Lineage) -> bool:
    last = lineage.records[-1]
    if last.generation >= lineage.config.generations:
        return False
    floor = lineage.records[0].fitness - lineage.config.max_drop
    over = 0
    for r in reversed(lineage.records):
        if r.fitness >= floor - 1e-12:
            break
        over += 1
    if over >= lineage.config.patience:
        logger.info("%d generations in a row fell below the score floor; stopping", over)
        return False
    return True


def _start(
    model: onnx.ModelProto,
    sha: str,
    data: Split,
    out: Path,
    config: EvolveConfig,
    resume: bool,
) -> Lineage:
    path = out / "lineage.json"
    if path.exists():
        if not resume:
            raise RunDirectoryError(
                f"{out} already holds an evolution run; pass --resume to continue it or "
                "choose another output directory"
            )
        lineage = _resumed(path, sha, data.task, config)
        sweep(out)  # the folder holds our run: its killed writes' temporaries go
        _write_lineage(out, lineage)  # a kill may have left the csv, report or plot behind
        return lineage
    ours, others = leftovers(out)
    if others:
        raise RunDirectoryError(
            f"{out} is not empty and holds no evolution run (lineage.json): "
            f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}"
        )
    if ours and not resume:
        raise RunDirectoryError(
            f"{out} holds a run that stopped before generation 1 was recorded; pass --resume "
            "to start it again there, or choose another output directory"
        )
    sweep(out)
    if resume:
        logger.warning("%s holds no finished generation; starting the run from generation 1", out)
    test, val = data.score_model(model)  # the task's errors come before the first write
    digest = _fingerprint(data.task)
    save_model(model, out / "gen_001.onnx")
    metrics = compute_metrics(model)
    first = _record(1, None, None, "gen_001.onnx", (test, val), metrics, metrics, (), ())
    first = replace(first, sha256=file_sha256(out / first.file))
    lineage = Lineage(sha, data.task.name, config, (first,), digest,
                      data.task.score_percent)  # fmt: skip
    _write_lineage(out, lineage)
    logger.info("generation 1 (ancestor): test score %.4f", test)
    return lineage


def _resumed(path: Path, sha: str, data: Task, config: EvolveConfig) -> Lineage:
    try:
        old = Lineage.from_dict(json.loads(path.read_text(), parse_constant=_no_constant))
    except (OSError, ValueError, RunDirectoryError) as exc:
        raise RunDirectoryError(
            f"{path} is not a readable evonnx lineage ({exc}); move the folder aside and "
            "start a new run"
        ) from exc
    missing = [r.file for r in old.records if not (path.parent / r.file).is_file()]
    if missing:
        raise RunDirectoryError(f"{path.parent} lacks {', '.join(missing)}, listed in {path.name}")
    changed_files = [
        r.file
        for r in old.records
        if r.sha256 is not None and file_sha256(path.parent / r.file) != r.sha256
    ]
    if changed_files:
        raise RunDirectoryError(
            f"{', '.join(changed_files)} in {path.parent} changed since the run wrote "
            f"{'it' if len(changed_files) == 1 else 'them'} (sha256 differs from {path.name}): "
            "restore the files or start a new run"
        )
    if old.ancestor_sha256 != sha:
        raise RunDirectoryError(f"{path.parent} holds a run of a different ancestor model")
    _check_same_data(old, data, path.parent)
    if config.encoding.min_fraction is None:  # not given: the run's own floor holds (lineages
        floor = old.config.encoding.min_fraction  # from before the default floor was None: 0.25)
        config = replace(config, encoding=replace(config.encoding, min_fraction=floor))
    before, now = old.config.options(), config.options()
    changed = [k for k in now if k not in RESUMABLE and before[k] != now[k]]
    if changed:
        raise RunDirectoryError(f"cannot resume with different settings: {', '.join(changed)}")
    logger.info("resuming after generation %d", old.records[-1].generation)
    # the task says how its score reads (a lineage from before the flag says accuracy)
    return replace(old, config=config, score_percent=data.score_percent)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a lineage may hold")


def _fingerprint(task: Task) -> str | None:
    with user_code(task.name, "fingerprint()"):
        digest = task.fingerprint()
    if digest is not None and not isinstance(digest, str):
        raise TaskError(f"task {task.name!r}: fingerprint() returned a {type(digest).__name__}")
    return digest


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (a generation file, as written)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_same_data(old: Lineage, task: Task, folder: Path) -> None:
    """Refuse to resume on other data: by content when both runs have a fingerprint."""
    digest = _fingerprint(task)
    if old.data_sha256 is None or digest is None:
        if old.data != task.name:
            raise RunDirectoryError(f"{folder} was evolved on {old.data!r}, not {task.name!r}")
        if digest is not None:
            logger.warning("%s has no data fingerprint; only the data's name is checked", folder)
        return
    if old.data_sha256 != digest:
        raise RunDirectoryError(
            f"{folder} was evolved on other data ({old.data!r}, sha256 {old.data_sha256[:12]}) "
            f"than {task.name!r} (sha256 {digest[:12]}); resume with the run's data or "
            "choose another output directory"
        )
    if old.data != task.name:
        logger.info("data %r has the content of the run's %r; resuming", task.name, old.data)


def _generation(
    parent: onnx.ModelProto,
    gen: int,
    data: Split,
    config: EvolveConfig,
    gen1: ModelMetrics,
    out: Path,
    executor: Executor,
    hw: RunLatency | None = None,
    parent_gen: int | None = None,
    probe: Measures | None = None,
    reference: onnx.ModelProto | None = None,
    parent_speedup: float | None = None,
) -> tuple[GenerationRecord, onnx.ModelProto]:
    """Breed, retrain and select one generation from ``parent`` (its record measured it
    ``parent_speedup`` times faster than the ancestor); every offspring's outputs must keep
    ``reference``'s names and shapes (the ancestor's; default ``parent``'s)."""
    analysis = analyze(parent)
    target = hw.target(parent, analysis) if hw is not None else None
    keep = hw.keep_for(parent, parent_speedup) if hw is not None and target is not None else None
    seeds = [generation_seed(config.seed, gen, k) for k in range(config.population)]
    teacher = _teacher(config, parent, reference or parent)
    jobs = [_offspring(parent, analysis, config, s, hw, target, teacher, keep) for s in seeds]
    candidates = run_checked(executor, jobs, data, reference or parent)
    fitness = [
        None if c.failed is not None else c.scores[0] if c.scores[1] is None else c.scores[1]
        for c in candidates
    ]
    alive = {k: f for k, f in enumerate(fitness) if f is not None}
    if not alive:
        why = candidates[0].failed or ""
        error = OutputMismatchError if why.startswith(OUTPUTS_CHANGED) else NonFiniteError
        hint = "" if error is OutputMismatchError else "lower --lr or check the task's loss; "
        raise error(
            f"generation {gen}: every offspring failed ({why}); {hint}the finished "
            f"generations are kept in {out}"
        )
    best = max(alive, key=alive.__getitem__)
    fittest = onnx.load_from_string(candidates[best].model)
    scores, seed = candidates[best].scores, candidates[best].seed
    record = _record(
        gen,
        gen - 1 if parent_gen is None else parent_gen,
        seed,
        f"gen_{gen:03d}.onnx",
        scores,
        gen1,
        compute_metrics(fittest),
        candidates,
        tuple(fitness),
    )
    probe = probe or hw
    if probe is not None:
        record = _measured(probe, record, fittest)
        warn_if_slower(record)
    save_model(fittest, out / record.file)
    record = replace(record, sha256=file_sha256(out / record.file))
    logger.info("generation %d: test score %.4f, A-E %.2fx", gen, scores[0], record.ae)
    return record, fittest


def _teacher(
    config: EvolveConfig, parent: onnx.ModelProto, ancestor: onnx.ModelProto
) -> bytes | None:
    """The model offspring distill from (``config.teacher``), serialized; ``None`` without
    distillation."""
    if config.distill is None:
        return None
    return (ancestor if config.teacher == "ancestor" else parent).SerializeToString()


def _offspring(
    parent: onnx.ModelProto,
    analysis: Analysis,
    config: EvolveConfig,
    seed: int,
    hw: RunLatency | None = None,
    target: Target | None = None,
    teacher: bytes | None = None,
    keep: float | None = None,
) -> OffspringJob:
    """Synthesize and prune one offspring: the job that retrains and scores it.

    With a latency budget (``target``), the offspring is measured on the runtime and trimmed
    until it fits (:func:`evonnx.latency.latency_offspring`), here in the driver, never
    beside a training job.
    """
    rng = np.random.default_rng(seed)
    if hw is not None and target is not None:
        offspring = hw.offspring(parent, analysis, config.encoding_config(), target, rng, keep)
    else:
        sampled = synthesize(parent, analysis, config.encoding_config(), rng)
        offspring = apply_plan(parent, analysis, sampled.plan, sampled.masks)
    frozen = tuple(sorted(analysis.frozen_initializers()))
    return OffspringJob(
        offspring.SerializeToString(),
        seed,
        config.training,
        teacher,
        frozen,
        config.gpus_per_offspring,
    )


def _run_latency(
    config: EvolveConfig, ancestor: onnx.ModelProto, executor: Executor | None = None
) -> RunLatency | None:
    """Latency measurement of the run (``None`` without a runtime or latency budget).

    Measurements go through ``executor``'s runtime: in the driver, or on Ray as jobs of
    their own (:mod:`evonnx.execute.ray_latency`); in either case only between training jobs.
    """
    settings = config.measurement()
    if settings is None:
        return None
    launch = executor.latency_runtime() if executor is not None else None
    return RunLatency(
        settings, ancestor, config.env == "latency", config.keep, config.target_speedup, launch
    )


def _speed_probe(config: EvolveConfig, first: onnx.ModelProto) -> SpeedProbe | None:
    """The default ``ort-cpu`` measurement (``config.measure``) of a run without a runtime."""
    return SpeedProbe(first) if config.measure else None


def _measured(hw: Measures, record: GenerationRecord, model: onnx.ModelProto) -> GenerationRecord:
    """``record`` with the model's measured latency and speed-up over the ancestor."""
    timing = hw.measure(model)
    if timing is None:
        return record
    return replace(record, latency_ms=timing[0], speedup=timing[1])


def _record(
    gen: int,
    parent: int | None,
    seed: int | None,
    file: str,
    scores: tuple[float, float | None],
    gen1: ModelMetrics,
    now: ModelMetrics,
    jobs: Sequence[JobResult],
    fitness: tuple[float | None, ...],
) -> GenerationRecord:
    """The record of generation ``gen``: the fittest's metrics, and its offspring ``jobs``'
    fitness, failures and training and scoring seconds (none for generation 1)."""
    eff = efficiency(gen1, now)
    return GenerationRecord(
        generation=gen,
        parent=parent,
        seed=seed,
        file=file,
        accuracy=scores[0],
        ae=eff.architectural,
        ce=eff.cluster,
        mac_ratio=eff.macs,
        params=now.params,
        synapses=now.synapses,
        nonzero_synapses=now.nonzero_synapses,
        clusters=now.clusters,
        live_clusters=now.live_clusters,
        macs=now.macs,
        train_seconds=sum(j.train_seconds for j in jobs),
        candidates=fitness,
        val_accuracy=scores[1],
        failures=tuple(j.failed for j in jobs),
        score_seconds=sum(j.score_seconds for j in jobs),
    )


# --------------------------------------------------------------------------- run files

CSV_FIELDS = [
    "generation", "parent", "seed", "file", "accuracy", "val_accuracy", "ae", "ce", "mac_ratio",
    "params", "synapses", "nonzero_synapses", "clusters", "live_clusters", "macs",
    "train_seconds", "latency_ms", "speedup", "score_seconds",
]  # fmt: skip


def _write_lineage(out: Path, lineage: Lineage) -> None:
    write_text_atomic(out / "lineage.json", json.dumps(lineage.to_dict(), indent=2) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in lineage.records:
        writer.writerow(asdict(r))
    write_text_atomic(out / "lineage.csv", buf.getvalue())
    write_text_atomic(out / "report.md", render_report(lineage))
    _plot(out / "efficiency.png", lineage)


def render_report(lineage: Lineage) -> str:
    """Markdown report with the paper-style tables (Gen, A-E, ACC and Gen, C-E, ACC)."""
    show = lineage.show_score
    col = _score_column(lineage)
    rows_ae = "\n".join(
        f"| {r.generation} | {r.ae:.2f}x | {show(r.accuracy)} |" for r in lineage.records
    )
    rows_ce = "\n".join(
        f"| {r.generation} | {r.ce:.2f}x | {show(r.accuracy)} |" for r in lineage.records
    )
    rows = "\n".join(
        f"| {r.generation} | {show(r.accuracy)} | {show(r.val_accuracy)} | {r.ae:.2f}x | "
        f"{r.ce:.2f}x | "
        f"{r.mac_ratio:.2f}x | {r.nonzero_synapses} | {r.live_clusters}/{r.clusters} | "
        f"{r.params} | {r.macs} | {r.train_seconds:.1f} |"
        for r in lineage.records
    )
    best = lineage.best
    return f"""# Evolution report

Ancestor sha256 `{lineage.ancestor_sha256[:16]}…`, task `{lineage.data}`; {col} is the task's score
({_score_kind(lineage)}) on the test split, computed with onnxruntime on each written
`gen_NNN.onnx`{"" if lineage.score_percent else ", shown as a plain number"}. {_selection(lineage)}

Best generation within the {_max_drop_phrase(lineage)}:
**{best.generation}** ({best.file}): A-E {best.ae:.2f}x, C-E {best.ce:.2f}x,
MACs {best.mac_ratio:.2f}x fewer,{_speed_words(best)}
{_score_word(lineage)} {show(best.accuracy, unit=True)}.

| Gen. | A-E | {col} |
| --- | --- | --- |
{rows_ae}

| Gen. | C-E | {col} |
| --- | --- | --- |
{rows_ce}
{_latency_table(lineage)}
## All metrics

| Gen. | {col} | VAL. | A-E | C-E | MACs ratio | nonzero syn. | live clusters | params | MACs | s |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Settings: `{json.dumps(lineage.config.to_dict())}`
"""


def _latency_table(lineage: Lineage) -> str:
    """Test score against measured speed-up over the ancestor (when latency was measured)."""
    measured = [r for r in lineage.records if r.speedup is not None]
    if not measured:
        return ""
    c = lineage.config
    rows = "\n".join(
        f"| {r.generation} | {r.speedup:.2f}x | {r.latency_ms:.4g} | {r.mac_ratio:.2f}x | "
        f"{lineage.show_score(r.accuracy)} |"
        for r in measured
    )
    where = (
        f"`{c.runtime or 'ort-cpu'}` at batch {c.latency_batch}"
        if c.measurement() is not None
        else describe_probe()
    )
    slow = [r.generation for r in measured if slower_despite_fewer_macs(r)]
    warning = (
        f"\n**Warning:** generation(s) {', '.join(map(str, slow))} have fewer MACs than "
        "generation 1 but were not measured faster.\n"
        if slow
        else ""
    )
    return f"""
Measured on {where}, each generation side by side with generation 1 (timings vary from run
to run; the model files do not):

| Gen. | speed-up | latency (ms) | MACs ratio | {_score_column(lineage)} |
| --- | --- | --- | --- | --- |
{rows}
{warning}"""


def _speed_words(record: GenerationRecord) -> str:
    """`` measured 1.23x faster,`` (nothing when not measured)."""
    return "" if record.speedup is None else f" measured {record.speedup:.2f}x faster,"


def _score_kind(lineage: Lineage) -> str:
    """What the score measures, in words."""
    if lineage.data.startswith("fidelity:"):
        return "fidelity to generation 1: top-1 agreement with it, see docs/tasks.md"
    return "top-1 for classification"


def _score_column(lineage: Lineage) -> str:
    """Column label of the test score: ``ACC.`` for an accuracy, else ``SCORE``."""
    return "ACC." if lineage.score_percent else "SCORE"


def _score_word(lineage: Lineage) -> str:
    return "accuracy" if lineage.score_percent else "score"


def _max_drop_phrase(lineage: Lineage) -> str:
    """``2.0-point accuracy budget`` or, for a plain score, ``budget of 0.02 on the score``."""
    drop = lineage.config.max_drop
    if lineage.score_percent:
        return f"{100 * drop:.1f}-point accuracy budget"
    return f"budget of {drop:g} on the score"


def _teacher_words(teacher: str) -> str:
    return "ancestor (generation 1)" if teacher == "ancestor" else "parent"


def _selection(lineage: Lineage) -> str:
    c = lineage.config
    distill = (
        ""
        if c.distill is None
        else f" Retraining distills from the {_teacher_words(c.teacher)} (T={c.distill})."
    )
    if c.select_on == "test":
        return (
            "Protocol: **test**. Offspring are selected, and the budget checked, on the test "
            "split (as in the paper)." + distill
        )
    return (
        "Protocol: **validation**. Offspring are selected, and the budget checked, on the "
        f"validation split (VAL.; for a data set {100 * c.val_fraction:.0f}% of its training "
        f"data). A generation over the budget is not bred from; the run stops after "
        f"{c.patience} in a row. "
        "The test score is reported, never used for a decision." + distill
    )


PLOT_LIMIT = 1e100
"""Scores beyond this magnitude are left out of ``efficiency.png`` (no axis holds them)."""


def _plot(path: Path, lineage: Lineage) -> None:
    """Efficiency vs test score per generation (skipped with a warning without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed; skipping %s", path.name)
        return
    scale = 100 if lineage.score_percent else 1
    floor = lineage.records[0].fitness - lineage.config.max_drop - 1e-12
    rows = [r for r in lineage.records if abs(scale * r.accuracy) < PLOT_LIMIT]
    ys = [scale * r.accuracy for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot([r.ae for r in rows], ys, "o-", label="A-E")
    ax.plot([r.ce for r in rows], ys, "s--", label="C-E")
    ax.plot([r.mac_ratio for r in rows], ys, "d-.", label="MACs ratio")
    speed = [(r.speedup, scale * r.accuracy) for r in rows if r.speedup is not None]
    if speed:
        ax.plot(*zip(*speed, strict=True), "^:", label="measured speed-up")
    over = [(r.ae, scale * r.accuracy) for r in rows if r.fitness < floor]
    if over:
        ax.plot(*zip(*over, strict=True), "rx", markersize=9, label="over budget")
    for r, y in zip(rows, ys, strict=True):
        ax.annotate(str(r.generation), (r.ae, y), textcoords="offset points", xytext=(3, 3),
                    fontsize=7)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("efficiency vs generation 1 (x, log scale)")
    ax.set_ylabel("top-1 accuracy (%), test" if lineage.score_percent else "score (test split)")
    word = "accuracy" if lineage.score_percent else "score"
    ax.set_title(f"evonnx: efficiency vs {word} per generation")
    ax.legend()
    buf = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buf, format="png")
    except (ValueError, OverflowError) as exc:  # scores no axis can hold
        logger.warning("cannot plot %s (%s); skipping it", path.name, exc)
        return
    finally:
        plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
