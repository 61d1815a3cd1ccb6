"""Efficiency of a generation against the first: A-E, C-E, MAC and parameter ratios.

The one definition lives beside the counts it reads, in :mod:`evonnx.pruning.metrics`
(:func:`~evonnx.pruning.metrics.efficiency`); the genetic package re-exports it from here.
"""

from __future__ import annotations

from evonnx.pruning.metrics import Efficiency, SizeMetrics, efficiency

__all__ = ["Efficiency", "SizeMetrics", "efficiency"]
