"""Eq. 4 (cluster) and eq. 5 (synapse) probabilities and the survival rule of eq. 3."""

from __future__ import annotations

import logging
import math

import numpy as np

from evonnx.genetic.config import FACTOR_MAX, SynapseNorm, Truncation
from evonnx.pruning.plan import magnitudes

logger = logging.getLogger(__name__)


def truncated_magnitude(w: np.ndarray, truncation: Truncation | None = None) -> np.ndarray:
    """``|w|`` with entries below the tensor's truncation threshold (default
    :class:`Truncation`) set to zero (float32)."""
    return magnitudes(w, truncation or Truncation())


def _rows(a: np.ndarray, axis: int) -> np.ndarray:
    """Per-index sums of a non-negative array along ``axis`` (float64)."""
    moved = np.moveaxis(a, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    return (flat @ np.ones(flat.shape[1], dtype=flat.dtype)).astype(np.float64)


def _canonical(w: np.ndarray, out_axis: int, in_axis: int) -> np.ndarray:
    """``(out, in, rest)`` view (a copy only when the axes are not already leading)."""
    moved = np.moveaxis(w, (out_axis, in_axis), (0, 1))
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def _from_canonical(
    a: np.ndarray, shape: tuple[int, ...], out_axis: int, in_axis: int
) -> np.ndarray:
    rest = [shape[d] for d in range(len(shape)) if d not in (out_axis, in_axis)]
    moved = a.reshape([shape[out_axis], shape[in_axis], *rest])
    return np.ascontiguousarray(np.moveaxis(moved, (0, 1), (out_axis, in_axis)))


def _kernel_sums(x: np.ndarray) -> np.ndarray:
    """Sums over the trailing axis of an ``(out, in, rest)`` array (a view when ``rest == 1``)."""
    o, i, r = x.shape
    if r == 1:
        return x.reshape(o, i)
    return (x.reshape(o * i, r) @ np.ones(r, dtype=x.dtype)).reshape(o, i)


def kernel_strengths(
    w: np.ndarray, out_axis: int, in_axis: int, truncation: Truncation | None = None
) -> np.ndarray:
    """Eq. 4 numerator per kernel ``W[o, i, ...]``: an ``(out, in)`` float64 array."""
    a = _canonical(truncated_magnitude(w, truncation), out_axis, in_axis)
    return _kernel_sums(a).astype(np.float64)


def cluster_probabilities(strengths: np.ndarray, norm: float | None = None) -> np.ndarray:
    """Eq. 4: ``exp(strength / Z - 1)``, clipped at 1.

    Args:
        strengths: Truncated cluster sums (non-negative).
        norm: ``Z``; default the largest strength, so the strongest cluster gets 1. A
            non-positive ``Z`` (all clusters empty) gives every cluster probability 1.
    """
    s = np.asarray(strengths, dtype=np.float64)
    z = float(s.max()) if norm is None and s.size else float(norm or 0.0)
    if z <= 0:
        return np.ones_like(s)
    return np.minimum(np.exp(s / z - 1.0), 1.0)


def _kernel_eq4(strengths: np.ndarray, norm: float) -> np.ndarray:
    """Eq. 4 on float32 kernel strengths (in place)."""
    if norm <= 0:
        strengths.fill(1.0)
        return strengths
    strengths *= np.float32(1.0 / norm)
    strengths -= np.float32(1.0)
    np.exp(strengths, out=strengths)
    return np.minimum(strengths, np.float32(1.0), out=strengths)


def _cluster_q(p: np.ndarray, factor: float) -> np.ndarray:
    """Survival probability ``min(1, λ P_c)`` (exactly 1 everywhere at ``λ = e``)."""
    return np.ones_like(p) if factor >= FACTOR_MAX else np.minimum(factor * p, 1.0)


def _norm_of(a: np.ndarray, kind: SynapseNorm, quantile: float) -> float:
    if a.size == 0:
        return 0.0
    top = float(a.max())
    if kind == "max" or top == 0:
        return top
    return float(np.quantile(a[a > 0], quantile))


def synapse_norm(w: np.ndarray, kind: SynapseNorm = "max", quantile: float = 0.99) -> float:
    """Layer-wise ``z`` of eq. 5: the largest ``|w|`` or a quantile of the nonzero ``|w|``."""
    return _norm_of(magnitudes(w), kind, quantile)


def _eq5_inplace(a: np.ndarray, z: float, clip: bool) -> np.ndarray:
    """Overwrite the magnitudes ``a`` with eq. 5 for normalization ``z``."""
    if z <= 0:
        a.fill(math.exp(-1.0))
        return a
    a *= np.float32(1.0 / z)
    np.exp(a, out=a)
    a *= np.float32(math.exp(-1.0))
    if clip:
        np.minimum(a, np.float32(1.0), out=a)
    return a


def synapse_probabilities(w: np.ndarray, z: float | None = None) -> np.ndarray:
    """Eq. 5: ``exp(|w| / z - 1)``, clipped at 1 (``z`` default: ``max |w|``; float32)."""
    a = magnitudes(w)
    zz = _norm_of(a, "max", 1.0) if z is None else float(z)
    return _eq5_inplace(a, zz, clip=True)
