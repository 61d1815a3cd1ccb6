"""Normalization of exporter quirks at load time.

Real exports hide constants behind nodes: weights routed through ``Identity`` (torch's
legacy exporter without constant folding), weights stored as ``Constant`` nodes and conv
biases applied by a separate ``Add`` of a reshaped constant (paddle2onnx). The channel
analysis and the torch converter want one kind of constant, an initializer, and biases on
the conv. :func:`normalize` rewrites the graph so:

* every ``Constant`` node becomes an initializer (lifted);
* constant subgraphs (``Identity`` of an initializer, ``Reshape``/``Unsqueeze`` of a
  constant, shape arithmetic on static shapes) are folded by onnx-graphsurgeon's
  ``fold_constants``, which evaluates them with onnxruntime (exact: the same kernels that run
  the model);
* a ``Conv``/``ConvTranspose`` whose only reader is an ``Add`` of a per-channel constant
  takes that constant into its bias.

The result keeps the IR version, opsets and metadata of the input, and its outputs are
checked against the input's with onnxruntime on random inputs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

from evonnx.errors import UnsupportedModelError
from evonnx.model.graph import from_graph, import_graph
from evonnx.model.outputs import RTOL, compare_outputs

logger = logging.getLogger(__name__)

_CONV = ("Conv", "ConvTranspose")
_EQUIV_RTOL = RTOL
_SMALL = 16


@dataclass(frozen=True)
class NormalizeReport:
    """What :func:`normalize` changed.

    Attributes:
        constants_lifted: ``Constant`` nodes turned into initializers.
        nodes_folded: Nodes evaluated away by constant folding (``Identity`` included).
        identities_removed: ``Identity`` nodes among ``nodes_folded``.
        biases_folded: Bias ``Add`` nodes merged into their conv.
        splits_sized: ``Split`` nodes given an explicit ``split`` sizes input.
        constants_unshared: Small integer constants (shape vectors, split sizes) copied so
            that each node reading one has its own, which the surgery may rewrite.
        checked: Outputs were compared with the input model's on onnxruntime.
        max_rel_error: Largest relative output difference seen by the check.
    """

    constants_lifted: int = 0
    nodes_folded: int = 0
    identities_removed: int = 0
    biases_folded: int = 0
    splits_sized: int = 0
    constants_unshared: int = 0
    checked: bool = False
    max_rel_error: float = 0.0

    @property
    def changed(self) -> bool:
        """True when the graph was rewritten."""
        return bool(
            self.constants_lifted
            or self.nodes_folded
            or self.biases_folded
            or self.splits_sized
            or self.constants_unshared
        )

    def summary(self) -> str:
        """One line for humans, naming only what changed."""
        if not self.changed:
            return "normalized: nothing to change"
        parts = [
            f"{n} {what}"
            for n, what in (
                (self.constants_lifted, "Constant nodes lifted"),
                (self.nodes_folded, f"nodes folded ({self.identities_removed} Identity)"),
                (self.biases_folded, "bias Add folded into convs"),
                (self.splits_sized, "Split sized"),
                (self.constants_unshared, "shape constants unshared"),
            )
            if n
        ]
        check = f"; outputs match (max rel. error {self.max_rel_error:.1e})" if self.checked else ""
        return f"normalized: {', '.join(parts)}{check}"


def needs_normalization(model: onnx.ModelProto) -> bool:
    """Cheap test: does ``model`` have anything :func:`normalize` would change?"""
    consts = {t.name for t in model.graph.initializer}
    conv_outputs = {n.output[0] for n in model.graph.node if n.op_type in _CONV}
    vectors = {t.name for t in model.graph.initializer if len(t.dims) >= 3 and max(t.dims) > 1}
    small_int = {
        t.name
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.INT64 and len(t.dims) == 1 and t.dims[0] <= _SMALL
    }
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in set(node.input) & small_int:
            readers[name] = readers.get(name, 0) + 1
    if any(n > 1 for n in readers.values()):
        return True
    for node in model.graph.node:
        if node.op_type == "Split" and (len(node.input) < 2 or not node.input[1]):
            return True
        if node.op_type in ("Constant", "Identity"):
            return True
        if (
            node.domain in ("", "ai.onnx")
            and node.input
            and all(not n or n in consts for n in node.input)
        ):
            return True
        if node.op_type == "Add" and len(node.input) == 2:
            a, b = node.input
            if (a in conv_outputs and b in vectors) or (b in conv_outputs and a in vectors):
                return True
    return False


def normalize(
    model: onnx.ModelProto,
    check: bool = True,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[onnx.ModelProto, NormalizeReport]:
    """Normalized copy of ``model`` and what changed (``model`` itself is untouched).

    Args:
        model: A loaded, checked model.
        check: Compare outputs before/after with onnxruntime on random inputs.
        input_shapes: Shapes for the check's inputs (symbolic dimensions default to 1 for the
            batch and 32 elsewhere).

    Raises:
        UnsupportedModelError: The normalized graph's outputs differ from the original's.
    """
    if not needs_normalization(model):
        return model, NormalizeReport()
    ort.set_default_logger_severity(3)
    graph = import_graph(model)
    lifted = _lift_constants(graph)
    before = {id(n): n.op for n in graph.nodes}
    graph.fold_constants(error_ok=True).cleanup(remove_unused_graph_inputs=False)
    after = {id(n) for n in graph.nodes}
    gone = [op for key, op in before.items() if key not in after and op != "Constant"]
    biases = _fold_bias_adds(graph)
    splits = _explicit_splits(graph)
    unshared = _unshare_shape_constants(graph)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = from_graph(graph, model)
    del out.graph.value_info[:]
    report = NormalizeReport(
        constants_lifted=lifted,
        nodes_folded=len(gone),
        identities_removed=gone.count("Identity"),
        biases_folded=biases,
        splits_sized=splits,
        constants_unshared=unshared,
    )
    if check and report.changed:
        result = compare_outputs(model, out, input_shapes or {}, _EQUIV_RTOL)
        if result.difference is not None:
            raise UnsupportedModelError(
                f"normalization changed the model's outputs ({result.difference}); "
                "retry with --no-normalize"
            )
        if result.checked:
            report = dataclasses.replace(report, checked=True, max_rel_error=result.max_rel_error)
    logger.info("%s", report.summary())
    return out, report


def _lift_constants(graph: gs.Graph) -> int:
    """Turn ``Constant`` nodes with a tensor value into initializers."""
    n = 0
    outputs = {t.name for t in graph.outputs}
    for node in list(graph.nodes):
        value = node.attrs.get("value") if node.op == "Constant" else None
        if not isinstance(value, gs.Constant) or node.outputs[0].name in outputs:
            continue
        node.outputs[0].to_constant(np.asarray(value.values))
        node.outputs.clear()
        n += 1
    return n


def _fold_bias_adds(graph: gs.Graph) -> int:
    """Merge ``Add(conv(x), c)`` into the conv's bias when ``c`` is per output channel."""
    outputs = {t.name for t in graph.outputs}
    n = 0
    for node in list(graph.nodes):
        if node.op not in _CONV or len(node.inputs) < 2:
            continue
        w, y = node.inputs[1], node.outputs[0]
        if not isinstance(w, gs.Constant) or y.name in outputs or len(y.outputs) != 1:
            continue
        add = y.outputs[0]
        if add.op != "Add" or len(add.inputs) != 2:
            continue
        other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
        group = int(node.attrs.get("group", 1))
        cout = int(w.shape[0]) if node.op == "Conv" else int(w.shape[1]) * group
        bias = _channel_vector(other, cout, len(w.shape))
        if bias is None or add.inputs[0] is add.inputs[1]:
            continue
        old = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        if old is not None and not isinstance(old, gs.Constant):
            continue
        base = np.asarray(old.values) if old is not None else np.zeros(cout, bias.dtype)
        name = (
            old.name if old is not None and len(old.outputs) == 1 else f"{node.name or y.name}_bias"
        )
        new = gs.Constant(name, (base + bias).astype(base.dtype))
        if len(node.inputs) > 2:
            node.inputs[2] = new
        else:
            node.inputs.append(new)
        final = add.outputs[0]
        add.outputs.clear()
        node.outputs[0] = final
        n += 1
    return n


