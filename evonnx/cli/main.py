"""The ``evonnx`` command line: a thin click layer over :mod:`evonnx.api`.

Each command turns its options into arguments, calls one :mod:`evonnx.api` function and
prints the result; options that would do nothing are refused.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

import click

from evonnx import api
from evonnx.cli import evolve as evolve_cmd
from evonnx.cli.latency_options import SPEEDUP, latency_options, latency_settings
from evonnx.cli.output import emit_json, json_option, table
from evonnx.cli.paths import output_option, prepare_output, refuse_unused
from evonnx.cli.shape_options import input_shape_option, normalize_option
from evonnx.errors import EvonnxError
from evonnx.execute.signals import describe, exit_code, handle_signals

if TYPE_CHECKING:
    from evonnx.pruning.metrics import ModelMetrics

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


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
            + (f" (groups {', '.join(removable)})" if removable else f": {api.NO_BRANCH}"),
            *([report.normalization.summary()] if report.normalization else []),
        ]
    )


def _macs_text(m: ModelMetrics) -> str:
    if m.macs_known:
        return _human(m.macs)
    return "unknown (symbolic input shape: give --input-shape NAME=1x3xHxW)"


def _choice_option(name: str, choices: Sequence[str], text: str) -> Callable[[F], F]:
    """Option ``name`` taking one of ``choices`` (default: the first), with help ``text``."""
    return click.option(
        name, type=click.Choice(list(choices)), default=choices[0], show_default=True, help=text
    )


def _cluster_option(text: str) -> Callable[[F], F]:
    """``--cluster filter|kernel`` (default filter), with help ``text``."""
    return _choice_option("--cluster", ("filter", "kernel"), text)


@cli.command()
@click.argument("model", type=click.Path(path_type=Path))
@json_option("output")
@_cluster_option("Count clusters as output filters/neurons or as k×k kernel slices.")
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
@_choice_option(
    "--method",
    api.PRUNE_METHODS,
    "genetic: sample an offspring from the cluster-driven encoding; "
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
@_cluster_option("Synaptic cluster: output filter or k×k kernel slice.")
@click.option(
    "--round-to", type=click.IntRange(1), default=None, help="Keep channel counts multiples of N."
)
@click.option(
    "--cluster-keep",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Expected fraction of clusters kept (genetic; default: one shared factor).",
)
@_choice_option(
    "--env",
    ("synapses", "macs", "latency"),
    "What --keep budgets (genetic method); latency: measured on --runtime, reaching --speedup.",
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
    default=api.DEFAULT_MIN_FRACTION,
    show_default=True,
    help="Per-layer floor: every prunable layer keeps at least this fraction of its "
    "channels (0: off); a budget it puts out of reach is refused.",
)
@_choice_option(
    "--criterion",
    api.CRITERIA,
    "magnitude: how channels are ranked. deviation: how far a channel's values are from "
    "the constant it is folded to, weighted by its readers' weights (seeded synthetic "
    "inputs; L1 where they cannot be made); l1: the L1 norm of its producer filters.",
)
@output_option("pruned model")
@json_option("summary")
@input_shape_option
@normalize_option
def prune(
    model: Path,
    method: api.PruneMethod,
    keep: float,
    seed: int,
    cluster: Literal["filter", "kernel"],
    round_to: int | None,
    cluster_keep: float | None,
    env: Literal["synapses", "macs", "latency"],
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
        runtime, latency_batch, runtime_threads, fp16, latency_statistic, needed=env == "latency"
    )
    _refuse_idle_prune_options(method, env, speedup, zero_synapses, depth, frozen_synapses)
    prepare_output(output)
    genetic = (
        api.GeneticOptions(
            seed, env, speedup, cluster, cluster_keep, zero_synapses, depth, frozen_synapses
        )
        if method == "genetic"
        else None
    )
    result = api.prune(
        model, keep, min_channels, input_shapes=input_shapes, round_to=round_to,
        min_fraction=min_fraction, criterion=criterion, method=method, genetic=genetic,
        latency=latency, output=output, normalize=normalize,
    )  # fmt: skip
    _report_prune(result, output, method, keep, as_json)


def _refuse_idle_prune_options(
    method: str,
    env: str,
    speedup: float | None,
    zero_synapses: bool,
    depth: bool | None,
    frozen_synapses: bool,
) -> None:
    """Refuse ``prune`` options the method (or another option's absence) leaves without effect.

    Raises:
        click.UsageError: One line naming them.
    """
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


def _report_prune(
    result: api.PruneResult, output: Path, method: str, keep: float, as_json: bool
) -> None:
    """Print the summary of a pruning (``--json``: machine-readable)."""
    m = result.latency
    if as_json:
        keep = 1.0 / m.target_speedup if m and m.target_speedup else keep
        emit_json({"output": str(output), "method": method, "keep": keep, **result.to_dict()})
    else:
        click.echo(format_prune(result, output))


def format_prune(result: api.PruneResult, output: Path) -> str:
    """Human-readable summary of a pruning written to ``output``."""
    b, a, eff = result.before, result.after, result.efficiency
    summary = result.to_dict()
    ratio = summary["mac_ratio"]
    macs = (
        f"MACs {_human(b.macs)} -> {_human(a.macs)} ({ratio:.2f}x fewer)"
        if ratio
        else f"MACs {_macs_text(b)}"
    )
    lines = [
        f"wrote {output}: nonzero synapses {_human(b.nonzero_synapses)} -> "
        f"{_human(a.nonzero_synapses)} (A-E {eff.architectural:.2f}x), clusters "
        f"{b.live_clusters} -> {a.live_clusters} (C-E {eff.cluster:.2f}x), {macs}",
        f"removed {_human(b.params - a.params)} params"
        + (f" and {_human(b.macs - a.macs)} MACs" if ratio else "")
        + f"; zeroed {_human(summary['zeroed']['synapses'])} synapses inside kept filters",
    ]
    if result.shrunk:
        lines.append(
            "shrank most: "
            + ", ".join(f"{c.node} {c.before} -> {c.after} ({c.kept:.0%})" for c in result.shrunk)
        )
    f = result.folds
    if f is not None and not f.exact:
        s = f.summary()
        kinds = ", ".join(f"{v} {k}" for k, v in s["layers"].items() if v)
        lines.append(
            f"folded the removed channels' constants into their readers ({kinds}); largest "
            f"border error {s['max_border_error']:.3g}, {s['unknown_channels']} channels unknown"
        )
    m = result.latency
    if m is not None:
        lines.append(
            f"latency on {m.runtime} (batch {m.batch}): {m.before_ms:.4g} ms -> "
            f"{m.after_ms:.4g} ms, {m.speedup:.2f}x faster (measured side by side)"
        )
    return "\n".join(lines)


cli.add_command(evolve_cmd.evolve)
cli.add_command(evolve_cmd.demo)


from evonnx.cli.deploy import bench, export  # noqa: E402  (deploy commands, registered last)

cli.add_command(bench)
cli.add_command(export)


def main() -> None:
    """Console-script entry point."""
    handle_signals()
    cli(prog_name="evonnx")
