"""Recurrent layers: ONNX ``LSTM`` and ``GRU`` (forward, reverse, bidirectional).

The ONNX weights stay the trainable tensors (``W``, ``R``, ``B`` and ``P`` as the graph holds
them, gates in ONNX order: LSTM ``i, o, f, c``, GRU ``z, r, h``), so the write-back copies
them unchanged in layout; the gates are reordered inside the op, differentiably. The common
case (default activations, no clip, no peepholes, no ``sequence_lens`` shorter than the
sequence, ``input_forget=0``, GRU ``linear_before_reset=1``) runs torch's fused kernels
(``torch.lstm`` / ``torch.gru``, cuDNN on GPUs); everything else runs a step loop written from
the ONNX equations. ``layout=1`` (batch first) is handled for inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from evonnx.converters.node import Args, Node, Result, arg, opt

DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}
GATES = {"LSTM": 4, "GRU": 3}
# Initial states and sequence lengths are inputs, not weights.
STATE_INPUTS = {"LSTM": frozenset({4, 5, 6}), "GRU": frozenset({4, 5})}


def check_rnn(node: Node) -> str | None:
    """Reject attributes the converter does not run (custom activations, coupled gates)."""
    acts = node.attrs.get("activations")
    n_dir = 2 if node.s("direction", "forward") == "bidirectional" else 1
    if acts is not None and acts != DEFAULT_ACTIVATIONS[node.op_type] * n_dir:
        return f"activations {acts} (only the defaults {DEFAULT_ACTIVATIONS[node.op_type]})"
    if node.has("activation_alpha") or node.has("activation_beta"):
        return "activation_alpha/activation_beta (only the default activations)"
    if node.s("direction", "forward") not in ("forward", "reverse", "bidirectional"):
        return f"direction {node.s('direction', '')!r}"
    if node.op_type == "LSTM" and node.i("input_forget", 0):
        return "input_forget=1 (coupled input and forget gates)"
    if node.i("layout", 0) not in (0, 1):
        return f"layout {node.i('layout', 0)}"
    if node.i("hidden_size", 0) < 1:
        return "a missing hidden_size"
    return None


def lstm(node: Node, args: Args, training: bool) -> Result:
    """LSTM: outputs ``Y``, ``Y_h``, ``Y_c``."""
    return _rnn(node, args, _lstm_step)


def gru(node: Node, args: Args, training: bool) -> Result:
    """GRU (``linear_before_reset`` 0 or 1): outputs ``Y``, ``Y_h``."""
    return _rnn(node, args, _gru_step)


# ------------------------------------------------------------------------------- driver


@dataclass(frozen=True)
class StepWeights:
    """What every time step of one direction reads besides its input and state.

    Attributes:
        r: Recurrence weight ``R`` of the direction (``[gates * hidden, hidden]``).
        rb: Recurrence bias ``Rb`` (``[gates * hidden]``).
        p: LSTM peephole weights, or None.
        clip: Cell clip threshold, or None.
        linear_before_reset: GRU: ``Rb`` and ``R`` applied before the reset gate multiplies.
    """

    r: torch.Tensor
    rb: torch.Tensor
    p: torch.Tensor | None
    clip: float | None
    linear_before_reset: bool


Step = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor | None, StepWeights],
    tuple[torch.Tensor, torch.Tensor | None],
]
"""One time step: ``(x W^T + Wb, h, c, weights) -> (h_new, c_new)``."""


def _rnn(node: Node, args: Args, step: Step) -> Result:
    batch_first = node.i("layout", 0) == 1
    x = arg(node, args, 0)
    if batch_first:
        x = x.transpose(0, 1)  # [seq, batch, input]
    w, r, b = arg(node, args, 1), arg(node, args, 2), opt(args, 3)
    lens, h0 = opt(args, 4), opt(args, 5)
    c0 = opt(args, 6) if node.op_type == "LSTM" else None
    p = opt(args, 7) if node.op_type == "LSTM" else None
    if batch_first:
        h0 = None if h0 is None else h0.transpose(0, 1)
        c0 = None if c0 is None else c0.transpose(0, 1)
    seq, batch = x.shape[0], x.shape[1]
    hidden = node.i("hidden_size", 0)
    dirs = _directions(node)
    h0 = h0 if h0 is not None else x.new_zeros(len(dirs), batch, hidden)
    if node.op_type == "LSTM" and c0 is None:
        c0 = x.new_zeros(len(dirs), batch, hidden)
    full = lens is None or bool((lens.to(torch.int64) >= seq).all())
    simple = full and not node.has("clip") and p is None
    if simple and (node.op_type == "LSTM" or node.i("linear_before_reset", 0) == 1):
        y, hn, cn = _fused(x, w, r, b, h0, c0, dirs)
    else:
        mask = None if full or lens is None else _step_mask(lens, seq, x)
        y, hn, cn = _loop(node, x, (w, r, b, p), (h0, c0), dirs, mask, step)
    return _outputs(node, y, hn, cn, batch_first)


def _directions(node: Node) -> list[bool]:
    """``reverse`` flag of each direction, in ONNX order (forward first)."""
    direction = node.s("direction", "forward")
    return {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[direction]


def _step_mask(lens: torch.Tensor, seq: int, x: torch.Tensor) -> torch.Tensor:
    """``[seq, batch, 1]``: True where step t lies inside sample b's sequence."""
    steps = torch.arange(seq, device=x.device).unsqueeze(1)
    return (steps < lens.to(x.device, torch.int64).unsqueeze(0)).unsqueeze(-1)


