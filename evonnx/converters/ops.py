"""Per-op registry: ONNX ``op_type`` -> torch implementation, plus construction-time checks.

Every op is a small function ``(node, inputs, training) -> tensor | tuple of tensors``
(see :data:`evonnx.converters.node.OpFn`). ``CHECKS`` holds optional validators that reject
unsupported attribute combinations when the module is built rather than when it runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from evonnx.converters import ops_math as m
from evonnx.converters import ops_nn as nn_ops
from evonnx.converters import ops_rare as r
from evonnx.converters import ops_rnn as rnn
from evonnx.converters import ops_shape as s
from evonnx.converters.node import ONNX_TO_TORCH, Node, OpFn

OPS: dict[str, OpFn] = {
    # layers
    "Conv": nn_ops.conv,
    "ConvTranspose": nn_ops.conv_transpose,
    "Gemm": nn_ops.gemm,
    "MatMul": nn_ops.matmul,
    "BatchNormalization": nn_ops.batch_norm,
    "InstanceNormalization": nn_ops.instance_norm,
    "LayerNormalization": nn_ops.layer_norm,
    "MaxPool": nn_ops.max_pool,
    "AveragePool": nn_ops.average_pool,
    "GlobalAveragePool": nn_ops.global_average_pool,
    "GlobalMaxPool": nn_ops.global_max_pool,
    "Dropout": nn_ops.dropout,
    # element-wise arithmetic and logic
    "Add": m.binary(torch.add),
    "Sub": m.binary(torch.sub),
    "Mul": m.binary(torch.mul),
    "Div": m.div,
    "Pow": m.binary(torch.pow),
    "Mod": m.mod,
    "Max": m.variadic(torch.maximum),
    "Min": m.variadic(torch.minimum),
    "Sum": m.variadic(torch.add),
    "Mean": m.mean,
    "Equal": m.binary(torch.eq),
    "Less": m.binary(torch.lt),
    "LessOrEqual": m.binary(torch.le),
    "Greater": m.binary(torch.gt),
    "GreaterOrEqual": m.binary(torch.ge),
    "And": m.binary(torch.logical_and),
    "Or": m.binary(torch.logical_or),
    "Xor": m.binary(torch.logical_xor),
    "Not": m.unary(torch.logical_not),
    "Where": m.where,
    "Cast": m.cast,
    "CastLike": m.cast_like,
    "Identity": m.identity,
    # unary math
    "Abs": m.unary(torch.abs),
    "Neg": m.unary(torch.neg),
    "Sqrt": m.unary(torch.sqrt),
    "Exp": m.unary(torch.exp),
    "Log": m.unary(torch.log),
    "Erf": m.unary(torch.erf),
    "Reciprocal": m.unary(torch.reciprocal),
    "Floor": m.unary(torch.floor),
    "Ceil": m.unary(torch.ceil),
    "Round": m.unary(torch.round),
    "Sign": m.unary(torch.sign),
    "Sin": m.unary(torch.sin),
    "Cos": m.unary(torch.cos),
    # activations
    "Relu": m.unary(torch.relu),
    "Sigmoid": m.unary(torch.sigmoid),
    "Tanh": m.unary(torch.tanh),
    "Softplus": m.unary(F.softplus),
    "Softsign": m.unary(F.softsign),
    "Mish": m.unary(F.mish),
    "Clip": m.clip,
    "LeakyRelu": m.leaky_relu,
    "HardSigmoid": m.hard_sigmoid,
    "HardSwish": m.hard_swish,
    "Elu": m.elu,
    "Celu": m.celu,
    "Selu": m.selu,
    "ThresholdedRelu": m.thresholded_relu,
    "PRelu": m.prelu,
    "Gelu": m.gelu,
    "Softmax": m.softmax,
    "LogSoftmax": m.log_softmax,
    # reductions
    "ReduceMean": m.reduce_mean,
    "ReduceSum": m.reduce_sum,
    "ReduceMax": m.reduce_max,
    "ReduceMin": m.reduce_min,
    "ReduceProd": m.reduce_prod,
    "ReduceL2": m.reduce_l2,
    "ReduceSumSquare": m.reduce_sum_square,
    "ArgMax": m.arg_max,
    "ArgMin": m.arg_min,
    # shapes and data movement
    "Reshape": s.reshape,
    "Flatten": s.flatten,
    "Transpose": s.transpose,
    "Concat": s.concat,
    "Split": s.split,
    "Slice": s.slice_,
    "Squeeze": s.squeeze,
    "Unsqueeze": s.unsqueeze,
    "Gather": s.gather,
    "GatherElements": s.gather_elements,
    "Shape": s.shape,
    "Size": s.size,
    "Constant": s.constant,
    "ConstantOfShape": s.constant_of_shape,
    "Expand": s.expand,
    "Tile": s.tile,
    "Range": s.range_,
    "Pad": s.pad,
    "Resize": s.resize,
    # rarer ops the channel analysis prunes through
    "ReduceL1": m.reduce_l1,
    "ReduceLogSum": m.reduce_log_sum,
    "ReduceLogSumExp": m.reduce_log_sum_exp,
    "IsNaN": r.is_nan,
    "IsInf": r.is_inf,
    "Shrink": r.shrink,
    "Hardmax": r.hardmax,
    "GlobalLpPool": r.global_lp_pool,
    "Swish": r.swish,
    "BitShift": r.bit_shift,
    "RMSNormalization": r.rms_normalization,
    "Upsample": s.upsample,
    # recurrent layers (text recognizers)
    "LSTM": rnn.lstm,
    "GRU": rnn.gru,
}

SUPPORTED_OPS: frozenset[str] = frozenset(OPS)

# Float initializers used in these input slots are configuration, not weights: they become
# buffers (BatchNormalization running statistics, clip bounds, resize scales, ...).
NON_TRAINABLE_INPUTS: dict[str, frozenset[int]] = {
    "BatchNormalization": frozenset({3, 4}),
    "Clip": frozenset({1, 2}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Pad": frozenset({1, 2, 3}),
    "Dropout": frozenset({1, 2}),
    "Pow": frozenset({1}),
    "Range": frozenset({0, 1, 2}),
    "Shape": frozenset({0}),
    "Size": frozenset({0}),
    "ConstantOfShape": frozenset({0}),
    **rnn.STATE_INPUTS,
}

# Ops whose input 1 is a conv/FC weight (the tensors sparsity masks apply to).
WEIGHT_OPS: frozenset[str] = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

# Ops the channel analysis prunes through but the converter cannot run: graphs with them can
# be inspected, pruned and measured with onnxruntime, not retrained (to_torch refuses them).
INFERENCE_ONLY: dict[str, str] = {
    "LpPool": "rare in exported networks; its padding and ceil_mode rules have no torch "
    "equivalent (torch's lp_pool has no padding)",
    "GroupNormalization": "scale and bias are per group in opsets 18-20 and per channel from "
    "opset 21 (the op was redefined); rare in exported networks",
    "RNN": "the plain (Elman) recurrent layer is rare in exported networks, which use LSTM and "
    "GRU (both converted); pruning the channels it reads needs no training",
}

CheckFn = Callable[[Node], str | None]


RESIZE_COORDINATE_MODES = (
    "half_pixel",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_half_pixel_for_nn",
    "half_pixel_symmetric",
)
"""Resize ``coordinate_transformation_mode`` values the converter runs."""


def _check_resize(node: Node) -> str | None:
    mode = node.s("mode", "nearest")
    if mode not in ("nearest", "linear"):
        return f"mode {mode!r} (only nearest and linear)"
    coord = node.s("coordinate_transformation_mode", "half_pixel")
    if coord not in RESIZE_COORDINATE_MODES:
        return f"coordinate_transformation_mode {coord!r}"
    nearest = node.s("nearest_mode", "round_prefer_floor")
    if nearest not in ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"):
        return f"nearest_mode {nearest!r}"
    if node.i("antialias", 0):
        return "antialias=1"
    if node.s("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "keep_aspect_ratio_policy other than stretch"
    return None


def _check_max_pool(node: Node) -> str | None:
    if len(node.outputs) > 1 and node.outputs[1]:
        return "the Indices output"
    return None


def _check_average_pool(node: Node) -> str | None:
    if any(d != 1 for d in node.ints("dilations") or []):
        return "dilations"
    return None


def _check_cast(node: Node) -> str | None:
    return None if node.i("to", 1) in ONNX_TO_TORCH else f"cast to type {node.i('to', 1)}"


def _check_pad(node: Node) -> str | None:
    mode = node.s("mode", "constant")
    return None if mode in ("constant", "reflect", "edge", "wrap") else f"mode {mode!r}"


def _check_gelu(node: Node) -> str | None:
    approx = node.s("approximate", "none")
    return None if approx in ("none", "tanh") else f"approximate={approx!r}"


def _check_single_output(node: Node) -> str | None:
    return "more than one output" if sum(1 for o in node.outputs if o) > 1 else None


def _check_constant(node: Node) -> str | None:
    keys = ("value", "value_float", "value_floats", "value_int", "value_ints")
    return None if any(node.has(k) for k in keys) else "a non-numeric value attribute"


CHECKS: dict[str, CheckFn] = {
    "Resize": _check_resize,
    "Upsample": _check_resize,
    "MaxPool": _check_max_pool,
    "AveragePool": _check_average_pool,
    "Cast": _check_cast,
    "Pad": _check_pad,
    "Gelu": _check_gelu,
    "LayerNormalization": _check_single_output,
    "Constant": _check_constant,
    "LSTM": rnn.check_rnn,
    "GRU": rnn.check_rnn,
}
