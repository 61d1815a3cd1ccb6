"""The latency lookup table: single-layer latencies measured on demand, cached on disk.

Entries are keyed by :meth:`LayerShape.key <evonnx.latency.geometry.LayerShape.key>` (op,
batch, channels in/out, spatial size, kernel, stride, padding, dilation, depthwise) inside a
file per runtime and device fingerprint
(:meth:`Runtime.fingerprint <evonnx.runtimes.Runtime.fingerprint>`), so a table measured on
another machine, runtime version or thread count is never used. The cache directory is
``$EVONNX_CACHE_DIR``, else ``$XDG_CACHE_HOME/evonnx``, else ``~/.cache/evonnx``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from onnx import helper

from evonnx.latency.geometry import LayerShape
from evonnx.model.textio import write_text_atomic

if TYPE_CHECKING:
    from evonnx.runtimes.base import Runtime

logger = logging.getLogger(__name__)

TABLE_VERSION = 1
Query = tuple[LayerShape, int, int]
"""A layer geometry with the input and output channel counts to time it at."""
PASS_BYTES = 2 << 30
"""Most input and output bytes of the single-layer graphs timed in one pass (one worker
process holds all their sessions at once: ResNet-50's table at batch 32 in one pass was killed
for memory on a 23 GB machine)."""


def cache_dir() -> Path:
    """Where latency tables live (see the module docstring)."""
    explicit = os.environ.get("EVONNX_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "evonnx"


class LatencyTable:
    """Per-layer latencies (ms) of one runtime on this device, at one batch size.

    Args:
        runtime: What measures missing entries.
        batch: Batch size of every entry.
        path: The table's file (default: one per runtime and fingerprint in :func:`cache_dir`).
    """

    def __init__(self, runtime: Runtime, batch: int, path: Path | None = None) -> None:
        self.runtime = runtime
        self.batch = batch
        self.fingerprint = runtime.fingerprint()
        self.path = path or cache_dir() / f"latency-{runtime.name}-{self.fingerprint}.json"
        self._memory_only = False
        self.entries: dict[str, float] = self._load()
        self.hits = 0
        self.misses = 0

    def _load(self) -> dict[str, float]:
        """The cached entries; a table that cannot be read or has the wrong shape is ignored
        (and rebuilt) with a warning, and NaN, infinite or negative entries are dropped."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable latency table %s: %s", self.path, exc)
            return {}
        if not isinstance(data, dict) or not isinstance(data.get("entries", {}), dict):
            logger.warning("ignoring latency table %s: not a table; remeasuring", self.path)
            return {}
        if data.get("version") != TABLE_VERSION or data.get("fingerprint") != self.fingerprint:
            logger.info("latency table %s is for another device or version; remeasuring", self.path)
            return {}
        entries = {str(k): _milliseconds(v) for k, v in data.get("entries", {}).items()}
        good = {k: v for k, v in entries.items() if v is not None}
        if len(good) < len(entries):
            logger.warning(
                "ignoring %d invalid entries (not a latency >= 0) of latency table %s; "
                "remeasuring them",
                len(entries) - len(good),
                self.path,
            )
        return good

    def lookup(self, queries: Sequence[Query]) -> list[float]:
        """Latency (ms) of each queried layer; missing entries are measured interleaved, in
        one pass unless their sessions would not fit in memory (:data:`PASS_BYTES`), and
        written to the cache file."""
        keys = [q[0].key(self.batch, q[1], q[2]) for q in queries]
        todo: dict[str, Query] = {}
        for k, q in zip(keys, queries, strict=True):
            if k not in self.entries and k not in todo:
                todo[k] = q
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        if todo:
            logger.info("timing %d single-layer graphs on %s", len(todo), self.runtime.name)
            for part in self._passes(todo):
                graphs = [s.graph(self.batch, ci, co) for s, ci, co in part.values()]
                for k, ms in zip(part, self.runtime.latencies(graphs, self.batch), strict=True):
                    self.entries[k] = ms
                self._save()  # a pass's timings are kept even if a later one fails
        return [self.entries[k] for k in keys]

    def _passes(self, todo: dict[str, Query]) -> list[dict[str, Query]]:
        """``todo`` split into passes of at most :data:`PASS_BYTES` of inputs and outputs."""
        out: list[dict[str, Query]] = [{}]
        used = 0
        for k, (s, ci, co) in todo.items():
            per_sample = ci * math.prod(s.spatial) + s.out_size * co // max(s.cout, 1)
            size = 4 * self.batch * per_sample
            if out[-1] and used + size > PASS_BYTES:
                out.append({})
                used = 0
            out[-1][k] = (s, ci, co)
            used += size
        return out

    def empty_ms(self) -> float:
        """Latency (ms) of a graph doing nothing (one ``Identity``): the per-run overhead that
        every single-layer timing includes."""
        key = f"Identity|b{self.batch}"
        if key not in self.entries:
            x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [self.batch, 1])
            y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [self.batch, 1])
            node = helper.make_node("Identity", ["x"], ["y"])
            graph = helper.make_graph([node], "empty", [x], [y])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            self.entries[key] = self.runtime.latencies([model], self.batch)[0]
            self.misses += 1
            self._save()
        else:
            self.hits += 1
        return self.entries[key]

    def _save(self) -> None:
        data = {
            "version": TABLE_VERSION,
            "runtime": self.runtime.name,
            "fingerprint": self.fingerprint,
            "device": self.runtime.device(),
            "entries": self.entries,
        }
        if self._memory_only:
            return
        try:
            write_text_atomic(self.path, json.dumps(data, indent=0, sort_keys=True))
        except OSError as exc:
            self._memory_only = True
            logger.warning(
                "cannot write the latency table %s (%s); keeping it in memory for this run "
                "(set EVONNX_CACHE_DIR to a writable folder to keep it)",
                self.path,
                exc.strerror or exc,
            )


def _milliseconds(value: object) -> float | None:
    """A cached latency, or ``None`` unless it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    ms = float(value)
    return ms if math.isfinite(ms) and ms >= 0 else None
