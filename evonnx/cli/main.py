"""The ``evonnx`` command line: a thin click layer over :mod:`evonnx.api`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from evonnx import api
from evonnx.cli import evolve as evolve_cmd
from evonnx.cli.output import emit_json, table
from evonnx.errors import EvonnxError
from evonnx.lineage import EvolveConfig

logger = logging.getLogger(__name__)


class EvonnxGroup(click.Group):
    """Turns :class:`EvonnxError` into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EvonnxError as exc:
            if ctx.meta.get("evonnx.verbose"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=EvonnxGroup)
@click.option("--verbose", "-v", is_flag=True, help="Debug logging and full tracebacks.")
@click.version_option(package_name="evonnx")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Evolve smaller, faster neural networks from ONNX graphs."""
    ctx.meta["evonnx.verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _human(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_report(report: api.InspectReport, cluster: str = "filter") -> str:
    """Human-readable tables of an inspect report (clusters: ``filter`` or ``kernel``)."""
    m, a = report.metrics, report.analysis
    kernel = cluster == "kernel"
    layer_rows = [
        [
            lm.node,
            lm.op_type,
            "x".join(map(str, lm.shape)),
            str(la.out_group),
            ",".join(map(str, la.in_groups)) or "-",
            f"{lm.live_kernels}/{lm.kernels}" if kernel else f"{lm.live_clusters}/{lm.clusters}",
            _human(lm.macs),
        ]
        for lm, la in zip(m.layers, a.layers, strict=True)
    ]
    group_rows = [
        [
            str(g.id),
            str(g.size),
            str(len(g.producers)),
            str(len(g.members)),
            "prunable" if g.prunable else f"frozen: {g.frozen}",
        ]
        for g in a.groups
    ]
    return "\n\n".join(
        [
            table(
                layer_rows,
                ["layer", "op", "weight", "out group", "in groups", f"live/{cluster}s", "MACs"],
            ),
            table(group_rows, ["group", "channels", "producers", "members", "status"]),
            f"params {_human(m.params)}  synapses {_human(m.synapses)} "
            f"(nonzero {_human(m.nonzero_synapses)})  filter clusters "
            f"{m.live_clusters}/{m.clusters}  "
            f"MACs {_human(m.macs)}  prunable groups {len(a.prunable_groups)}/{len(a.groups)}",
        ]
    )


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--cluster",
    type=click.Choice(["filter", "kernel"]),
    default="filter",
    show_default=True,
    help="Count clusters as output filters/neurons or as k×k kernel slices.",
)
def inspect(model: Path, as_json: bool, cluster: str) -> None:
    """Show prunable layers, channel groups (frozen ones with reasons), params and MACs."""
    report = api.inspect(model)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(format_report(report, cluster))


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--method",
    type=click.Choice(["genetic", "magnitude", "branches"]),
    default="genetic",
    show_default=True,
    help="genetic: sample an offspring from the cluster-driven encoding; "
    "magnitude: keep the strongest channels (deterministic baseline); "
    "branches: remove the weakest whole residual branches until at most --keep of the MACs "
    "remain.",
)
@click.option(
    "--keep",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.8,
    show_default=True,
    help="genetic: most of the synapses (--env synapses) or MACs (--env macs) kept; "
    "magnitude: fraction of channels each group keeps.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed.")
@click.option(
    "--cluster",
    type=click.Choice(["filter", "kernel"]),
    default="filter",
    show_default=True,
    help="Synaptic cluster: output filter or k×k kernel slice.",
)
@click.option(
    "--round-to", type=click.IntRange(1), default=None, help="Keep channel counts multiples of N."
)
@click.option(
    "--cluster-keep",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Expected fraction of clusters kept (genetic; default: one shared factor).",
)
@click.option(
    "--env",
    type=click.Choice(["synapses", "macs"]),
    default="synapses",
    show_default=True,
    help="What --keep budgets (genetic method).",
)
@click.option("--min-channels", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the pruned model.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def prune(
    model: Path,
    method: str,
    keep: float,
    seed: int,
    cluster: str,
    round_to: int | None,
    cluster_keep: float | None,
    env: str,
    min_channels: int,
    output: Path,
    as_json: bool,
) -> None:
    """Physically remove clusters: a sampled offspring (genetic) or the weakest channels."""
    ancestor = api.load(model)
    if method in ("magnitude", "branches"):
        result = api.prune(ancestor, keep, min_channels, branches=method == "branches")
    else:
        config = EvolveConfig(
            keep=keep,
            env="macs" if env == "macs" else "synapses",
            cluster="kernel" if cluster == "kernel" else "filter",
            round_to=round_to,
            cluster_keep=cluster_keep,
            min_channels=min_channels,
        )
        result = api.synthesize(ancestor, config.encoding(), seed)
    api.save(result.model, output)
    _report_prune(result, output, method, keep, as_json)


def _report_prune(
    result: api.PruneResult, output: Path, method: str, keep: float, as_json: bool
) -> None:
    b, a = result.before, result.after
    summary = {
        "output": str(output),
        "method": method,
        "keep": keep,
        "params": [b.params, a.params],
        "synapses": [b.nonzero_synapses, a.nonzero_synapses],
        "clusters": [b.live_clusters, a.live_clusters],
        "macs": [b.macs, a.macs],
        "mac_ratio": b.macs / a.macs if a.macs else None,
        "ae": b.nonzero_synapses / a.nonzero_synapses if a.nonzero_synapses else None,
        "groups_pruned": len(result.plan.keep),
    }
    if as_json:
        emit_json(summary)
        return
    click.echo(
        f"wrote {output}: nonzero synapses {_human(b.nonzero_synapses)} -> "
        f"{_human(a.nonzero_synapses)}, clusters {b.live_clusters} -> {a.live_clusters}, "
        f"MACs {_human(b.macs)} -> {_human(a.macs)} ({summary['mac_ratio'] or 0:.2f}x fewer)"
    )


cli.add_command(evolve_cmd.evolve)
cli.add_command(evolve_cmd.demo)


from evonnx.cli.deploy import bench, export  # noqa: E402  (deploy commands, registered last)

cli.add_command(bench)
cli.add_command(export)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="evonnx")
