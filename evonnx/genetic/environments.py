"""Environmental factor models F(E): the budgets offspring must fit (natural selection).

The genetic encoding (:mod:`evonnx.genetic`) multiplies every cluster and synapse probability
by one scalar environmental factor ``F_c = F_s = λ`` (eq. 3 of the paper) and solves for ``λ``
so that the *expected* cost of an offspring equals the environment's budget. After sampling,
the realized offspring is trimmed until its cost is within the budget, at the environment's
:attr:`Environment.level` (lowest-probability synapses or lowest-probability clusters first).

An environment only sees a :class:`LayerCensus` per conv/FC layer (kept fraction of output
filters and input channels, nonzero synapses), so new budgets such as measured latency plug
in by subclassing :class:`Environment` and implementing :meth:`~Environment.budget` and
:meth:`~Environment.cost`. ``cost`` must be non-decreasing in every census field.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol

from evonnx.errors import ConfigError

if TYPE_CHECKING:
    from evonnx.pruning.groups import ChannelGroup, Layer

Level = Literal["synapse", "cluster"]


@dataclass(frozen=True)
class LayerCensus:
    """Expected or realized size of one conv/FC layer of an offspring.

    Attributes:
        layer: The parent's layer.
        synapses: Nonzero weight elements (an expectation while solving for the factor).
        out_fraction: Fraction of the parent's output filters/neurons kept.
        in_fraction: Fraction of the parent's input channels kept.
    """

    layer: Layer
    synapses: float
    out_fraction: float = 1.0
    in_fraction: float = 1.0

    @property
    def macs(self) -> float:
        """Dense multiply-accumulates: the parent's, scaled by the kept fractions."""
        return self.layer.macs * self.out_fraction * self.in_fraction


Census = Sequence[LayerCensus]


class Environment(ABC):
    """A budget on some cost of the offspring, relative to its parent.

    Class attributes:
        level: What trimming removes when a sampled offspring is over budget: ``"synapse"``
            (lowest-probability surviving synapses) or ``"cluster"`` (lowest-probability
            surviving channels of prunable groups).
        needs_synapses: Whether :meth:`cost` reads :attr:`LayerCensus.synapses` (when not,
            the encoder skips the costly per-synapse expectation while solving).
        trims: Whether the encoder trims an over-budget offspring itself; ``False`` when the
            environment brings offspring within budget afterwards by its own rule.
    """

    level: ClassVar[Level]
    needs_synapses: ClassVar[bool] = True
    trims: ClassVar[bool] = True

    @abstractmethod
    def budget(self, parent: Census) -> float:
        """Largest cost an offspring may have (its limit), given the parent's census."""

    @abstractmethod
    def cost(self, census: Census) -> float:
        """Cost of an offspring census (non-decreasing in every field)."""

    def widths(self, group: ChannelGroup) -> Sequence[int] | None:
        """Channel counts ``group`` may keep (with its full size), or ``None``: any count.

        The genetic encoding snaps counts up to these (:func:`evonnx.pruning.plan.round_channels`).
        """
        return None


def _check_keep(keep: float) -> None:
    if not 0.0 < keep <= 1.0:
        raise ConfigError(f"keep must be in (0, 1], got {keep}")


@dataclass(frozen=True)
class SynapseBudget(Environment):
    """At most ``keep`` of the parent's nonzero synapses (conv/FC weights) survive.

    The paper's environment (``keep=0.8``). Realized synapses are counted after channel
    removal, so input slices that disappear with an upstream channel count as removed.
    """

    keep: float = 0.8
    level: ClassVar[Level] = "synapse"

    def __post_init__(self) -> None:
        _check_keep(self.keep)

    def budget(self, parent: Census) -> float:
        """``keep`` times the parent's nonzero synapses."""
        return self.keep * self.cost(parent)

    def cost(self, census: Census) -> float:
        """Total nonzero synapses."""
        return float(sum(c.synapses for c in census))


@dataclass(frozen=True)
class MacBudget(Environment):
    """At most ``keep`` of the parent's dense MACs (channel removal is what counts).

    MACs of a layer scale with the kept fraction of its output filters and of its input
    channels; synapse sparsity inside surviving filters does not reduce dense MACs. Best used
    with ``cluster_mode="filter"``: in kernel mode a channel only disappears when every kernel
    of its filters dies, so meeting a MAC budget needs a much smaller factor.
    """

    keep: float = 0.8
    level: ClassVar[Level] = "cluster"
    needs_synapses: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_keep(self.keep)

    def budget(self, parent: Census) -> float:
        """``keep`` times the parent's MACs.

        Raises:
            ConfigError: Some layer's MACs are unknown (symbolic input height/width).
        """
        unknown = [c.layer.node for c in parent if c.layer.macs <= 0]
        if unknown:
            raise ConfigError(
                f"MACs of {len(unknown)} layers (e.g. {unknown[0]}) are unknown because input "
                "shapes are symbolic; give them with --input-shape NAME=1x3xHxW"
            )
        return self.keep * self.cost(parent)

    def cost(self, census: Census) -> float:
        """Total dense MACs."""
        return float(sum(c.macs for c in census))


class LatencyPredictor(Protocol):
    """What :class:`LatencyBudget` needs (satisfied by :class:`evonnx.latency.LatencyModel`)."""

    def predict(self, census: Census) -> float:
        """Predicted latency (ms) of an offspring census (non-decreasing in every fraction)."""
        ...

    def widths(self, group_id: int) -> Sequence[int] | None:
        """Latency-step channel counts of a group, or ``None``."""
        ...


@dataclass(frozen=True, eq=False)
class LatencyBudget(Environment):
    """Predicted latency at most ``keep`` times the parent's, on one runtime and batch size.

    The cost of a census is the latency predicted from the lookup table
    (:mod:`evonnx.latency`). With ``floor_ms`` (the ancestor's latency over a target speed-up)
    the budget never goes below it: evolution approaches the target and stops shrinking
    there. With ``snap``, channel counts are snapped up to the runtime's latency steps. The
    encoder does not trim: :func:`evonnx.latency.fit_measured` trims the sampled offspring,
    least strength per latency saved first (whole branches included), until its predicted and
    then its measured latency fit.
    """

    predictor: LatencyPredictor
    keep: float = 0.8
    floor_ms: float | None = None
    snap: bool = True
    level: ClassVar[Level] = "cluster"
    needs_synapses: ClassVar[bool] = False
    trims: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_keep(self.keep)

    def budget(self, parent: Census) -> float:
        """``keep`` times the parent's predicted latency, not below ``floor_ms``."""
        b = self.keep * self.cost(parent)
        return max(b, self.floor_ms) if self.floor_ms is not None else b

    def cost(self, census: Census) -> float:
        """Predicted latency in milliseconds."""
        return float(self.predictor.predict(census))

    def widths(self, group: ChannelGroup) -> Sequence[int] | None:
        """The predictor's latency steps of ``group`` (with ``snap``)."""
        return self.predictor.widths(group.id) if self.snap else None
