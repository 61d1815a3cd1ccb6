"""Memory estimates made before allocating: refuse with the figure rather than fail later."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from evonnx.errors import ConfigError

if TYPE_CHECKING:
    import onnx

GIB = 1 << 30


def available_bytes() -> int | None:
    """Memory this machine has available now (``MemAvailable``), else its physical memory;
    ``None`` where neither can be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def check_fits(nbytes: int, what: str, error: type[Exception] = ConfigError) -> None:
    """Refuse ``what`` when its ``nbytes`` exceed the memory available.

    Raises:
        error: With both figures in GiB (``ConfigError`` unless another class is given).
    """
    free = available_bytes()
    if free is not None and nbytes > free:
        raise error(
            f"{what} needs {nbytes / GIB:.3g} GiB of memory; this machine has "
            f"{free / GIB:.3g} GiB available"
        )


def batch_bytes(model: onnx.ModelProto, batch: int) -> int:
    """Least memory one run of ``model`` at ``batch`` needs: its random inputs (drawn as
    float64, then converted) and, at once, the input and output of its largest activation.

    Shapes come from static inference at batch 1, scaled by ``batch`` (a shape it cannot
    infer counts as nothing, so the figure stays a lower bound).
    """
    from evonnx.model.shapes import resolve_shapes

    resolved = resolve_shapes(model, None, 1, run=False)
    weights = {t.name for t in model.graph.initializer}
    inputs = sum(math.prod(s) for s in resolved.inputs.values())
    largest = max(
        (math.prod(s) for n, s in resolved.shapes.items() if n not in weights and n not in
         resolved.inputs),
        default=0,
    )  # fmt: skip
    return batch * (inputs * (8 + 4) + largest * 4 * 2)


def check_batch_fits(model: onnx.ModelProto, batch: int, option: str = "--batch") -> None:
    """Refuse a batch size whose :func:`batch_bytes` exceed the memory available.

    Raises:
        ConfigError: With both figures in GiB.
    """
    check_fits(
        batch_bytes(model, batch),
        f"{option} {batch} (the model's inputs and its largest activation at that batch)",
    )
