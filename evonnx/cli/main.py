"""The ``evonnx`` command line: a thin click layer over :mod:`evonnx.api`."""

from __future__ import annotations

import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import click
import onnx

from evonnx import api
from evonnx.cli import evolve as evolve_cmd
from evonnx.cli.latency_options import SPEEDUP, latency_options, latency_settings
from evonnx.cli.output import emit_json, table
from evonnx.cli.paths import check_output_file, refuse_unused, sweep_temporaries
from evonnx.cli.shape_options import input_shape_option, normalize_option
from evonnx.errors import ConfigError, EvonnxError, PlanError
from evonnx.evolution.lineage import EvolveConfig
from evonnx.evolution.validate import zero_layers, zero_layers_text
from evonnx.execute.signals import describe, exit_code, handle_signals
from evonnx.genetic import DEFAULT_MIN_FRACTION, efficiency
from evonnx.model.files import keeps_external_data
from evonnx.model.outputs import require_same_outputs
from evonnx.pruning.metrics import ModelMetrics, shrunk_layers

logger = logging.getLogger(__name__)


class EvonnxGroup(click.Group):
    """Every error a user causes becomes one line on stderr and exit code 1.

    That covers :class:`EvonnxError`, operating-system errors (a full disk, a read-only
    folder) and bad options or arguments (click's usage errors, exit 2 by default). With
    ``--verbose``, evonnx and OS errors propagate with their traceback.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _usage_error(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _usage_error(exc)
        except (EvonnxError, OSError) as exc:
            if ctx.meta.get("evonnx.verbose"):
                raise
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM anywhere: one line, not "Aborted!"
            click.echo(f"\n{describe(exc)}", err=True)
            sys.exit(exit_code(exc))


def _one_line(exc: BaseException) -> str:
    """An error's message on one line; an OS error names its file."""
    if isinstance(exc, OSError) and not isinstance(exc, EvonnxError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return (
        " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        or type(exc).__name__
    )


def _usage_error(exc: click.UsageError) -> NoReturn:
    """One line naming the bad option and where help is, exit code 1 (bare ``evonnx``: help)."""
    if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
        click.echo(exc.ctx.get_help())
        sys.exit(0)
    where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
    click.echo(f"error: {exc.format_message()}{where}", err=True)
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
            _human(lm.macs) if lm.macs > 0 else "?",
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
            f"params {_human(m.params)}  synapses {_human(m.synapses)} "
            f"(nonzero {_human(m.nonzero_synapses)})  filter clusters "
            f"{m.live_clusters}/{m.clusters}  "
            f"MACs {_macs_text(m)}  prunable groups {len(a.prunable_groups)}/{len(a.groups)}  "
            f"prunable channels {a.coverage:.2f}",
            f"removable branches {len(removable)}"
            + (f" (groups {', '.join(removable)})" if removable else f": {NO_BRANCH}"),
            *([report.normalization.summary()] if report.normalization else []),
        ]
    )


NO_BRANCH = (
    "no branch whose only exit is a layer feeding an Add with a full-shape operand "
    "(a symbolic input shape can hide one: give --input-shape)"
)
"""Why a graph has no removable branch (``inspect``, and ``--depth`` refused)."""


