"""Size and cost metrics of a model: parameters, synapses, clusters and MACs, and the
efficiency of one model against another (A-E, C-E, MAC and parameter ratios)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from evonnx.model.graph import constant_array
from evonnx.model.shapes import shaped_graph
from evonnx.pruning.analysis.driver import analyze_graph

if TYPE_CHECKING:
    from evonnx.pruning.groups import Analysis, Layer


@dataclass(frozen=True)
class LayerMetrics:
    """Metrics of one conv/FC layer.

    Attributes:
        node: Node name.
        op_type: Operator type.
        weight: Weight initializer name.
        shape: Weight shape.
        synapses: Weight elements.
        nonzero_synapses: Nonzero weight elements.
        clusters: Output filters/neurons.
        live_clusters: Output filters/neurons with at least one nonzero weight.
        kernels: k×k kernel slices ``W[o, i]`` (the optional kernel clusters; an FC weight has
            one per synapse).
        live_kernels: Kernel slices with at least one nonzero weight.
        macs: Dense multiply-accumulates per inference (batch dimension read as 1 if symbolic;
            0 when other dimensions are symbolic: unknown).
    """

    node: str
    op_type: str
    weight: str
    shape: tuple[int, ...]
    synapses: int
    nonzero_synapses: int
    clusters: int
    live_clusters: int
    kernels: int
    live_kernels: int
    macs: int


@dataclass(frozen=True)
class ModelMetrics:
    """Whole-model metrics (sums over :class:`LayerMetrics` plus parameter count)."""

    params: int
    synapses: int
    nonzero_synapses: int
    clusters: int
    live_clusters: int
    macs: int
    layers: tuple[LayerMetrics, ...]

    @property
    def unknown_macs(self) -> tuple[str, ...]:
        """Layers whose MACs are unknown (symbolic input shapes); ``macs`` omits them."""
        return tuple(m.node for m in self.layers if m.macs <= 0)

    @property
    def macs_known(self) -> bool:
        """True when every layer's MACs are known."""
        return not self.unknown_macs


def compute_metrics(model: onnx.ModelProto) -> ModelMetrics:
    """Metrics of ``model``."""
    graph, resolved = shaped_graph(model)
    return metrics_of_graph(graph, analyze_graph(graph, resolved.hint()))


def metrics_of_graph(graph: gs.Graph, analysis: Analysis) -> ModelMetrics:
    """Metrics from an imported graph and its analysis."""
    consts = {n: t for n, t in graph.tensors().items() if isinstance(t, gs.Constant)}
    layers = tuple(
        _layer_metrics(lay, constant_array(consts[lay.weight])) for lay in analysis.layers
    )
    params = sum(
        int(np.prod(t.shape)) for t in consts.values() if np.issubdtype(t.dtype, np.floating)
    )
    return ModelMetrics(
        params=params,
        synapses=sum(m.synapses for m in layers),
        nonzero_synapses=sum(m.nonzero_synapses for m in layers),
        clusters=sum(m.clusters for m in layers),
        live_clusters=sum(m.live_clusters for m in layers),
        macs=sum(m.macs for m in layers),
        layers=layers,
    )


def _layer_metrics(layer: Layer, w: np.ndarray) -> LayerMetrics:
    nz = np.moveaxis(w != 0, (layer.out_axis, layer.in_axis), (0, 1))
    per_filter = nz.reshape(nz.shape[0], -1)
    per_kernel = nz.reshape(nz.shape[0] * nz.shape[1], -1)
    return LayerMetrics(
        node=layer.node,
        op_type=layer.op_type,
        weight=layer.weight,
        shape=tuple(int(d) for d in w.shape),
        synapses=int(w.size),
        nonzero_synapses=int(np.count_nonzero(w)),
        clusters=int(w.shape[layer.out_axis]),
        live_clusters=int(per_filter.any(axis=1).sum()),
        kernels=int(per_kernel.shape[0]),
        live_kernels=int(per_kernel.any(axis=1).sum()),
        macs=layer.macs,
    )


@dataclass(frozen=True)
class LayerShrink:
    """How much one conv/FC layer shrank: live output filters/neurons before and after."""

    node: str
    before: int
    after: int

    @property
    def kept(self) -> float:
        """Fraction of the live filters kept (0 for a layer that was removed)."""
        return self.after / self.before if self.before else 1.0


def shrunk_layers(
    before: ModelMetrics, after: ModelMetrics, top: int = 3
) -> tuple[LayerShrink, ...]:
    """The ``top`` layers that kept the smallest fraction of their live filters (matched by
    node name; a layer missing after, e.g. a removed branch, kept none). Unchanged layers are
    left out."""
    now = {m.node: m.live_clusters for m in after.layers}
    changes = [
        LayerShrink(m.node, m.live_clusters, now.get(m.node, 0))
        for m in before.layers
        if now.get(m.node, 0) < m.live_clusters
    ]
    return tuple(sorted(changes, key=lambda c: (c.kept, c.node))[:top])


class SizeMetrics(Protocol):
    """What :func:`efficiency` reads (satisfied by :class:`ModelMetrics`)."""

    @property
    def params(self) -> int: ...

    @property
    def synapses(self) -> int: ...

    @property
    def nonzero_synapses(self) -> int: ...

    @property
    def clusters(self) -> int: ...

    @property
    def live_clusters(self) -> int: ...

    @property
    def macs(self) -> int: ...


@dataclass(frozen=True)
class Efficiency:
    """Efficiency of a generation relative to the first-generation ancestor (×, higher is better).

    Attributes:
        architectural: A-E: gen-1 nonzero synapses / nonzero synapses now.
        cluster: C-E: gen-1 live clusters (filters/neurons with a nonzero weight) / live
            clusters now.
        macs: Gen-1 MACs / MACs now.
        params: Gen-1 parameters / parameters now.
    """

    architectural: float
    cluster: float
    macs: float
    params: float


def _ratio(first: int, now: int) -> float:
    if now:
        return first / now
    return math.inf if first else 1.0


def efficiency(gen1: SizeMetrics, now: SizeMetrics) -> Efficiency:
    """A-E, C-E, MAC and parameter ratios of ``now`` against the first generation ``gen1``.

    The one definition every command and report uses (``evolve``'s lineage, the ``prune``
    summary). Live counts on both sides: an input that already has zero weights (an earlier
    pruning, a sparse export) starts at A-E 1.0, and only what was removed since counts.
    """
    return Efficiency(
        architectural=_ratio(gen1.nonzero_synapses, now.nonzero_synapses),
        cluster=_ratio(gen1.live_clusters, now.live_clusters),
        macs=_ratio(gen1.macs, now.macs),
        params=_ratio(gen1.params, now.params),
    )
