"""Channel importance by what removing a channel changes: the deviation from its fold.

Removing a channel replaces it, at every layer that reads it, by the constant its producers
emit with zeroed filters (:mod:`evonnx.pruning.analysis.constants`, folded by
:mod:`evonnx.pruning.fold`).
What that costs is how far the channel's actual values are from that constant, times how
strongly the reader weighs it. The L1 norm of the producer filters (:func:`~evonnx.pruning.plan.
channel_strength`) misses both: summed over a group's producers of different layers (a
pointwise conv, its depthwise conv, a squeeze-excite FC) it mixes unrelated scales, and a
filter reading a large positive input (a ReLU's) shifts its output far from its bias even
when its norm is small.

:func:`deviation_strength` ranks each channel by
``sqrt(sum over readers and positions of (rms(a - k) * ||W[:, pos]||)^2)``: ``a`` the
channel's values at the reader's input, ``k`` its fold constant, ``W[:, pos]`` the reader's
weights on it. The values come from :func:`reader_deviation`, which runs the ancestor with
onnxruntime on a few inputs: seeded standard-normal inputs (:func:`synthetic_inputs`, no data
needed) unless samples are given.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from evonnx.model.session import make_session
from evonnx.pruning.groups import Analysis, ChannelGroup, Role
from evonnx.pruning.plan import unique_members

logger = logging.getLogger(__name__)

SAMPLES = 16
"""Synthetic inputs :func:`synthetic_inputs` draws by default."""


def synthetic_inputs(graph: gs.Graph, n: int = SAMPLES, seed: int = 0) -> dict[str, np.ndarray]:
    """``n`` seeded standard-normal samples per graph input, at the graph's static shapes
    (a symbolic first axis taken as the batch).

    Returns an empty mapping when an input is not float or has another symbolic dimension.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for t in graph.inputs:
        kind = _float_type(t)
        dims = list(t.shape)[1:] if t.shape else None
        if kind is None or dims is None or any(not isinstance(d, int) or d <= 0 for d in dims):
            return {}
        dtype = onnx.helper.tensor_dtype_to_np_dtype(kind)
        out[t.name] = rng.standard_normal((n, *dims)).astype(dtype)
    return out


def _float_type(t: gs.Tensor) -> int | None:
    """The ONNX element type of a float tensor, else None."""
    try:
        dtype = np.dtype(t.dtype)
    except TypeError:
        return None
    return onnx.helper.np_dtype_to_tensor_dtype(dtype) if dtype.kind == "f" else None


def _readers(analysis: Analysis, graph: gs.Graph) -> dict[str, tuple[str, int]]:
    """Per layer reading a prunable group (its input a float activation): that input and
    its channel axis."""
    nodes = {n.name: n for n in graph.nodes if n.name}
    layers = {lay.node: lay for lay in analysis.layers}
    out: dict[str, tuple[str, int]] = {}
    for g in analysis.prunable_groups:
        for m in g.by_role(Role.CONSUMER):
            node, lay = nodes.get(m.node), layers.get(m.node)
            if node is None or lay is None or m.node in out or not node.inputs:
                continue
            x = node.inputs[0]
            rank = len(x.shape) if x.shape is not None else None
            if rank is None or isinstance(x, gs.Constant) or _float_type(x) is None:
                continue
            if lay.op_type == "MatMul":
                axis = rank - 1
            elif lay.op_type == "Gemm":
                axis = 0 if int(node.attrs.get("transA", 0)) else 1
            else:
                axis = 1
            out[m.node] = (x.name, axis)
    return out


def reader_deviation(
    model: onnx.ModelProto,
    analysis: Analysis,
    graph: gs.Graph,
    inputs: Mapping[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """Per reading layer: ``rms(a - k)`` per input channel position over ``inputs``.

    ``a`` is the layer's input as the ancestor computes it (onnxruntime, one sample at a
    time), ``k`` the channel's fold constant (0 where unknown: the surgery drops it).
    ``model`` gets extra outputs while it is serialized and comes back unchanged.

    Raises:
        Exception: Whatever onnxruntime raises for a graph it cannot run.
    """
    readers = _readers(analysis, graph)
    tensors = sorted({t for t, _ in readers.values()})
    types = {t.name: _float_type(t) for t in graph.tensors().values()}
    outputs = model.graph.output
    count = len(outputs)
    known = {o.name for o in outputs}
    try:  # the readers' inputs as extra outputs, on the model itself (no copy of its weights)
        for t in tensors:
            if t not in known:
                outputs.append(onnx.helper.make_tensor_value_info(t, types[t] or 1, None))
        data = model.SerializeToString()
    finally:
        del outputs[count:]
    session = make_session(data, log_severity=3)
    del data
    n = min(len(v) for v in inputs.values())
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    consts = {node: _constant(analysis, node) for node in readers}
    for i in range(n):
        outs = session.run(tensors, {k: v[i : i + 1] for k, v in inputs.items()})
        values = dict(zip(tensors, outs, strict=True))
        for node, (t, axis) in readers.items():
            a = np.moveaxis(np.asarray(values[t], np.float64), axis, 0)
            a = a.reshape(a.shape[0], -1)
            k = consts[node]
            k = np.zeros(a.shape[0]) if k is None or k.size != a.shape[0] else k
            sums[node] = sums.get(node, 0.0) + ((a - k[:, None]) ** 2).sum(axis=1)
            counts[node] = counts.get(node, 0) + a.shape[1]
    return {node: np.sqrt(s / max(counts[node], 1)) for node, s in sums.items()}


def _constant(analysis: Analysis, node: str) -> np.ndarray | None:
    cc = analysis.constant(node)
    return None if cc is None else np.nan_to_num(cc.array(), nan=0.0)


def deviation_strength(
    analysis: Analysis,
    weights: Mapping[str, np.ndarray],
    deviation: Mapping[str, np.ndarray],
    groups: Sequence[ChannelGroup] | None = None,
) -> dict[int, np.ndarray]:
    """Per prunable group (or ``groups``): each channel's cost of being removed.

    ``sqrt(sum over reader members and positions of (deviation * ||W[:, pos]||_2)^2)``;
    ``deviation`` is :func:`reader_deviation`'s. A group none of whose readers has a
    deviation is left out (rank it otherwise, e.g. by L1).
    """
    layers = {lay.node: lay for lay in analysis.layers}
    norms: dict[str, np.ndarray] = {}
    out: dict[int, np.ndarray] = {}
    for g in groups if groups is not None else analysis.prunable_groups:
        total = np.zeros(g.size, dtype=np.float64)
        channels = np.arange(g.size)
        seen = False
        for m in unique_members(g.by_role(Role.CONSUMER)):
            lay, dev = layers.get(m.node), deviation.get(m.node)
            if lay is None or dev is None:
                continue
            if lay.weight not in norms:
                w = np.moveaxis(np.asarray(weights[lay.weight], np.float64), lay.in_axis, 0)
                norms[lay.weight] = np.sqrt((w.reshape(w.shape[0], -1) ** 2).sum(axis=1))
            col = norms[lay.weight]
            if col.size != dev.size:
                continue
            idx = m.indices(channels).reshape(g.size, m.block)
            total += ((dev * col)[idx] ** 2).sum(axis=1)
            seen = True
        if seen:
            out[g.id] = np.sqrt(total)
    return out