def _macs_text(m: ModelMetrics) -> str:
    if m.macs_known:
        return _human(m.macs)
    return "unknown (symbolic input shape: give --input-shape NAME=1x3xHxW)"


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
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Sampling seed.")
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
    type=click.Choice(["synapses", "macs", "latency"]),
    default="synapses",
    show_default=True,
    help="What --keep budgets (genetic method); latency: measured on --runtime, reaching "
    "--speedup.",
)
@click.option(
    "--speedup",
    type=SPEEDUP,
    default=None,
    help="--env latency: measured speed-up over the ancestor to reach (required there).",
)
@click.option(
    "--synapses",
    "zero_synapses",
    is_flag=True,
    help="genetic: also zero synapses inside surviving filters (default: clusters only, "
    "the graph just shrinks).",
)
@click.option(
    "--depth/--no-depth",
    default=None,
    help="genetic: removable residual branches are clusters too (default: on with --env "
    "latency, where a graph has any; refused on a graph without one).",
)
@click.option(
    "--synapses-in-frozen",
    "frozen_synapses",
    is_flag=True,
    help="With --synapses: zero synapses of frozen layers too (default: a frozen layer "
    "stays byte-identical).",
)
@latency_options
@click.option("--min-channels", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--min-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=DEFAULT_MIN_FRACTION,
    show_default=True,
    help="Per-layer floor: every prunable layer keeps at least this fraction of its "
    "channels (0: off); a budget it puts out of reach is refused.",
)
@click.option(
    "--criterion",
    type=click.Choice(["deviation", "l1"]),
    default="deviation",
    show_default=True,
    help="magnitude: how channels are ranked. deviation: how far a channel's values are from "
    "the constant it is folded to, weighted by its readers' weights (seeded synthetic "
    "inputs; L1 where they cannot be made); l1: the L1 norm of its producer filters.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the pruned model.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@input_shape_option
@normalize_option
def prune(
    model: Path,
    method: str,
    keep: float,
    seed: int,
    cluster: str,
    round_to: int | None,
    cluster_keep: float | None,
    env: str,
    speedup: float | None,
    zero_synapses: bool,
    depth: bool | None,
    frozen_synapses: bool,
    runtime: str | None,
    latency_batch: int,
    runtime_threads: int,
    fp16: bool,
    latency_statistic: str,
    min_channels: int,
    min_fraction: float,
    criterion: str,
    output: Path,
    as_json: bool,
    input_shapes: dict[str, tuple[int, ...]],
    normalize: bool,
) -> None:
    """Physically remove clusters: a sampled offspring (genetic) or the weakest channels."""
    latency = latency_settings(
        runtime,
        latency_batch,
        runtime_threads,
        fp16,
        latency_statistic,
        needed=env == "latency",
    )
    genetic_only = {
        "--env latency": env == "latency",
        "--speedup": speedup is not None,
        "--synapses": zero_synapses,
        "--depth": depth is not None,
        "--synapses-in-frozen": frozen_synapses,
    }
    if method != "genetic" and any(genetic_only.values()):
        used = ", ".join(k for k, v in genetic_only.items() if v)
        raise click.UsageError(f"{used}: only with --method genetic")
    if (speedup is None) == (env == "latency"):
        raise click.UsageError(
            "--env latency needs --speedup" if speedup is None else "--speedup needs --env latency"
        )
    if method != "genetic":
        refuse_unused(["seed", "cluster", "cluster_keep", "env"], "only with --method genetic")
    if frozen_synapses and not zero_synapses:
        raise click.UsageError("--synapses-in-frozen: only with --synapses")
    if method == "branches":
        refuse_unused(["min_channels", "min_fraction"], "not with --method branches")
    if method != "magnitude":
        refuse_unused(["criterion"], "only with --method magnitude")
    check_output_file(output)
    sweep_temporaries(output)
    ancestor = api.load(model, normalize=normalize)
    external = keeps_external_data(model)  # read now: the copy is gone before pruning peaks
    if method in ("magnitude", "branches"):
        result = api.prune(
            ancestor,
            keep,
            min_channels,
            branches=method == "branches",
            input_shapes=input_shapes,
            round_to=round_to,
            min_fraction=min_fraction,
            criterion=criterion,
        )
    else:
        config = EvolveConfig(
            keep=keep,
            env="macs" if env == "macs" else "synapses",
            cluster="kernel" if cluster == "kernel" else "filter",
            round_to=round_to,
            cluster_keep=cluster_keep,
            min_channels=min_channels,
            min_fraction=min_fraction,
        )
        encoding = replace(
            config.encoding(),
            synapse_level=zero_synapses,
            depth=_depth(ancestor, input_shapes, depth, env == "latency"),
            frozen_synapses=frozen_synapses,
        )
        if latency is not None and speedup is not None:
            result = api.synthesize_latency(
                ancestor, speedup, latency, encoding, seed, input_shapes=input_shapes
            )
        else:
            result = api.synthesize(ancestor, encoding, seed, input_shapes=input_shapes)
    if latency is not None and result.latency is None:
        result = replace(result, latency=api.measure(ancestor, result.model, latency, input_shapes))
    _check_pruned(result, method, keep, sparse=method == "genetic" and zero_synapses)
    # values change by design; names and shapes of the outputs must not
    require_same_outputs(ancestor, result.model, "pruning", input_shapes, values=False)
    api.save(result.model, output, external_data=external)
    _report_prune(result, output, method, keep, as_json)


def _depth(
    model: onnx.ModelProto,
    input_shapes: dict[str, tuple[int, ...]],
    asked: bool | None,
    latency: bool,
) -> bool:
    """Whether depth clusters are on: as asked (``--depth`` refused on a graph without a
    removable branch), else with the latency environment.

    Raises:
        ConfigError: ``--depth`` on a graph without a removable branch.
    """
    if asked is False or (asked is None and not latency):
        return False
    analysis = api.inspect(model, input_shapes, normalize=False).analysis
    if any(g.removable for g in analysis.groups):
        return True
    if asked:
        raise ConfigError(f"--depth has no effect: this graph has {NO_BRANCH}")
    return False


def _check_pruned(result: api.PruneResult, method: str, keep: float, sparse: bool) -> None:
    """Refuse an offspring with a layer without any weight, or with nothing removed.

    Nothing is removed when params and MACs are unchanged (and, when ``sparse`` synapses
    inside kept clusters count, no synapse was zeroed either).
    """
    b, a = result.before, result.after
    zero = zero_layers(b)
    if zero:
        raise PlanError(
            f"{zero_layers_text(zero)} in the input model: it computes a constant from there "
            "on, whatever is pruned; give a model whose layers have weights"
        )
    dead = [m.node for m in a.layers if m.nonzero_synapses == 0]
    if dead:
        raise PlanError(
            f"--keep {keep:g} zeroes every weight of {', '.join(dead[:4])}"
            f"{', ...' if len(dead) > 4 else ''}: the offspring would compute a constant; "
            "raise --keep"
        )
    same = (a.params, a.macs) == (b.params, b.macs)
    if same and (not sparse or a.nonzero_synapses == b.nonzero_synapses):
        why = {
            "branches": "no residual branch can be removed (see `evonnx inspect`)",
            "magnitude": "every channel group is frozen (see `evonnx inspect`) or --keep is 1",
        }.get(method, "no cluster died; lower --keep (frozen groups: see `evonnx inspect`)")
        raise PlanError(f"nothing was pruned: {why}; no file written")


def _report_prune(
    result: api.PruneResult, output: Path, method: str, keep: float, as_json: bool
) -> None:
    b, a = result.before, result.after
    m = result.latency
    eff = efficiency(b, a)
    known = b.macs_known and a.macs_known
    shrunk = shrunk_layers(b, a)
    summary = {
        "output": str(output),
        "method": method,
        "keep": 1.0 / m.target_speedup if m and m.target_speedup else keep,
        "params": [b.params, a.params],
        "synapses": [b.nonzero_synapses, a.nonzero_synapses],
        "clusters": [b.live_clusters, a.live_clusters],
        "macs": [b.macs, a.macs] if known else None,
        "mac_ratio": eff.macs if a.macs and known else None,
        "ae": eff.architectural if a.nonzero_synapses else None,
        "ce": eff.cluster if a.live_clusters else None,
        "groups_pruned": len(result.plan.keep),
        "removed": {
            "params": b.params - a.params,
            "macs": b.macs - a.macs if known else None,
        },
        "zeroed": {"synapses": _zeros(a) - _zeros(b)},
        "shrunk_most": [
            {"layer": c.node, "filters": [c.before, c.after], "kept": c.kept} for c in shrunk
        ],
        "latency": _latency_summary(result.latency),
        "folds": result.folds.summary() if result.folds is not None else None,
    }
    if as_json:
        emit_json(summary)
        return
    click.echo(
        f"wrote {output}: nonzero synapses {_human(b.nonzero_synapses)} -> "
        f"{_human(a.nonzero_synapses)} (A-E {eff.architectural:.2f}x), clusters "
        f"{b.live_clusters} -> {a.live_clusters} (C-E {eff.cluster:.2f}x), "
        + (
            f"MACs {_human(b.macs)} -> {_human(a.macs)} ({summary['mac_ratio'] or 0:.2f}x fewer)"
            if summary["mac_ratio"]
            else f"MACs {_macs_text(b)}"
        )
    )
    click.echo(
        f"removed {_human(b.params - a.params)} params"
        + (f" and {_human(b.macs - a.macs)} MACs" if summary["mac_ratio"] else "")
        + f"; zeroed {_human(_zeros(a) - _zeros(b))} synapses inside kept filters"
    )
    if shrunk:
        click.echo(
            "shrank most: "
            + ", ".join(f"{c.node} {c.before} -> {c.after} ({c.kept:.0%})" for c in shrunk)
        )
    f = result.folds
    if f is not None and not f.exact:
        s = f.summary()
        kinds = ", ".join(f"{v} {k}" for k, v in s["layers"].items() if v)
        click.echo(
            f"folded the removed channels' constants into their readers ({kinds}); largest "
            f"border error {s['max_border_error']:.3g}, {s['unknown_channels']} channels unknown"
        )
    if m is not None:
        click.echo(
            f"latency on {m.runtime} (batch {m.batch}): {m.before_ms:.4g} ms -> "
            f"{m.after_ms:.4g} ms, {m.speedup:.2f}x faster (measured side by side)"
        )


def _zeros(m: ModelMetrics) -> int:
    """Zero weights inside the conv/FC weights that are present."""
    return m.synapses - m.nonzero_synapses


def _latency_summary(m: api.MeasuredLatency | None) -> dict[str, Any] | None:
    if m is None:
        return None
    return {
        "runtime": m.runtime,
        "batch": m.batch,
        "ms": [m.before_ms, m.after_ms],
        "speedup": m.speedup,
        "predicted_ms": m.predicted_ms,
        "target_speedup": m.target_speedup,
        "budget_ms": m.budget_ms,
        "prediction_error": (
            abs(m.predicted_ms - m.after_ms) / m.after_ms
            if m.predicted_ms is not None and m.after_ms > 0
            else None
        ),
    }


cli.add_command(evolve_cmd.evolve)
cli.add_command(evolve_cmd.demo)


from evonnx.cli.deploy import bench, export  # noqa: E402  (deploy commands, registered last)

cli.add_command(bench)
cli.add_command(export)


def main() -> None:
    """Console-script entry point."""
    handle_signals()
    cli(prog_name="evonnx")
