"""Latency predicted from the table: per-layer curves, a measured overhead, latency steps.

For each conv/FC layer of a parent model, :func:`build_latency_model` times the layer alone
(less the latency of an empty graph: the per-run overhead) over a grid of input widths (output
at full width) and of output widths (input at full width) and predicts ``t(ci, co) = t_in(ci) ·
t_out(co) / t(full, full)`` (exact for a cost bilinear in the widths, as MACs are; the two
curves keep each axis's steps). Curves are made non-decreasing (a measured dip is noise) and
reach 0 at width 0. The whole parent is measured as well, side by side with calibration
offspring, and :mod:`~evonnx.latency.calibrate` fits how the table's layer sum, the MACs, the
activations, the live layers and the ``Add`` nodes that removed branches leave behind add up to
a whole model's latency; every later measurement refits it
(:meth:`LatencyModel.recalibrated`). :meth:`LatencyModel.predict` prices an offspring census.

*Latency steps*: a group's channel count only matters where latency drops. Scanning a group's
grid widths from the top, a width is kept when the group's layers run at least
``step_tolerance`` faster there than at the last kept width; counts are snapped up to these
(:func:`evonnx.pruning.plan.round_channels`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np
import onnx

from evonnx.latency.calibrate import FEATURES, Point, calibration_widths, solve
from evonnx.latency.census import group_census
from evonnx.latency.geometry import LayerShape, layer_shapes
from evonnx.pruning.plan import PrunePlan
from evonnx.pruning.surgery import apply_plan

if TYPE_CHECKING:
    from evonnx.genetic.environments import Census
    from evonnx.latency.table import LatencyTable, Query
    from evonnx.pruning.groups import Analysis, ChannelGroup

logger = logging.getLogger(__name__)

DEFAULT_STEP = {"ort-cpu": 8, "ort-cuda": 8, "ort-trt": 8, "torch-cuda": 8, "tensorrt": 8}
"""Width step of the grid per runtime: NCHWc blocks on CPUs, tensor-core tiles on GPUs
(``ort-cpu``: doubled on a CPU with AVX-512, see :func:`default_step`)."""


def default_step(runtime: str) -> int:
    """The grid's width step on ``runtime`` here: :data:`DEFAULT_STEP`, and 16 for ``ort-cpu``
    on a CPU with AVX-512, where onnxruntime's NCHWc block is 16 channels (a conv costs the
    same at 17-32 output channels: ``benchmarks/nchwc_block.py``)."""
    step = DEFAULT_STEP.get(runtime, 8)
    return 2 * step if runtime == "ort-cpu" and _has_avx512() else step


@functools.cache
def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def width_grid(size: int, step: int, max_points: int = 16) -> tuple[int, ...]:
    """Widths timed for an axis of ``size``: multiples of ``step`` (every width of a group
    smaller than ``2 * step``, at most 8 of them), thinned to ``max_points``, and ``size``."""
    stride = step if size >= 2 * step else max(1, -(-size // 8))
    grid = list(range(stride, size, stride))
    if len(grid) >= max_points:
        every = -(-len(grid) // (max_points - 1))
        grid = grid[every - 1 :: every]
    return (*grid, size)


@dataclass(frozen=True, eq=False)
class LayerCurve:
    """Latency of one layer along each width axis (ms; index 0 is width 0, latency 0)."""

    shape: LayerShape
    cin: np.ndarray
    t_cin: np.ndarray
    cout: np.ndarray
    t_cout: np.ndarray

    @property
    def full(self) -> float:
        """Latency at the parent's widths."""
        return float(self.t_cout[-1])

    @cached_property
    def fixed(self) -> float:
        """The layer's latency extrapolated to width 0 from its two narrowest output widths
        (what it costs alone whatever its width; 0 with fewer than two)."""
        if len(self.cout) < 3 or self.cout[2] <= self.cout[1]:
            return 0.0
        slope = (self.t_cout[2] - self.t_cout[1]) / (self.cout[2] - self.cout[1])
        return float(np.clip(self.t_cout[1] - slope * self.cout[1], 0.0, self.t_cout[1]))

    def at(self, cin: float, cout: float) -> float:
        """Predicted latency at ``cin`` input and ``cout`` output channels."""
        if self.shape.depthwise:
            cin = cout = min(cin, cout)
        if self.full <= 0:
            return 0.0
        a = float(np.interp(cin, self.cin, self.t_cin))
        b = float(np.interp(cout, self.cout, self.t_cout))
        return a * b / self.full


