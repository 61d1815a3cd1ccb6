"""The speed users came for: each generation measured on ``ort-cpu`` beside generation 1.

When a run has no latency runtime of its own (``--runtime``, ``--env latency``),
:class:`SpeedProbe` measures every written generation side by side with generation 1 with
:func:`evonnx.deploy.bench.benchmark` (interleaved rounds, ``ort-cpu``, batch 1, onnxruntime's
default threads, in this process with one thread pool per session), cheaply: a few warm-up
rounds and :data:`PROBE_RUNS` timed ones. The speed-up is generation 1's median latency over
the generation's. Timings are not deterministic; they only reach ``lineage.json``, the CSV,
``report.md`` and the plot, never a model file. A measurement that fails is logged and the
probe turns itself off: it never stops a run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import onnx

from evonnx.errors import EvonnxError

if TYPE_CHECKING:
    from evonnx.evolution.lineage import GenerationRecord

logger = logging.getLogger(__name__)

PROBE_RUNS = 20
"""Timed interleaved rounds of one probe measurement."""
PROBE_WARMUP = 3
"""Untimed rounds before them."""


class Measures(Protocol):
    """Something that measures a model against the run's generation 1."""

    def measure(self, model: onnx.ModelProto) -> tuple[float, float] | None:
        """``(latency ms, speed-up over generation 1)``, or ``None`` when not measured."""
        ...


@dataclass
class SpeedProbe:
    """Measures models side by side with ``reference`` (generation 1) on ``ort-cpu``.

    Attributes:
        reference: Generation 1.
        batch: Batch size.
        runs: Timed rounds.
        warmup: Untimed rounds.
    """

    reference: onnx.ModelProto
    batch: int = 1
    runs: int = PROBE_RUNS
    warmup: int = PROBE_WARMUP
    failed: bool = field(default=False, init=False)

    def describe(self) -> str:
        """How the probe measures (for the report)."""
        return describe_probe(self.batch, self.runs)

    def measure(self, model: onnx.ModelProto) -> tuple[float, float] | None:
        """``(latency ms, speed-up over the reference)``; ``None`` once a measurement failed."""
        from evonnx.deploy.bench import benchmark

        if self.failed:
            return None
        try:
            result = benchmark(
                [self.reference, model],
                ["gen1", "offspring"],
                batches=(self.batch,),
                provider="cpu",
                warmup=self.warmup,
                runs=self.runs,
                isolate=False,
            )
        except EvonnxError as exc:
            logger.warning("cannot measure the speed-up on ort-cpu (%s); not measuring it", exc)
            self.failed = True
            return None
        ref = result.models[0].at(self.batch).median_ms
        ms = result.models[1].at(self.batch).median_ms
        if model is self.reference:
            return ref, 1.0
        return ms, (ref / ms if ms > 0 else float("inf"))


def describe_probe(batch: int = 1, runs: int = PROBE_RUNS) -> str:
    """How :class:`SpeedProbe` measures, for reports."""
    return (
        f"`ort-cpu` at batch {batch} (onnxruntime's default threads, {runs} interleaved "
        "rounds, median, in the evolving process)"
    )


def slower_despite_fewer_macs(record: GenerationRecord) -> bool:
    """A generation with fewer MACs than generation 1 that was not measured faster."""
    return record.speedup is not None and record.mac_ratio > 1.0 + 1e-9 and record.speedup <= 1.0


def warn_if_slower(record: GenerationRecord) -> None:
    """Log a warning when :func:`slower_despite_fewer_macs`."""
    if slower_despite_fewer_macs(record):
        logger.warning(
            "generation %d has %.2fx fewer MACs than generation 1 but is not faster "
            "(measured %.2fx): the removed channels do not pay off on this runtime",
            record.generation,
            record.mac_ratio,
            record.speedup,
        )
