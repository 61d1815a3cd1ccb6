"""The public Python API: what `evonnx` exports, where each name lives, and that
`evonnx.prune` does what `evonnx prune` does (the command is a thin layer over it)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner
from fake_runtime import MacRuntime
from zoo import cached_case

import evonnx
import evonnx.api
from evonnx.cli.main import cli
from evonnx.errors import ConfigError, PlanError
from evonnx.latency import LatencySettings
from evonnx.latency import budget as latency_budget
from evonnx.runtimes import RuntimeSettings

PUBLIC = [
    "BenchResult",
    "ClassificationTask",
    "EvolveConfig",
    "EvonnxError",
    "ExportResult",
    "FidelityTask",
    "GeneticOptions",
    "ImagePreprocess",
    "InspectReport",
    "Lineage",
    "MeasuredLatency",
    "PruneResult",
    "Task",
    "benchmark",
    "evolve",
    "export",
    "inspect",
    "load",
    "load_task",
    "measure",
    "prune",
    "save",
    "synthesize",
    "synthesize_latency",
]

HOMES = {
    "BenchResult": "evonnx.deploy.bench",
    "ClassificationTask": "evonnx.retrain.task",
    "EvolveConfig": "evonnx.evolution.settings",
    "EvonnxError": "evonnx.errors",
    "ExportResult": "evonnx.deploy.export",
    "FidelityTask": "evonnx.retrain.fidelity",
    "GeneticOptions": "evonnx.api",
    "ImagePreprocess": "evonnx.data.unlabelled",
    "InspectReport": "evonnx.api",
    "Lineage": "evonnx.evolution.lineage",
    "MeasuredLatency": "evonnx.api",
    "PruneResult": "evonnx.api",
    "Task": "evonnx.retrain.task",
    "benchmark": "evonnx.api",
    "evolve": "evonnx.api",
    "export": "evonnx.api",
    "inspect": "evonnx.api",
    "load": "evonnx.api",
    "load_task": "evonnx.retrain.task",
    "measure": "evonnx.api",
    "prune": "evonnx.api",
    "save": "evonnx.api",
    "synthesize": "evonnx.api",
    "synthesize_latency": "evonnx.api",
}
"""Where each public name is defined: moving one is a conscious change of this table."""


def test_all_is_pinned() -> None:
    assert evonnx.__all__ == PUBLIC
    assert sorted(HOMES) == PUBLIC


def test_every_public_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from evonnx import *", namespace)
    for name in PUBLIC:
        obj = getattr(evonnx, name)
        assert namespace[name] is obj
        if obj.__module__ == "evonnx.api":
            assert getattr(evonnx.api, name) is obj
            assert name in evonnx.api.__all__
    assert set(evonnx.api.__all__) <= set(PUBLIC)  # the API module exports nothing private


@pytest.mark.parametrize("name", PUBLIC)
def test_public_name_lives_where_pinned(name: str) -> None:
    assert getattr(evonnx, name).__module__ == HOMES[name]


def test_cli_main_runs_the_library_through_the_api_only() -> None:
    """`evonnx/cli/main.py` imports evonnx.api, evonnx.errors, the CLI's own modules and the
    process's signal handling; anything else only for type annotations."""
    import evonnx.cli.main

    tree = ast.parse(Path(evonnx.cli.main.__file__).read_text())
    checking = [n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n)]
    hidden = {id(n) for block in checking for n in ast.walk(block)}
    modules: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("evonnx"):
            modules.add(node.module)
        if isinstance(node, ast.Import):
            modules.update(a.name for a in node.names if a.name.startswith("evonnx"))
    allowed = {"evonnx", "evonnx.api", "evonnx.errors", "evonnx.execute.signals"}
    assert {m for m in modules if not m.startswith("evonnx.cli")} <= allowed


# --------------------------------------------------------------------------- prune parity


@pytest.fixture
def resnet_file(zoo_dir: Path) -> Path:
    """The zoo's small ResNet file (it has removable residual branches)."""
    cached_case("resnet@legacy", zoo_dir)
    return zoo_dir / "resnet__legacy.onnx"


def structure(model: onnx.ModelProto) -> tuple[list[str], list[tuple[str, tuple[int, ...]]]]:
    """Node op types in order, and every initializer's name and shape."""
    shapes = sorted((t.name, tuple(t.dims)) for t in model.graph.initializer)
    return [n.op_type for n in model.graph.node], shapes


