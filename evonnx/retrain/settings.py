"""Retraining settings shared by :class:`~evonnx.retrain.TrainConfig` and
:class:`~evonnx.evolution.lineage.EvolveConfig`, checked without importing torch."""

from __future__ import annotations

import math
from typing import Literal

Optimizer = Literal["sgd", "adam", "adamw"]
"""Optimizers :func:`evonnx.retrain.recipe.make_optimizer` builds."""

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "adamw")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")


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

    Shared by :class:`TrainConfig` and :class:`~evonnx.evolution.lineage.EvolveConfig`, so that a run
    refuses them before it writes anything.
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
