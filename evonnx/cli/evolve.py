"""``evonnx evolve`` and ``evonnx demo``: evolution runs from the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import onnx
from click.core import ParameterSource

from evonnx.cli.fidelity_options import (
    FIDELITY_OPTIONS,
    build_fidelity_task,
    fidelity_options,
    refuse_without_inputs,
)
from evonnx.cli.latency_options import measurement_options
from evonnx.cli.paths import refuse_unused
from evonnx.cli.retrain_options import (
    DEFAULT_TEMPERATURE,
    refuse_idle_retrain_options,
    retrain_options,
)
from evonnx.cli.run_options import encoding_options, execution_options, selection_options
from evonnx.cli.shape_options import input_shape_option, normalize_option
from evonnx.data.dataset import Dataset
from evonnx.errors import ConfigError
from evonnx.evolution.lineage import GenerationRecord, Lineage, show_score
from evonnx.evolution.settings import EvolveConfig
from evonnx.evolution.speed import slower_despite_fewer_macs
from evonnx.execute.signals import describe, exit_code
from evonnx.model.files import load_model
from evonnx.model.inputs import apply_input_shapes
from evonnx.retrain.guard import user_code
from evonnx.retrain.task import Task, load_task

# Demo defaults: tuned on the built-in MNIST subset (see docs/benchmarks.md), ~2 minutes.


def _header(percent: bool, val: bool) -> str:
    word = "acc." if percent else "score"
    val_col = f"  {'val ' + word:>10}" if val else ""
    return (
        f"{'gen':>4}  {'test ' + word:>10}{val_col}  {'A-E':>8}  {'C-E':>7}  {'MACs':>7}  "
        f"{'speed-up':>8}  {'train s':>7}"
    )


def _row(r: GenerationRecord, percent: bool, val: bool, over: bool) -> str:
    val_col = f"  {show_score(r.val_accuracy, percent, unit=True):>10}" if val else ""
    speed = "-" if r.speedup is None else f"{r.speedup:.2f}x"
    return (
        f"{r.generation:>4}  {show_score(r.accuracy, percent, unit=True):>10}{val_col}  "
        f"{r.ae:>7.2f}x  {r.ce:>6.2f}x  {r.mac_ratio:>6.2f}x  {speed:>8}  {r.train_seconds:>7.1f}"
        + ("  over budget" if over else "")
        + ("  (fewer MACs, not faster)" if slower_despite_fewer_macs(r) else "")
    )


def _row_printer(percent: bool, config: EvolveConfig) -> Callable[[GenerationRecord], None]:
    """Callback printing the table header before the first row (none if the run fails early);
    scores as percentages (accuracy) or plain numbers (other task scores), the validation
    score that decides beside the test score, and generations over the budget marked."""
    first: list[GenerationRecord] = []
    val = config.select_on == "val"

    def echo(r: GenerationRecord) -> None:
        if not first:
            click.echo(_header(percent, val))
            first.append(r)
        over = r.fitness < first[0].fitness - config.max_drop - 1e-12
        click.echo(_row(r, percent, val, over))

    return echo


def _summary(lineage: Lineage, out: Path) -> None:
    best = lineage.best
    split = "validation" if lineage.config.select_on == "val" else "test"
    word = "accuracy" if lineage.score_percent else "score"
    show = lineage.show_score
    decided = (
        f"; validation {word} {show(best.val_accuracy, unit=True)} (generation 1: "
        f"{show(lineage.records[0].val_accuracy, unit=True)}) decided"
        if best.val_accuracy is not None
        else ""
    )
    over = [r.generation for r in lineage.records if r.fitness < score_floor(lineage)]
    click.echo(
        f"\nbest within budget ({split} protocol: selected and budget checked on the {split} "
        f"split): generation {best.generation} ({out / best.file}): "
        f"A-E {best.ae:.2f}x, C-E {best.ce:.2f}x, MACs {best.mac_ratio:.2f}x fewer, "
        f"{'' if best.speedup is None else f'measured {best.speedup:.2f}x faster, '}"
        f"test {word} {show(best.accuracy, unit=True)} (generation 1: "
        f"{show(lineage.records[0].accuracy, unit=True)}){decided}\n"
        + (
            f"over budget (not bred from): generation(s) {', '.join(map(str, over))}\n"
            if over
            else ""
        )
        + f"report: {out / 'report.md'}"
    )


def score_floor(lineage: Lineage) -> float:
    """The score floor: the lowest fitness within ``max_drop`` (generation 1's minus it)."""
    return lineage.records[0].fitness - lineage.config.max_drop - 1e-12


def evolution_options(
    d: EvolveConfig,
) -> Callable[[click.decorators.FC], click.decorators.FC]:
    """Options shared by ``evolve`` and ``demo``, with defaults taken from ``d``."""
    return lambda fn: _with_options(fn, d)


def _with_options(fn: click.decorators.FC, d: EvolveConfig) -> click.decorators.FC:
    options = [
        click.option("--generations", type=click.IntRange(1), default=d.generations,
                     show_default=True, help="Last generation (the ancestor is generation 1)."),
        click.option("--seed", type=click.IntRange(0), default=d.seed, show_default=True),
        *selection_options(d.selection),
        *encoding_options(d.encoding),
        *measurement_options(d.latency),
        *retrain_options(d.training),
        *execution_options(d.execution),
        click.option("--resume", is_flag=True, help="Continue the run in the output folder."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def make_config(**options: Any) -> EvolveConfig:
    """The run settings the named options describe.

    Every keyword must be an :class:`EvolveConfig` field: a command pops the options it
    handles itself (``--resume``, paths) and passes the rest here, so adding an option
    means adding a field and a ``click.option`` (an option without a field fails loudly).
    """
    return EvolveConfig(**options)


def run(
    model: Path | onnx.ModelProto, data: str | Task, out: Path, config: EvolveConfig, resume: bool
) -> Lineage:
    """Run (or resume) an evolution on a data set spec or a task, one row per generation."""
    from evonnx.data.formats import load_dataset
    from evonnx.evolution.loop import evolve

    dataset = data if isinstance(data, Task) else load_dataset(data)
    try:
        percent = dataset.score_percent if isinstance(dataset, Task) else True
        lineage = evolve(model, dataset, out, config, resume, True, _row_printer(percent, config))
    except KeyboardInterrupt as exc:
        if out.is_dir():
            click.echo(f"\n{describe(exc)}; finished generations are kept in {out}; "
                       "rerun with --resume to continue", err=True)  # fmt: skip
        else:
            click.echo(f"\n{describe(exc)} before the run folder was created", err=True)
        raise SystemExit(exit_code(exc)) from None
    _summary(lineage, out)
    return lineage


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data",
              help="Data of the built-in classification task: .npz, MNIST IDX folder, "
                   "cifar-10-batches-py, image folder, or a built-in name (mnist-demo, "
                   "digits).")  # fmt: skip
@click.option("--task", "task_spec", metavar="FILE.py:NAME",
              help="A user evonnx.Task (instance, or class/function building one) instead "
                   "of --data.")  # fmt: skip
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="Run folder: gen_NNN.onnx, lineage.json/.csv, report.md, efficiency.png.",
)
@evolution_options(EvolveConfig())
@fidelity_options
@input_shape_option
@normalize_option
def evolve(
    model: Path,
    data: str | None,
    task_spec: str | None,
    inputs: Path | None,
    out: Path,
    resume: bool,
    input_shapes: dict[str, tuple[int, ...]],
    normalize: bool,
    **options: Any,
) -> None:
    """Evolve MODEL: synthesize, prune, retrain and score offspring generation by generation.

    Give labelled data (--data), a task (--task), or only the model's own inputs (--inputs:
    label-free, the ancestor is the teacher). Symbolic input dimensions default to the data's
    sample shape; --input-shape overrides them (the batch dimension stays symbolic).
    """
    if sum(x is not None for x in (data, task_spec, inputs)) != 1:
        raise ConfigError(
            "give either --data or --task (FILE.py:NAME), or --inputs (DIR|FILE.npz) for "
            "label-free evolution"
        )
    fidelity = {k: options.pop(k) for k in FIDELITY_OPTIONS}
    refuse_without_inputs(inputs)
    if inputs is not None:
        _no_distill_by_default(options)
    config = make_config(**options)
    refuse_idle_options(config, task=task_spec is not None)
    ancestor: Path | onnx.ModelProto = model
    if input_shapes or not normalize or inputs is not None:
        proto = load_model(model, normalize=normalize)
        ancestor = apply_input_shapes(proto, input_shapes, keep_batch=True)
    task: str | Task = str(data)
    if task_spec is not None:
        task = load_task(task_spec)
        _refuse_idle_task_options(task, config)
    elif inputs is not None:
        assert isinstance(ancestor, onnx.ModelProto)
        task = build_fidelity_task(ancestor, inputs, config, fidelity)
    run(ancestor, task, out, config, resume)


def _no_distill_by_default(options: dict[str, Any]) -> None:
    """--inputs: the ancestor already is the teacher; distill from the parent only if asked."""
    ctx = click.get_current_context()
    if ctx.get_parameter_source("distill") not in (
        ParameterSource.COMMANDLINE,
        ParameterSource.ENVIRONMENT,
    ):
        options["distill"] = None


def refuse_idle_options(config: EvolveConfig, task: bool) -> None:
    """Refuse options given on the command line that this run would ignore."""
    refuse_idle_retrain_options(config)
    if task:
        refuse_unused(["val_fraction"], "a --task brings its own validation split")
    if config.select_on == "test":
        refuse_unused(["val_fraction"], "--select-on test holds out no validation split")


def _refuse_idle_task_options(task: Task, config: EvolveConfig) -> None:
    """Refuse ``--batch-size`` for a task with its own batches, and a distillation
    temperature for a task whose ``distill_loss`` ignores it (the default mean squared error)."""
    with user_code(task.name, "train_batches()"):
        batches = task.train_batches()
    if not isinstance(batches, Dataset):
        refuse_unused(
            ["batch_size"],
            f"task {task.name!r} brings its own batches (train_batches() gives a "
            f"{type(batches).__name__}, not a Dataset); set the batch size there",
        )
    flag = DEFAULT_TEMPERATURE
    if config.distill not in (None, flag) and type(task).distill_loss is Task.distill_loss:
        raise click.UsageError(
            f"--distill {config.distill:g}: task {task.name!r} distills with the default "
            "distill_loss (mean squared error), which has no temperature; use --distill "
            "alone, or 'off'"
        )