def _outputs(
    node: Node, y: torch.Tensor, hn: torch.Tensor, cn: torch.Tensor | None, batch_first: bool
) -> Result:
    """``y``: [seq, dirs, batch, hidden]; ``hn``/``cn``: [dirs, batch, hidden]."""
    if batch_first:
        y = y.permute(2, 0, 1, 3)
        hn = hn.transpose(0, 1)
        cn = None if cn is None else cn.transpose(0, 1)
    return (y, hn) if cn is None else (y, hn, cn)


# ---------------------------------------------------------------------------- step loop


def _loop(
    node: Node,
    x: torch.Tensor,
    weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None],
    state: tuple[torch.Tensor, torch.Tensor | None],
    dirs: list[bool],
    mask: torch.Tensor | None,
    step: Step,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    w, r, b, p = weights
    gates = GATES[node.op_type]
    hidden = node.i("hidden_size", 0)
    clip = node.f("clip", 0.0) if node.has("clip") else None
    before_reset = bool(node.i("linear_before_reset", 0))
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(dirs):
        bias = b[d] if b is not None else x.new_zeros(2 * gates * hidden)
        xw = torch.matmul(x, w[d].t()) + bias[: gates * hidden]  # [seq, batch, G*hidden]
        h, c = state[0][d], None if state[1] is None else state[1][d]
        rb, pd = bias[gates * hidden :], None if p is None else p[d]
        step_weights = StepWeights(r[d], rb, pd, clip, before_reset)
        out: list[torch.Tensor] = [x.new_empty(0)] * x.shape[0]
        order = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
        for t in order:
            h_new, c_new = step(xw[t], h, c, step_weights)
            if mask is not None:
                h_new = torch.where(mask[t], h_new, h)
                c_new = None if c_new is None or c is None else torch.where(mask[t], c_new, c)
                out[t] = h_new * mask[t]
            else:
                out[t] = h_new
            h, c = h_new, c_new
        ys.append(torch.stack(out))
        hs.append(h)
        if c is not None:
            cs.append(c)
    y = torch.stack(ys, dim=1)
    return y, torch.stack(hs), torch.stack(cs) if cs else None


def _clipped(z: torch.Tensor, clip: float | None) -> torch.Tensor:
    return z if clip is None else torch.clamp(z, -clip, clip)


