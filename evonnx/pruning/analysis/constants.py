"""Constants of removed channels through elementwise ops, evaluated on arrays.

A channel whose producer filters are removed still emits a constant: the producer's bias,
carried through BatchNorm, activations and per-channel elementwise constants up to the
layers that read it (:func:`evonnx.pruning.analysis.dataflow.channel_constants` follows it
through the graph, so the surgery can fold it into the reading layer instead of dropping it).
:func:`evaluate` applies one elementwise op to constant arrays (also used on whole constant
maps), :func:`per_channel` reads one value per channel off an array, and :func:`exit_chain`
finds the elementwise region between a layer and its residual join. Imports no other evonnx
module.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

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


# --------------------------------------------------------------------------- exit chains

_MAX_CHAIN = 16  # elementwise nodes between a layer and its residual join


def exit_chain(layer: gs.Node, outputs: set[str]) -> tuple[gs.Tensor, list[gs.Node]] | None:
    """The elementwise region after ``layer`` and the one tensor it hands to the residual join.

    The region holds every :data:`ELEMENTWISE` node whose
    activation inputs all come from ``layer`` or the region (in an evaluable order); its one
    *tail* tensor is read only by ``Add``/``Sub`` nodes with one other, non-constant operand,
    and every other region tensor only inside the region. None when there is no such tail or
    a region tensor is a graph output (``outputs``: their names).
    """
    start = layer.outputs[0]
    region: dict[int, gs.Tensor] = {id(start): start}
    nodes: list[gs.Node] = []
    seen: set[int] = set()
    work = [start]
    while work and len(nodes) <= _MAX_CHAIN:
        t = work.pop()
        if t.name in outputs or not t.outputs:
            return None
        for r in t.outputs:
            live = [i for i in r.inputs if i.name and not isinstance(i, gs.Constant)]
            if id(r) in seen or r.op not in ELEMENTWISE or _is_join(r, t, region):
                continue
            if all(id(i) in region for i in live):
                seen.add(id(r))
                nodes.append(r)
                for o in r.outputs:
                    region[id(o)] = o
                    work.append(o)
    tails = []
    for t in region.values():
        outer = [r for r in t.outputs if id(r) not in seen]
        if not outer:
            continue
        if len(outer) < len(t.outputs) or not all(_is_join(r, t, region) for r in outer):
            return None
        tails.append(t)
    return (tails[0], nodes) if len(tails) == 1 and len(nodes) <= _MAX_CHAIN else None


def _is_join(node: gs.Node, t: gs.Tensor, region: dict[int, gs.Tensor]) -> bool:
    """``node`` is an ``Add``/``Sub`` of ``t`` and one activation from outside the region."""
    if node.op not in ("Add", "Sub") or len(node.inputs) != 2:
        return False
    others = [i for i in node.inputs if i is not t]
    return (
        len(others) == 1 and not isinstance(others[0], gs.Constant) and id(others[0]) not in region
    )
