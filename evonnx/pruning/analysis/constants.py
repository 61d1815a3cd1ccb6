"""What a channel carries once its producer filters are gone: per-channel constants.

A channel whose producer filter weights are removed still emits a constant: the producer's
bias, carried through BatchNorm, activations and per-channel elementwise constants up to the
layers that read it. :func:`channel_constants` evaluates that constant for every channel
position of every layer input (unknown where an op on the path cannot be evaluated exactly), so
the surgery can fold it into the reading layer instead of dropping it. :func:`evaluate`
applies one elementwise op to constant arrays (also used on whole constant maps).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from evonnx.model.graph import node_name
from evonnx.pruning.analysis.core import Builder, const_value, dim, optional_input, rank
from evonnx.pruning.analysis.fullvals import check_keys, full_values, reshaped_values
from evonnx.pruning.groups import ChannelConstant, Geometry

LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
RNNS = frozenset({"LSTM", "GRU", "RNN"})
READERS = LAYERS | RNNS  # layers whose input constants are folded into their biases


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


_ERF = np.vectorize(math.erf, otypes=[np.float64])


def _gelu(node: gs.Node, x: np.ndarray) -> np.ndarray:
    if node.attrs.get("approximate", "none") == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _ERF(x / math.sqrt(2)))


def _selu(node: gs.Node, x: np.ndarray) -> np.ndarray:
    a = float(node.attrs.get("alpha", 1.67326319217681884765625))
    g = float(node.attrs.get("gamma", 1.05070102214813232421875))
    return g * np.where(x > 0, x, a * (np.exp(x) - 1))


def _elu(node: gs.Node, x: np.ndarray) -> np.ndarray:
    a = float(node.attrs.get("alpha", 1.0))
    return np.where(x > 0, x, a * (np.exp(x) - 1))


def _celu(node: gs.Node, x: np.ndarray) -> np.ndarray:
    a = float(node.attrs.get("alpha", 1.0))
    return np.maximum(0, x) + np.minimum(0, a * (np.exp(x / a) - 1))


def _shrink(node: gs.Node, x: np.ndarray) -> np.ndarray:
    bias, lambd = float(node.attrs.get("bias", 0.0)), float(node.attrs.get("lambd", 0.5))
    return np.where(x < -lambd, x + bias, np.where(x > lambd, x - bias, 0.0))


Unary = Callable[[gs.Node, np.ndarray], np.ndarray]

_UNARY: dict[str, Unary] = {
    "Relu": lambda n, x: np.maximum(x, 0),
    "Sigmoid": lambda n, x: _sigmoid(x),
    "Tanh": lambda n, x: np.tanh(x),
    "LeakyRelu": lambda n, x: np.where(x >= 0, x, float(n.attrs.get("alpha", 0.01)) * x),
    "HardSigmoid": lambda n, x: np.clip(
        float(n.attrs.get("alpha", 0.2)) * x + float(n.attrs.get("beta", 0.5)), 0, 1
    ),
    "HardSwish": lambda n, x: x * np.clip(x / 6 + 0.5, 0, 1),
    "Swish": lambda n, x: x * _sigmoid(float(n.attrs.get("alpha", 1.0)) * x),
    "Elu": _elu,
    "Selu": _selu,
    "Celu": _celu,
    "Softplus": lambda n, x: _softplus(x),
    "Softsign": lambda n, x: x / (1 + np.abs(x)),
    "Mish": lambda n, x: x * np.tanh(_softplus(x)),
    "Gelu": _gelu,
    "Erf": lambda n, x: _ERF(x),
    "ThresholdedRelu": lambda n, x: np.where(x > float(n.attrs.get("alpha", 1.0)), x, 0.0),
    "Shrink": _shrink,
    "Abs": lambda n, x: np.abs(x),
    "Neg": lambda n, x: -x,
    "Exp": lambda n, x: np.exp(x),
    "Log": lambda n, x: np.log(x),
    "Sqrt": lambda n, x: np.sqrt(x),
    "Reciprocal": lambda n, x: 1.0 / x,
    "Floor": lambda n, x: np.floor(x),
    "Ceil": lambda n, x: np.ceil(x),
    "Round": lambda n, x: np.round(x),
    "Sign": lambda n, x: np.sign(x),
    "Sin": lambda n, x: np.sin(x),
    "Cos": lambda n, x: np.cos(x),
    "Identity": lambda n, x: x,
    "Dropout": lambda n, x: x,
}

_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Max": np.maximum,
    "Min": np.minimum,
    "Pow": np.power,
    "PRelu": lambda x, s: np.where(x < 0, s * x, x),
}

_FLOAT_CASTS = frozenset({1, 10, 11, 16})  # float, float16, double, bfloat16

# Ops that map a channel-uniform input to the same uniform value (over non-channel axes).
_UNIFORM_PASS = frozenset(
    {
        "MaxPool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "ReduceMean",
        "ReduceMax",
        "ReduceMin",
        "Transpose",
        "Slice",
        "Resize",
        "Upsample",
    }
)

# Every op :func:`evaluate` handles (a depth branch may end through any of them).
ELEMENTWISE = frozenset(
    set(_UNARY) | set(_BINARY) | {"Clip", "Cast", "BatchNormalization", "Sum", "Mean"}
)


def evaluate(node: gs.Node, inputs: list[np.ndarray | None]) -> np.ndarray | None:
    """Apply the elementwise op ``node`` to constant operands (numpy broadcasting, as ONNX).

    ``inputs`` are the operands (``None`` for an omitted input); the result is None when the
    op is not one :data:`ELEMENTWISE` covers or an operand it needs is unknown.
    """
    op = node.op
    x = inputs[0] if inputs else None
    if x is None:
        return None
    with np.errstate(all="ignore"):
        if op in _UNARY:
            return _UNARY[op](node, x)
        if op in _BINARY and len(inputs) == 2 and inputs[1] is not None:
            return _BINARY[op](x, inputs[1])
        known = [v for v in inputs if v is not None]
        if op in ("Sum", "Mean") and len(known) == len(inputs):
            total = np.sum(np.broadcast_arrays(*known), axis=0)
            return total / len(known) if op == "Mean" else total
        if op == "Clip":
            return _clip(node, inputs)
        if op == "Cast":
            return x if int(node.attrs.get("to", 0)) in _FLOAT_CASTS else None
        if op == "BatchNormalization":
            return _batchnorm(node, x, inputs)
    return None


def _clip(node: gs.Node, inputs: list[np.ndarray | None]) -> np.ndarray | None:
    x = inputs[0]
    assert x is not None
    lo = inputs[1] if len(inputs) > 1 else None
    hi = inputs[2] if len(inputs) > 2 else None
    if "min" in node.attrs or "max" in node.attrs:
        lo, hi = node.attrs.get("min"), node.attrs.get("max")
    out = x
    if lo is not None:
        out = np.maximum(out, np.asarray(lo, dtype=np.float64))
    if hi is not None:
        out = np.minimum(out, np.asarray(hi, dtype=np.float64))
    return out


def _batchnorm(node: gs.Node, x: np.ndarray, inputs: list[np.ndarray | None]) -> np.ndarray | None:
    if len(inputs) < 5 or any(v is None for v in inputs[1:5]) or x.ndim < 2:
        return None
    shape = (-1,) + (1,) * (x.ndim - 2)
    scale, bias, mean, var = (np.asarray(v, np.float64).reshape(shape) for v in inputs[1:5])
    eps = float(node.attrs.get("epsilon", 1e-5))
    return (x - mean) / np.sqrt(var + eps) * scale + bias


# --------------------------------------------------------------------------- the dataflow


def channel_constants(b: Builder, graph: gs.Graph) -> tuple[ChannelConstant, ...]:
    """Per-position constants at the input of every layer that reads a channel layout (and
    attention scores whose keys' constants are unknown frozen: :func:`check_keys`).

    ``vals`` holds one value per position along each tensor's channel axis; ``full`` holds
    the whole constant tensor where it varies along other axes too (after a Reshape cut the
    channel axis into several, as attention heads do; :mod:`evonnx.pruning.analysis.fullvals`).
    """
    vals: dict[str, np.ndarray] = {}
    full: dict[str, np.ndarray] = {}
    out: list[ChannelConstant] = []
    for node in graph.nodes:
        if node.op == "MatMul" and len(node.inputs) == 2 and const_value(node.inputs[1]) is None:
            check_keys(b, node, vals, full)  # may freeze the scores' channels
        if node.op in READERS and node.inputs and node.inputs[0].name in vals:
            x = node.inputs[0]
            values = tuple(None if np.isnan(v) else float(v) for v in vals[x.name])
            alpha = float(node.attrs.get("alpha", 1.0)) if node.op == "Gemm" else 1.0
            out.append(ChannelConstant(node_name(node), values, geometry(node), alpha, node.op))
        for t in node.outputs:
            lay = b.layouts.get(t.name)
            n = dim(t, lay.axis) if lay is not None else None
            if lay is None or not n:
                continue
            whole = full_values(b, node, t, vals, full)
            r = rank(t)
            if whole is not None and r is not None:
                full[t.name] = whole
                v = per_channel(whole, lay.axis, r, n)
            else:
                v = _node_values(b, node, t, lay.axis, n, vals)
            vals[t.name] = v if v is not None and v.shape == (n,) else np.full(n, np.nan)
    return tuple(out)


def _node_values(
    b: Builder, node: gs.Node, t: gs.Tensor, axis: int, n: int, vals: dict[str, np.ndarray]
) -> np.ndarray | None:
    """Per-position constants of output ``t`` (channel axis ``axis``, ``n`` positions)."""
    op = node.op
    if op == "MatMul" and const_value(node.inputs[1]) is None:
        return None  # attention-weighted values: see full_values
    if op in LAYERS:
        return _layer_output(node, n)
    if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
        return reshaped_values(b, node, vals)
    if op == "Concat":
        return _concat(node, axis, vals)
    if op == "Split":
        return _split(node, t, axis, n, vals)
    if op in ELEMENTWISE:  # any operand may be the tracked one (``Mul(scale, x)``)
        return _elementwise(node, t, axis, n, vals)
    src = vals.get(node.inputs[0].name)
    if op in ELEMENTWISE:
        return _elementwise(node, t, axis, n, vals)  # the tracked operand may come second
    if op in _UNIFORM_PASS or src is None:
        return src
    if op == "Pad":
        return _padded(node, src)
    if op == "AveragePool":  # zero padding counted in the mean keeps only a zero uniform
        return src if _avgpool_keeps_uniform(node) else np.where(src == 0, src, np.nan)
    if op == "InstanceNormalization":
        bias = const_value(node.inputs[2])
        return None if bias is None else np.asarray(bias, np.float64).reshape(-1)
    return None


def _layer_output(node: gs.Node, n: int) -> np.ndarray | None:
    """A layer's output when its filters are all zero: its bias (``beta * C`` for Gemm)."""
    bias = optional_input(node, 2)
    if node.op == "MatMul" or bias is None:
        return np.zeros(n)
    v = const_value(bias)
    if v is None:
        return None
    v = np.asarray(v, np.float64)
    if node.op == "Gemm":
        v = v * float(node.attrs.get("beta", 1.0))
        if v.size == 1:
            return np.full(n, float(v.reshape(-1)[0]))
        if v.ndim == 2 and v.shape[0] != 1:
            return None
    v = v.reshape(-1)
    return v if v.size == n else None


def _operand(
    t: gs.Tensor, axis: int, out_rank: int, vals: dict[str, np.ndarray]
) -> np.ndarray | None:
    """Operand ``t`` shaped to broadcast against an output of rank ``out_rank`` whose channel
    axis is ``axis``: tracked values as ``[1, .., n, .., 1]``, constants as they are."""
    if not t.name:
        return None
    c = const_value(t)
    if c is not None:
        return np.asarray(c, np.float64)
    v = vals.get(t.name)
    r = rank(t)
    if v is None or r is None:
        return None
    cax = axis - (out_rank - r)
    if cax < 0:
        return None
    shape = [1] * r
    shape[cax] = v.size
    return v.reshape(shape)


def _elementwise(
    node: gs.Node, t: gs.Tensor, axis: int, n: int, vals: dict[str, np.ndarray]
) -> np.ndarray | None:
    r = rank(t)
    if r is None:
        return None
    res = evaluate(node, [_operand(i, axis, r, vals) for i in node.inputs])
    return None if res is None else per_channel(res, axis, r, n)


def per_channel(arr: np.ndarray, axis: int, out_rank: int, n: int) -> np.ndarray | None:
    """The per-channel values of ``arr`` (broadcast to rank ``out_rank``, channels on
    ``axis``), ``nan`` for a channel that is not uniform over the other axes."""
    a = np.asarray(arr, np.float64)
    if a.ndim > out_rank:
        return None
    a = a.reshape((1,) * (out_rank - a.ndim) + a.shape)
    if a.shape[axis] not in (1, n):
        return None
    rows = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
    uniform = np.all(rows == rows[:, :1], axis=1)
    col = np.where(uniform, rows[:, 0], np.nan)
    return np.broadcast_to(col, (n,)).copy()


def _concat(node: gs.Node, axis: int, vals: dict[str, np.ndarray]) -> np.ndarray | None:
    r = rank(node.outputs[0])
    if r is None or int(node.attrs.get("axis", 0)) % r != axis:
        parts = [vals.get(i.name) for i in node.inputs]
        if any(p is None for p in parts) or any(p.shape != parts[0].shape for p in parts):  # type: ignore[union-attr]
            return None
        first = parts[0]
        assert first is not None
        return np.where(np.all([p == first for p in parts], axis=0), first, np.nan)
    pieces = []
    for i in node.inputs:
        d = dim(i, axis)
        if d is None:
            return None
        pieces.append(vals.get(i.name, np.full(d, np.nan)))
    return np.concatenate(pieces)


def _split(
    node: gs.Node, t: gs.Tensor, axis: int, n: int, vals: dict[str, np.ndarray]
) -> np.ndarray | None:
    src = vals.get(node.inputs[0].name)
    r = rank(node.inputs[0])
    if src is None or r is None:
        return None
    if int(node.attrs.get("axis", 0)) % r != axis:
        return src
    k = list(node.outputs).index(t)
    sizes = [dim(o, axis) for o in node.outputs]
    if any(s is None for s in sizes):
        return None
    start = sum(s for s in sizes[:k] if s is not None)
    return src[start : start + n]


def _padded(node: gs.Node, src: np.ndarray) -> np.ndarray:
    """Edge, reflect and wrap padding keep a uniform channel; constant padding keeps the
    channels equal to the pad value, or all when nothing is padded."""
    if node.attrs.get("mode", "constant") != "constant":
        return src
    pads = node.attrs.get("pads")
    if pads is None:
        p = optional_input(node, 1)
        v = const_value(p) if p is not None else None
        if v is None:
            return np.full(src.shape, np.nan)
        pads = v.reshape(-1).tolist()
    if not any(int(x) for x in pads):
        return src
    fill_t = optional_input(node, 2)
    fill = const_value(fill_t) if fill_t is not None else None
    value = float(node.attrs.get("value", 0.0)) if fill is None else float(fill.reshape(-1)[0])
    return np.where(src == value, src, np.nan)


def _avgpool_keeps_uniform(node: gs.Node) -> bool:
    """An average of a uniform channel is uniform unless zero padding enters the mean."""
    if not int(node.attrs.get("count_include_pad", 0)):
        return True
    padded = any(int(p) for p in node.attrs.get("pads", [0]))
    auto = node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID")
    return not padded and not auto and not int(node.attrs.get("ceil_mode", 0))


def geometry(node: gs.Node) -> Geometry | None:
    """The window of a Conv or ConvTranspose (``auto_pad`` resolved where sizes are known)."""
    x, w = node.inputs[0], node.inputs[1]
    r = rank(x)
    if node.op not in ("Conv", "ConvTranspose") or r is None or r < 3 or w.shape is None:
        return None
    n = r - 2
    spatial = tuple(dim(x, a) for a in range(2, r))
    strides = tuple(int(v) for v in node.attrs.get("strides", [1] * n))
    dilations = tuple(int(v) for v in node.attrs.get("dilations", [1] * n))
    pads = tuple(int(v) for v in node.attrs.get("pads", [0] * 2 * n))
    auto = node.attrs.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        kernel = [int(k) for k in w.shape[2:]]
        total = [
            max(((s or 1) + st - 1) // st * st - st + (k - 1) * d + 1 - (s or 1), 0)
            if s is not None
            else (k - 1) * d
            for s, st, k, d in zip(spatial, strides, kernel, dilations, strict=True)
        ]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pads = tuple(small + big if auto == "SAME_UPPER" else big + small)
    return Geometry(pads, strides, dilations, spatial)
