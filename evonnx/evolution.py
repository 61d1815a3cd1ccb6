"""The evolution loop: synthesize, physically prune, retrain, evaluate, repeat.

Each generation ``g`` samples ``population`` offspring from generation ``g - 1`` with the
genetic encoding, removes their dead clusters through the surgery pass, retrains them in
torch (inheriting the surviving weights or from scratch), writes the trained weights back
into the ONNX graph and scores the written graph with onnxruntime. The fittest offspring
becomes ``DIR/gen_NNN.onnx``. Every file is written atomically and ``lineage.json`` is only
updated after the generation's model is on disk, so a killed run resumes from the last
finished generation.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from evonnx.analysis import analyze
from evonnx.converters import to_torch, write_back
from evonnx.data import Dataset, check_matches, stratified_split
from evonnx.deploy.shapes import batch_info, dynamic_batch
from evonnx.encoding import efficiency, synthesize
from evonnx.errors import UnsupportedModelError
from evonnx.graph import load_model, save_model
from evonnx.groups import Analysis
from evonnx.lineage import (
    RESUMABLE,
    EvolveConfig,
    GenerationRecord,
    Lineage,
    RunDirectoryError,
)
from evonnx.metrics import ModelMetrics, compute_metrics
from evonnx.retrain import TrainConfig, evaluate_onnx, train
from evonnx.surgery import apply_plan
from evonnx.textio import write_bytes_atomic, write_text_atomic

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
    data: Dataset,
    out_dir: str | Path,
    config: EvolveConfig,
    resume: bool = False,
    progress: bool = True,
    on_generation: ProgressFn | None = None,
) -> Lineage:
    """Evolve ``ancestor`` until ``config.generations`` or the accuracy budget is spent.

    Args:
        ancestor: The generation-1 model (a ModelProto or a path).
        data: Training and test data; accuracy is measured with onnxruntime on the test split.
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
    out = Path(out_dir)
    sha = model_sha256(model)
    model = _trainable(model)
    _check_fit(model, data)
    split = split_data(data, config)
    lineage = _start(model, sha, split, out, config, resume)
    parent = load_model(out / lineage.records[-1].file)
    gen1 = compute_metrics(load_model(out / lineage.records[0].file))
    if on_generation is not None:
        for done in lineage.records:
            on_generation(done)
    while _should_continue(lineage):
        gen = lineage.records[-1].generation + 1
        record, parent = _generation(parent, gen, split, config, gen1, out, progress)
        lineage = replace(lineage, records=(*lineage.records, record))
        _write_lineage(out, lineage)
        if on_generation is not None:
            on_generation(record)
    return lineage


@dataclass(frozen=True)
class Split:
    """Data of a run: what offspring train on, the test split, the optional validation split."""

    train: Dataset
    test: tuple[np.ndarray, np.ndarray]
    val: tuple[np.ndarray, np.ndarray] | None

    def score(self, model: onnx.ModelProto) -> tuple[float, float | None]:
        """(test accuracy, validation accuracy or None), measured with onnxruntime."""
        acc = evaluate_onnx(model, *self.test)
        return acc, None if self.val is None else evaluate_onnx(model, *self.val)


def split_data(data: Dataset, config: EvolveConfig) -> Split:
    """Hold out ``config.val_fraction`` of the training split (stratified, seeded)."""
    test = (data.x_test, data.y_test)
    if config.val_fraction == 0:
        return Split(data, test, None)
    fit, val = stratified_split(data.y_train, config.val_fraction, config.seed)
    train = replace(data, x_train=data.x_train[fit], y_train=data.y_train[fit])
    return Split(train, test, (data.x_train[val], data.y_train[val]))


