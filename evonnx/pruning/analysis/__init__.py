"""Channel-dependency analysis of an ONNX graph.

Walks the graph in topological order, tracking for every activation tensor which channel
groups its channel axis carries (a *layout*: axis plus segments). Per-op rules live in
:data:`RULES`, keyed by ``op_type``; an op without a rule freezes every group reaching it.
The result is a pure, frozen :class:`~evonnx.pruning.groups.Analysis`.

Modules: :mod:`~evonnx.pruning.analysis.core` (layouts, builder, registry, tensor helpers),
:mod:`~evonnx.pruning.analysis.layers` (Conv/Gemm/MatMul, LSTM/GRU/RNN readers),
:mod:`~evonnx.pruning.analysis.attention` (MatMul of two activations),
:mod:`~evonnx.pruning.analysis.passthrough` (activations, pooling, norms, layout ops),
:mod:`~evonnx.pruning.analysis.elementwise` (broadcast ops, Concat, Split),
:mod:`~evonnx.pruning.analysis.reshape` (including channel axes cut into several, as fused
QKV heads), :mod:`~evonnx.pruning.analysis.constants` (elementwise ops on removed channels'
constants), :mod:`~evonnx.pruning.analysis.dataflow` (those constants at every layer input)
and :mod:`~evonnx.pruning.analysis.driver`.
"""

from __future__ import annotations

from evonnx.pruning.analysis import elementwise, layers, passthrough, reshape
from evonnx.pruning.analysis.core import RULES, Layout, Segment, rule
from evonnx.pruning.analysis.driver import analyze, analyze_graph

__all__ = [
    "RULES",
    "Layout",
    "Segment",
    "analyze",
    "analyze_graph",
    "elementwise",
    "layers",
    "passthrough",
    "reshape",
    "rule",
]
