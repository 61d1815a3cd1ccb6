"""Memory estimates made before allocating: refuse with the figure rather than fail later."""

from __future__ import annotations

import os

from evonnx.errors import ConfigError

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
