"""Emptied branches in the surgery: a removed residual branch becomes its constant.

Part of the one surgery pass (:func:`evonnx.pruning.surgery.apply_plan`). With every inner
channel of a removable branch gone, its exit layer outputs its bias plus what the removed
channels' constants contributed (exact, border included, for a padded conv on static sizes);
that value is carried through the BatchNorm and activations between the layer and the
residual ``Add`` (:func:`evonnx.pruning.analysis.constants.exit_chain`), and the constant
replaces the branch.
A zero or per-channel constant is then folded away where that is exact.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from evonnx.errors import PlanError
from evonnx.model.graph import node_name
from evonnx.pruning.analysis.constants import evaluate, exit_chain, per_channel
from evonnx.pruning.fold import FoldKind, FoldPlan, LayerFold, constant_map
from evonnx.pruning.groups import Analysis, Role
from evonnx.pruning.plan import PrunePlan


def drop_branches(
    graph: gs.Graph,
    analysis: Analysis,
    plan: PrunePlan,
    folds: FoldPlan,
    slices: dict[tuple[str, int], np.ndarray],
) -> None:
    """Replace every emptied group's branch by the constant it adds at its residual join.

    Runs after the folds: an exit layer's (sliced) bias already holds its removed inputs'
    per-channel constants. Layers inside the branch (a squeeze-excite's squeeze) have no
    chain to a join and die with the branch, which the export's cleanup removes.
    """
    by_name = {node_name(n): n for n in graph.nodes}
    outputs = {t.name for t in graph.outputs}
    for group in analysis.groups:
        if group.id not in plan.keep or plan.keep[group.id]:
            continue
        for name in sorted({m.node for m in group.by_role(Role.CONSUMER)}):
            layer = by_name[name]
            chain = exit_chain(layer, outputs)
            if chain is None:
                continue
            tail, nodes = chain
            value = _chain_value(layer, nodes, tail, _exit_value(layer, folds, slices))
            const = gs.Constant(f"{tail.name}__branch", value)
            _rewire(tail, const)
            layer.outputs.clear()
            if not np.any(const.values):
                _bypass_zero_adds(graph, const)
            else:
                _fold_bias_adds(graph, const)


def _exit_value(
    layer: gs.Node, folds: FoldPlan, slices: dict[tuple[str, int], np.ndarray]
) -> np.ndarray:
    """The emptied exit layer's output: its bias (with the folds), or for a padded conv on
    static sizes the exact map, border included."""
    value = _bias_value(layer)
    fold = folds.of(node_name(layer))
    if fold is None or fold.kernel is None or fold.kind is FoldKind.BORDER_MAP:
        return value  # a border map is already added after the layer
    border = border_correction(fold, slices.get((fold.weight, fold.out_axis)))
    return value if border is None else (value + border[None]).astype(value.dtype)


def border_correction(fold: LayerFold, removed: np.ndarray | None) -> np.ndarray | None:
    """What the removed inputs' constants add at each position of a padded conv's kept
    outputs (``removed``: the dropped output channels) beyond the interior value its bias
    takes: the constant map less that value, None when there is no map."""
    keep = np.delete(np.arange(fold.delta.size), removed if removed is not None else [])
    cmap = constant_map(fold, keep)
    if cmap is None:
        return None
    return cmap - fold.delta[keep].reshape((-1,) + (1,) * (cmap.ndim - 1))


def _chain_value(
    layer: gs.Node, nodes: list[gs.Node], tail: gs.Tensor, start: np.ndarray
) -> np.ndarray:
    """Carry the exit layer's constant output through the elementwise chain to ``tail``;
    a value uniform over the non-channel axes is kept per channel."""
    vals: dict[int, np.ndarray] = {id(layer.outputs[0]): start.astype(np.float64)}
    for node in nodes:
        ins: list[np.ndarray | None] = []
        for t in node.inputs:
            if isinstance(t, gs.Constant):
                ins.append(np.asarray(t.values, np.float64))
            else:
                ins.append(vals.get(id(t)) if t.name else None)
        res = evaluate(node, ins)
        if res is None:
            raise PlanError(f"cannot evaluate {node_name(node)} on the removed branch's constant")
        vals[id(node.outputs[0])] = np.asarray(res, np.float64)
    out = vals[id(tail)]
    if out.ndim >= 2:
        col = per_channel(out, 1, out.ndim, out.shape[1])
        if col is not None and not np.isnan(col).any():
            shape = [1] * out.ndim
            shape[1] = col.size
            out = col.reshape(shape)
    return out.astype(start.dtype)


def _bias_value(layer: gs.Node) -> np.ndarray:
    """Output of a conv/Gemm whose input has no channels, shaped to broadcast like it."""
    w = np.asarray(layer.inputs[1].values)
    rank = w.ndim if layer.op == "Conv" else 2
    out_axis = 0 if layer.op == "Conv" or layer.attrs.get("transB", 0) else 1
    cout = int(w.shape[out_axis])
    bias = np.zeros(cout, dtype=w.dtype)
    if len(layer.inputs) > 2 and isinstance(layer.inputs[2], gs.Constant):
        b = np.asarray(layer.inputs[2].values, dtype=w.dtype)
        if b.size == cout or b.size == 1:
            b = np.broadcast_to(b.reshape(-1), (cout,))
            bias = bias + (b * float(layer.attrs.get("beta", 1.0)) if layer.op == "Gemm" else b)
    shape = [1] * rank
    shape[1 if layer.op == "Conv" else rank - 1] = cout
    return bias.reshape(shape)


def _rewire(old: gs.Tensor, new: gs.Tensor) -> None:
    """Every node reading ``old`` reads ``new`` instead."""
    for reader in list(old.outputs):
        _rewire_node(reader, old, new)


def _rewire_node(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    for i, t in enumerate(list(node.inputs)):
        if t is old:
            node.inputs[i] = new


_IDEMPOTENT = frozenset({"Relu"})


def _bypass_zero_adds(graph: gs.Graph, zero: gs.Constant) -> None:
    """Drop the ``Add`` of an all-zero constant left by a removed branch (exact: ``x + 0 = x``),
    then an idempotent activation applied twice in a row (``Relu(Relu(x)) = Relu(x)``)."""
    outputs = {id(t) for t in graph.outputs}
    for add in [n for n in zero.outputs if n.op == "Add" and len(n.inputs) == 2]:
        # The other operand has the full shape (what makes a branch removable), so it is the sum.
        other = add.inputs[1] if add.inputs[0] is zero else add.inputs[0]
        out = add.outputs[0]
        if id(out) in outputs or other is zero:
            continue
        for reader in list(out.outputs):
            _rewire_node(reader, out, other)
            if (
                reader.op in _IDEMPOTENT
                and other.inputs
                and other.inputs[0].op == reader.op
                and id(reader.outputs[0]) not in outputs
            ):
                _rewire(reader.outputs[0], other)
                reader.outputs.clear()
        add.outputs.clear()


def _fold_bias_adds(graph: gs.Graph, bias: gs.Constant) -> None:
    """Drop the ``Add`` of a removed branch's constant bias ``b`` when every reader of the sum
    takes ``b`` in exactly: a conv without padding (``conv(x + b) = conv(x) + W b``, into its
    bias), or an ``Add`` of a constant or of a conv output read only there (``(x + b) + y =
    x + (y + b)``, into that constant or conv bias), as after a MobileNetV2 block whose next
    block or head starts with a 1x1 conv. Otherwise the ``Add`` stays."""
    outputs = {id(t) for t in graph.outputs}
    for add in [n for n in bias.outputs if n.op == "Add" and len(n.inputs) == 2]:
        other = add.inputs[1] if add.inputs[0] is bias else add.inputs[0]
        out = add.outputs[0]
        if id(out) in outputs or other is bias or not out.outputs:
            continue
        b = np.asarray(bias.values)
        folds = [_bias_fold(reader, out, b, outputs) for reader in out.outputs]
        if any(f is None for f in folds):
            continue
        for reader, fold in zip(list(out.outputs), folds, strict=True):
            assert fold is not None
            add_into(*fold)
            _rewire_node(reader, out, other)
        add.outputs.clear()


def _bias_fold(
    reader: gs.Node, x: gs.Tensor, shaped: np.ndarray, outputs: set[int]
) -> tuple[gs.Node | gs.Constant, np.ndarray] | None:
    """Where ``reader`` (which reads ``x + b``; it will read ``x``) takes the per-channel
    constant ``b`` (``shaped``, as broadcast) in: a conv (its bias) or a constant, and what is
    added there; None when that is not exact (``outputs``: ids of the graph outputs)."""
    b = shaped.reshape(-1)
    if reader.op == "Conv" and reader.inputs[0] is x and x not in reader.inputs[1:]:
        pads = reader.attrs.get("pads", [0])
        if any(pads) or reader.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return None
        if not _bias_free(reader):
            return None
        wv = np.asarray(reader.inputs[1].values)
        groups = int(reader.attrs.get("group", 1))
        cout, cin_g = wv.shape[:2]
        if cin_g * groups != b.size:
            return None
        rows = (np.arange(cout) // (cout // groups))[:, None] * cin_g + np.arange(cin_g)
        taps = wv.reshape(cout, cin_g, int(np.prod(wv.shape[2:]))).sum(axis=2)
        return reader, (taps * b[rows]).sum(axis=1)
    if reader.op != "Add" or len(reader.inputs) != 2 or list(reader.inputs).count(x) != 1:
        return None
    y = reader.inputs[1] if reader.inputs[0] is x else reader.inputs[0]
    if isinstance(y, gs.Constant):
        return (y, b) if len(y.outputs) == 1 and np.shape(y.values) == shaped.shape else None
    conv = y.inputs[0] if len(y.inputs) == 1 else None
    if conv is None or conv.op != "Conv" or len(y.outputs) != 1 or id(y) in outputs:
        return None
    if not _bias_free(conv):
        return None
    return (conv, b) if np.shape(conv.inputs[1].values)[0] == b.size else None


def _bias_free(conv: gs.Node) -> bool:
    """The conv's weight is a constant and its bias absent or a constant only it reads."""
    if not isinstance(conv.inputs[1], gs.Constant):
        return False
    if len(conv.inputs) < 3 or conv.inputs[2].name == "":
        return True
    bias = conv.inputs[2]
    return isinstance(bias, gs.Constant) and len(bias.outputs) == 1


def add_into(target: gs.Node | gs.Constant, delta: np.ndarray) -> None:
    """Add ``delta`` (per channel) to a constant or to a conv's bias (created if absent, copied
    if other nodes read it too)."""
    if isinstance(target, gs.Node):
        own_input(target, 2, np.zeros(delta.size, dtype_of(target)))
        target = target.inputs[2]
    assert isinstance(target, gs.Constant)
    values = np.asarray(target.values)
    target.values = (values + delta.reshape(values.shape)).astype(values.dtype)


def dtype_of(layer: gs.Node) -> np.dtype:
    return np.asarray(layer.inputs[1].values).dtype


def own_input(node: gs.Node, i: int, default: np.ndarray) -> None:
    """Give ``node`` a constant input ``i`` of its own: ``default`` if absent, else a copy
    when the constant is shared."""
    while len(node.inputs) <= i:
        node.inputs.append(gs.Variable.empty())
    t = node.inputs[i]
    if not t.name:
        node.inputs[i] = gs.Constant(f"{node_name(node)}__bias", default)
    elif isinstance(t, gs.Constant) and len(t.outputs) > 1:
        node.inputs[i] = gs.Constant(f"{node_name(node)}__bias", np.array(t.values, copy=True))
