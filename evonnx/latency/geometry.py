"""Geometry of conv/FC layers and the single-layer graphs the latency table times."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from evonnx.errors import UnsupportedModelError
from evonnx.model.batch import rebatch
from evonnx.model.shapes import resolve_shapes

if TYPE_CHECKING:
    from evonnx.pruning.groups import Analysis, Layer

_CONV_ATTRS = ("kernel_shape", "strides", "pads", "dilations", "auto_pad", "output_padding")


@dataclass(frozen=True)
class LayerShape:
    """One conv/FC layer of a model at a batch size, with its widths.

    Attributes:
        node: Node name in the model.
        op: ``Conv``, ``ConvTranspose`` or ``Gemm`` (``MatMul`` layers are timed as ``Gemm``).
        cin: Input channels (features).
        cout: Output channels (features).
        spatial: Input spatial size (conv), or rows per sample (FC; 1 for a plain vector).
        kernel: Weight spatial size (conv; ``()`` for FC).
        attrs: The conv node's geometry attributes, as sorted ``(name, value)`` pairs.
        depthwise: Conv with ``group == cin == cout`` (widths change together).
        out_size: Output elements per sample (0: unknown; not part of the table key).
    """

    node: str
    op: str
    cin: int
    cout: int
    spatial: tuple[int, ...]
    kernel: tuple[int, ...] = ()
    attrs: tuple[tuple[str, str], ...] = ()
    depthwise: bool = False
    out_size: int = 0

    @property
    def macs(self) -> int:
        """Multiply-accumulates per sample at full width (0 when the output size is unknown)."""
        per_output = (1 if self.depthwise else self.cin) * int(np.prod(self.kernel or (1,)))
        return self.out_size * per_output

    def key(self, batch: int, cin: int, cout: int) -> str:
        """Table key of this geometry at ``batch`` with ``cin``/``cout`` channels."""
        attrs = ",".join(f"{k}={v}" for k, v in self.attrs)
        dw = "|dw" if self.depthwise else ""
        spatial = "x".join(map(str, self.spatial))
        kernel = "x".join(map(str, self.kernel))
        return f"{self.op}|b{batch}|{cin}>{cout}|s{spatial}|k{kernel}|{attrs}{dw}"

    def graph(self, batch: int, cin: int, cout: int, seed: int = 0) -> onnx.ModelProto:
        """A model of just this layer (with bias) at ``batch`` with ``cin``/``cout`` channels."""
        rng = np.random.default_rng(seed)
        if self.depthwise:
            cout = cin
        if self.op == "Gemm":
            x_shape = [batch, cin] if self.spatial == (1,) else [batch, *self.spatial, cin]
            w = rng.standard_normal((cin, cout)).astype(np.float32)
            op = "Gemm" if len(x_shape) == 2 else "MatMul"
            node = helper.make_node(op, ["x", "w", "b"] if op == "Gemm" else ["x", "w"], ["y"])
            extra = [] if op == "Gemm" else [helper.make_node("Add", ["y", "b"], ["z"])]
            out = "y" if op == "Gemm" else "z"
            nodes = [node, *extra]
        else:
            x_shape = [batch, cin, *self.spatial]
            group = cin if self.depthwise else 1
            if self.op == "Conv":
                w_shape = [cout, cin // group, *self.kernel]
            else:
                w_shape = [cin, cout // group, *self.kernel]
            w = (rng.standard_normal(w_shape) * 0.1).astype(np.float32)
            attrs = {k: _attr_value(v) for k, v in self.attrs}
            nodes = [helper.make_node(self.op, ["x", "w", "b"], ["y"], group=group, **attrs)]
            out = "y"
        b = rng.standard_normal(cout).astype(np.float32)
        graph = helper.make_graph(
            nodes,
            f"layer_{self.op}",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        return onnx.shape_inference.infer_shapes(model)


def _attr_value(text: str) -> Any:
    if text.startswith("["):
        return [int(v) for v in text[1:-1].split(",") if v]
    return text


def layer_shapes(model: onnx.ModelProto, analysis: Analysis, batch: int) -> dict[str, LayerShape]:
    """The geometry of every layer of ``analysis`` in ``model`` at ``batch``, by node name.

    Raises:
        UnsupportedModelError: A layer's input has no static shape at this batch size.
    """
    batched = rebatch(model, batch)
    resolved = resolve_shapes(batched, batch=batch)
    shapes = resolved.shapes
    nodes = {
        n.name or f"{n.op_type}:{n.output[0] if n.output else '?'}": n for n in batched.graph.node
    }
    weights = {t.name: tuple(t.dims) for t in batched.graph.initializer}
    out = {}
    for lay in analysis.layers:
        node = nodes[lay.node]
        x = shapes.get(node.input[0])
        w = weights.get(lay.weight)
        if x is None or w is None:
            raise UnsupportedModelError(
                f"layer {lay.node}: no static input shape at batch {batch}; latency needs one"
                + (f" ({resolved.hint()})" if resolved.hint() else "")
            )
        y = shapes.get(node.output[0])
        out_size = int(np.prod(y[1:])) if y is not None else 0
        out[lay.node] = replace(_shape_of(lay, node, x, w), out_size=out_size)
    return out


def _shape_of(
    lay: Layer, node: onnx.NodeProto, x: tuple[int, ...], w: tuple[int, ...]
) -> LayerShape:
    cin, cout = w[lay.in_axis], w[lay.out_axis]
    if lay.op_type in ("Conv", "ConvTranspose"):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        group = int(attrs.get("group", 1))
        cin = x[1]
        if lay.op_type == "ConvTranspose":
            cout = w[1] * group
        pairs = tuple(
            sorted(
                (k, _attr_text(v))
                for k, v in attrs.items()
                if k in _CONV_ATTRS and k != "kernel_shape"
            )
        )
        return LayerShape(
            lay.node, lay.op_type, cin, cout, tuple(x[2:]), tuple(w[2:]), pairs,
            depthwise=group > 1 and group == cin,
        )  # fmt: skip
    rows = int(np.prod(x[1:-1])) if len(x) > 2 else 1
    return LayerShape(lay.node, "Gemm", cin, cout, (rows,))


def _attr_text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(int(v)) for v in value) + "]"
    return str(value)
