"""Encoding settings: :class:`EncodingConfig` and the truncation of weak weights."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from evonnx.errors import ConfigError, require
from evonnx.genetic.environments import Environment, MacBudget, SynapseBudget

logger = logging.getLogger(__name__)

ClusterMode = Literal["filter", "kernel"]
Scope = Literal["group", "global"]
SynapseNorm = Literal["max", "quantile"]
TruncationKind = Literal["mean", "quantile", "absolute", "none"]

DEFAULT_MIN_FRACTION = 0.25
"""Default floor (per channel group): a prunable group keeps at least a quarter of its channels."""

LOWER_FLOORS = (0.125, 0.0625, 0.0)
"""Floors a latency budget may lower the default one to, in order, where its target cannot be
reached at :data:`DEFAULT_MIN_FRACTION` (``0``: down to ``min_channels``); a floor asked for
is held."""


def floor_fraction(min_fraction: float | None) -> float:
    """The floor in force: ``min_fraction``, or :data:`DEFAULT_MIN_FRACTION` for ``None``."""
    return DEFAULT_MIN_FRACTION if min_fraction is None else min_fraction


def floor_ladder(min_fraction: float | None) -> tuple[float, ...]:
    """Floors a latency budget may use, highest first: the one asked for; by default
    :data:`DEFAULT_MIN_FRACTION`, then :data:`LOWER_FLOORS`."""
    return (DEFAULT_MIN_FRACTION, *LOWER_FLOORS) if min_fraction is None else (min_fraction,)


def _valid_fraction(min_fraction: float | None) -> bool:
    return min_fraction is None or 0.0 <= min_fraction <= 1.0


FACTOR_MAX = math.e
"""Factor at which every probability (all ≥ 1/e) reaches 1: nothing is removed."""


@dataclass(frozen=True)
class Truncation:
    """Threshold under which ``|w|`` counts as zero in a cluster's strength (eq. 4).

    Attributes:
        kind: ``"mean"``: ``value`` × mean of the tensor's nonzero ``|w|``; ``"quantile"``:
            the ``value`` quantile of the tensor's nonzero ``|w|``; ``"absolute"``: ``value``
            itself; ``"none"``: no truncation.
        value: Fraction, quantile or absolute threshold, depending on ``kind``.
    """

    kind: TruncationKind = "mean"
    value: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("mean", "quantile", "absolute", "none"):
            raise ConfigError(f"unknown truncation kind {self.kind!r}")
        if self.value < 0 or (self.kind == "quantile" and self.value > 1):
            raise ConfigError(f"invalid truncation value {self.value} for kind {self.kind!r}")

    def threshold(self, magnitudes: np.ndarray, nonzero: int | None = None) -> float:
        """Threshold for a tensor of absolute weights (``nonzero``: its nonzero count)."""
        if self.kind == "none":
            return 0.0
        if self.kind == "absolute":
            return float(self.value)
        if nonzero is None:
            nonzero = int(np.count_nonzero(magnitudes))
        if nonzero == 0:
            return 0.0
        if self.kind == "mean":
            return float(self.value * float(magnitudes.sum()) / nonzero)
        return float(np.quantile(magnitudes[magnitudes > 0], self.value))


@dataclass(frozen=True)
class EncodingConfig:
    """How parents are encoded and offspring sampled.

    Attributes:
        keep: Synapse fraction of the default environment (``SynapseBudget(keep)``).
        environment: Environmental factor model; ``None`` means ``SynapseBudget(keep)``.
        truncation: Truncation of weak weights in cluster strengths.
        cluster_scope: Normalization ``Z`` of eq. 4 per ``"group"`` or ``"global"``.
        synapse_norm: Normalization ``z`` of eq. 5: tensor ``"max"`` or ``"quantile"``.
        synapse_quantile: Quantile of the nonzero ``|w|`` used when ``synapse_norm="quantile"``.
        cluster_mode: ``"filter"`` (group channel) or ``"kernel"`` (``W[o, i, ...]``) clusters.
        synapse_level: Sample individual synapses. ``False`` gives structured offspring:
            over a synapse budget they are trimmed by whole kernels (kernel mode) or channels
            (filter mode), and by single synapses only if the constraints stop that short.
        min_channels: Fewest channels any prunable group keeps.
        min_fraction: Floor per channel group: every prunable group keeps at least this fraction of
            its channels (rounded up; and at least ``min_channels``), so a global budget is
            never met by emptying a few layers. Relative to the model being encoded (in
            ``evolve``: the parent of each generation). A removed residual branch (``depth``)
            is exempt. ``0`` turns the floor off. ``None`` (default): 0.25, which a latency
            budget lowers (:data:`LOWER_FLOORS`), only as far as its target needs.
        frozen_synapses: Also zero synapses of frozen layers (layers whose weight touches
            no prunable group). Off by default: a frozen layer stays byte-identical.
        round_to: Keep channel counts multiples of this (or the full size); ``None``: off.
        cluster_keep: ``None`` (the paper): one factor ``F_c = F_s = λ``. A fraction in
            (0, 1]: ``F_c`` is fixed so that the expected fraction of surviving clusters
            (channels of all prunable groups, or in kernel mode every kernel of a prunable
            filter) is ``cluster_keep``, and ``F_s`` alone is
            solved for the environment. This makes clusters die at a chosen pace, which the
            shared factor rarely does when filter strengths are similar.
        depth: Filter mode only. Each removable residual branch (a group that may keep no
            channel) is also a cluster, with the eq.-4 probability of its summed strength
            (``Z``: the strongest branch); a branch that dies is removed whole.
    """

    keep: float = 0.8
    environment: Environment | None = None
    truncation: Truncation = field(default_factory=Truncation)
    cluster_scope: Scope = "group"
    synapse_norm: SynapseNorm = "max"
    synapse_quantile: float = 0.99
    cluster_mode: ClusterMode = "filter"
    synapse_level: bool = True
    min_channels: int = 1
    min_fraction: float | None = None
    frozen_synapses: bool = False
    round_to: int | None = None
    cluster_keep: float | None = None
    depth: bool = False

    def __post_init__(self) -> None:
        if not 0.0 < self.keep <= 1.0:
            raise ConfigError(f"keep must be in (0, 1], got {self.keep}")
        if self.cluster_scope not in ("group", "global"):
            raise ConfigError(f"unknown cluster_scope {self.cluster_scope!r}")
        if self.synapse_norm not in ("max", "quantile"):
            raise ConfigError(f"unknown synapse_norm {self.synapse_norm!r}")
        if not 0.0 < self.synapse_quantile <= 1.0:
            raise ConfigError(f"synapse_quantile must be in (0, 1], got {self.synapse_quantile}")
        if self.cluster_mode not in ("filter", "kernel"):
            raise ConfigError(f"unknown cluster_mode {self.cluster_mode!r}")
        if self.min_channels < 1:
            raise ConfigError(f"min_channels must be at least 1, got {self.min_channels}")
        if not _valid_fraction(self.min_fraction):
            raise ConfigError(f"min_fraction must be in [0, 1], got {self.min_fraction}")
        if self.cluster_keep is not None and not 0.0 < self.cluster_keep <= 1.0:
            raise ConfigError(f"cluster_keep must be in (0, 1], got {self.cluster_keep}")
        if self.cluster_keep is not None and self.env.level != "synapse":
            raise ConfigError("cluster_keep needs a synapse-level environment (its F_s is solved)")
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"round_to must be positive, got {self.round_to}")
        if self.depth and self.cluster_mode != "filter":
            raise ConfigError("depth clusters need cluster_mode='filter'")

    @property
    def env(self) -> Environment:
        """The environment in force."""
        return self.environment if self.environment is not None else SynapseBudget(self.keep)

    @property
    def floor(self) -> float:
        """The per-layer floor in force (:func:`floor_fraction`)."""
        return floor_fraction(self.min_fraction)


EnvName = Literal["synapses", "macs", "latency"]
"""Environment models a run names: a synapse, MAC or measured-latency budget."""


@dataclass(frozen=True)
class EncodingSettings:
    """How a run encodes parents and samples offspring: the run's encoding section.

    Plain values (as ``lineage.json`` stores them); :meth:`encoding` builds the
    :class:`EncodingConfig` the sampler takes.

    Attributes:
        keep: Budget of the environment: fraction of the parent's nonzero synapses
            (``env="synapses"``), MACs (``env="macs"``) or measured latency
            (``env="latency"``) an offspring may keep.
        env: Environment model.
        cluster: ``"filter"`` (output filter/neuron) or ``"kernel"`` (k×k slice) clusters.
        round_to: Keep channel counts multiples of this (accelerator friendliness).
        cluster_keep: Expected fraction of clusters surviving each generation; ``None``
            shares one environmental factor between clusters and synapses (the paper).
        min_channels: Fewest channels any prunable group keeps.
        min_fraction: Floor per channel group: each generation keeps at least this fraction of
            every prunable group's channels of its parent (0: off; ``None``: 0.25, which the
            latency environment lowers only as far as its target needs).
        depth: Removable residual branches are clusters too (filter clusters); ``None``
            (default): on with ``env="latency"`` and filter clusters.
    """

    keep: float = 0.8
    env: EnvName = "synapses"
    cluster: ClusterMode = "filter"
    round_to: int | None = None
    cluster_keep: float | None = None
    min_channels: int = 1
    min_fraction: float | None = None
    depth: bool | None = None

    def __post_init__(self) -> None:
        checks = [
            (0.0 < self.keep <= 1.0, "keep must be in (0, 1]"),
            (
                self.env in ("synapses", "macs", "latency"),
                "env must be 'synapses', 'macs' or 'latency'",
            ),
            (not self.depth or self.cluster == "filter", "depth needs --cluster filter"),
            (self.cluster in ("filter", "kernel"), "cluster must be 'filter' or 'kernel'"),
            (_valid_fraction(self.min_fraction), "min_fraction must be in [0, 1]"),
            (self.round_to is None or self.round_to >= 1, "round_to must be positive"),
            (
                self.cluster_keep is None or 0.0 < self.cluster_keep <= 1.0,
                "cluster_keep must be in (0, 1]",
            ),
            (
                self.cluster_keep is None or self.env == "synapses",
                "cluster_keep needs --env synapses",
            ),
        ]
        require(checks)

    def environment(self) -> Environment:
        """The environmental factor model (``env="latency"``: the MAC budget stands in until
        a parent's latency model replaces it, see :mod:`evonnx.latency`)."""
        return SynapseBudget(self.keep) if self.env == "synapses" else MacBudget(self.keep)

    def encoding(self) -> EncodingConfig:
        """The sampler's settings."""
        return EncodingConfig(
            keep=self.keep,
            environment=self.environment(),
            cluster_mode=self.cluster,
            round_to=self.round_to,
            min_channels=self.min_channels,
            min_fraction=self.min_fraction,
            cluster_keep=self.cluster_keep,
            synapse_level=self.env == "synapses",
            depth=self.depth if self.depth is not None else self.depth_by_default,
        )

    @property
    def depth_by_default(self) -> bool:
        """Whether residual branches are clusters when ``depth`` is not given."""
        return self.env == "latency" and self.cluster == "filter"
