"""``evonnx export``: a deployable copy of a model, with a TensorRT report
(:func:`evonnx.api.export`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from evonnx import api
from evonnx.cli.output import emit_json, json_option
from evonnx.cli.paths import output_option, prepare_output
from evonnx.cli.shape_options import input_shape_option, normalize_option
from evonnx.deploy.export import TARGETS

if TYPE_CHECKING:
    from evonnx.deploy.export import ExportResult

logger = logging.getLogger(__name__)


def format_export(result: ExportResult, output: Path) -> str:
    """Human-readable summary of an export."""
    lines = [
        f"wrote {output} for {result.target}: opset {result.opset_before} -> {result.opset_after}, "
        f"nodes {result.nodes_before} -> {result.nodes_after} ({result.simplifier})"
        + (", fp16 weights with fp32 inputs/outputs" if result.fp16 else "")
        + (f", batch fixed to {result.batch}" if result.batch else "")
    ]
    lines += [f"note: {n}" for n in result.notes]
    if result.target == "tensorrt":
        if result.tensorrt_compatible:
            lines.append("TensorRT: every op is supported by the ONNX parser")
        for u in result.unsupported:
            lines.append(f"TensorRT: unsupported {u.op_type} ({u.reason}): {', '.join(u.nodes)}")
        lines.append(result.trtexec_command(str(output)))
    return "\n".join(lines)


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--target", type=click.Choice(list(TARGETS)), default="onnxruntime", show_default=True
)
@click.option("--fp16", is_flag=True, help="fp16 weights and activations, fp32 inputs/outputs.")
@click.option("--batch", type=click.IntRange(1), default=None, help="Fix the batch size to N.")
@click.option("--opset", type=click.IntRange(1), default=None, help="Convert to this opset.")
@output_option("exported model")
@json_option("summary")
@input_shape_option
@normalize_option
def export(
    model: Path,
    target: str,
    fp16: bool,
    batch: int | None,
    opset: int | None,
    output: Path,
    as_json: bool,
    input_shapes: dict[str, tuple[int, ...]],
    normalize: bool,
) -> None:
    """Write a deployment-ready MODEL: folded, simplified, optionally fp16 and fixed batch.

    --input-shape fixes symbolic dimensions besides the batch (--batch fixes that). The
    export's outputs are checked against MODEL's on onnxruntime; a difference is refused.
    """
    prepare_output(output)
    result = api.export(model, target, fp16, batch, opset, input_shapes, output, normalize)
    if as_json:
        emit_json({"output": str(output), **result.to_dict(str(output))})
    else:
        click.echo(format_export(result, output))