CASES = [
    # (CLI options, evonnx.prune keyword arguments besides the model and keep)
    ([], {"method": "genetic"}),
    (
        ["--seed", "3", "--synapses", "--synapses-in-frozen", "--cluster-keep", "0.6"],
        {
            "method": "genetic",
            "genetic": evonnx.GeneticOptions(
                seed=3, synapses=True, frozen_synapses=True, cluster_keep=0.6
            ),
        },
    ),
    (
        ["--env", "macs", "--cluster", "kernel", "--round-to", "2"],
        {
            "method": "genetic",
            "round_to": 2,
            "genetic": evonnx.GeneticOptions(env="macs", cluster="kernel"),
        },
    ),
    (
        ["--env", "latency", "--speedup", "2", "--runtime", "ort-cpu"],
        {
            "method": "genetic",
            "genetic": evonnx.GeneticOptions(env="latency", speedup=2.0),
            "latency": LatencySettings(),
        },
    ),
    (["--method", "magnitude"], {"method": "magnitude"}),
    (
        ["--method", "magnitude", "--criterion", "l1", "--round-to", "4", "--min-fraction", "0.1"],
        {"method": "magnitude", "criterion": "l1", "round_to": 4, "min_fraction": 0.1},
    ),
    (["--method", "branches"], {"method": "branches"}),
]


@pytest.mark.parametrize(("options", "kwargs"), CASES, ids=[" ".join(o) or "-" for o, _ in CASES])
def test_api_prune_equals_cli_prune(
    resnet_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
    kwargs: dict,
) -> None:
    if "latency" in kwargs:  # the latency table and the speed-up on a deterministic device
        monkeypatch.setenv("EVONNX_CACHE_DIR", str(tmp_path / "cache"))
        fake = MacRuntime(RuntimeSettings("ort-cpu"))
        monkeypatch.setattr(latency_budget, "make_runtime", lambda s: fake)
    keep = "0.9" if kwargs["method"] == "branches" else "0.5"
    out = tmp_path / "cli.onnx"
    args = ["prune", str(resnet_file), "--keep", keep, "-o", str(out), "--json", *options]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)

    result = evonnx.prune(evonnx.load(resnet_file), float(keep), **kwargs)
    assert structure(result.model) == structure(onnx.load(str(out)))
    assert summary["method"] == kwargs["method"]
    rest = {k: v for k, v in summary.items() if k not in ("output", "method", "keep")}
    assert rest == json.loads(json.dumps(result.to_dict()))


def test_api_prune_writes_what_the_cli_writes(resnet_file: Path, tmp_path: Path) -> None:
    cli_out, api_out = tmp_path / "cli.onnx", tmp_path / "api.onnx"
    args = ["prune", str(resnet_file), "--method", "branches", "--keep", "0.9", "-o", str(cli_out)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    evonnx.prune(resnet_file, 0.9, method="branches", output=api_out)
    assert structure(onnx.load(str(api_out))) == structure(onnx.load(str(cli_out)))


def test_api_prune_branches_flag_is_the_branches_method(resnet_file: Path) -> None:
    model = evonnx.load(resnet_file)
    old = evonnx.prune(model, 0.9, branches=True)
    new = evonnx.prune(model, 0.9, method="branches")
    assert structure(old.model) == structure(new.model)
    assert evonnx.prune(model, 0.5).plan == evonnx.prune(model, 0.5, method="magnitude").plan


def test_api_prune_refuses_what_the_method_cannot_use(resnet_file: Path) -> None:
    model = evonnx.load(resnet_file)
    with pytest.raises(ConfigError, match="method"):
        evonnx.prune(model, 0.5, method="taylor")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="genetic options"):
        evonnx.prune(model, 0.5, genetic=evonnx.GeneticOptions(seed=1))
    with pytest.raises(ConfigError, match="branches"):
        evonnx.prune(model, 0.5, branches=True, method="genetic")
    with pytest.raises(ConfigError, match="speedup"):
        evonnx.GeneticOptions(speedup=2.0)
    with pytest.raises(ConfigError, match="speedup"):
        evonnx.GeneticOptions(env="latency")
    with pytest.raises(ConfigError, match="synapses"):
        evonnx.GeneticOptions(frozen_synapses=True)


def test_api_prune_output_refuses_an_offspring_with_nothing_pruned(
    resnet_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "same.onnx"
    with pytest.raises(PlanError, match="nothing was pruned"):
        evonnx.prune(resnet_file, 1.0, method="magnitude", output=out)
    assert not out.exists()
    assert evonnx.prune(resnet_file, 1.0, method="magnitude").plan is not None  # no output: kept


def test_api_export_writes_what_the_cli_writes(resnet_file: Path, tmp_path: Path) -> None:
    cli_out, api_out = tmp_path / "cli.onnx", tmp_path / "api.onnx"
    args = ["export", str(resnet_file), "--batch", "2", "-o", str(cli_out)]
    assert CliRunner().invoke(cli, args).exit_code == 0
    result = evonnx.export(resnet_file, batch=2, output=api_out)
    assert structure(onnx.load(str(api_out))) == structure(onnx.load(str(cli_out)))
    assert structure(result.model) == structure(onnx.load(str(cli_out)))
