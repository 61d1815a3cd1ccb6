"""``evonnx demo``: the paper's experiment end to end on the built-in MNIST subset."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from evonnx.cli.evolve import evolution_options, make_config, refuse_idle_options, run
from evonnx.cli.paths import refuse_unused
from evonnx.data.dataset import Dataset
from evonnx.data.formats import load_builtin
from evonnx.errors import RunDirectoryError
from evonnx.evolution.rundir import locked
from evonnx.evolution.settings import EvolveConfig
from evonnx.evolution.validate import check_resources
from evonnx.retrain.task import validation_indices

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
    warmup=0.0,  # the recipe the demo was tuned with (LeNet-5 has no BatchNorm)
    freeze_bn=False,
)


@click.command()
@click.option("--out", "out", type=click.Path(path_type=Path), default=Path("evonnx-demo"),
              show_default=True, help="Folder for the ancestor and the run.")  # fmt: skip
@click.option("--ancestor-epochs", type=click.IntRange(1), default=8, show_default=True)
@click.option("--arch", type=click.Choice(["lenet5", "lenet5-caffe"]), default="lenet5",
              show_default=True,
              help="Ancestor: the classic LeNet-5 (61.5k weights) or Caffe's LeNet (430.5k "
                   "weights, the paper's).")  # fmt: skip
@evolution_options(DEMO_EVOLUTION)
def demo(out: Path, ancestor_epochs: int, arch: str, resume: bool, **options: Any) -> None:
    """Train LeNet-5 on the built-in MNIST subset, then evolve it (offline, a few minutes)."""
    config = make_config(**options)
    refuse_idle_options(config, task=False)
    ancestor = out / "ancestor.onnx"
    if resume and ancestor.exists():
        refuse_unused(["arch"], f"--resume continues with the ancestor already in {out}")
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"--out {out} is a file, not a folder")
    check_resources(config)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out):  # before the first write: a second demo in the same folder is refused
        _demo_in(out, ancestor_epochs, arch, resume, config)


def _demo_in(out: Path, epochs: int, arch: str, resume: bool, config: EvolveConfig) -> None:
    """The demo in its locked folder: the ancestor (unless resumed), then the run."""
    from evonnx.retrain.demo import train_demo_ancestor

    ancestor = out / "ancestor.onnx"
    if not resume and (out / "run" / "lineage.json").exists():
        raise RunDirectoryError(
            f"{out} already holds a demo run; pass --resume to continue it or choose another --out"
        )
    if not (resume and ancestor.exists()):
        click.echo(f"training the {arch} ancestor on the built-in MNIST subset -> {ancestor}")
        result = train_demo_ancestor(
            ancestor,
            epochs=epochs,
            seed=config.seed,
            dataset=_ancestor_data(config),
            arch=arch,
        )
        click.echo(f"ancestor test accuracy {100 * result.onnx_accuracy:.2f}% "
                   f"({result.dataset}, onnxruntime)")  # fmt: skip
    run(ancestor, "mnist-demo", out / "run", config, resume and (out / "run").exists())


def _ancestor_data(config: EvolveConfig) -> Dataset:
    """The demo data without the validation split the run will select on (kept unseen)."""
    data = load_builtin("mnist-demo")
    if config.select_on == "test":
        return data
    fit, _ = validation_indices(data, config.val_fraction, config.seed)
    return replace(data, x_train=data.x_train[fit], y_train=data.y_train[fit])
