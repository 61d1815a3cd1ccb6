"""Folding removed channels' constants into the layers that read them (pure plan data).

A channel whose producer filters are removed does not vanish from the ancestor's function:
it emits a constant (its bias through BatchNorm and activations; see
:mod:`evonnx.pruning.analysis.constants`). :func:`plan_folds` computes, for every layer reading
removed channels, what that constant added to each of its outputs, so the surgery can add it
to the layer's bias. The result says how exact each fold is (:class:`FoldKind`): exact for
Gemm, MatMul, unpadded convs and recurrent layers (LSTM, GRU, RNN: the gates are linear in
their input before the activation, so the constant joins ``Wb``); for a zero-padded conv
exact away from the border, with the largest border error measured; approximate for
ConvTranspose; unknown where an op on the path cannot be evaluated (the constant is dropped,
as before folding existed).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from evonnx.pruning.analysis.constants import RNNS
from evonnx.pruning.groups import Analysis, ChannelConstant, ChannelGroup, Geometry, Layer, Role
from evonnx.pruning.plan import PrunePlan, unique_members

logger = logging.getLogger(__name__)


class FoldKind(str, enum.Enum):
    """How exactly a layer takes in the constants of the removed channels it read."""

    EXACT = "exact"  # Gemm, MatMul, unpadded conv: the bias absorbs it exactly
    INTERIOR = "interior"  # zero-padded conv: exact except on the border (error measured)
    BORDER_MAP = "border_map"  # zero-padded conv, exact: a constant map corrects the border
    APPROXIMATE = "approximate"  # ConvTranspose: the mean contribution per output channel
    UNKNOWN = "unknown"  # a constant could not be evaluated exactly: not folded


@dataclass(frozen=True)
class LayerFold:
    """What the removed channels a layer read add to each of its outputs.

    Attributes:
        node: The reading layer.
        op: Its op type.
        weight: Its weight initializer.
        out_axis: The weight axis of its outputs (to slice ``delta`` like the weight).
        delta: Per output channel, over the ancestor's full output width (LSTM, GRU, RNN:
            ``[directions, gates * hidden]``, what ``Wb`` gains).
        kind: How exact folding ``delta`` into the bias is.
        border_error: Largest absolute error of the layer's output (``INTERIOR``: on the
            border; ``APPROXIMATE``: a bound), 0 when exact.
        unknown: Removed channels read whose constant is unknown (dropped).
        kernel: Conv: ``sum_p c_p W[:, p]`` per output and tap (the map of the constants).
        geometry: Conv: its window, for the exact constant map of :func:`constant_map`.
    """

    node: str
    op: str
    weight: str
    out_axis: int
    delta: np.ndarray = field(repr=False)
    kind: FoldKind
    border_error: float = 0.0
    unknown: int = 0
    kernel: np.ndarray | None = field(default=None, repr=False)
    geometry: Geometry | None = None


@dataclass(frozen=True)
class FoldPlan:
    """Every layer fold of one plan."""

    layers: tuple[LayerFold, ...] = ()

    def of(self, node: str) -> LayerFold | None:
        """The fold of layer ``node``, if it reads removed channels."""
        return next((f for f in self.layers if f.node == node), None)

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts: layers per :class:`FoldKind`, the largest border error and the
        removed channels whose constant could not be folded."""
        counts = {k.value: 0 for k in FoldKind}
        for f in self.layers:
            counts[f.kind.value] += 1
        return {
            "layers": counts,
            "max_border_error": max((f.border_error for f in self.layers), default=0.0),
            "unknown_channels": sum(f.unknown for f in self.layers),
        }

    @property
    def exact(self) -> bool:
        """Whether every fold is exact."""
        return all(f.kind in (FoldKind.EXACT, FoldKind.BORDER_MAP) for f in self.layers)


