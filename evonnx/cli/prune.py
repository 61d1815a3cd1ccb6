"""``evonnx prune``: one pruned or sampled offspring of a model, by any method
(:func:`evonnx.api.prune`), written and summarized."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click

from evonnx import api
from evonnx.cli.latency_options import SPEEDUP, latency_options, latency_settings
from evonnx.cli.output import emit_json, human, json_option, macs_text
from evonnx.cli.paths import output_option, prepare_output, refuse_unused
from evonnx.cli.shape_options import input_shape_option, normalize_option

if TYPE_CHECKING:
    pass

from evonnx.cli.run_options import choice_option, cluster_option
from evonnx.genetic.config import DEFAULT_MIN_FRACTION

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@choice_option(
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
@cluster_option("Synaptic cluster: output filter or k×k kernel slice.")
@click.option(
    "--round-to", type=click.IntRange(1), default=None, help="Keep channel counts multiples of N."
)
@click.option(
    "--cluster-keep",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Expected fraction of clusters kept (genetic; default: one shared factor).",
)
@choice_option(
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
    default=None,
    help="Floor per channel group: every prunable channel group keeps at least this "
    "fraction of its channels (0: off); a budget it puts out of reach is refused. Default "
    f"{DEFAULT_MIN_FRACTION:g}, which --env latency lowers (to 1/8, 1/16, then "
    "--min-channels), only as far as the --speedup needs and saying so; a value given is held.",
)
@choice_option(
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
    min_fraction: float | None,
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
        f"MACs {human(b.macs)} -> {human(a.macs)} ({ratio:.2f}x fewer)"
        if ratio
        else f"MACs {macs_text(b)}"
    )
    lines = [
        f"wrote {output}: nonzero synapses {human(b.nonzero_synapses)} -> "
        f"{human(a.nonzero_synapses)} (A-E {eff.architectural:.2f}x), clusters "
        f"{b.live_clusters} -> {a.live_clusters} (C-E {eff.cluster:.2f}x), {macs}",
        f"removed {human(b.params - a.params)} params"
        + (f" and {human(b.macs - a.macs)} MACs" if ratio else "")
        + f"; zeroed {human(summary['zeroed']['synapses'])} synapses inside kept filters",
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
            + (
                f"; per-layer floor {m.min_fraction:g}"
                if m.min_fraction is not None and m.target_speedup
                else ""
            )
        )
    return "\n".join(lines)
