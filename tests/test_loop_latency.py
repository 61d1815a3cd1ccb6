"""Evolution with measured latency: the latency environment and --measure on any env."""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from fake_runtime import MacRuntime
from helpers import save_npz
from test_loop import TinyNet, _export, tiny_data, tiny_model  # noqa: F401  (fixtures)

import evonnx
import evonnx.latency.run
from evonnx.cli.main import cli
from evonnx.data import Dataset
from evonnx.errors import ConfigError
from evonnx.evolution.lineage import EvolveConfig
from evonnx.runtimes import RuntimeSettings

BASE = dict(generations=3, epochs=1, lr=0.05, batch_size=32, seed=7, threads=1, warmup=0.0,
            freeze_bn=False)  # fmt: skip


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVONNX_CACHE_DIR", str(tmp_path / "cache"))


def test_latency_env_keeps_every_generation_within_budget(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(evonnx.latency.run, "make_runtime", lambda s: MacRuntime(s))
    config = EvolveConfig(**BASE, env="latency", keep=0.7)  # type: ignore[arg-type]
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, config)
    recs = lineage.records
    assert recs[0].speedup == 1.0 and recs[0].latency_ms is not None
    for prev, cur in itertools.pairwise(recs):
        assert cur.latency_ms is not None and prev.latency_ms is not None
        assert cur.latency_ms <= 0.7 * prev.latency_ms * (1 + 1e-9)  # never over budget
        assert cur.speedup == pytest.approx(recs[0].latency_ms / cur.latency_ms)
        model = evonnx.load(tmp_path / cur.file)
        assert MacRuntime(RuntimeSettings()).latencies([model], 1)[0] == pytest.approx(
            cur.latency_ms
        )
    rows = list(csv.DictReader((tmp_path / "lineage.csv").open()))
    assert float(rows[2]["speedup"]) == pytest.approx(recs[2].speedup)
    report = (tmp_path / "report.md").read_text()
    assert "| Gen. | speed-up | latency (ms) | MACs ratio | ACC. |" in report
    assert f"| 3 | {recs[2].speedup:.2f}x |" in report


class _OverheadRuntime(MacRuntime):
    """Mostly fixed per-run overhead: after a few generations no offspring can be faster."""

    def latencies(self, models: Sequence[onnx.ModelProto], batch: int) -> list[float]:
        return [10.0 + t for t in super().latencies(models, batch)]


def test_unreachable_latency_budget_ends_the_run(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The generation that cannot meet its budget ends evolution; earlier ones are kept."""
    monkeypatch.setattr(evonnx.latency.run, "make_runtime", lambda s: _OverheadRuntime(s))
    config = EvolveConfig(**{**BASE, "generations": 4}, env="latency", keep=0.5)  # type: ignore[arg-type]
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, config)
    assert len(lineage.records) == 1  # 10 ms of overhead: even half the latency is out of reach
    saved = json.loads((tmp_path / "lineage.json").read_text())
    assert len(saved["generations"]) == 1 and (tmp_path / "report.md").is_file()


def _to_target() -> EvolveConfig:
    """The latency environment at half its parent per generation, stopping at 1.5x."""
    return EvolveConfig(**BASE, env="latency", keep=0.5, target_speedup=1.5)  # type: ignore[arg-type]


def test_target_speedup_stops_shrinking(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(evonnx.latency.run, "make_runtime", lambda s: MacRuntime(s))
    config = _to_target()
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, config)
    first = lineage.records[0].latency_ms
    assert first is not None
    for r in lineage.records[1:]:
        assert r.latency_ms is not None and r.latency_ms <= max(0.5 * first, first / 1.5) + 1e-9
    assert lineage.records[2].latency_ms == pytest.approx(lineage.records[1].latency_ms, rel=0.3)


class _SlowStart(MacRuntime):
    """The run's first reading (generation 1's, the ancestor alone) falls in a slow spell of
    the machine: three times the time; every later reading is clean."""

    def __init__(self, settings: RuntimeSettings | None = None) -> None:
        super().__init__(settings)
        self.calls = 0

    def latencies(self, models: Sequence[onnx.ModelProto], batch: int) -> list[float]:
        self.calls += 1
        got = super().latencies(models, batch)
        return [3.0 * t for t in got] if self.calls == 1 else got


def test_target_speedup_is_placed_side_by_side_not_on_an_early_reading(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The floor at the target speed-up comes from the parent's speed-up over the ancestor,
    read side by side when its offspring is budgeted. An absolute floor (the ancestor's
    latency read once at the start, over the target) read in a slow spell let offspring no
    faster than the ancestor through: the budget was above the parent."""
    monkeypatch.setattr(evonnx.latency.run, "make_runtime", lambda s: _SlowStart(s))
    config = _to_target()
    lineage = evonnx.evolve(tiny_model, tiny_data, tmp_path, config)
    clean = MacRuntime(RuntimeSettings())
    ancestor = clean.latencies([tiny_model], 1)[0]
    speedups = [
        ancestor / clean.latencies([evonnx.load(tmp_path / r.file)], 1)[0]
        for r in lineage.records[1:]
    ]
    assert len(speedups) == 2
    assert all(s >= 1.5 * (1 - 1e-9) for s in speedups), speedups  # was 1.0 and 1.0
    assert speedups[1] >= speedups[0] * (1 - 1e-9)  # at the target, the budget is the parent


def test_cli_measure_adds_latency_to_any_env(
    tiny_model: onnx.ModelProto,  # noqa: F811
    tiny_data: Dataset,  # noqa: F811
    tmp_path: Path,
) -> None:
    model_path = tmp_path / "m.onnx"
    onnx.save(tiny_model, str(model_path))
    data_path = save_npz(tiny_data, tmp_path / "d.npz")
    args = ["evolve", str(model_path), "--data", str(data_path), "--out", str(tmp_path / "run"),
            "--generations", "2", "--epochs", "1", "--seed", "7", "--threads", "1",
            "--measure", "ort-cpu", "--runtime-threads", "1", "--batch", "2"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "run" / "lineage.json").read_text())
    gens = data["generations"]
    assert gens[0]["speedup"] == 1.0 and all(g["latency_ms"] > 0 for g in gens)
    assert (
        data["config"]["latency"]["runtime"] == "ort-cpu"
        and data["config"]["latency"]["latency_batch"] == 2
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(target_speedup=2.0), "target_speedup needs --env latency"),
        (dict(env="latency", target_speedup=1.0), "above 1"),
        (dict(latency_batch=4), "need --runtime"),
        (dict(runtime="ort-cpu", fp16=True), "fp16"),
        (dict(runtime="gpu"), "unknown runtime"),
        (dict(depth=True, cluster="kernel"), "depth"),
        (dict(env="latency", cluster_keep=0.9), "cluster_keep"),
    ],
)
def test_config_refuses_latency_settings_without_effect(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EvolveConfig(**options)