@dataclass(frozen=True, eq=False)
class LatencyModel:
    """Predicts the latency of offspring of one parent on one runtime at one batch size.

    Attributes:
        runtime: Runtime name.
        batch: Batch size.
        curves: Per layer (node name).
        measured_ms: The parent's measured latency (the reference of every calibration point).
        empty_ms: Fixed cost of a run (an empty graph's latency).
        coef: Coefficients of :data:`~evonnx.latency.calibrate.FEATURES`.
        points: Calibration points the coefficients are fitted on.
        usable: Per feature, whether it may be fitted.
        steps: Latency-step widths per prunable group id (ascending, the full size last).
    """

    runtime: str
    batch: int
    curves: Mapping[str, LayerCurve]
    measured_ms: float
    empty_ms: float
    coef: tuple[float, ...]
    points: tuple[Point, ...] = ()
    usable: tuple[bool, ...] = (True,) * 7
    steps: Mapping[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def overhead_ms(self) -> float:
        """The intercept: what an offspring costs whatever its widths."""
        return self.coef[0]

    @property
    def scale(self) -> float:
        """Factor on the table's layer sum."""
        return self.coef[1]

    def layers_ms(self, census: Census) -> float:
        """Sum of the layers' predicted latencies for an offspring census."""
        total = 0.0
        for c in census:
            curve = self.curves.get(c.layer.node)
            if curve is not None:
                s = curve.shape
                total += curve.at(c.in_fraction * s.cin, c.out_fraction * s.cout)
        return total

    def features(self, census: Census) -> tuple[float, ...]:
        """The census's features (:data:`~evonnx.latency.calibrate.FEATURES` order)."""
        var = fixed = macs = elements = orphans = 0.0
        live = 0
        for c in census:
            curve = self.curves.get(c.layer.node)
            if curve is None or c.out_fraction <= 0:
                continue
            s = curve.shape
            if c.in_fraction <= 0:  # the last layer of a removed branch: its Add stays, unfused
                orphans += c.out_fraction * s.out_size * self.batch * 1e-6
                continue
            t = curve.at(c.in_fraction * s.cin, c.out_fraction * s.cout)
            fixed += min(t, curve.fixed)
            var += t - min(t, curve.fixed)
            live += 1
            elements += c.out_fraction * s.out_size * self.batch * 1e-6
            fin = min(c.in_fraction, c.out_fraction) if s.depthwise else c.in_fraction
            macs += fin * c.out_fraction * s.macs * self.batch * 1e-9
        return (1.0, var, fixed, macs, elements, float(live), orphans)

    def predict(self, census: Census) -> float:
        """Predicted latency (ms) of an offspring with this census."""
        return float(np.dot(self.coef, self.features(census)))

    def recalibrated(self, census: Census, ms: float, parent_ms: float) -> LatencyModel:
        """This model refitted with one more measured offspring (``ms``, measured side by side
        with the parent at ``parent_ms``)."""
        point = Point(self.features(census), ms * self.measured_ms / parent_ms)
        points = (*self.points, point)
        coef = solve(points, self.usable, self.empty_ms)
        logger.debug(
            "recalibrated on %d points (predicted %.4g, measured %.4g): %s", len(points),
            self.predict(census), point.ms, dict(zip(FEATURES, np.round(coef, 6), strict=True)),
        )  # fmt: skip
        return replace(self, coef=coef, points=points)

    def widths(self, group_id: int) -> Sequence[int] | None:
        """Latency-step widths of a group (``None``: no steps known)."""
        return self.steps.get(group_id)


def build_latency_model(
    model: onnx.ModelProto,
    analysis: Analysis,
    table: LatencyTable,
    step: int | None = None,
    step_tolerance: float = 0.02,
    max_points: int = 16,
    calibrate: bool = True,
) -> LatencyModel:
    """Time ``model``'s layers (table misses only) and the whole model; fit the predictor.

    Args:
        model: The parent.
        analysis: ``analyze(model)``.
        table: Latency table of the runtime and batch size.
        step: Width step of the grid (default: :func:`default_step` of the runtime).
        step_tolerance: Relative drop in a group's latency that makes a width a step.
        max_points: Most grid widths per axis.
        calibrate: Measure calibration offspring side by side with the parent (else the parent
            alone: the proportional model).

    Raises:
        UnsupportedModelError: A layer has no static input shape.
        DeployError: The runtime cannot run a graph.
    """
    rt = table.runtime
    shapes = layer_shapes(model, analysis, table.batch)
    curves, empty = _layer_curves(table, shapes, step or default_step(rt.name), max_points)
    lm = LatencyModel(
        rt.name, table.batch, curves, 0.0, empty, (empty, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0)
    )
    steps = latency_steps(lm, analysis, step_tolerance)
    calib = calibration_widths(analysis, steps) if calibrate else []
    children = [apply_plan(model, analysis, _first(analysis, w)) for w in calib]
    measured, *calib_ms = rt.latencies([model, *children], table.batch)
    censuses = [group_census(analysis, w) for w in [{}, *calib]]
    points = tuple(
        Point(lm.features(c), ms) for c, ms in zip(censuses, [measured, *calib_ms], strict=True)
    )
    usable = (True,) * 5 + (any(g.removable for g in analysis.prunable_groups),) * 2
    coef = solve(points, usable, min(empty, measured))
    logger.info(
        "%s batch %d: model %.3f ms, layers %.3f ms (%d table hits, %d timed); fit %s",
        rt.name, table.batch, measured, lm.layers_ms(censuses[0]), table.hits, table.misses,
        dict(zip(FEATURES, np.round(coef, 6), strict=True)),
    )  # fmt: skip
    return LatencyModel(
        rt.name, table.batch, curves, measured, min(empty, measured), coef, points, usable, steps
    )


def _layer_curves(
    table: LatencyTable, shapes: Mapping[str, LayerShape], step: int, max_points: int
) -> tuple[dict[str, LayerCurve], float]:
    """Each layer's curves over its width grids (from ``table``, less the empty graph's
    latency), and that latency (ms)."""
    queries: list[Query] = []
    spans: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for node, s in shapes.items():
        gin = width_grid(s.cin, step, max_points)
        gout = gin if s.depthwise else width_grid(s.cout, step, max_points)
        spans[node] = (gin, gout)
        queries += [(s, ci, s.cout) for ci in gin] + [(s, s.cin, co) for co in gout]
    values = iter(table.lookup(queries))
    empty = table.empty_ms()
    curves = {}
    for node, s in shapes.items():
        gin, gout = spans[node]
        t_in = [max(0.0, next(values) - empty) for _ in gin]
        t_out = [max(0.0, next(values) - empty) for _ in gout]
        curves[node] = LayerCurve(s, *_curve(gin, t_in), *_curve(gout, t_out))
    return curves, empty


def _first(analysis: Analysis, widths: Mapping[int, int]) -> PrunePlan:
    """A plan keeping the first ``widths[g]`` channels of each listed group."""
    return PrunePlan({gid: tuple(range(w)) for gid, w in widths.items()})


def _curve(grid: Sequence[int], ms: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([0, *grid], dtype=np.float64)
    y = np.maximum.accumulate(np.array([0.0, *ms], dtype=np.float64))
    return x, y


def latency_steps(
    lm: LatencyModel, analysis: Analysis, tolerance: float = 0.02
) -> dict[int, tuple[int, ...]]:
    """Widths of each prunable group at which its layers' latency drops (see module doc)."""
    out = {}
    for g in analysis.prunable_groups:
        producers = [c for c in lm.curves.values() if c.shape.node in _nodes_of(analysis, g.id)]
        grid = sorted({int(w) for c in producers for w in c.cout[1:] if w <= g.size} | {g.size})
        touched = _touching(analysis, g.id)  # the drop is relative to the group's own layers,

        def local(w: int, g: ChannelGroup = g, touched: set[str] = touched) -> float:
            census = group_census(analysis, {g.id: w})  # not to the whole model's
            return lm.layers_ms([c for c in census if c.layer.node in touched])

        kept = [g.size]
        best = local(g.size)
        for w in reversed(grid[:-1]):
            t = local(w)
            if t < best * (1.0 - tolerance):
                kept.append(w)
                best = t
        out[g.id] = tuple(sorted(kept))
    return out


def _nodes_of(analysis: Analysis, gid: int) -> set[str]:
    return {lay.node for lay in analysis.layers if lay.out_group == gid}


def _touching(analysis: Analysis, gid: int) -> set[str]:
    """Layers that produce or read group ``gid``."""
    return {lay.node for lay in analysis.layers if lay.out_group == gid or gid in lay.in_groups}
