"""Click option groups of a run's settings sections (``evolve`` and ``demo``): one function
per section, its defaults taken from the section. The training group is
:func:`evonnx.cli.retrain_options.retrain_options`, the latency group
:func:`evonnx.cli.latency_options.measurement_options`.

Each option's parameter name is its field in the section, so a new option is a field there
and a ``click.option`` here; :class:`~evonnx.evolution.settings.EvolveConfig` routes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from evonnx.genetic.config import DEFAULT_MIN_FRACTION

if TYPE_CHECKING:
    from evonnx.execute.settings import ExecutionSettings
    from evonnx.genetic.config import EncodingSettings
    from evonnx.retrain.settings import SelectionSettings

F = TypeVar("F", bound=Callable[..., Any])


def selection_options(d: SelectionSettings) -> list[Callable[[Any], Any]]:
    """Which offspring survive and when the run stops."""
    return [
        click.option("--max-drop", type=click.FloatRange(0), default=d.max_drop,
                     show_default=True,
                     help="Budget: how far the deciding score (validation, else test) may "
                          "fall below generation 1, in the score's units (0.02: 2 points of "
                          "accuracy)."),
        click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True),
                     default=d.val_fraction, show_default=True,
                     help="Fraction of the training data --data holds out (stratified) as "
                          "the validation split."),
        click.option("--select-on", type=click.Choice(["val", "test"]), default=d.select_on,
                     show_default=True,
                     help="Split that selects offspring and checks the budget: 'val' "
                          "(honest; test is only reported) or 'test' (the paper's protocol)."),
        click.option("--patience", type=click.IntRange(1), default=d.patience,
                     show_default=True,
                     help="Stop after this many generations in a row over the budget."),
        click.option("--population", type=click.IntRange(1), default=d.population,
                     show_default=True, help="Offspring per generation; the fittest survives."),
    ]  # fmt: skip


def encoding_options(d: EncodingSettings) -> list[Callable[[Any], Any]]:
    """How parents are encoded and offspring sampled."""
    return [
        click.option("--keep", type=click.FloatRange(0, 1, min_open=True), default=d.keep,
                     show_default=True,
                     help="Most an offspring keeps of its parent's synapses (or MACs, or "
                          "measured latency)."),
        click.option("--env", type=click.Choice(["synapses", "macs", "latency"]),
                     default=d.env, show_default=True,
                     help="Environment: synapse, MAC or measured-latency budget (--runtime)."),
        click.option("--depth/--no-depth", default=d.depth,
                     help="Removable residual branches are clusters too (whole blocks die; "
                          "default: on with --env latency)."),
        click.option("--cluster", type=click.Choice(["filter", "kernel"]), default=d.cluster,
                     show_default=True, help="Synaptic cluster: output filter or k×k kernel."),
        click.option("--round-to", type=click.IntRange(1), default=d.round_to,
                     help="Keep channel counts multiples of N (GPU/accelerator friendly)."),
        click.option("--cluster-keep", type=click.FloatRange(0, 1, min_open=True),
                     default=d.cluster_keep, show_default=True,
                     help="Expected fraction of clusters kept per generation (default: one "
                          "factor for clusters and synapses, as in the paper)."),
        click.option("--min-fraction", type=click.FloatRange(0, 1), default=d.min_fraction,
                     help="Floor per channel group: each generation keeps at least this "
                          "fraction of every prunable group's channels (0: off). Default "
                          f"{DEFAULT_MIN_FRACTION:g}, which --env latency lowers (to 1/8, "
                          "1/16, then --min-channels) only as far as a generation's budget "
                          "needs, saying so; a value given is held."),
    ]  # fmt: skip


def execution_options(d: ExecutionSettings) -> list[Callable[[Any], Any]]:
    """Where offspring jobs run."""
    return [
        click.option("--executor", type=click.Choice(["local", "process", "ray"]),
                     default=d.executor, show_default=True,
                     help="Where offspring retrain: one after another here, a process pool "
                          "on this machine, or Ray (pip install 'evonnx[ray]')."),
        click.option("--ray-address", default=d.ray_address, metavar="ADDR",
                     help="--executor ray: cluster to join ('auto': a running one; default: "
                          "start a local one)."),
        click.option("--gpus-per-offspring", type=click.IntRange(1),
                     default=d.gpus_per_offspring, show_default=True,
                     help="Retrain each offspring data-parallel (torch DDP) on N GPUs, or "
                          "on CPU in N processes (a Ray Train job with --executor ray)."),
    ]  # fmt: skip


def choice_option(name: str, choices: Sequence[str], text: str) -> Callable[[F], F]:
    """Option ``name`` taking one of ``choices`` (default: the first), with help ``text``."""
    return click.option(
        name, type=click.Choice(list(choices)), default=choices[0], show_default=True, help=text
    )


def cluster_option(text: str) -> Callable[[F], F]:
    """``--cluster filter|kernel`` (default filter), with help ``text``."""
    return choice_option("--cluster", ("filter", "kernel"), text)
