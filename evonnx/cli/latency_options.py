"""Click options shared by commands that measure latency (``prune``, ``evolve``, ``demo``).

Their parameter names are :class:`~evonnx.evolution.lineage.EvolveConfig` fields (``runtime``,
``latency_batch``, ``runtime_threads``, ``fp16``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import click

from evonnx.evolution.validate import check_runtime_settings
from evonnx.latency.settings import SPEEDUP_RULE, LatencySettings, MeasurementSettings
from evonnx.runtimes.base import RUNTIMES, RuntimeSettings

LATENCY_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--runtime",
        "--measure",
        "runtime",
        type=click.Choice(RUNTIMES),
        default=None,
        help="Where latency is measured (default with --env latency: ort-cpu; with other "
        "environments it adds measured latency). "
        "ort-*: onnxruntime execution providers; torch-cuda: the converted torch module with "
        "CUDA graphs; tensorrt: trtexec. An unavailable runtime is an error.",
    ),
    click.option(
        "--batch",
        "latency_batch",
        type=click.IntRange(1),
        default=1,
        show_default=True,
        help="Batch size latency is measured at.",
    ),
    click.option(
        "--runtime-threads",
        type=click.IntRange(0),
        default=0,
        show_default=True,
        help="ort-cpu intra-op threads (0: onnxruntime's default).",
    ),
    click.option("--fp16", "fp16", is_flag=True, help="Measure in fp16 (torch-cuda, tensorrt)."),
    click.option(
        "--latency-statistic",
        type=click.Choice(["min", "median"]),
        default="min",
        show_default=True,
        help="A model's latency: fastest (robust on a machine shared with other jobs) or "
        "median of its timed runs.",
    ),
]


def latency_options(fn: Any) -> Any:
    """Add ``--runtime``, ``--batch``, ``--runtime-threads`` and ``--fp16`` to a command."""
    for option in reversed(LATENCY_OPTIONS):
        fn = option(fn)
    return fn


def latency_settings(
    runtime: str | None,
    batch: int,
    threads: int,
    fp16: bool,
    statistic: str = "min",
    needed: bool = False,
) -> LatencySettings | None:
    """The settings the latency options describe; ``None`` when no runtime is asked for.

    Raises:
        click.UsageError: ``--batch``, ``--runtime-threads`` or ``--fp16`` without a runtime.
    """
    if runtime is None and not needed:
        if batch != 1 or threads or fp16 or statistic != "min":
            raise click.UsageError(
                "--batch, --runtime-threads, --fp16 and --latency-statistic need --runtime"
            )
        return None
    name = runtime or "ort-cpu"
    rt = RuntimeSettings(name, threads=threads, fp16=fp16, statistic=statistic)  # type: ignore[arg-type]
    check_runtime_settings(rt)
    return LatencySettings(rt, batch=batch)


class SpeedupType(click.ParamType):
    """A speed-up target: a finite number above 1 (``inf``, ``nan``, 0 and below refused)."""

    name = "FLOAT>1"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        """``value`` as a float, or a usage error saying what values are allowed."""
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not 1.0 < number < math.inf:
            self.fail(f"{value!r} is not allowed: {SPEEDUP_RULE}", param, ctx)
        return number


SPEEDUP = SpeedupType()
"""The click type of ``--speedup`` and ``--target-speedup``."""


def measurement_options(d: MeasurementSettings) -> list[Callable[[Any], Any]]:
    """What a run measures, and the speed-up it aims at (the run's latency section)."""
    return [
        click.option("--target-speedup", type=SPEEDUP,
                     default=d.target_speedup,
                     help="--env latency: stop shrinking at this measured speed-up over the "
                          "ancestor."),
        *LATENCY_OPTIONS,
        click.option("--no-measure", "measure", is_flag=True, flag_value=False,
                     default=d.measure,
                     help="Do not measure each generation's speed-up over generation 1 on "
                          "ort-cpu at batch 1 (measured by default when no --runtime is "
                          "given)."),
    ]  # fmt: skip
