"""``evonnx evolve --inputs``: options of the label-free fidelity task
(:mod:`evonnx.retrain.fidelity`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import onnx

from evonnx.cli.paths import refuse_unused
from evonnx.data.unlabelled import ImagePreprocess
from evonnx.errors import ConfigError
from evonnx.retrain.fidelity import FidelityTask
from evonnx.retrain.fidelity_outputs import parse_fidelity_losses

if TYPE_CHECKING:
    from evonnx.evolution.settings import EvolveConfig

IMAGE_OPTIONS = ["resize", "mean", "std", "rgb"]
FIDELITY_OPTIONS = [*IMAGE_OPTIONS, "fidelity_losses", "test_fraction"]


def _size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--resize {text!r} is not HxW (e.g. 32x100)")
    return int(parts[0]), int(parts[1])


def _floats(text: str | None, option: str, default: tuple[float, ...]) -> tuple[float, ...]:
    if text is None:
        return default
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a comma-separated list of numbers") from None


def fidelity_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--inputs`` and the fidelity task's options to a command."""
    options = [
        click.option("--inputs", "inputs", type=click.Path(path_type=Path), metavar="DIR|FILE.npz",
                     help="Label-free evolution: the ancestor's own inputs (a folder of "
                          "images, or an .npz named after the graph inputs); offspring learn "
                          "to reproduce the ancestor and are scored by their fidelity to it."),
        click.option("--resize", metavar="HxW",
                     help="--inputs folder: resize images to HxW (default: the graph's size)."),
        click.option("--mean", metavar="M[,M,M]",
                     help="--inputs folder: subtract after scaling pixels to [0, 1]."),
        click.option("--std", metavar="S[,S,S]",
                     help="--inputs folder: divide by after subtracting --mean."),
        click.option("--rgb/--bgr", "rgb", default=True,
                     help="--inputs folder: channel order of 3-channel models."),
        click.option("--fidelity-loss", "fidelity_losses", multiple=True,
                     metavar="OUTPUT=kl|bce|mse|l1|off",
                     help="--inputs: loss of one graph output (kl[:AXIS] for class scores, "
                          "bce for a Sigmoid's probabilities; "
                          "default by kind, see docs/tasks.md). Repeatable."),
        click.option("--test-fraction", type=click.FloatRange(0, 1, min_open=True,
                     max_open=True), default=0.1, show_default=True,
                     help="--inputs: part of the inputs held out for the reported score "
                          "(--val-fraction: the part that selects offspring)."),
    ]  # fmt: skip
    for option in reversed(options):
        fn = option(fn)
    return fn


def refuse_without_inputs(inputs: Path | None) -> None:
    """Refuse fidelity options when there are no ``--inputs`` (or image options for an npz)."""
    if inputs is None:
        refuse_unused(FIDELITY_OPTIONS, "only applies with --inputs")
    elif not inputs.is_dir():
        refuse_unused(IMAGE_OPTIONS, "only applies to an --inputs folder of images")


def build_fidelity_task(
    model: onnx.ModelProto, inputs: Path, config: EvolveConfig, fidelity: dict[str, Any]
) -> FidelityTask:
    """The fidelity task the ``--inputs`` options describe (validated before any file is
    written)."""
    rgb = fidelity["rgb"]
    preprocess = None
    if inputs.is_dir():
        preprocess = ImagePreprocess(
            resize=_size(fidelity["resize"]),
            mean=_floats(fidelity["mean"], "--mean", (0.0,)),
            std=_floats(fidelity["std"], "--std", (1.0,)),
            bgr=not rgb,
        )
    return FidelityTask(
        model,
        inputs,
        preprocess=preprocess,
        losses=parse_fidelity_losses(fidelity["fidelity_losses"]),
        val_fraction=0.0 if config.select_on == "test" else config.val_fraction,
        test_fraction=fidelity["test_fraction"],
        seed=config.seed,
        batch_size=config.batch_size,
    )