def _trainable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ancestor with a symbolic batch dimension, so it trains at any batch size."""
    if batch_info(model).fixed is None:
        return model
    logger.info("the ancestor hard-codes its batch size; generation 1 gets a dynamic batch")
    return dynamic_batch(model)


def _check_fit(model: onnx.ModelProto, data: Dataset) -> None:
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise UnsupportedModelError(f"evolve needs a model with one input, found {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    check_matches(data, [d.dim_value if d.HasField("dim_value") else None for d in dims])
    if not analyze(model).prunable_groups:
        raise UnsupportedModelError(
            "nothing in this model can be pruned (run `evonnx inspect` to see why each "
            "channel group is frozen)"
        )


def _should_continue(lineage: Lineage) -> bool:
    last = lineage.records[-1]
    if last.generation >= lineage.config.generations:
        return False
    if last.fitness < lineage.records[0].fitness - lineage.config.max_drop:
        logger.info("generation %d fell below the accuracy budget; stopping", last.generation)
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
        return _resumed(path, sha, data.train, config)
    if out.exists() and any(out.iterdir()):
        raise RunDirectoryError(f"{out} is not empty and holds no evolution run (lineage.json)")
    acc, val = data.score(model)
    metrics = compute_metrics(model)
    first = _record(1, None, None, "gen_001.onnx", (acc, val), metrics, metrics, 0.0, ())
    save_model(model, out / first.file)
    lineage = Lineage(sha, data.train.name, config, (first,))
    _write_lineage(out, lineage)
    logger.info("generation 1 (ancestor): accuracy %.4f", acc)
    return lineage


def _resumed(path: Path, sha: str, data: Dataset, config: EvolveConfig) -> Lineage:
    try:
        old = Lineage.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise RunDirectoryError(f"{path} is not a readable evonnx lineage: {exc}") from exc
    if old.ancestor_sha256 != sha:
        raise RunDirectoryError(f"{path.parent} holds a run of a different ancestor model")
    if old.data != data.name:
        raise RunDirectoryError(f"{path.parent} was evolved on {old.data!r}, not {data.name!r}")
    changed = [
        f.name
        for f in fields(EvolveConfig)
        if f.name not in RESUMABLE and getattr(old.config, f.name) != getattr(config, f.name)
    ]
    if changed:
        raise RunDirectoryError(f"cannot resume with different settings: {', '.join(changed)}")
    logger.info("resuming after generation %d", old.records[-1].generation)
    return replace(old, config=config)


def _generation(
    parent: onnx.ModelProto,
    gen: int,
    data: Split,
    config: EvolveConfig,
    gen1: ModelMetrics,
    out: Path,
    progress: bool,
) -> tuple[GenerationRecord, onnx.ModelProto]:
    analysis = analyze(parent)
    candidates = [
        _offspring(parent, analysis, data, config, generation_seed(config.seed, gen, k), progress)
        for k in range(config.population)
    ]
    fitness = [c[1][0] if c[1][1] is None else c[1][1] for c in candidates]
    best = max(range(len(candidates)), key=lambda k: fitness[k])
    child, scores, _, seed = candidates[best]
    record = _record(
        gen,
        gen - 1,
        seed,
        f"gen_{gen:03d}.onnx",
        scores,
        gen1,
        compute_metrics(child),
        sum(c[2] for c in candidates),
        tuple(fitness),
    )
    save_model(child, out / record.file)
    logger.info("generation %d: accuracy %.4f, A-E %.2fx", gen, scores[0], record.ae)
    return record, child


def _offspring(
    parent: onnx.ModelProto,
    analysis: Analysis,
    data: Split,
    config: EvolveConfig,
    seed: int,
    progress: bool,
) -> tuple[onnx.ModelProto, tuple[float, float | None], float, int]:
    """Synthesize, prune, retrain and score one offspring.

    Returns:
        The trained model, its (test, validation) accuracy, training seconds and seed.
    """
    offspring = synthesize(parent, analysis, config.encoding(), np.random.default_rng(seed))
    child = apply_plan(parent, analysis, offspring.plan, offspring.masks)
    module = to_torch(child, freeze_zeros=True)
    if config.init == "random":
        _reinitialize(module, seed)
    result = train(
        module,
        data.train,
        training_config(config, seed % (2**31)),
        after_step=lambda _m: module.apply_masks(),
        progress=progress,
    )
    trained = write_back(child, module)
    return trained, data.score(trained), result.seconds, seed


def training_config(config: EvolveConfig, seed: int) -> TrainConfig:
    """Training settings of one offspring."""
    return TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        seed=seed,
        num_threads=config.threads,
        max_batches=config.max_batches,
    )


def _reinitialize(module: Any, seed: int) -> None:
    """Fresh Kaiming-uniform weights (zeros kept) and zero biases for conv/FC layers."""
    gen = torch.Generator().manual_seed(seed % (2**31))
    params = module.onnx_parameters()
    with torch.no_grad():
        for name in module.weight_names():
            w = params[name]
            fan_in = max(1, w[0].numel()) if w.dim() > 2 else max(1, w.shape[-1])
            bound = math.sqrt(6.0 / fan_in)
            w.copy_((torch.rand(w.shape, generator=gen) * 2 - 1) * bound)
    module.apply_masks()


def _record(
    gen: int,
    parent: int | None,
    seed: int | None,
    file: str,
    scores: tuple[float, float | None],
    gen1: ModelMetrics,
    now: ModelMetrics,
    seconds: float,
    candidates: tuple[float, ...],
) -> GenerationRecord:
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
        train_seconds=seconds,
        candidates=candidates,
        val_accuracy=scores[1],
    )


# --------------------------------------------------------------------------- run files

CSV_FIELDS = [
    "generation", "parent", "seed", "file", "accuracy", "val_accuracy", "ae", "ce", "mac_ratio",
    "params", "synapses", "nonzero_synapses", "clusters", "live_clusters", "macs",
    "train_seconds",
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
    rows_ae = "\n".join(
        f"| {r.generation} | {r.ae:.2f}x | {100 * r.accuracy:.2f} |" for r in lineage.records
    )
    rows_ce = "\n".join(
        f"| {r.generation} | {r.ce:.2f}x | {100 * r.accuracy:.2f} |" for r in lineage.records
    )
    rows = "\n".join(
        f"| {r.generation} | {100 * r.accuracy:.2f} | {_pct(r.val_accuracy)} | {r.ae:.2f}x | "
        f"{r.ce:.2f}x | "
        f"{r.mac_ratio:.2f}x | {r.nonzero_synapses} | {r.live_clusters}/{r.clusters} | "
        f"{r.params} | {r.macs} | {r.train_seconds:.1f} |"
        for r in lineage.records
    )
    best = lineage.best
    return f"""# Evolution report

