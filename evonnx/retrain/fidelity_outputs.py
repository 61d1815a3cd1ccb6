"""Per-output losses and fidelity figures of :class:`~evonnx.retrain.fidelity.FidelityTask`.

One :class:`OutputSpec` per scored graph output says how it is trained (its loss kind, on the
logits or the probabilities of a terminal Sigmoid) and scored (:func:`fidelity`). The kinds and
their defaults are described in :mod:`evonnx.retrain.fidelity`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from evonnx.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

LossKind = Literal["kl", "bce", "mse", "l1", "off"]
LOSS_KINDS: tuple[str, ...] = ("kl", "bce", "mse", "l1", "off")
_LOGIT_OPS = ("Gemm", "MatMul", "Add")
SIGMOID_GRADIENT_FLOOR = 5e-4
"""Least slope of a Sigmoid that ``mse`` trains through (see :func:`floored_sigmoid`); chosen
on the PP-OCRv4 detector's offspring (:mod:`evonnx.retrain.fidelity`): larger floors rescue a
blank map but keep less of a healthy one."""


@dataclass(frozen=True)
class LossChoice:
    """A user's loss for one output: ``kind`` and, for ``kl``, the class axis (``None``:
    the Softmax's axis, else the last axis), in the output's own axes."""

    kind: LossKind
    axis: int | None = None


@dataclass(frozen=True)
class OutputSpec:
    """How one graph output is trained and scored.

    Attributes:
        name: The graph output.
        index: Its position among the graph outputs.
        loss: ``kl``, ``bce``, ``mse`` or ``l1``.
        batch_axis: The output's sample axis.
        class_axis: ``kl``: the class axis once the batch axis is moved first.
        scale: The teacher's standard deviation on the training part (regression losses; of
            the probabilities for a Sigmoid's output).
        sigmoid: The output is a terminal Sigmoid's, trained on the Sigmoid's input: the
            teacher outputs are its logits, and the loss and the score apply the Sigmoid.
    """

    name: str
    index: int
    loss: LossKind
    batch_axis: int
    class_axis: int | None
    scale: float
    sigmoid: bool = False

    def describe(self) -> str:
        """``logits: kl over axis 1`` (reports, fingerprint)."""
        if self.loss == "kl":
            return f"{self.name}: kl over axis {self.class_axis} (top-1 agreement)"
        if self.loss == "bce":
            return f"{self.name}: binary kl on the Sigmoid's input (1 - RMSE/sigma)"
        if self.sigmoid:
            return (
                f"{self.name}: mse on the Sigmoid's probabilities, trained through its input "
                f"with a gradient floor of {SIGMOID_GRADIENT_FLOOR} (1 - RMSE/sigma)"
            )
        return f"{self.name}: {self.loss} (1 - RMSE/sigma)"


def parse_fidelity_losses(texts: Sequence[str]) -> dict[str, LossChoice]:
    """``["logits=kl", "probs=kl:2", "boxes=l1"]`` -> choices keyed by output name.

    Raises:
        ConfigError: Not ``OUTPUT=KIND[:AXIS]``, an unknown kind, or a name given twice.
    """
    out: dict[str, LossChoice] = {}
    for text in texts:
        name, sep, value = text.rpartition("=")
        kind, _, axis = value.partition(":")
        kind = kind.strip().lower()
        if not sep or not name or kind not in LOSS_KINDS:
            raise ConfigError(
                f"fidelity loss {text!r} is not OUTPUT=KIND with KIND one of "
                f"{', '.join(LOSS_KINDS)}"
            )
        if axis and (kind != "kl" or not axis.lstrip("-").isdigit()):
            raise ConfigError(f"fidelity loss {text!r}: only kl takes a class axis (kl:AXIS)")
        if name in out:
            raise ConfigError(f"fidelity loss for output {name!r} given twice")
        out[name] = LossChoice(kind, int(axis) if axis else None)  # type: ignore[arg-type]
    return out


def default_choice(
    name: str,
    heads: Mapping[str, Any],
    producer: Mapping[str, str],
    info: tuple[int, tuple[int, ...]] | None,
) -> LossChoice:
    """The default loss of an output by its kind (see :mod:`evonnx.retrain.fidelity`)."""
    if name in heads:
        return LossChoice("kl")
    if info is not None:
        batch, shape = info
        if len(shape) == 2 and batch == 0 and shape[1] >= 2 and producer.get(name) in _LOGIT_OPS:
            return LossChoice("kl", 1)
    return LossChoice("mse")


def moved_class_axis(name: str, axis: int, batch: int, rank: int) -> int:
    """``axis`` of an output once its batch axis is moved first.

    Raises:
        ConfigError: The axis is out of range or is the batch axis.
    """
    if not -rank <= axis < rank:
        raise ConfigError(f"class axis {axis} is out of range for output {name!r} (rank {rank})")
    axis %= rank
    if axis == batch:
        raise ConfigError(f"the class axis of output {name!r} is its batch axis ({batch})")
    return axis + 1 if axis < batch else axis


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # without overflow


def with_scale(spec: OutputSpec, teacher: np.ndarray) -> OutputSpec:
    """``spec`` with the teacher's standard deviation (of its probabilities if ``sigmoid``)."""
    values = teacher.astype(np.float64)
    std = float(np.std(_sigmoid(values) if spec.sigmoid and spec.loss != "bce" else values))
    return replace(spec, scale=std if std > 1e-12 else 1.0)