def plan_folds(
    analysis: Analysis,
    plan: PrunePlan,
    weights: Mapping[str, np.ndarray],
    exact_border: bool = False,
) -> FoldPlan:
    """The constant each layer must absorb for the channels ``plan`` removes.

    Args:
        analysis: The ancestor's analysis (with its channel constants).
        plan: Kept channels per group.
        weights: Constant values (after synapse masks, as the surgery sees them).
        exact_border: Correct a padded conv's border exactly with a constant map added to
            its output (:attr:`FoldKind.BORDER_MAP`, needs static sizes) instead of leaving
            the border error (:attr:`FoldKind.INTERIOR`; no extra node).
    """
    reads: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    layers = {lay.node: lay for lay in analysis.layers}
    layers.update(_recurrent_layers(analysis))
    exits: set[str] = set()  # layers of emptied branches: they output an exact constant map
    for g in analysis.groups:
        removed = _removed(g, plan)
        if not removed.size:
            continue
        if removed.size == g.size:
            exits.update(m.node for m in g.by_role(Role.CONSUMER))
        for m in unique_members(g.by_role(Role.CONSUMER)):
            cc = analysis.constant(m.node)
            idx = m.indices(removed)
            known = cc is not None and len(cc.values) > idx.max()
            c = cc.array()[idx] if cc is not None and known else np.full(idx.size, np.nan)
            reads.setdefault(m.node, []).append((idx, c))
    out = []
    for node, parts in reads.items():
        lay = layers.get(node)
        if lay is None:
            continue
        idx = np.concatenate([p[0] for p in parts])
        c = np.concatenate([p[1] for p in parts])
        fold = _layer_fold(lay, weights[lay.weight], idx, c, analysis.constant(node))
        if fold.kind is FoldKind.INTERIOR and constant_map(fold) is not None:
            if node in exits:
                fold = replace(fold, kind=FoldKind.EXACT, border_error=0.0)
            elif exact_border:
                fold = replace(fold, kind=FoldKind.BORDER_MAP, border_error=0.0)
        out.append(fold)
    folds = FoldPlan(tuple(out))
    _log(folds)
    return folds


RECURRENT = RNNS


def _recurrent_layers(analysis: Analysis) -> dict[str, Layer]:
    """LSTM/GRU/RNN readers as layers for folding: ``W`` is ``[directions, gates * hidden,
    input]``, read on axis 2; their outputs (axis 1) are never pruned."""
    out = {}
    for g in analysis.groups:
        for m in g.by_role(Role.CONSUMER):
            cc = analysis.constant(m.node)
            if cc is not None and cc.op in RECURRENT and m.node not in out:
                out[m.node] = Layer(m.node, cc.op, m.name, 1, m.axis, None, (), 0)
    return out


def _removed(group: ChannelGroup, plan: PrunePlan) -> np.ndarray:
    if group.id not in plan.keep:
        return np.zeros(0, dtype=np.int64)
    return np.setdiff1d(np.arange(group.size, dtype=np.int64), plan.kept(group))


def _layer_fold(
    lay: Layer,
    w: np.ndarray,
    idx: np.ndarray,
    c: np.ndarray,
    cc: ChannelConstant | None,
) -> LayerFold:
    unknown = int(np.isnan(c).sum())
    c = np.nan_to_num(c, nan=0.0)
    wsel = np.take(np.asarray(w, np.float64), idx, axis=lay.in_axis)
    kernel = np.tensordot(c, wsel, axes=([0], [lay.in_axis]))  # [out, taps...] or [out]
    if lay.op_type == "MatMul" or (lay.op_type == "Gemm" and lay.in_axis == 0):
        kernel = kernel.reshape(-1)
    alpha = cc.alpha if cc is not None else 1.0
    geo = cc.geometry if cc is not None else None
    delta = alpha * kernel.reshape(kernel.shape[0], -1).sum(axis=1)
    kind, err = FoldKind.EXACT, 0.0
    if lay.op_type in RECURRENT:
        delta = kernel  # [directions, gates * hidden]: added to the Wb half of B
    elif lay.op_type == "Conv" and geo is not None and any(geo.pads):
        err = border_error(kernel, geo)
        kind = FoldKind.INTERIOR if err > 0 else FoldKind.EXACT
    elif lay.op_type == "ConvTranspose" and kernel.ndim > 1:
        strides = geo.strides if geo is not None else (1,) * (kernel.ndim - 1)
        delta = delta / float(np.prod(strides))
        err = float(np.abs(kernel).reshape(kernel.shape[0], -1).sum(axis=1).max(initial=0.0))
        kind = FoldKind.APPROXIMATE if err > 0 else FoldKind.EXACT
    if unknown:
        kind = FoldKind.UNKNOWN
    conv = lay.op_type == "Conv"
    return LayerFold(
        lay.node,
        lay.op_type,
        lay.weight,
        lay.out_axis,
        delta,
        kind,
        err,
        unknown,
        kernel if conv else None,
        geo if conv else None,
    )


