"""``evonnx inspect``: channel groups, frozen reasons, parameters and MACs of a model
(:func:`evonnx.api.inspect`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import click

from evonnx import api
from evonnx.cli.output import emit_json, human, json_option, macs_text, table
from evonnx.cli.shape_options import input_shape_option, normalize_option

if TYPE_CHECKING:
    pass

from evonnx.cli.run_options import cluster_option

logger = logging.getLogger(__name__)


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
            human(lm.macs) if lm.macs > 0 else "?",
        ]
        for lm, la in zip(m.layers, a.layers, strict=True)
    ]
    group_rows = [
        [
            str(g.id),
            str(g.size),
            str(len(g.producers)),
            str(len(g.members)),
            ("removable branch" if g.removable else "prunable")
            if g.prunable
            else f"frozen: {g.frozen}",
        ]
        for g in a.groups
    ]
    removable = [str(g.id) for g in a.groups if g.removable]
    return "\n\n".join(
        [
            table(
                layer_rows,
                ["layer", "op", "weight", "out group", "in groups", f"live/{cluster}s", "MACs"],
            ),
            table(group_rows, ["group", "channels", "producers", "members", "status"]),
            f"params {human(m.params)}  synapses {human(m.synapses)} "
            f"(nonzero {human(m.nonzero_synapses)})  filter clusters "
            f"{m.live_clusters}/{m.clusters}  "
            f"MACs {macs_text(m)}  prunable groups {len(a.prunable_groups)}/{len(a.groups)}  "
            f"prunable channels {a.coverage:.2f}",
            f"removable branches {len(removable)}"
            + (f" (groups {', '.join(removable)})" if removable else f": {api.NO_BRANCH}"),
            *([report.normalization.summary()] if report.normalization else []),
        ]
    )


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@json_option("output")
@cluster_option("Count clusters as output filters/neurons or as k×k kernel slices.")
@input_shape_option
@normalize_option
def inspect(
    model: Path,
    as_json: bool,
    cluster: str,
    input_shapes: dict[str, tuple[int, ...]],
    normalize: bool,
) -> None:
    """Show prunable layers, channel groups (frozen ones with reasons), params and MACs."""
    report = api.inspect(model, input_shapes, normalize=normalize)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(format_report(report, cluster))
