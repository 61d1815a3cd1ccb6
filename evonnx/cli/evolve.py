"""``evonnx evolve`` and ``evonnx demo``: evolution runs from the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from evonnx.lineage import EvolveConfig, GenerationRecord, Lineage

# Demo defaults: tuned on the built-in MNIST subset (see docs/benchmarks.md), ~2 minutes.
DEMO_EVOLUTION = EvolveConfig(
    generations=12,
    max_drop=0.02,
    keep=0.72,
    cluster_keep=0.92,
    epochs=4,
    optimizer="adam",
    lr=0.001,
    batch_size=32,
    threads=1,
)

GEN_HEADER = f"{'gen':>4}  {'accuracy':>8}  {'A-E':>8}  {'C-E':>7}  {'MACs':>7}  {'train s':>7}"


def _row(r: GenerationRecord) -> str:
    return (
        f"{r.generation:>4}  {100 * r.accuracy:>7.2f}%  {r.ae:>7.2f}x  {r.ce:>6.2f}x  "
        f"{r.mac_ratio:>6.2f}x  {r.train_seconds:>7.1f}"
    )


def _row_printer() -> Callable[[GenerationRecord], None]:
    """Callback printing the table header before the first row (none if the run fails early)."""
    shown: list[bool] = []

    def echo(r: GenerationRecord) -> None:
        if not shown:
            click.echo(GEN_HEADER)
            shown.append(True)
        click.echo(_row(r))

    return echo


def _summary(lineage: Lineage, out: Path) -> None:
    best = lineage.best
    click.echo(
        f"\nbest within budget: generation {best.generation} ({out / best.file}): "
        f"A-E {best.ae:.2f}x, C-E {best.ce:.2f}x, MACs {best.mac_ratio:.2f}x fewer, "
        f"accuracy {100 * best.accuracy:.2f}% (generation 1: "
        f"{100 * lineage.records[0].accuracy:.2f}%)\nreport: {out / 'report.md'}"
    )


def evolution_options(
    d: EvolveConfig,
) -> Callable[[click.decorators.FC], click.decorators.FC]:
    """Options shared by ``evolve`` and ``demo``, with defaults taken from ``d``."""
    return lambda fn: _with_options(fn, d)


def _with_options(fn: click.decorators.FC, d: EvolveConfig) -> click.decorators.FC:
    options = [
        click.option("--generations", type=click.IntRange(1), default=d.generations,
                     show_default=True, help="Last generation (the ancestor is generation 1)."),
        click.option("--max-drop", type=click.FloatRange(0, 1), default=d.max_drop,
                     show_default=True,
                     help="Stop when accuracy falls more than this below generation 1."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True),
                     default=d.val_fraction, show_default=True,
                     help="Hold out this fraction of the training data to select offspring "
                          "and check the budget (0: use the test split, as the paper)."),
        click.option("--keep", type=click.FloatRange(0, 1, min_open=True), default=d.keep,
                     show_default=True,
                     help="Most an offspring keeps of its parent's synapses (or MACs)."),
        click.option("--env", type=click.Choice(["synapses", "macs"]), default=d.env,
                     show_default=True, help="Environment: synapse or MAC budget."),
        click.option("--cluster", type=click.Choice(["filter", "kernel"]), default=d.cluster,
                     show_default=True, help="Synaptic cluster: output filter or k×k kernel."),
        click.option("--round-to", type=click.IntRange(1), default=d.round_to,
                     help="Keep channel counts multiples of N (GPU/accelerator friendly)."),
        click.option("--cluster-keep", type=click.FloatRange(0, 1, min_open=True),
                     default=d.cluster_keep, show_default=True,
                     help="Expected fraction of clusters kept per generation (default: one "
                          "factor for clusters and synapses, as in the paper)."),
        click.option("--population", type=click.IntRange(1), default=d.population,
                     show_default=True, help="Offspring per generation; the fittest survives."),
        click.option("--init", type=click.Choice(["inherit", "random"]), default=d.init,
                     show_default=True, help="Start offspring from inherited or random weights."),
        click.option("--epochs", type=click.IntRange(1), default=d.epochs, show_default=True),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=d.lr,
                     show_default=True),
        click.option("--batch-size", type=click.IntRange(1), default=d.batch_size,
                     show_default=True),
        click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default=d.optimizer,
                     show_default=True),
        click.option("--seed", type=int, default=d.seed, show_default=True),
        click.option("--threads", type=click.IntRange(1), default=d.threads,
                     help="CPU threads for training (default: torch's choice)."),
        click.option("--resume", is_flag=True, help="Continue the run in the output folder."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def make_config(
    generations: int,
    max_drop: float,
    val_fraction: float,
    keep: float,
    env: str,
    cluster: str,
    round_to: int | None,
    cluster_keep: float | None,
    population: int,
    init: str,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    seed: int,
    threads: int | None,
) -> EvolveConfig:
    """The run settings the options describe."""
    return EvolveConfig(
        generations=generations,
        max_drop=max_drop,
        val_fraction=val_fraction,
        keep=keep,
        env="macs" if env == "macs" else "synapses",
        cluster="kernel" if cluster == "kernel" else "filter",
        round_to=round_to,
        cluster_keep=cluster_keep,
        population=population,
        init="random" if init == "random" else "inherit",
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        optimizer="adam" if optimizer == "adam" else "sgd",
        seed=seed,
        threads=threads,
    )


def run(model: Path, data: str, out: Path, config: EvolveConfig, resume: bool) -> Lineage:
    """Run (or resume) an evolution, printing one row per generation."""
    from evonnx.data import load_dataset
    from evonnx.evolution import evolve

    dataset = load_dataset(data)
    try:
        lineage = evolve(model, dataset, out, config, resume, True, _row_printer())
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; finished generations are kept in {out}; "
                   "rerun with --resume to continue", err=True)  # fmt: skip
        raise SystemExit(130) from None
    _summary(lineage, out)
    return lineage


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--data", required=True,
              help="Data: .npz, MNIST IDX folder, cifar-10-batches-py, image folder, "
                   "or a built-in name (mnist-demo, digits).")  # fmt: skip
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    required=True,
    help="Run folder: gen_NNN.onnx, lineage.json/.csv, report.md, efficiency.png.",
)
@evolution_options(EvolveConfig())
def evolve(
    model: Path,
    data: str,
    out: Path,
    generations: int,
    max_drop: float,
    val_fraction: float,
    keep: float,
    env: str,
    cluster: str,
    round_to: int | None,
    cluster_keep: float | None,
    population: int,
    init: str,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    seed: int,
    threads: int | None,
    resume: bool,
) -> None:
    """Evolve MODEL: synthesize, prune, retrain and score offspring generation by generation."""
    config = make_config(
        generations, max_drop, val_fraction, keep, env, cluster, round_to, cluster_keep,
        population, init, epochs, lr, batch_size, optimizer, seed, threads,
    )  # fmt: skip
    run(model, data, out, config, resume)


@click.command()
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("evonnx-demo"),
              show_default=True, help="Folder for the ancestor and the run.")  # fmt: skip
@click.option("--ancestor-epochs", type=click.IntRange(1), default=8, show_default=True)
@evolution_options(DEMO_EVOLUTION)
def demo(
    out: Path,
    ancestor_epochs: int,
    generations: int,
    max_drop: float,
    val_fraction: float,
    keep: float,
    env: str,
    cluster: str,
    round_to: int | None,
    cluster_keep: float | None,
    population: int,
    init: str,
    epochs: int,
    lr: float,
    batch_size: int,
    optimizer: str,
    seed: int,
    threads: int | None,
    resume: bool,
) -> None:
    """Train LeNet-5 on the built-in MNIST subset, then evolve it (offline, a few minutes)."""
    from evonnx.demo import train_demo_ancestor

    config = make_config(
        generations, max_drop, val_fraction, keep, env, cluster, round_to, cluster_keep,
        population, init, epochs, lr, batch_size, optimizer, seed, threads,
    )  # fmt: skip

    ancestor = out / "ancestor.onnx"
    if not (resume and ancestor.exists()):
        click.echo(f"training the LeNet-5 ancestor on the built-in MNIST subset -> {ancestor}")
        result = train_demo_ancestor(ancestor, epochs=ancestor_epochs, seed=seed)
        click.echo(f"ancestor test accuracy {100 * result.onnx_accuracy:.2f}% "
                   f"({result.dataset}, onnxruntime)")  # fmt: skip
    run(ancestor, "mnist-demo", out / "run", config, resume)