def fidelity(spec: OutputSpec, got: np.ndarray, ref: np.ndarray) -> float:
    """Fidelity figure in [0, 1] of one output (batch axis first in both arrays).

    ``kl`` outputs: the fraction of samples (and positions) whose top-1 class agrees with the
    reference's. Others: ``max(0, 1 - RMSE / σ)`` with ``σ`` the reference's root-mean-square
    deviation from its mean (a constant reference scores 1 when matched, else 0); for a
    Sigmoid's output on the probabilities (the reference holds the teacher's logits).
    """
    if got.shape != ref.shape:
        raise DataError(f"output {spec.name!r} has shape {got.shape}, the ancestor's {ref.shape}")
    if spec.loss == "kl":
        axis = spec.class_axis
        return float(np.mean(np.argmax(got, axis=axis) == np.argmax(ref, axis=axis)))
    g, r = got.astype(np.float64), ref.astype(np.float64)
    if spec.sigmoid:
        r = _sigmoid(r)
    if not np.isfinite(g).all():
        return 0.0
    rmse = math.sqrt(float(np.mean((g - r) ** 2)))
    sigma = math.sqrt(float(np.mean((r - r.mean()) ** 2)))
    if sigma <= 1e-12 * max(1.0, float(np.abs(r).max())):
        return 1.0 if rmse <= 1e-6 * max(1.0, float(np.abs(r).max())) else 0.0
    return max(0.0, 1.0 - rmse / sigma)


def floored_sigmoid(logits: torch.Tensor, floor: float = SIGMOID_GRADIENT_FLOOR) -> torch.Tensor:
    """``σ(logits)``, whose gradient is ``max(σ'(logits), floor)``.

    A pruned offspring whose map saturates (every pixel's logit far below 0) gets no gradient
    through a plain Sigmoid and stays blank; the floor lets a saturated, wrong pixel learn
    while leaving the value, and the gradient where the Sigmoid is not saturated, unchanged.
    """
    import torch

    p = torch.sigmoid(logits)
    lift = (floor - p * (1 - p)).clamp(min=0).detach()
    return p + lift * (logits - logits.detach())


def output_loss(spec: OutputSpec, out: Any, ref: Any, temperature: float) -> torch.Tensor:
    """The loss of one output (batch axis first) to the teacher's ``ref``."""
    import torch
    from torch.nn import functional as F

    ref = ref.to(out.dtype)
    if spec.loss == "kl":
        axis, t = spec.class_axis, float(temperature)
        log_p = F.log_softmax(out / t, dim=axis)
        log_q = F.log_softmax(ref / t, dim=axis)
        return (log_q.exp() * (log_q - log_p)).sum(dim=axis).mean() * t * t
    if spec.loss == "bce":  # binary KL: cross-entropy less the teacher's own entropy
        t = float(temperature)
        q = torch.sigmoid(ref / t)
        kl = F.binary_cross_entropy_with_logits(out / t, q, reduction="none")
        kl = kl - F.binary_cross_entropy_with_logits(ref / t, q, reduction="none")
        return kl.mean() * t * t
    if spec.sigmoid:
        out, ref = floored_sigmoid(out), torch.sigmoid(ref)
    if spec.loss == "l1":
        return F.smooth_l1_loss(out / spec.scale, ref / spec.scale)
    return F.mse_loss(out, ref) / (spec.scale**2)
