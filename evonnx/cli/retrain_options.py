"""Click options of the retraining recipe (``evolve`` and ``demo``).

Their parameter names are :class:`~evonnx.retrain.settings.TrainingSettings` fields; the values are
checked (finite, in range) by the config before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from evonnx.cli.paths import refuse_unused
from evonnx.retrain.settings import OPTIMIZERS, SCHEDULES, TEACHERS, TrainingSettings

if TYPE_CHECKING:
    from evonnx.evolution.settings import EvolveConfig

DEFAULT_TEMPERATURE = 4.0
"""``--distill`` alone."""


class DistillTemperature(click.ParamType):
    """``--distill``: a temperature above 0, or ``off`` (no distillation)."""

    name = "T|off"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """A float above 0, or ``None`` for ``off``."""
        if value is None or isinstance(value, float):
            return value
        if str(value).strip().lower() == "off":
            return None
        try:
            t = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a temperature nor 'off'", param, ctx)
        if not 0 < t < math.inf:
            self.fail(f"temperature must be a number > 0 (or 'off'), got {value}", param, ctx)
        return t


def retrain_options(d: TrainingSettings) -> list[Callable[[Any], Any]]:
    """The training options (the run's training section), with defaults taken from ``d``."""
    return [
        click.option("--distill", type=DistillTemperature(), is_flag=False,
                     flag_value=DEFAULT_TEMPERATURE, default=d.distill, show_default=True,
                     metavar="T|off",
                     help="Distill from the teacher (--teacher) while retraining, at "
                          "temperature T (--distill alone: T=4); 'off' retrains on the task's "
                          "loss alone."),
        click.option("--teacher", type=click.Choice(TEACHERS),
                     default=d.teacher, show_default=True,
                     help="Whom --distill learns from: the parent, or the ancestor "
                          "(generation 1) in every generation."),
        click.option("--deterministic", is_flag=True, default=d.deterministic,
                     help="Deterministic torch algorithms: byte-identical reruns and "
                          "resumes on CUDA too (may train slower there)."),
        click.option("--init", type=click.Choice(["inherit", "random"]), default=d.init,
                     show_default=True, help="Start offspring from inherited or random weights."),
        click.option("--threads", type=click.IntRange(1), default=d.threads,
                     help="CPU threads for training (default: torch's choice)."),
        click.option("--epochs", type=click.IntRange(1), default=d.epochs, show_default=True,
                     help="Retraining passes over the data per offspring (see --steps)."),
        click.option("--steps", type=click.IntRange(1), default=d.steps,
                     help="Retrain each offspring for N optimizer steps instead of --epochs."),
        click.option("--lr", type=click.FloatRange(0, min_open=True), default=d.lr,
                     show_default=True, help="Peak learning rate."),
        click.option("--batch-size", type=click.IntRange(1), default=d.batch_size,
                     show_default=True),
        click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=d.optimizer,
                     show_default=True,
                     help="adamw: Adam with decoupled weight decay; sgd uses --momentum."),
        click.option("--momentum", type=click.FloatRange(0, 1, max_open=True),
                     default=d.momentum, show_default=True, help="SGD momentum."),
        click.option("--nesterov/--no-nesterov", default=d.nesterov, show_default=True,
                     help="SGD with Nesterov momentum."),
        click.option("--weight-decay", type=click.FloatRange(0), default=d.weight_decay,
                     show_default=True,
                     help="Weight decay (L2 for sgd and adam, decoupled for adamw)."),
        click.option("--lr-schedule", "schedule", type=click.Choice(SCHEDULES),
                     default=d.schedule, show_default=True,
                     help="Learning rate after the warm-up: cosine (per step) or constant."),
        click.option("--warmup", type=click.FloatRange(0, 1, max_open=True),
                     default=d.warmup, show_default=True,
                     help="Fraction of the steps over which the learning rate rises linearly "
                          "to --lr first."),
        click.option("--clip-grad", type=click.FloatRange(0, min_open=True),
                     default=d.clip_grad, metavar="NORM",
                     help="Clip the gradients' global L2 norm to NORM before each step."),
        click.option("--freeze-bn/--train-bn", "freeze_bn", default=d.freeze_bn,
                     show_default=True,
                     help="Keep BatchNorm layers in eval mode while retraining: running "
                          "statistics are used and kept (scale and shift still train)."),
    ]  # fmt: skip


def refuse_idle_retrain_options(config: EvolveConfig) -> None:
    """Refuse retraining options given on the command line that this run would ignore."""
    if config.steps is not None:
        refuse_unused(["epochs"], "--steps sets how long each offspring retrains")
    if config.distill is None:
        why = "distillation is off (--distill off, or --inputs without --distill)"
        refuse_unused(["teacher"], why)
    if config.optimizer != "sgd":
        refuse_unused(["momentum"], f"only --optimizer sgd uses momentum, not {config.optimizer}")
        refuse_unused(["nesterov"], f"only --optimizer sgd uses nesterov, not {config.optimizer}")
