"""Execute an ONNX graph as a trainable ``torch.nn.Module`` and write trained weights back.

ONNX stays the source of truth: :class:`OnnxModule` interprets the graph node by node with
torch ops (see :mod:`evonnx.converters.ops`), holding every initializer as a parameter or
buffer under a mangled name, and :func:`write_back` copies the trained values into a copy of
the original ``ModelProto``.

Sparsity masks (:meth:`OnnxModule.freeze_zeros`) work two ways: a gradient hook zeroes the
gradient of every masked entry (enough for SGD with momentum/weight decay, Adam and AdamW,
whose updates are zero where gradient, state and weight are zero), and
:meth:`OnnxModule.apply_masks`, to call after ``optimizer.step()``, re-zeroes the entries
for optimizers or code that move them anyway.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable

import onnx
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from evonnx.converters.node import (
    FLOAT_TYPES,
    ONNX_TO_TORCH,
    Node,
    OpFn,
    tensor_from_proto,
    tensor_to_proto,
)
from evonnx.converters.ops import CHECKS, NON_TRAINABLE_INPUTS, OPS, WEIGHT_OPS
from evonnx.converters.ops_shape import constant_value
from evonnx.errors import ConversionError, UnsupportedModelError
from evonnx.model.graph import graph_inputs, opset_of

logger = logging.getLogger(__name__)

_DEFAULT_DOMAINS = ("", "ai.onnx")


def mangle_name(name: str) -> str:
    """Deterministic, injective map from an ONNX value name to a torch attribute name.

    ASCII letters and digits are kept, ``_`` becomes ``__`` and any other character
    becomes ``_<hex code>_``; the result is prefixed with ``t_``.
    """
    parts = ["t_"]
    for ch in name:
        if ch.isascii() and ch.isalnum():
            parts.append(ch)
        elif ch == "_":
            parts.append("__")
        else:
            parts.append(f"_{ord(ch):x}_")
    return "".join(parts)


def unmangle_name(attr: str) -> str:
    """Inverse of :func:`mangle_name`.

    Raises:
        ValueError: ``attr`` is not a mangled name.
    """
    if not attr.startswith("t_"):
        raise ValueError(f"not a mangled name: {attr!r}")
    out: list[str] = []
    i, body = 0, attr[2:]
    while i < len(body):
        ch = body[i]
        if ch != "_":
            out.append(ch)
            i += 1
        elif body[i + 1 : i + 2] == "_":
            out.append("_")
            i += 2
        else:
            end = body.find("_", i + 1)
            if end < 0:
                raise ValueError(f"not a mangled name: {attr!r}")
            out.append(chr(int(body[i + 1 : end], 16)))
            i = end + 1
    return "".join(out)


def _default_opset(model: onnx.ModelProto) -> int:
    try:
        return opset_of(model)
    except UnsupportedModelError as exc:
        raise ConversionError("model imports no version of the default ONNX domain") from exc


def _check_supported(proto: onnx.NodeProto, index: int) -> None:
    name = proto.name or f"{proto.op_type}#{index}"
    if proto.domain not in _DEFAULT_DOMAINS or proto.op_type not in OPS:
        domain = f" (domain {proto.domain!r})" if proto.domain not in _DEFAULT_DOMAINS else ""
        raise ConversionError(
            f"unsupported op {proto.op_type!r}{domain} in node {name!r}: no torch implementation"
        )


def _topological_order(graph: onnx.GraphProto) -> list[int]:
    """Node indices in a topological order (stable: ties keep graph order)."""
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer[out] = i
    given = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    deps: list[set[int]] = []
    users: list[list[int]] = [[] for _ in graph.node]
    for i, node in enumerate(graph.node):
        mine: set[int] = set()
        for name in node.input:
            if name in producer:
                mine.add(producer[name])
            elif name and name not in given:
                raise ConversionError(
                    f"input {name!r} of node {node.name or node.op_type!r} is never produced"
                )
        deps.append(mine)
        for d in mine:
            users[d].append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, n in enumerate(waiting) if n == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(graph.node):
        raise ConversionError("graph has a cycle")
    return order


def _uses(nodes: Iterable[onnx.NodeProto]) -> dict[str, list[tuple[str, int]]]:
    """Value name -> ``(op_type, input slot)`` of every use, seen through ``Identity`` nodes.

    A tensor routed through Identity (torch's exporter without constant folding) is used
    wherever the Identity's output is, so BatchNorm statistics behind one stay buffers.
    """
    direct: dict[str, list[tuple[str, int]]] = {}
    forwards: dict[str, list[str]] = {}
    for node in nodes:
        if node.op_type == "Identity" and node.input and node.output:
            forwards.setdefault(node.input[0], []).append(node.output[0])
            continue
        for slot, name in enumerate(node.input):
            if name:
                direct.setdefault(name, []).append((node.op_type, slot))
    uses: dict[str, list[tuple[str, int]]] = {}
    for name in set(direct) | set(forwards):
        stack, seen = [name], {name}
        found = uses.setdefault(name, [])
        while stack:
            current = stack.pop()
            found.extend(direct.get(current, []))
            for nxt in forwards.get(current, []):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    return uses


def _is_trainable(init: onnx.TensorProto, uses: list[tuple[str, int]]) -> bool:
    """Float tensors of rank >= 1 used only as data/weights (not config slots) are trainable."""
    if init.data_type not in FLOAT_TYPES or len(init.dims) == 0:
        return False
    return _trainable_uses(uses)


def _trainable_uses(uses: list[tuple[str, int]]) -> bool:
    """Used at least once, and never in a configuration slot (shapes, BN statistics...)."""
    return bool(uses) and all(
        slot not in NON_TRAINABLE_INPUTS.get(op, frozenset()) for op, slot in uses
    )


class OnnxModule(nn.Module):
    """A ``torch.nn.Module`` that runs an ONNX graph with torch ops.

    Float initializers and ``Constant`` nodes of rank >= 1 used as weights (directly or
    through ``Identity`` nodes) become parameters; everything else (BatchNormalization
    running statistics, integer shape tensors, scalars, clip bounds, resize scales) becomes
    a buffer. Both are registered under
    :func:`mangle_name` of their ONNX name; use :meth:`onnx_parameters` /
    :meth:`onnx_buffers` to address them by ONNX name.

    ``batch_norm_frozen`` (default False): while True, BatchNormalization nodes normalize
    with their running statistics and leave them unchanged even in train mode (see
    :func:`evonnx.retrain.recipe.frozen_batch_norm`).

    Args:
        model: The ONNX model (not modified, not kept).
        freeze_zeros: Call :meth:`freeze_zeros` after construction.

    Raises:
        ConversionError: The graph uses an unsupported op or attribute, or is malformed.
    """

    def __init__(self, model: onnx.ModelProto, freeze_zeros: bool = False) -> None:
        super().__init__()
        graph = model.graph
        if len(graph.sparse_initializer):
            raise ConversionError("sparse initializers are not supported")
        self.opset = _default_opset(model)
        order = _topological_order(graph)
        for i in order:
            _check_supported(graph.node[i], i)
        self._attr_of: dict[str, str] = {}
        self._parameter_names: list[str] = []
        self._buffer_names: list[str] = []
        self._weight_names: list[str] = []
        self._mask_of: dict[str, str] = {}
        self._hooks: list[RemovableHandle] = []
        self._steps: list[tuple[Node, OpFn]] = []
        self.batch_norm_frozen = False
        uses = _uses(graph.node)
        self._register_initializers(graph, uses)
        for i in order:
            self._add_node(Node.from_proto(graph.node[i], i, self.opset), uses)
        self.input_names: list[str] = [v.name for v in graph_inputs(graph)]
        self.output_names: list[str] = [v.name for v in graph.output]
        logger.debug(
            "converted %d nodes: %d parameters, %d buffers",
            len(self._steps),
            len(self._parameter_names),
            len(self._buffer_names),
        )
        if freeze_zeros:
            self.freeze_zeros()

    # ---------------------------------------------------------------------------- building

    def _register_initializers(
        self, graph: onnx.GraphProto, uses: dict[str, list[tuple[str, int]]]
    ) -> None:
        for init in graph.initializer:
            tensor = tensor_from_proto(init, f"initializer {init.name!r}")
            self._register(init.name, tensor, _is_trainable(init, uses.get(init.name, [])), uses)

    def _register(
        self,
        name: str,
        tensor: torch.Tensor,
        trainable: bool,
        uses: dict[str, list[tuple[str, int]]],
    ) -> None:
        attr = mangle_name(name)
        self._attr_of[name] = attr
        if trainable:
            self.register_parameter(attr, nn.Parameter(tensor))
            self._parameter_names.append(name)
            if any(op in WEIGHT_OPS and slot == 1 for op, slot in uses.get(name, [])):
                self._weight_names.append(name)
        else:
            self.register_buffer(attr, tensor)
            self._buffer_names.append(name)

    def _add_node(self, node: Node, uses: dict[str, list[tuple[str, int]]]) -> None:
        check = CHECKS.get(node.op_type)
        problem = check(node) if check is not None else None
        if problem is not None:
            raise ConversionError(f"unsupported {node.where()}: {problem}")
        if node.op_type == "Constant":
            # Weights stored as Constant nodes (paddle2onnx) train like initializers.
            value = constant_value(node)
            name = node.outputs[0]
            trainable = (
                value.is_floating_point()
                and value.dim() >= 1
                and _trainable_uses(uses.get(name, []))
            )
            self._register(name, value, trainable, uses)
            return
        self._steps.append((node, OPS[node.op_type]))

    # ------------------------------------------------------------------------------ access

    def _tensor(self, name: str) -> torch.Tensor:
        value = getattr(self, self._attr_of[name])
        assert isinstance(value, torch.Tensor)
        return value

    def onnx_parameters(self) -> dict[str, nn.Parameter]:
        """Trainable parameters keyed by their ONNX initializer names."""
        out: dict[str, nn.Parameter] = {}
        for name in self._parameter_names:
            value = self._tensor(name)
            assert isinstance(value, nn.Parameter)
            out[name] = value
        return out

    def onnx_buffers(self) -> dict[str, torch.Tensor]:
        """Buffers (non-trainable initializers and lifted Constants) keyed by ONNX names."""
        return {name: self._tensor(name) for name in self._buffer_names}

    def onnx_tensors(self) -> dict[str, torch.Tensor]:
        """All parameters and buffers keyed by ONNX names."""
        return {name: self._tensor(name) for name in self._attr_of}

    def weight_names(self) -> list[str]:
        """ONNX names of conv/FC weights (input 1 of Conv/ConvTranspose/Gemm/MatMul)."""
        return list(self._weight_names)

    # ------------------------------------------------------------------------------- masks

    def freeze_zeros(self) -> dict[str, torch.Tensor]:
        """Keep the currently-zero entries of conv/FC weights at zero during training.

        Records a boolean mask (``True`` = free entry) per weight that has zeros, and
        registers a gradient hook that zeroes the gradient of masked entries. Call
        :meth:`apply_masks` after each optimizer step to also undo any optimizer drift.
        Calling it again re-records the masks from the current weights.

        Returns:
            The masks keyed by ONNX weight name.
        """
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        for attr in self._mask_of.values():
            delattr(self, attr)
        self._mask_of.clear()
        params = self.onnx_parameters()
        for name in self._weight_names:
            param = params[name]
            mask = param.detach() != 0
            if bool(mask.all()):
                continue
            attr = "mask_" + mangle_name(name)
            self.register_buffer(attr, mask, persistent=False)
            self._mask_of[name] = attr
            self._hooks.append(param.register_hook(self._grad_masker(attr)))
        logger.debug("froze zeros of %d weights", len(self._mask_of))
        return self.masks

    def _grad_masker(self, attr: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def hook(grad: torch.Tensor) -> torch.Tensor:
            mask = getattr(self, attr)
            return grad * mask.to(grad.dtype)

        return hook

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        """Boolean masks (``True`` = trainable entry) keyed by ONNX weight name."""
        return {name: getattr(self, attr) for name, attr in self._mask_of.items()}

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero every masked weight entry (call after ``optimizer.step()``)."""
        params = self.onnx_parameters()
        for name, mask in self.masks.items():
            params[name].mul_(mask.to(params[name].dtype))

    # ------------------------------------------------------------------------------ running

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the graph.

        Args:
            *inputs: One tensor per (non-initializer) graph input, in graph order.

        Returns:
            The single graph output, or a tuple of all outputs in graph order.
        """
        if len(inputs) != len(self.input_names):
            raise ConversionError(
                f"expected {len(self.input_names)} inputs {self.input_names}, got {len(inputs)}"
            )
        env: dict[str, torch.Tensor] = {n: self._tensor(n) for n in self._attr_of}
        env.update(zip(self.input_names, inputs, strict=True))
        frozen = self.batch_norm_frozen
        for node, fn in self._steps:
            args = [env[name] if name else None for name in node.inputs]
            training = self.training and not (frozen and node.op_type == "BatchNormalization")
            result = fn(node, args, training)
            outs = result if isinstance(result, tuple) else (result,)
            for k, name in enumerate(node.outputs):
                if not name:
                    continue
                if k >= len(outs):
                    raise ConversionError(f"{node.where()}: output {k} is not supported")
                env[name] = outs[k]
        results = tuple(env[name] for name in self.output_names)
        return results[0] if len(results) == 1 else results

    def extra_repr(self) -> str:
        """Summary shown by ``print(module)``."""
        return (
            f"opset={self.opset}, nodes={len(self._steps)}, inputs={self.input_names}, "
            f"outputs={self.output_names}"
        )


def to_torch(model: onnx.ModelProto, freeze_zeros: bool = False) -> OnnxModule:
    """Build an :class:`OnnxModule` executing ``model``.

    Args:
        model: The ONNX model.
        freeze_zeros: Keep zero conv/FC weight entries at zero (see
            :meth:`OnnxModule.freeze_zeros`).
    """
    return OnnxModule(model, freeze_zeros=freeze_zeros)


def write_back(model: onnx.ModelProto, module: OnnxModule) -> onnx.ModelProto:
    """Copy the module's parameters and buffers into a copy of ``model``.

    Initializers keep their names, element types and shapes; lifted ``Constant`` nodes
    are rewritten only where the module changed their value.

    Args:
        model: The model ``module`` was built from (not modified).
        module: The (trained) module.

    Returns:
        A new ``ModelProto`` holding the module's values.

    Raises:
        ConversionError: ``module`` does not match ``model`` (missing name, other shape).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tensors = module.onnx_tensors()
    for init in out.graph.initializer:
        init.CopyFrom(_updated(init, tensors, f"initializer {init.name!r}"))
    for node in out.graph.node:
        if node.op_type == "Constant" and node.output[0] in tensors:
            _update_constant(node, tensors[node.output[0]], out)
    return out


def _update_constant(node: onnx.NodeProto, tensor: torch.Tensor, model: onnx.ModelProto) -> None:
    """Rewrite a Constant node as ``value=<tensor>`` if the module changed its value."""
    old = constant_value(Node.from_proto(node, 0, _default_opset(model)))
    new = tensor.detach().cpu()
    if list(new.shape) == list(old.shape) and torch.equal(old, new.to(old.dtype)):
        return
    like = onnx.TensorProto(name="", data_type=_onnx_type(old.dtype))
    like.dims.extend(old.shape)
    proto = _updated(like, {"": new}, f"Constant {node.output[0]!r}")
    node.ClearField("attribute")
    node.attribute.append(onnx.helper.make_attribute("value", proto))


def _onnx_type(dtype: torch.dtype) -> int:
    return next(k for k, v in ONNX_TO_TORCH.items() if v == dtype)


def _updated(
    proto: onnx.TensorProto, tensors: dict[str, torch.Tensor], where: str
) -> onnx.TensorProto:
    tensor = tensors.get(proto.name)
    if tensor is None:
        raise ConversionError(f"{where}: the module has no tensor of that name")
    if list(tensor.shape) != list(proto.dims):
        raise ConversionError(
            f"{where}: module shape {list(tensor.shape)} differs from {list(proto.dims)}"
        )
    return tensor_to_proto(tensor, proto)