def _valid_taps(geo: Geometry, axis: int, k: int, size: int) -> np.ndarray:
    """``[out positions, taps]``: 1 where a tap of output position lands inside the input."""
    n = len(geo.strides)
    pb, pe = geo.pads[axis], geo.pads[axis + n]
    s, d = geo.strides[axis], geo.dilations[axis]
    n_out = (size + pb + pe - (d * (k - 1) + 1)) // s + 1
    pos = np.arange(max(n_out, 0))[:, None] * s - pb + np.arange(k)[None, :] * d
    return ((pos >= 0) & (pos < size)).astype(np.float64)


def _sizes(geo: Geometry, kernel: np.ndarray) -> list[int]:
    """Input sizes per axis; a symbolic one is taken large enough to show every border."""
    taps = kernel.shape[1:]
    n = len(taps)
    return [
        s if s is not None else 4 * (geo.dilations[a] * taps[a] + sum(geo.pads[a::n]) + 1)
        for a, s in enumerate(geo.spatial)
    ]


def _tap_sums(kernel: np.ndarray, valids: Sequence[np.ndarray]) -> np.ndarray:
    """``[out, n_1, ..., n_k]``: the kernel summed over the valid taps of every position."""
    out = kernel
    for v in valids:
        out = np.tensordot(out, v, axes=([1], [1]))
    return out


def border_error(kernel: np.ndarray, geo: Geometry) -> float:
    """Largest ``|full kernel sum - sum over the taps inside the input|`` over outputs."""
    if len(geo.spatial) != kernel.ndim - 1:
        return float(np.abs(kernel).reshape(kernel.shape[0], -1).sum(axis=1).max(initial=0.0))
    sizes = _sizes(geo, kernel)
    valids = [
        np.unique(_valid_taps(geo, a, kernel.shape[a + 1], n), axis=0) for a, n in enumerate(sizes)
    ]
    full = kernel.reshape(kernel.shape[0], -1).sum(axis=1)
    sums = _tap_sums(kernel, valids)
    diff = np.abs(sums - full.reshape((-1,) + (1,) * (sums.ndim - 1)))
    return float(diff.max(initial=0.0))


def constant_map(fold: LayerFold, keep_out: np.ndarray | None = None) -> np.ndarray | None:
    """The exact ``[out, *spatial]`` contribution of a padded conv's removed inputs, border
    included (None without static input sizes); ``keep_out`` selects output channels."""
    geo, kernel = fold.geometry, fold.kernel
    if geo is None or kernel is None or any(s is None for s in geo.spatial):
        return None
    if len(geo.spatial) != kernel.ndim - 1:
        return None
    if keep_out is not None:
        kernel = kernel[keep_out]
    sizes = [int(s) for s in geo.spatial if s is not None]
    valids = [_valid_taps(geo, a, kernel.shape[a + 1], n) for a, n in enumerate(sizes)]
    return _tap_sums(kernel, valids)


def _log(folds: FoldPlan) -> None:
    s = folds.summary()
    inexact = {k: v for k, v in s["layers"].items() if v and k != FoldKind.EXACT.value}
    if inexact:
        logger.info(
            "folded removed channels' constants into %d layers (%s not exact; largest border "
            "error %.3g; %d channels with no exact constant)",
            len(folds.layers),
            ", ".join(f"{v} {k}" for k, v in inexact.items()),
            s["max_border_error"],
            s["unknown_channels"],
        )
    elif folds.layers:
        logger.debug("folded removed channels' constants into %d layers exactly", len(folds.layers))