def _explicit_splits(graph: gs.Graph) -> int:
    """Give every ``Split`` without a sizes input (opset >= 13) one, when its axis is static."""
    if int(graph.opset) < 13:
        return 0
    n = 0
    for node in graph.nodes:
        if node.op != "Split" or (len(node.inputs) > 1 and node.inputs[1].name):
            continue
        x, parts = node.inputs[0], len(node.outputs)
        axis = int(node.attrs.get("axis", 0))
        shape = x.shape
        extent = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
        if not isinstance(extent, int) or extent < 0:
            continue
        chunk = -(-extent // parts)
        sizes = [min(chunk, max(0, extent - i * chunk)) for i in range(parts)]
        name = f"{node.name or node.outputs[0].name}_split"
        sizes_t = gs.Constant(name, np.array(sizes, dtype=np.int64))
        if len(node.inputs) > 1:
            node.inputs[1] = sizes_t
        else:
            node.inputs.append(sizes_t)
        node.attrs.pop("num_outputs", None)
        n += 1
    return n


def _unshare_shape_constants(graph: gs.Graph) -> int:
    """Give each node its own copy of a small int64 vector that several nodes read."""
    n = 0
    for name, t in list(graph.tensors().items()):
        if not isinstance(t, gs.Constant) or len(t.outputs) < 2:
            continue
        v = np.asarray(t.values)
        if v.dtype != np.int64 or v.ndim != 1 or v.size > _SMALL:
            continue
        for i, reader in enumerate(list(t.outputs)[1:], start=1):
            copy = gs.Constant(f"{name}__{i}", v.copy())
            for j, x in enumerate(list(reader.inputs)):
                if x is t:
                    reader.inputs[j] = copy
            n += 1
    return n


def _channel_vector(t: gs.Tensor, cout: int, rank: int) -> np.ndarray | None:
    """``t`` as a length-``cout`` vector when it only varies along the channel axis (1)."""
    if not isinstance(t, gs.Constant):
        return None
    v = np.asarray(t.values)
    if v.dtype.kind != "f" or v.ndim > rank or v.ndim < rank - 1:
        return None
    full = v.reshape((1,) * (rank - v.ndim) + v.shape)
    if full.shape[0] != 1 or any(d != 1 for d in full.shape[2:]) or full.shape[1] not in (1, cout):
        return None
    return np.broadcast_to(full.reshape(-1), (cout,)).copy()
