"""Distillation while retraining: the parent network's outputs as soft targets."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from evonnx.errors import ConfigError

if TYPE_CHECKING:
    from evonnx.retrain.train import LossFn

DistillFn = Callable[[Any, Any, Any, float], torch.Tensor]
"""``distill(outputs, teacher_outputs, targets, temperature) -> scalar tensor``."""

DISTILL_WEIGHT = 0.5
"""Weight of the distillation term; the task's own loss gets ``1 - DISTILL_WEIGHT``."""


class Distiller(nn.Module):
    """A student trained next to a frozen teacher that sees the same inputs.

    ``forward`` returns ``(student outputs, teacher outputs)``; the teacher has no
    trainable parameters and stays in eval mode whatever mode the wrapper is put in.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher
        for p in teacher.parameters():
            p.requires_grad_(False)
        teacher.eval()

    def forward(self, *inputs: Any) -> tuple[Any, Any]:
        """Student outputs (with gradients) and teacher outputs (without)."""
        out = self.student(*inputs)
        with torch.no_grad():
            return out, self.teacher(*inputs)

    def train(self, mode: bool = True) -> Distiller:
        """Set the student's mode; the teacher stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self


def distillation_loss(
    task_loss: LossFn, distill: DistillFn, temperature: float, weight: float = DISTILL_WEIGHT
) -> LossFn:
    """Loss of a :class:`Distiller`: ``(1 - w) · task_loss + w · distill`` at ``temperature``."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"distillation weight must be in [0, 1], got {weight}")

    def loss(outputs: tuple[Any, Any], targets: Any) -> torch.Tensor:
        student, teacher = outputs
        own = task_loss(student, targets)
        return (1.0 - weight) * own + weight * distill(student, teacher, targets, temperature)

    return loss
