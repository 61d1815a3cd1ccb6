"""Channel-dependency analysis of an ONNX graph.

Walks the graph in topological order, tracking for every activation tensor which channel
groups its channel axis carries (a *layout*: axis plus segments). Per-op rules live in
:data:`RULES`, keyed by ``op_type``; an op without a rule freezes every group reaching it.
The result is a pure, frozen :class:`~evonnx.groups.Analysis`.

Modules: :mod:`~evonnx.analysis.core` (layouts, builder, registry),
:mod:`~evonnx.analysis.layers` (Conv/Gemm/MatMul, LSTM/GRU/RNN readers),
:mod:`~evonnx.analysis.attention` (MatMul of two activations), :mod:`~evonnx.analysis.passthrough`
(activations, pooling, norms, layout ops), :mod:`~evonnx.analysis.elementwise` (broadcast ops,
Concat, Split), :mod:`~evonnx.analysis.reshape` (including channel axes cut into several, as
fused QKV heads), :mod:`~evonnx.analysis.constants` and :mod:`~evonnx.analysis.fullvals`
(removed channels' constants) and :mod:`~evonnx.analysis.driver`.
"""

from __future__ import annotations

from evonnx.analysis import elementwise, layers, passthrough, reshape
from evonnx.analysis.core import RULES, Layout, Segment, rule
from evonnx.analysis.driver import analyze, analyze_graph

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
