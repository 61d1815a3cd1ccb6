"""Parsed ONNX nodes and tensor conversion helpers shared by the op registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

from evonnx.errors import ConversionError

AttrValue = int | float | str | list[int] | list[float] | list[str] | torch.Tensor

# ONNX element type -> torch dtype (types torch cannot hold are absent).
ONNX_TO_TORCH: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.BOOL: torch.bool,
}
FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16}
)


def tensor_from_proto(proto: TensorProto, where: str) -> torch.Tensor:
    """Convert an ONNX ``TensorProto`` to a (copied, writable) torch tensor.

    Args:
        proto: The tensor to convert.
        where: What holds the tensor, for error messages.

    Raises:
        ConversionError: The element type has no torch equivalent, or the data is external
            and not loaded.
    """
    dtype = ONNX_TO_TORCH.get(proto.data_type)
    if dtype is None:
        name = TensorProto.DataType.Name(proto.data_type)
        raise ConversionError(f"{where}: tensor {proto.name!r} has unsupported type {name}")
    if proto.data_location == TensorProto.EXTERNAL:
        raise ConversionError(
            f"{where}: tensor {proto.name!r} has external data that is not loaded "
            "(load the model with onnx.load(path, load_external_data=True))"
        )
    arr = numpy_helper.to_array(proto)
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.asarray(arr, dtype=np.float32).copy()).to(torch.bfloat16)
    return torch.from_numpy(np.array(arr, copy=True))


def tensor_to_proto(tensor: torch.Tensor, like: TensorProto) -> TensorProto:
    """Convert ``tensor`` to a ``TensorProto`` with the name and element type of ``like``."""
    data = tensor.detach().cpu()
    if like.data_type == TensorProto.BFLOAT16:
        out = onnx.helper.make_tensor(
            like.name,
            TensorProto.BFLOAT16,
            list(data.shape),
            data.float().numpy().ravel().tolist(),
        )
    else:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(like.data_type)
        out = numpy_helper.from_array(data.numpy().astype(np_dtype), like.name)
    out.doc_string = like.doc_string
    return out


def _attr_value(attr: onnx.AttributeProto, where: str) -> AttrValue:
    kind = attr.type
    A = onnx.AttributeProto
    if kind == A.INT:
        return int(attr.i)
    if kind == A.FLOAT:
        return float(attr.f)
    if kind == A.STRING:
        return attr.s.decode("utf-8")
    if kind == A.INTS:
        return [int(v) for v in attr.ints]
    if kind == A.FLOATS:
        return [float(v) for v in attr.floats]
    if kind == A.STRINGS:
        return [s.decode("utf-8") for s in attr.strings]
    if kind == A.TENSOR:
        return tensor_from_proto(attr.t, where)
    raise ConversionError(
        f"{where}: attribute {attr.name!r} of type {A.AttributeType.Name(kind)} is not supported"
    )


@dataclass(frozen=True)
class Node:
    """One ONNX node with its attributes decoded to Python/torch values.

    Attributes:
        name: Node name (``op_type#index`` when the graph leaves it empty).
        op_type: ONNX operator type.
        inputs: Input value names (``""`` for an omitted optional input).
        outputs: Output value names.
        attrs: Decoded attributes.
        opset: Opset version of the default domain.
    """

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)
    opset: int = 17

    @classmethod
    def from_proto(cls, proto: onnx.NodeProto, index: int, opset: int) -> Node:
        """Decode ``proto`` (the ``index``-th node of its graph)."""
        name = proto.name or f"{proto.op_type}#{index}"
        where = f"node {name!r} ({proto.op_type})"
        attrs = {a.name: _attr_value(a, where) for a in proto.attribute}
        return cls(name, proto.op_type, tuple(proto.input), tuple(proto.output), attrs, opset)

    def where(self) -> str:
        """Human-readable description of the node for error messages."""
        return f"node {self.name!r} ({self.op_type})"

    def has(self, key: str) -> bool:
        """Whether attribute ``key`` is present."""
        return key in self.attrs

    def i(self, key: str, default: int) -> int:
        """Integer attribute ``key`` or ``default``."""
        value = self.attrs.get(key, default)
        if not isinstance(value, int):
            raise ConversionError(f"{self.where()}: attribute {key!r} is not an int")
        return value

    def f(self, key: str, default: float) -> float:
        """Float attribute ``key`` or ``default``."""
        value = self.attrs.get(key, default)
        if not isinstance(value, int | float):
            raise ConversionError(f"{self.where()}: attribute {key!r} is not a float")
        return float(value)

    def s(self, key: str, default: str) -> str:
        """String attribute ``key`` or ``default``."""
        value = self.attrs.get(key, default)
        if not isinstance(value, str):
            raise ConversionError(f"{self.where()}: attribute {key!r} is not a string")
        return value

    def ints(self, key: str) -> list[int] | None:
        """Integer-list attribute ``key`` or ``None`` when absent."""
        value = self.attrs.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
            raise ConversionError(f"{self.where()}: attribute {key!r} is not a list of ints")
        return [int(v) for v in value]

    def floats(self, key: str) -> list[float] | None:
        """Float-list attribute ``key`` or ``None`` when absent."""
        value = self.attrs.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
            raise ConversionError(f"{self.where()}: attribute {key!r} is not a list of floats")
        return [float(v) for v in value]

    def tensor(self, key: str) -> torch.Tensor | None:
        """Tensor attribute ``key`` or ``None`` when absent."""
        value = self.attrs.get(key)
        if value is None:
            return None
        if not isinstance(value, torch.Tensor):
            raise ConversionError(f"{self.where()}: attribute {key!r} is not a tensor")
        return value


Args = Sequence[torch.Tensor | None]
Result = torch.Tensor | tuple[torch.Tensor, ...]
OpFn = Callable[[Node, Args, bool], Result]
"""An op implementation: ``(node, input tensors, training) -> output tensor(s)``."""


def arg(node: Node, args: Args, index: int) -> torch.Tensor:
    """Required input ``index`` of ``node``.

    Raises:
        ConversionError: The input is missing.
    """
    value = args[index] if index < len(args) else None
    if value is None:
        raise ConversionError(f"{node.where()}: required input {index} is missing")
    return value


def opt(args: Args, index: int) -> torch.Tensor | None:
    """Optional input ``index`` (``None`` when omitted)."""
    return args[index] if index < len(args) else None


def int_list(tensor: torch.Tensor) -> list[int]:
    """The elements of a (shape-like) integer tensor as a flat Python list."""
    return [int(v) for v in tensor.reshape(-1).tolist()]


def torch_pads(pads: Sequence[int]) -> list[int]:
    """ONNX ``[b1, ..., bn, e1, ..., en]`` pads to ``F.pad`` order (last axis first)."""
    n = len(pads) // 2
    out: list[int] = []
    for i in reversed(range(n)):
        out += [pads[i], pads[i + n]]
    return out