def _lstm_step(
    xw: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, weights: StepWeights
) -> tuple[torch.Tensor, torch.Tensor | None]:
    assert c is not None
    p, clip = weights.p, weights.clip
    zi, zo, zf, zc = (xw + torch.matmul(h, weights.r.t()) + weights.rb).chunk(4, dim=-1)
    if p is not None:
        pi, po, pf = p.chunk(3)
        zi, zf = zi + pi * c, zf + pf * c
    i = torch.sigmoid(_clipped(zi, clip))
    f = torch.sigmoid(_clipped(zf, clip))
    c_new = f * c + i * torch.tanh(_clipped(zc, clip))
    if p is not None:
        zo = zo + po * c_new
    o = torch.sigmoid(_clipped(zo, clip))
    return o * torch.tanh(c_new), c_new


def _gru_step(
    xw: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, weights: StepWeights
) -> tuple[torch.Tensor, torch.Tensor | None]:
    xz, xr, xh = xw.chunk(3, dim=-1)
    rz, rr, rh = weights.r.chunk(3, dim=0)
    bz, br, bh = weights.rb.chunk(3)
    z = torch.sigmoid(_clipped(xz + torch.matmul(h, rz.t()) + bz, weights.clip))
    reset = torch.sigmoid(_clipped(xr + torch.matmul(h, rr.t()) + br, weights.clip))
    if weights.linear_before_reset:
        zh = xh + reset * (torch.matmul(h, rh.t()) + bh)
    else:
        zh = xh + torch.matmul(reset * h, rh.t()) + bh
    candidate = torch.tanh(_clipped(zh, weights.clip))
    return (1 - z) * candidate + z * h, None


# ------------------------------------------------------------------------ fused kernels


def _torch_order(t: torch.Tensor, order: list[int], gates: int) -> torch.Tensor:
    """Gate blocks of ``t`` (along dim 0) rearranged from ONNX order to torch's."""
    chunks = t.chunk(gates, dim=0)
    return torch.cat([chunks[k] for k in order], dim=0)


LSTM_ORDER = [0, 2, 3, 1]  # ONNX i, o, f, c -> torch i, f, g, o
GRU_ORDER = [1, 0, 2]  # ONNX z, r, h -> torch r, z, n


def _params(
    w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None, d: int, order: list[int]
) -> list[torch.Tensor]:
    gates = len(order)
    out = [_torch_order(w[d], order, gates), _torch_order(r[d], order, gates)]
    if b is not None:
        wb, rb = b[d].chunk(2)
        out += [_torch_order(wb, order, gates), _torch_order(rb, order, gates)]
    return out


def _fused(
    x: torch.Tensor,
    w: torch.Tensor,
    r: torch.Tensor,
    b: torch.Tensor | None,
    h0: torch.Tensor,
    c0: torch.Tensor | None,
    dirs: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run torch's fused kernel: ``torch.lstm`` with a cell state ``c0``, else ``torch.gru``.

    Each direction runs on its own (a reverse-only direction on the flipped sequence).
    """
    order = GRU_ORDER if c0 is None else LSTM_ORDER
    has_bias = b is not None
    ys, hs, cs = [], [], []
    for d, reverse in enumerate(dirs):
        params = _params(w, r, b, d, order)
        seq_in = x.flip(0) if reverse else x
        h = h0[d : d + 1]
        if c0 is None:
            y, hn = torch.gru(seq_in, h, params, has_bias, 1, 0.0, False, False, False)
        else:
            state = (h, c0[d : d + 1])
            y, hn, cn = torch.lstm(seq_in, state, params, has_bias, 1, 0.0, False, False, False)
            cs.append(cn)
        ys.append(y.flip(0) if reverse else y)
        hs.append(hn)
    return torch.stack(ys, dim=1), torch.cat(hs), torch.cat(cs) if cs else None
