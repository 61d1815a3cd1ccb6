"""``evonnx bench``: two or more models timed side by side (:func:`evonnx.api.benchmark`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from evonnx import api
from evonnx.cli.output import emit_json, json_option, table
from evonnx.cli.shape_options import input_shape_option
from evonnx.deploy.bench import PROVIDERS
from evonnx.errors import DeployError

if TYPE_CHECKING:
    from evonnx.deploy.bench import BenchResult

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
