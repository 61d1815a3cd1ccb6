"""Calibration of the latency predictor on whole-model measurements.

A layer timed alone (the table) is not what it costs inside a graph: alone it pays for moving
its input and output in and out of the runtime's blocked layout (onnxruntime's NCHWc reorders,
proportional to the activations, not the MACs), and the graph pays for what the table never
times (a fixed cost per node, elementwise ops on the activations, the residual ``Add`` of a
branch). So an offspring's latency is predicted as a linear function of a few features of its
census (:class:`Features`)::

    t = c0 + s · layers + f · layer_fixed + m · macs + e · elements + n · live_layers
        + o · orphans

* ``layers``, ``layer_fixed``: the sum of the table's per-layer latencies at the offspring's
  widths (ms), split into each layer's fixed cost (its latency curve extrapolated to width 0:
  what a layer pays alone whatever its width, such as a run of its own) and the rest. A thinned
  layer keeps its fixed cost, a removed one loses it; ``f < s`` where the graph does not pay
  it in full;
* ``macs``: multiply-accumulates of the layers (billions, at the batch size): where the
  table's layer sum shrinks more slowly than the graph (its boundary costs shrink linearly
  with the widths, the MACs quadratically), ``m`` takes the difference with ``s`` smaller;
* ``elements``: output activation elements of the live layers (millions, at the batch size);
* ``live_layers``: layers with input and output channels left (a removed branch has none);
* ``orphans``: output elements (millions) of the last layer of each removed branch: the
  branch's residual ``Add`` (of its constant bias) and the activation after it stay, and no
  longer fuse into a conv (onnxruntime fuses Conv+Add+Relu), so a removed branch saves less
  than its layers' table time.

The coefficients are non-negative and fitted by least squares of relative errors (what the
prediction error is judged by; a large model's noisier measurement does not dominate) on
calibration points: the
parent and offspring measured side by side with it (uniformly thinned, removable branches
gone, both; down to a small fraction of the parent: see :func:`calibration_widths`), and every
offspring measured later
(:meth:`LatencyModel.recalibrated <evonnx.latency.model.LatencyModel.recalibrated>`), each
rescaled to the parent's latency in its own interleaved run so that a change of load between
runs does not enter the fit. The subset of features is chosen by leave-one-out error (the
fewest features on a tie; a subset needs more points than features); without a fitted
intercept it stays at the empty graph's latency (the run overhead every table entry
excludes). The parent alone gives the proportional model: the empty graph's latency plus the
layers' sum scaled to the parent.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from evonnx.pruning.groups import Analysis


FEATURES = ("intercept", "layers", "layer_fixed", "macs", "elements", "live_layers", "orphans")
"""Names of the predictor's features, in order."""

Design = tuple[tuple[int, ...], ...]
"""Fitted coefficients: each a tuple of feature indices that share it."""


@dataclass(frozen=True)
class Point:
    """One measured model: its features (``FEATURES`` order, intercept 1) and latency (ms,
    rescaled to the parent's reference latency)."""

    features: tuple[float, ...]
    ms: float


def solve(
    points: Sequence[Point], usable: Sequence[bool], intercept_ms: float
) -> tuple[float, ...]:
    """Non-negative least-squares coefficients over the best subset of usable features.

    The table's layer time is always used: its part above each layer's fixed cost and the
    fixed cost itself either share one coefficient or (with ``layer_fixed`` usable) have one
    each.

    Args:
        points: Measured models.
        usable: Per feature, whether it may be fitted.
        intercept_ms: The intercept when it is not fitted (the empty graph's latency).

    Returns:
        One coefficient per feature of :data:`FEATURES` (0 for an unused one; the intercept
        is ``intercept_ms`` when not fitted).
    """
    x = np.array([p.features for p in points], dtype=np.float64)
    y = np.array([p.ms for p in points], dtype=np.float64)
    optional = [(i,) for i in (0, 3, 4, 5, 6) if usable[i]]
    layers: list[Design] = [((1, 2),)] + ([((1,), (2,))] if usable[2] else [])
    best: tuple[float, np.ndarray] | None = None
    for size in range(1, len(optional) + 3):  # fewer coefficients first: they win ties
        for base in layers:
            for extra in itertools.combinations(optional, max(0, size - len(base))):
                design = (*base, *extra)
                if len(design) != size or len(design) >= max(2, len(points)):
                    continue  # keep one point out to score it
                coef = _fit(x, y, design, intercept_ms)
                if coef is None:
                    continue
                score = _loo(x, y, design, intercept_ms) if len(points) > len(design) else 0.0
                if best is None or score < best[0] - 1e-9:
                    best = (score, coef)
    if best is None:  # no non-negative fit (contradictory points): proportional to the layers
        ratios = (y - intercept_ms) / np.maximum(x[:, 1] + x[:, 2], 1e-12)
        scale = max(0.0, float(np.median(ratios)))
        return (intercept_ms, scale, scale, 0.0, 0.0, 0.0, 0.0)
    return tuple(float(v) for v in best[1])


def _lstsq(x: np.ndarray, y: np.ndarray, design: Design, intercept_ms: float) -> np.ndarray:
    """Least squares of relative errors (each point weighted by its latency's inverse)."""
    cols = np.stack([x[:, list(g)].sum(axis=1) for g in design], axis=1)
    fitted = any(0 in g for g in design)
    target = y if fitted else y - intercept_ms
    w = 1.0 / np.maximum(y, 1e-12)
    coef, *_ = np.linalg.lstsq(cols * w[:, None], target * w, rcond=None)
    return np.asarray(coef)


def _expand(coef: np.ndarray, design: Design, intercept_ms: float) -> np.ndarray:
    full = np.zeros(len(FEATURES))
    full[0] = intercept_ms
    for c, g in zip(coef, design, strict=True):
        full[list(g)] = c
    return full


def _fit(x: np.ndarray, y: np.ndarray, design: Design, intercept_ms: float) -> np.ndarray | None:
    """Coefficients of all features (least squares on ``design``), or None if one is
    negative."""
    coef = _lstsq(x, y, design, intercept_ms)
    if (coef < -1e-9 * max(1.0, float(np.abs(coef).max()))).any():
        return None
    return _expand(np.maximum(coef, 0.0), design, intercept_ms)  # 0: rounding noise of a zero


def _loo(x: np.ndarray, y: np.ndarray, design: Design, intercept_ms: float) -> float:
    """Mean relative error of each point predicted from the others (leave one out)."""
    errors = []
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        coef = _expand(_lstsq(x[rest], y[rest], design, intercept_ms), design, intercept_ms)
        errors.append(abs(float(x[i] @ coef) - y[i]) / y[i] if y[i] > 0 else 0.0)
    return float(np.mean(errors))


def calibration_widths(
    analysis: Analysis, steps: Mapping[int, Sequence[int]]
) -> list[dict[int, int]]:
    """Widths of the calibration offspring, from the parent down to a fraction of its latency:
    every prunable group on its largest latency step at most a half (a quarter) of its size;
    with removable branches, also every other (three in four) branch removed, alone and
    together with the thinning."""
    removable = [g.id for g in analysis.prunable_groups if g.removable]
    out = []
    for f, every in ((0.5, 2), (0.25, 4)):
        thin = {}
        for g in analysis.prunable_groups:
            grid = steps.get(g.id) or (g.size,)
            below = [w for w in grid if w <= f * g.size]
            thin[g.id] = max(below) if below else min(grid)
        out.append(thin)
        if len(removable) >= 2:
            gone = {gid: 0 for i, gid in enumerate(removable) if i % every}
            out += [gone, {**thin, **gone}]
    return out
