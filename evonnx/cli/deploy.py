"""``evonnx bench`` and ``evonnx export``: click commands over :func:`evonnx.api.benchmark`
and :func:`evonnx.api.export`.

Registered on the main group by :mod:`evonnx.cli.main`; errors are :class:`EvonnxError`
subclasses, which the group prints as one line with exit code 1.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from evonnx import api
from evonnx.cli.output import emit_json, json_option, table
from evonnx.cli.paths import output_option, prepare_output
from evonnx.cli.shape_options import input_shape_option, normalize_option
from evonnx.deploy.bench import PROVIDERS
from evonnx.deploy.export import TARGETS
from evonnx.errors import DeployError

if TYPE_CHECKING:
    from evonnx.deploy.bench import BenchResult
    from evonnx.deploy.export import ExportResult

logger = logging.getLogger(__name__)


def parse_batches(text: str) -> tuple[int, ...]:
    """``"1,8,32"`` -> ``(1, 8, 32)``.

    Raises:
        DeployError: Not a comma-separated list of positive integers.
    """
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError as exc:
        raise DeployError(f"--batch must be comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise DeployError(f"--batch needs positive batch sizes, got {text!r}")
    return values


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def format_bench(result: BenchResult) -> str:
    """Human-readable tables of a benchmark result."""
    timing_rows = [
        [
            mt.name,
            str(t.batch),
            f"{t.median_ms:.3f}",
            f"{t.p90_ms:.3f}",
            f"{t.throughput:.1f}",
            f"{mt.macs / 1e6:.2f}M",
        ]
        for mt in result.models
        for t in mt.timings
    ]
    speed_rows = [
        [s.model, str(s.batch), f"{s.speedup:.2f}x", _ratio(s.mac_ratio), _ratio(s.realized)]
        for s in result.speedups
    ]
    head = (
        f"provider {result.provider}, threads {result.threads or 'default'} "
        f"({result.thread_pool} pool), {result.warmup} warm-up + {result.runs} interleaved runs"
    )
    return "\n\n".join(
        [
            head,
            table(
                timing_rows,
                ["model", "batch", "median ms", "p90 ms", "samples/s", "MACs/sample"],
            ),
            table(
                speed_rows,
                [f"vs {result.models[0].name}", "batch", "speed-up", "MAC ratio", "realized"],
            ),
        ]
    )


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--provider",
    type=click.Choice(list(PROVIDERS), case_sensitive=False),
    default="cpu",
    show_default=True,
    help="onnxruntime execution provider; an unavailable one is an error, never CPU.",
)
@click.option(
    "--batch", "batches", default="1", show_default=True, help="Batch sizes, e.g. 1,8,32."
)
@click.option(
    "--threads",
    type=click.IntRange(0),
    default=0,
    help="Intra-op threads (0: onnxruntime default).",
)
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True)
@click.option("--runs", type=click.IntRange(1), default=50, show_default=True)
@json_option("output")
@input_shape_option
def bench(
    models: tuple[Path, ...],
    provider: str,
    batches: str,
    threads: int,
    warmup: int,
    runs: int,
    as_json: bool,
    input_shapes: dict[str, tuple[int, ...]],
) -> None:
    """Interleaved onnxruntime latency of MODELS (the first is the reference) vs their MACs.

    Models are measured as written (no load-time normalization); --input-shape fixes
    symbolic dimensions besides the batch, which --batch sets.
    """
    sizes = parse_batches(batches)
    result = api.benchmark(models, sizes, provider, threads, warmup, runs, input_shapes)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(format_bench(result))


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