Ancestor sha256 `{lineage.ancestor_sha256[:16]}…`, data `{lineage.data}`; accuracy is top-1
on the test split, measured with onnxruntime on each written `gen_NNN.onnx`. {_selection(lineage)}

Best generation within the {100 * lineage.config.max_drop:.1f}-point accuracy budget:
**{best.generation}** ({best.file}): A-E {best.ae:.2f}x, C-E {best.ce:.2f}x,
MACs {best.mac_ratio:.2f}x fewer, accuracy {100 * best.accuracy:.2f}%.

| Gen. | A-E | ACC. |
| --- | --- | --- |
{rows_ae}

| Gen. | C-E | ACC. |
| --- | --- | --- |
{rows_ce}

## All metrics

| Gen. | ACC. | VAL. | A-E | C-E | MACs ratio | nonzero syn. | live clusters | params | MACs | s |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{rows}

Settings: `{json.dumps(asdict(lineage.config))}`
"""


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _selection(lineage: Lineage) -> str:
    if lineage.config.val_fraction:
        return (
            f"Offspring are selected, and the budget checked, on a validation split "
            f"({100 * lineage.config.val_fraction:.0f}% of the training data, VAL.)."
        )
    return "Offspring are selected, and the budget checked, on the test split (as in the paper)."


def _plot(path: Path, lineage: Lineage) -> None:
    """Efficiency vs accuracy per generation (skipped with a warning without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed; skipping %s", path.name)
        return
    gens = [r.generation for r in lineage.records]
    acc = [100 * r.accuracy for r in lineage.records]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot([r.ae for r in lineage.records], acc, "o-", label="A-E")
    ax.plot([r.ce for r in lineage.records], acc, "s--", label="C-E")
    for g, x, y in zip(gens, [r.ae for r in lineage.records], acc, strict=True):
        ax.annotate(str(g), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("efficiency vs generation 1 (x, log scale)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("evonnx: efficiency vs accuracy per generation")
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())
