"""Optimizers, learning-rate schedules and BatchNorm handling of :func:`evonnx.retrain.train`."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def make_optimizer(
    params: list[nn.Parameter],
    name: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """SGD (with ``momentum``, Nesterov's when ``nesterov``), Adam (L2 ``weight_decay`` in the
    gradient) or AdamW (decoupled ``weight_decay``)."""
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
    )


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total``.

    Linear warm-up over the first ``warmup`` steps (from ``1/warmup`` to 1), then a cosine
    from 1 towards 0 over the rest (``"cosine"``) or 1 (``"constant"``).
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    rest = max(1, total - warmup)
    done = min(step - warmup, rest)
    return 0.5 * (1.0 + math.cos(math.pi * done / rest))


def make_scheduler(
    optimizer: torch.optim.Optimizer, total: int, warmup_fraction: float, schedule: str
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Per-step schedule over ``total`` steps (``None`` when the rate never changes)."""
    total = max(1, total)
    warmup = round(warmup_fraction * total)
    if schedule == "constant" and warmup == 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda t: lr_factor(t, total, warmup, schedule)
    )


FROZEN_FLAG = "batch_norm_frozen"
"""Attribute of a module that runs BatchNorm itself (the ONNX converter's module): while
True, its BatchNormalization nodes use the running statistics even in train mode."""


@contextmanager
def frozen_batch_norm(module: nn.Module, enabled: bool) -> Iterator[None]:
    """Keep every BatchNorm of ``module`` (already in train mode) in eval mode: normalize with
    the running statistics and never update them; scale and shift still train.

    Torch ``_BatchNorm`` layers are put in eval mode (the caller restores the module's mode);
    modules carrying :data:`FROZEN_FLAG` get it set and restored.
    """
    if not enabled:
        yield
        return
    saved: list[tuple[nn.Module, bool]] = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
        flag = getattr(m, FROZEN_FLAG, None)
        if isinstance(flag, bool):
            saved.append((m, flag))
            setattr(m, FROZEN_FLAG, True)
    try:
        yield
    finally:
        for m, flag in saved:
            setattr(m, FROZEN_FLAG, flag)
