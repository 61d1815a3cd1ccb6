"""The latency table times its misses in passes small enough to hold in memory."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fake_runtime import MacRuntime
from zoo import helper_convnet

from evonnx.latency import LatencyTable, layer_shapes
from evonnx.latency import table as table_module
from evonnx.pruning.analysis import analyze


def test_misses_are_timed_in_bounded_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EVONNX_CACHE_DIR", str(tmp_path))
    model = helper_convnet()
    batch = 4
    shapes = layer_shapes(model, analyze(model), batch=batch)
    queries = [(s, ci, s.cout) for s in shapes.values() for ci in range(1, s.cin + 1)]
    whole = LatencyTable(MacRuntime(device="one-pass"), batch).lookup(queries)
    sizes = [
        4 * batch * (ci * math.prod(s.spatial) + s.out_size * co // s.cout) for s, ci, co in queries
    ]
    limit = 3 * max(sizes)
    monkeypatch.setattr(table_module, "PASS_BYTES", limit)
    rt = MacRuntime()
    table = LatencyTable(rt, batch)
    assert table.lookup(queries) == whole  # same entries, whatever the passes
    assert len(rt.measured) > 1 and sum(rt.measured) == len(set(table.entries)) == len(queries)
    start = 0
    for n in rt.measured:  # every pass holds at most the limit (or a single graph)
        assert n == 1 or sum(sizes[start : start + n]) <= limit
        start += n
