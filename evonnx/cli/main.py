"""The ``evonnx`` command line: a thin click layer over :mod:`evonnx.api`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from evonnx import api
from evonnx.errors import EvonnxError

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


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*["-" * w for w in widths])]
    lines += [fmt.format(*[str(c) for c in r]) for r in rows]
    return "\n".join(lines)


def _human(n: int) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def format_report(report: api.InspectReport) -> str:
    """Human-readable tables of an inspect report."""
    m, a = report.metrics, report.analysis
    layer_rows = [
        [
            lm.node,
            lm.op_type,
            "x".join(map(str, lm.shape)),
            str(la.out_group),
            ",".join(map(str, la.in_groups)) or "-",
            f"{lm.live_clusters}/{lm.clusters}",
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
            _table(
                layer_rows,
                ["layer", "op", "weight", "out group", "in groups", "live/clusters", "MACs"],
            ),
            _table(group_rows, ["group", "channels", "producers", "members", "status"]),
            f"params {_human(m.params)}  synapses {_human(m.synapses)} "
            f"(nonzero {_human(m.nonzero_synapses)})  clusters {m.live_clusters}/{m.clusters}  "
            f"MACs {_human(m.macs)}  prunable groups {len(a.prunable_groups)}/{len(a.groups)}",
        ]
    )


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def inspect(model: Path, as_json: bool) -> None:
    """Show prunable layers, channel groups (frozen ones with reasons), params and MACs."""
    report = api.inspect(model)
    if as_json:
        _emit_json(report.to_dict())
    else:
        click.echo(format_report(report))


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--keep",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.5,
    show_default=True,
    help="Fraction of channels each prunable group keeps.",
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
def prune(model: Path, keep: float, min_channels: int, output: Path, as_json: bool) -> None:
    """Physically remove the weakest channels (L1 magnitude) of every prunable group."""
    result = api.prune(api.load(model), keep, min_channels)
    api.save(result.model, output)
    b, a = result.before, result.after
    summary = {
        "output": str(output),
        "keep": keep,
        "params": [b.params, a.params],
        "synapses": [b.synapses, a.synapses],
        "clusters": [b.clusters, a.clusters],
        "macs": [b.macs, a.macs],
        "mac_ratio": b.macs / a.macs if a.macs else None,
        "groups_pruned": len(result.plan.keep),
    }
    if as_json:
        _emit_json(summary)
        return
    click.echo(
        f"wrote {output}: params {_human(b.params)} -> {_human(a.params)}, "
        f"clusters {b.clusters} -> {a.clusters}, MACs {_human(b.macs)} -> {_human(a.macs)} "
        f"({summary['mac_ratio']:.2f}x fewer)"
        if a.macs
        else f"wrote {output}"
    )


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="evonnx")
