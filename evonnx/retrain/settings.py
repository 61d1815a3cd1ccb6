"""The retraining layer's settings: :class:`TrainingSettings` (how offspring are retrained) and
:class:`SelectionSettings` (which survive), checked without importing torch.

:class:`~evonnx.retrain.TrainConfig` is what :func:`~evonnx.retrain.train` takes for one
training run; :meth:`TrainConfig.for_offspring` builds it from the run's training settings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from evonnx.errors import ConfigError, require

Optimizer = Literal["sgd", "adam", "adamw"]
"""Optimizers :func:`evonnx.retrain.recipe.make_optimizer` builds."""

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")
TEACHERS: tuple[str, ...] = ("parent", "ancestor")


def recipe_problem(
    optimizer: str,
    schedule: str,
    momentum: float,
    weight_decay: float,
    warmup: float,
    steps: int | None,
    clip_grad: float | None,
) -> str | None:
    """What is wrong with these retraining settings (one line), or ``None``.

    Shared by :class:`TrainConfig` and :class:`TrainingSettings`, so that a run refuses them
    before it writes anything.
    """
    checks = [
        (optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got "
                                  f"{optimizer!r}"),
        (schedule in SCHEDULES, f"schedule must be 'cosine' or 'constant', got {schedule!r}"),
        (0.0 <= momentum < 1.0, f"momentum must be in [0, 1), got {momentum}"),
        (0.0 <= weight_decay < math.inf, f"weight_decay must be a number >= 0, got "
                                         f"{weight_decay}"),
        (0.0 <= warmup < 1.0, f"warmup must be a fraction of the steps in [0, 1), got {warmup}"),
        (steps is None or steps >= 1, f"steps must be >= 1, got {steps}"),
        (clip_grad is None or 0.0 < clip_grad < math.inf,
         f"clip_grad must be a positive number, got {clip_grad}"),
    ]  # fmt: skip
    return next((message for ok, message in checks if not ok), None)


@dataclass(frozen=True)
class TrainingSettings:
    """How each offspring is retrained: the run's training section.

    The default recipe (SGD, momentum 0.9, lr 1e-3, 10% warm-up then cosine, BatchNorm frozen)
    is the one ``benchmarks/retrain_defaults.py`` chose: it never lowered an unpruned
    pretrained model and recovered pruned ones best (SGD at 0.01, the earlier default, took a
    pretrained text-line classifier from 96.5% to 72.3% in 30 steps).

    Attributes:
        epochs: Retraining epochs per offspring (unless ``steps`` is set).
        lr: Peak learning rate.
        batch_size: Training batch size.
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"`` or ``"adamw"``.
        weight_decay: Weight decay (L2 for SGD and Adam, decoupled for AdamW).
        momentum: SGD momentum.
        nesterov: SGD with Nesterov momentum (needs ``momentum`` > 0).
        schedule: Learning rate after the warm-up: ``"cosine"`` (per step, towards 0) or
            ``"constant"``.
        warmup: Fraction of the steps over which the learning rate rises linearly first.
        steps: Retrain each offspring for this many optimizer steps instead of ``epochs``
            passes over the data.
        clip_grad: Clip the gradients' global L2 norm to this (None: no clipping).
        freeze_bn: Keep BatchNorm layers in eval mode while retraining (running statistics
            used and kept; scale and shift train).
        max_batches: Cap on batches per epoch (smoke tests).
        threads: CPU threads for training (None: torch's default).
        deterministic: Retrain with deterministic torch algorithms (see
            :func:`evonnx.retrain.deterministic_mode`).
        distill: Temperature of distillation from the parent while retraining (its outputs
            are soft targets, weighted 0.5 against the task's loss); ``None`` turns it off.
            On by default (T=4): on the paper's LeNet-5, validation-selected runs with it
            stayed within the test budget for 3 seeds of 3, without it for 1 of 3.
        teacher: Whom offspring distill from: ``"parent"`` (the generation they were bred
            from) or ``"ancestor"`` (generation 1, the unpruned model, in every generation:
            what a pruned model loses is what its ancestor still knows).
        init: ``"inherit"`` the parent's surviving weights or start from ``"random"`` ones.
    """

    epochs: int = 2
    lr: float = 0.001
    batch_size: int = 64
    optimizer: Optimizer = "sgd"
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup: float = 0.1
    steps: int | None = None
    clip_grad: float | None = None
    freeze_bn: bool = True
    max_batches: int | None = None
    threads: int | None = None
    deterministic: bool = False
    distill: float | None = 4.0
    teacher: Literal["parent", "ancestor"] = "parent"
    init: Literal["inherit", "random"] = "inherit"

    def __post_init__(self) -> None:
        require(
            [
                (0.0 < self.lr < math.inf, f"lr must be a positive number, got {self.lr}"),
                (
                    self.epochs >= 1 and self.batch_size >= 1,
                    "epochs and batch_size must be at least 1",
                ),
                (
                    self.distill is None or 0.0 < self.distill < math.inf,
                    "distill temperature must be a number > 0 (not NaN or infinite), or off",
                ),
                (self.init in ("inherit", "random"), "init must be 'inherit' or 'random'"),
                (
                    self.teacher in TEACHERS,
                    f"teacher must be {' or '.join(map(repr, TEACHERS))}, got {self.teacher!r}",
                ),
                (
                    not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0),
                    "nesterov needs --optimizer sgd and a momentum above 0",
                ),
            ]
        )
        problem = recipe_problem(
            self.optimizer, self.schedule, self.momentum, self.weight_decay, self.warmup,
            self.steps, self.clip_grad,
        )  # fmt: skip
        if problem is not None:
            raise ConfigError(problem)


@dataclass(frozen=True)
class SelectionSettings:
    """Which offspring survive and when a run stops: the run's selection section.

    Attributes:
        max_drop: Budget: how far the fitness (the task's score on the selection split)
            may fall below generation 1.
        val_fraction: Fraction of the training split (stratified) a classification task
            holds out as its validation split (a user task brings its own).
        select_on: ``"val"``: offspring are selected, and the budget checked, on the
            validation split; the test score is only reported (honest). ``"test"``: on the
            test split, as the paper did (the validation split is then not held out).
        patience: Stop after this many consecutive generations over the budget. A
            generation over it is recorded but not bred from: the next one samples again
            from the latest generation within the budget (a retry with fresh seeds; one
            generation's score is noisy, about ±0.8 points on 400 validation images). The
            best generation is the last one within the budget; 1 is the paper's rule.
        population: Offspring synthesized per generation; the fittest survives.
    """

    max_drop: float = 0.04
    val_fraction: float = 0.1
    select_on: Literal["val", "test"] = "val"
    patience: int = 2
    population: int = 1

    def __post_init__(self) -> None:
        checks = [
            (
                0.0 <= self.max_drop < math.inf,
                "max_drop must be a number >= 0 (in the score's units)",
            ),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (self.select_on in ("val", "test"), "select_on must be 'val' or 'test'"),
            (self.patience >= 1, "patience must be at least 1"),
            (self.population >= 1, "population must be at least 1"),
        ]
        require(checks)
