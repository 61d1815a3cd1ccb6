"""Synaptic cluster-driven genetic encoding and offspring sampling (paper §II.B–II.D).

The "DNA" of an ancestor is the pair of probabilities

* eq. 4, cluster: ``P_c = exp(sum_{i in c} trunc(|w_i|) / Z - 1)``, and
* eq. 5, synapse: ``P_s = exp(|w_i| / z - 1)``,

and an offspring keeps cluster ``c`` with probability ``min(1, F_c · P_c)`` and, inside a kept
cluster, synapse ``i`` with probability ``min(1, F_s · P_s)`` (eq. 3).

Design choices (all configurable through :class:`EncodingConfig`):

* **Clusters.** ``cluster_mode="filter"`` (default): a cluster is one channel of a prunable
  :class:`~evonnx.groups.ChannelGroup`, i.e. *every* producer filter/neuron writing that
  channel (filters coupled by a residual ``Add`` live or die together); its strength sums over
  all producer members. ``"kernel"``: a cluster is one kernel ``W[o, i, ...]`` of a filter of a
  prunable group (for an FC weight, a single weight); a channel whose producer filters lose
  every kernel is removed. Cluster sampling only touches prunable groups; filters of frozen
  groups are never removed.
* **Synapses.** Synapse sampling applies to every conv/FC weight, frozen groups included:
  masking a weight never changes a tensor's shape, so it is always safe.
* **Truncation** (:class:`Truncation`): per weight tensor, ``|w|`` below ``0.1 × mean |w|``
  (mean over the tensor's nonzero weights) counts as zero. Per tensor because weight scales
  differ widely between layers; relative to the mean of the *nonzero* weights so that the
  threshold does not sink as earlier generations zero out synapses; a mild fraction so that
  only near-zero noise (≈6 % of Gaussian weights, <0.5 % of their L1 mass) is dropped,
  preventing a filter of many near-zero weights from outranking one of a few strong weights.
* **Z** (``cluster_scope``): ``"group"`` (default) divides by the strongest channel of each
  group (kernel mode: the strongest kernel of each tensor), so each group's best cluster has
  ``P_c = 1`` and ``P_c ∈ [1/e, 1]``; layers of small weight scale or fan-in are not wiped out
  wholesale. ``"global"`` divides by the strongest cluster of the whole network.
* **z** (``synapse_norm``): ``"max"`` (default) is the largest ``|w|`` of the tensor (layer-wise,
  as in the paper), so ``P_s ∈ [1/e, 1]``; ``"quantile"`` uses a quantile of the nonzero
  ``|w|`` (robust to outliers; probabilities are clipped at 1).
* **Environment** (:mod:`evonnx.environments`): one scalar factor ``F_c = F_s = λ`` is solved
  (safeguarded secant / Illinois on the monotone expected cost, bracket ``[0, e]``, where
  ``λ = e`` keeps everything) so that the *expected* cost equals the budget; ``λ = 1`` is pure
  heredity. A sampled offspring over budget is then trimmed until it fits, so the budget is
  never exceeded: lowest-``P_c`` channels for cluster-level environments (MACs), lowest
  ``P_c · P_s`` synapses for synapse-level ones (structured offspring, ``synapse_level=False``:
  lowest-``P_c`` kernels or channels). The default is
  :class:`~evonnx.environments.SynapseBudget` (``keep=0.8`` of the ancestor's nonzero
  synapses, counted after the consumer slices of removed channels are gone). As sampling is
  unbiased and trimming only removes, realized counts average slightly below the budget.
* **Constraints.** Each group keeps at least ``min_channels``; with ``round_to=N`` counts are
  multiples of ``N`` (or the full size). Both add back the highest-probability dead clusters.
  Channels whose producer filters end up with no realized synapse are removed (their output
  would be a constant) as long as the constraints allow.

Sampling order with an explicit :class:`numpy.random.Generator`: clusters (groups in analysis
order; kernel mode: weight tensors in layer order), then synapses (tensors in layer order).
Everything after that is deterministic, so the same seed gives the same offspring.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

import numpy as np
import onnx
from onnx import numpy_helper

from evonnx.environments import Environment, LayerCensus, SynapseBudget
from evonnx.errors import PlanError
from evonnx.groups import Analysis, ChannelGroup, Layer, Member, PrunePlan, Role

logger = logging.getLogger(__name__)

ClusterMode = Literal["filter", "kernel"]
Scope = Literal["group", "global"]
SynapseNorm = Literal["max", "quantile"]
TruncationKind = Literal["mean", "quantile", "absolute", "none"]

FACTOR_MAX = math.e
"""Factor at which every probability (all ≥ 1/e) reaches 1: nothing is removed."""

_SOLVE_RTOL = 1e-5
_COARSE_SIZE = 1_500_000  # weights in the row-subsampled first solve
_QUANTILE_SAMPLE = 1 << 18  # weights sampled to pick the trimming threshold
_SOLVE_MAX_ITER = 100
_DEAD_PASSES = 8


# --------------------------------------------------------------------------- configuration


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
            raise ValueError(f"unknown truncation kind {self.kind!r}")
        if self.value < 0 or (self.kind == "quantile" and self.value > 1):
            raise ValueError(f"invalid truncation value {self.value} for kind {self.kind!r}")

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
    """How ancestors are encoded and offspring sampled.

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
        round_to: Keep channel counts multiples of this (or the full size); ``None``: off.
        cluster_keep: Filter mode only. ``None`` (the paper): one factor ``F_c = F_s = λ``.
            A fraction in (0, 1]: ``F_c`` is fixed so that the expected fraction of surviving
            clusters (over all prunable groups) is ``cluster_keep``, and ``F_s`` alone is
            solved for the environment. This makes clusters die at a chosen pace, which the
            shared factor rarely does when filter strengths are similar.
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
    round_to: int | None = None
    cluster_keep: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {self.keep}")
        if self.cluster_scope not in ("group", "global"):
            raise ValueError(f"unknown cluster_scope {self.cluster_scope!r}")
        if self.synapse_norm not in ("max", "quantile"):
            raise ValueError(f"unknown synapse_norm {self.synapse_norm!r}")
        if not 0.0 < self.synapse_quantile <= 1.0:
            raise ValueError(f"synapse_quantile must be in (0, 1], got {self.synapse_quantile}")
        if self.cluster_mode not in ("filter", "kernel"):
            raise ValueError(f"unknown cluster_mode {self.cluster_mode!r}")
        if self.min_channels < 1:
            raise ValueError(f"min_channels must be at least 1, got {self.min_channels}")
        if self.cluster_keep is not None and not 0.0 < self.cluster_keep <= 1.0:
            raise ValueError(f"cluster_keep must be in (0, 1], got {self.cluster_keep}")
        if self.cluster_keep is not None and self.cluster_mode != "filter":
            raise ValueError("cluster_keep needs cluster_mode='filter'")
        if self.cluster_keep is not None and self.env.level != "synapse":
            raise ValueError("cluster_keep needs a synapse-level environment (its F_s is solved)")
        if self.round_to is not None and self.round_to < 1:
            raise ValueError(f"round_to must be positive, got {self.round_to}")

    @property
    def env(self) -> Environment:
        """The environment in force."""
        return self.environment if self.environment is not None else SynapseBudget(self.keep)


# --------------------------------------------------------------------------- eq. 4 and eq. 5


def _magnitude(w: np.ndarray) -> np.ndarray:
    """``|w|`` as a new float32 array."""
    arr = np.asarray(w)
    return np.abs(arr if arr.dtype == np.float32 else arr.astype(np.float32))


def truncated_magnitude(w: np.ndarray, truncation: Truncation | None = None) -> np.ndarray:
    """``|w|`` with entries below the tensor's truncation threshold set to zero (float32)."""
    a = _magnitude(w)
    tau = (truncation or Truncation()).threshold(a)
    if tau > 0:
        a *= a >= tau
    return a


def _rows(a: np.ndarray, axis: int) -> np.ndarray:
    """Per-index sums of a non-negative array along ``axis`` (float64)."""
    moved = np.moveaxis(a, axis, 0)
    flat = moved.reshape(moved.shape[0], -1)
    return (flat @ np.ones(flat.shape[1], dtype=flat.dtype)).astype(np.float64)


def channel_strengths(
    group: ChannelGroup, weights: Mapping[str, np.ndarray], truncation: Truncation | None = None
) -> np.ndarray:
    """Eq. 4 numerator per channel: truncated ``|w|`` summed over every producer filter."""
    strength = np.zeros(group.size, dtype=np.float64)
    for m in _unique(group.by_role(Role.PRODUCER)):
        rows = _rows(truncated_magnitude(weights[m.name], truncation), m.axis)
        channels = np.arange(group.size)
        strength += rows[m.indices(channels)].reshape(group.size, m.block).sum(axis=1)
    return strength


def _kernel_sums(x: np.ndarray) -> np.ndarray:
    """Sums over the trailing axis of an ``(out, in, rest)`` array (a view when ``rest == 1``)."""
    o, i, r = x.shape
    if r == 1:
        return x.reshape(o, i)
    return (x.reshape(o * i, r) @ np.ones(r, dtype=x.dtype)).reshape(o, i)


def kernel_strengths(
    w: np.ndarray, out_axis: int, in_axis: int, truncation: Truncation | None = None
) -> np.ndarray:
    """Eq. 4 numerator per kernel ``W[o, i, ...]``: an ``(out, in)`` float64 array."""
    a = _canonical(truncated_magnitude(w, truncation), out_axis, in_axis)
    return _kernel_sums(a).astype(np.float64)


def cluster_probabilities(strengths: np.ndarray, norm: float | None = None) -> np.ndarray:
    """Eq. 4: ``exp(strength / Z - 1)``, clipped at 1.

    Args:
        strengths: Truncated cluster sums (non-negative).
        norm: ``Z``; default the largest strength, so the strongest cluster gets 1. A
            non-positive ``Z`` (all clusters empty) gives every cluster probability 1.
    """
    s = np.asarray(strengths, dtype=np.float64)
    z = float(s.max()) if norm is None and s.size else float(norm or 0.0)
    if z <= 0:
        return np.ones_like(s)
    return np.minimum(np.exp(s / z - 1.0), 1.0)


def _norm_of(a: np.ndarray, kind: SynapseNorm, quantile: float) -> float:
    if a.size == 0:
        return 0.0
    top = float(a.max())
    if kind == "max" or top == 0:
        return top
    return float(np.quantile(a[a > 0], quantile))


def synapse_norm(w: np.ndarray, kind: SynapseNorm = "max", quantile: float = 0.99) -> float:
    """Layer-wise ``z`` of eq. 5: the largest ``|w|`` or a quantile of the nonzero ``|w|``."""
    return _norm_of(_magnitude(w), kind, quantile)


def _eq5_inplace(a: np.ndarray, z: float, clip: bool) -> np.ndarray:
    """Overwrite the magnitudes ``a`` with eq. 5 for normalization ``z``."""
    if z <= 0:
        a.fill(math.exp(-1.0))
        return a
    a *= np.float32(1.0 / z)
    np.exp(a, out=a)
    a *= np.float32(math.exp(-1.0))
    if clip:
        np.minimum(a, np.float32(1.0), out=a)
    return a


def synapse_probabilities(w: np.ndarray, z: float | None = None) -> np.ndarray:
    """Eq. 5: ``exp(|w| / z - 1)``, clipped at 1 (``z`` default: ``max |w|``; float32)."""
    a = _magnitude(w)
    zz = _norm_of(a, "max", 1.0) if z is None else float(z)
    return _eq5_inplace(a, zz, clip=True)


# --------------------------------------------------------------------------- the genome


@dataclass(frozen=True, eq=False)
class Claim:
    """Indices along one weight axis that belong to channels of a prunable group."""

    gid: int
    index: np.ndarray
    channel: np.ndarray


@dataclass(frozen=True, eq=False)
class Gene:
    """Encoding of one conv/FC weight tensor, in canonical ``(out, in, rest)`` layout.

    Attributes:
        name: Weight initializer name.
        layers: Layers using the weight (more than one only for shared weights).
        shape: Original weight shape.
        out_axis: Axis of output filters in the original shape.
        in_axis: Axis of input channels in the original shape.
        synapse_p: Eq. 5 per weight, ``(out, in, rest)`` float32; 0 where the weight is 0.
        nonzero_counts: Nonzero weights per kernel, ``(out, in)`` float32.
        out_claims: Prunable-group channels along the output axis.
        in_claims: Prunable-group channels along the input axis.
        prunable_rows: Output filters that belong to a prunable group.
        kernel_p: Kernel mode only: eq. 4 per kernel ``(out, in)`` float32, 1 on rows that
            are not prunable.
    """

    name: str
    layers: tuple[Layer, ...]
    shape: tuple[int, ...]
    out_axis: int
    in_axis: int
    synapse_p: np.ndarray
    nonzero_counts: np.ndarray
    out_claims: tuple[Claim, ...]
    in_claims: tuple[Claim, ...]
    prunable_rows: np.ndarray
    kernel_p: np.ndarray | None = None

    @property
    def nonzero(self) -> int:
        """Nonzero weights of the tensor."""
        return round(float(self.nonzero_counts.sum(dtype=np.float64)))


@dataclass(frozen=True, eq=False)
class Genome:
    """Probabilistic DNA of an ancestor: everything sampling needs, computed once.

    Attributes:
        config: The encoding configuration.
        genes: One per distinct conv/FC weight tensor, in layer order.
        groups: Prunable groups, in analysis order.
        cluster_p: Eq. 4 per channel of each prunable group (kernel mode: used to rank
            channels for the constraints and for trimming).
        producers: Per prunable group, ``(gene index, claim)`` of each producer filter slice.
        cluster_factor: Fixed ``F_c`` (from ``config.cluster_keep``), or ``None`` when
            ``F_c = F_s``.
    """

    config: EncodingConfig
    genes: tuple[Gene, ...]
    groups: tuple[ChannelGroup, ...]
    cluster_p: dict[int, np.ndarray]
    producers: dict[int, tuple[tuple[int, Claim], ...]]
    cluster_factor: float | None = None

    def cluster_q(self, gid: int, factor: float) -> np.ndarray:
        """Survival probability of the channels of group ``gid`` at factor ``F_s = factor``."""
        f = self.cluster_factor if self.cluster_factor is not None else factor
        return _cluster_q(self.cluster_p[gid], f)

    @property
    def ancestor(self) -> list[LayerCensus]:
        """Census of the ancestor (everything kept)."""
        return [LayerCensus(lay, float(g.nonzero)) for g in self.genes for lay in g.layers]

    @property
    def ancestor_synapses(self) -> int:
        """Nonzero conv/FC synapses of the ancestor (shared weights counted per layer)."""
        return sum(g.nonzero * len(g.layers) for g in self.genes)


def _unique(members: Sequence[Member]) -> list[Member]:
    """Members deduplicated by what they slice (role, tensor, axis, start, block)."""
    seen: set[tuple[Role, str, int, int, int]] = set()
    out = []
    for m in members:
        key = (m.role, m.name, m.axis, m.start, m.block)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


def _canonical(w: np.ndarray, out_axis: int, in_axis: int) -> np.ndarray:
    """``(out, in, rest)`` view (a copy only when the axes are not already leading)."""
    moved = np.moveaxis(w, (out_axis, in_axis), (0, 1))
    return moved.reshape(moved.shape[0], moved.shape[1], -1)


def _from_canonical(
    a: np.ndarray, shape: tuple[int, ...], out_axis: int, in_axis: int
) -> np.ndarray:
    rest = [shape[d] for d in range(len(shape)) if d not in (out_axis, in_axis)]
    moved = a.reshape([shape[out_axis], shape[in_axis], *rest])
    return np.ascontiguousarray(np.moveaxis(moved, (0, 1), (out_axis, in_axis)))


def _claims(analysis: Analysis, names: set[str]) -> dict[tuple[str, int], list[Claim]]:
    """Prunable-group slices of conv/FC weights, keyed by ``(weight, axis)``."""
    out: dict[tuple[str, int], list[Claim]] = {}
    for g in analysis.prunable_groups:
        channels = np.arange(g.size, dtype=np.int64)
        for m in _unique(g.members):
            if m.role not in (Role.PRODUCER, Role.CONSUMER) or m.name not in names:
                continue
            claim = Claim(g.id, m.indices(channels), np.repeat(channels, m.block))
            out.setdefault((m.name, m.axis), []).append(claim)
    return out


def _encode_gene(
    name: str,
    layers: tuple[Layer, ...],
    w: np.ndarray,
    claims: Mapping[tuple[str, int], list[Claim]],
    config: EncodingConfig,
) -> tuple[Gene, np.ndarray]:
    """The gene of one weight and its kernel strengths ``(out, in)`` (float32)."""
    lay = layers[0]
    a = _magnitude(_canonical(np.asarray(w), lay.out_axis, lay.in_axis))
    nonzero = int(np.count_nonzero(a))
    present = None if nonzero == a.size else np.sign(a)
    tau = config.truncation.threshold(a, nonzero)
    kstr = _kernel_sums(a * (a >= tau) if tau > 0 else a)
    if np.may_share_memory(kstr, a):  # a is overwritten below
        kstr = kstr.copy()
    z = _norm_of(a, config.synapse_norm, config.synapse_quantile)
    ps = _eq5_inplace(a, z, clip=config.synapse_norm != "max")
    if present is not None:
        ps *= present
        counts = _kernel_sums(present)
    else:
        counts = np.full(ps.shape[:2], ps.shape[2], dtype=np.float32)
    out_claims = tuple(claims.get((name, lay.out_axis), ()))
    rows = np.zeros(ps.shape[0], dtype=bool)
    for c in out_claims:
        rows[c.index] = True
    gene = Gene(
        name=name,
        layers=layers,
        shape=tuple(int(d) for d in np.shape(w)),
        out_axis=lay.out_axis,
        in_axis=lay.in_axis,
        synapse_p=ps,
        nonzero_counts=counts,
        out_claims=out_claims,
        in_claims=tuple(claims.get((name, lay.in_axis), ())),
        prunable_rows=rows,
    )
    return gene, kstr


def _kernel_eq4(strengths: np.ndarray, norm: float) -> np.ndarray:
    """Eq. 4 on float32 kernel strengths (in place)."""
    if norm <= 0:
        strengths.fill(1.0)
        return strengths
    strengths *= np.float32(1.0 / norm)
    strengths -= np.float32(1.0)
    np.exp(strengths, out=strengths)
    return np.minimum(strengths, np.float32(1.0), out=strengths)


def _with_kernel_p(genes: list[Gene], kstrs: list[np.ndarray], scope: Scope) -> list[Gene]:
    """Genes carrying eq. 4 per kernel (Z per tensor or global, over prunable rows)."""
    maxima = [float(k[g.prunable_rows].max(initial=0.0)) for g, k in zip(genes, kstrs, strict=True)]
    top = max(maxima, default=0.0)
    out = []
    for g, k, m in zip(genes, kstrs, maxima, strict=True):
        p = _kernel_eq4(k, top if scope == "global" else m)
        p[~g.prunable_rows] = 1.0
        out.append(replace(g, kernel_p=p))
    return out


def _group_strengths(
    groups: Sequence[ChannelGroup],
    producers: Mapping[int, tuple[tuple[int, Claim], ...]],
    row_strengths: Sequence[np.ndarray],
) -> dict[int, np.ndarray]:
    out = {}
    for g in groups:
        s = np.zeros(g.size, dtype=np.float64)
        for gi, c in producers[g.id]:
            s += np.bincount(c.channel, weights=row_strengths[gi][c.index], minlength=g.size)
        out[g.id] = s
    return out


def _producers(
    groups: Sequence[ChannelGroup], genes: Sequence[Gene]
) -> dict[int, tuple[tuple[int, Claim], ...]]:
    out: dict[int, list[tuple[int, Claim]]] = {g.id: [] for g in groups}
    for gi, gene in enumerate(genes):
        for c in gene.out_claims:
            out[c.gid].append((gi, c))
    for g in groups:
        if not out[g.id]:
            logger.warning("group %d has no producer among the conv/FC weights", g.id)
    return {gid: tuple(v) for gid, v in out.items()}


def encode(
    analysis: Analysis, weights: Mapping[str, np.ndarray], config: EncodingConfig | None = None
) -> Genome:
    """Encode an ancestor: cluster and synapse probabilities of every conv/FC weight.

    Args:
        analysis: Channel groups and layers of the ancestor.
        weights: Weight arrays by initializer name (at least every layer's weight).
        config: Encoding configuration (default :class:`EncodingConfig`).

    Raises:
        PlanError: A layer's weight is missing from ``weights``.
    """
    cfg = config or EncodingConfig()
    by_weight: dict[str, list[Layer]] = {}
    for lay in analysis.layers:
        by_weight.setdefault(lay.weight, []).append(lay)
    missing = sorted(set(by_weight) - set(weights))
    if missing:
        raise PlanError(f"weights of layers not found in the model: {missing}")
    claims = _claims(analysis, set(by_weight))
    genes, kstrs = [], []
    for name, layers in by_weight.items():
        gene, kstr = _encode_gene(name, tuple(layers), weights[name], claims, cfg)
        genes.append(gene)
        kstrs.append(kstr)
    groups = analysis.prunable_groups
    producers = _producers(groups, genes)
    strengths = _group_strengths(groups, producers, [k.sum(1, dtype=np.float64) for k in kstrs])
    top = max((float(s.max(initial=0.0)) for s in strengths.values()), default=0.0)
    norm = top if cfg.cluster_scope == "global" else None
    cluster_p = {gid: cluster_probabilities(s, norm) for gid, s in strengths.items()}
    if cfg.cluster_mode == "kernel":
        genes = _with_kernel_p(genes, kstrs, cfg.cluster_scope)
    logger.debug("encoded %d weight tensors, %d prunable groups", len(genes), len(groups))
    fixed = None if cfg.cluster_keep is None else cluster_factor_for(cluster_p, cfg.cluster_keep)
    return Genome(cfg, tuple(genes), groups, cluster_p, producers, fixed)


def cluster_factor_for(cluster_p: Mapping[int, np.ndarray], keep: float) -> float:
    """``F_c`` whose expected surviving fraction of all clusters, ``mean(min(1, F_c P_c))``,
    is ``keep`` (bisection; ``e`` keeps everything since every ``P_c >= 1/e``)."""
    p = np.concatenate([v.ravel() for v in cluster_p.values()]) if cluster_p else np.ones(1)
    lo, hi = 0.0, FACTOR_MAX
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(mid * p, 1.0).mean() < keep else (lo, mid)
    return hi


# --------------------------------------------------------------------------- expectations


def _axis_values(
    claims: Sequence[Claim], size: int, values: Mapping[int, np.ndarray]
) -> np.ndarray:
    """Per-index product of the group values of every claim on a weight axis (float64)."""
    v = np.ones(size, dtype=np.float64)
    for c in claims:
        v[c.index] *= values[c.gid][c.channel]
    return v


def _cluster_q(p: np.ndarray, factor: float) -> np.ndarray:
    """Survival probability ``min(1, λ P_c)`` (exactly 1 everywhere at ``λ = e``)."""
    return np.ones_like(p) if factor >= FACTOR_MAX else np.minimum(factor * p, 1.0)


def _kernel_q(gene: Gene, factor: float, stride: int = 1) -> np.ndarray:
    """Kernel mode: survival probability of every kernel, ``(out, in)`` float32."""
    assert gene.kernel_p is not None
    if factor >= FACTOR_MAX:
        return np.ones_like(gene.kernel_p[::stride])
    q = np.minimum(gene.kernel_p[::stride] * np.float32(factor), np.float32(1.0))
    q[~gene.prunable_rows[::stride]] = 1.0
    return q


def _channel_survival(genome: Genome, kernel_q: Sequence[np.ndarray]) -> dict[int, np.ndarray]:
    """Kernel mode: P(a channel keeps at least one kernel) = 1 - prod(1 - q_k)."""
    with np.errstate(divide="ignore"):
        log_miss = [np.log(np.prod(1.0 - q, axis=1, dtype=np.float64)) for q in kernel_q]
    out = {}
    for g in genome.groups:
        total = np.zeros(g.size, dtype=np.float64)
        for gi, c in genome.producers[g.id]:
            total += np.bincount(c.channel, weights=log_miss[gi][c.index], minlength=g.size)
        out[g.id] = 1.0 - np.exp(total)
    return out


def _expected_synapses(
    gene: Gene,
    factor: float,
    axes: tuple[np.ndarray, np.ndarray],
    kernel_q: np.ndarray | None,
    scratch: np.ndarray,
    sampled: bool,
    stride: int,
) -> float:
    """Expected realized synapses of one weight (rows subsampled by ``stride``).

    ``kernel_q`` (kernel mode) holds the already subsampled rows.
    """
    if factor <= 0:
        return 0.0
    q_out, q_in = axes
    ps = gene.synapse_p[::stride]
    o, i, r = ps.shape
    scale = gene.synapse_p.shape[0] / o
    if sampled:
        buf = scratch[: ps.size].reshape(ps.shape)
        np.minimum(ps, np.float32(1.0 / factor), out=buf)
    if kernel_q is None:
        w_out = q_out[::stride].astype(np.float32)
        if sampled:
            cols = (w_out @ buf.reshape(o, i * r)).reshape(i, r).sum(axis=1) * factor
        else:
            cols = w_out @ gene.nonzero_counts[::stride]
        return scale * float(cols @ q_in)
    if sampled:
        per_kernel = _kernel_sums(buf) * np.float32(factor)
    else:
        per_kernel = gene.nonzero_counts[::stride]
    return scale * float(((kernel_q * per_kernel) @ q_in).sum())


def _census_at(
    genome: Genome, factor: float, with_synapses: bool, scratch: np.ndarray, stride: int = 1
) -> list[LayerCensus]:
    """Expected census; ``stride > 1`` estimates synapses from every ``stride``-th filter
    (kernel mode: channel survival is then taken as 1)."""
    kernel = genome.config.cluster_mode == "kernel"
    kq: list[np.ndarray] = []
    values: dict[int, np.ndarray]
    if kernel:
        kq = [_kernel_q(g, factor, stride) for g in genome.genes]
        if stride == 1:
            values = _channel_survival(genome, kq)
        else:
            values = {g.id: np.ones(g.size) for g in genome.groups}
    else:
        values = {gid: genome.cluster_q(gid, factor) for gid in genome.cluster_p}
    out: list[LayerCensus] = []
    for gi, gene in enumerate(genome.genes):
        o, i, _ = gene.synapse_p.shape
        axes = (_axis_values(gene.out_claims, o, values), _axis_values(gene.in_claims, i, values))
        syn = 0.0
        if with_synapses:
            k = kq[gi] if kernel else None
            sampled = genome.config.synapse_level
            syn = _expected_synapses(gene, factor, axes, k, scratch, sampled, stride)
        fractions = float(axes[0].mean()), float(axes[1].mean())
        out.extend(LayerCensus(lay, syn, *fractions) for lay in gene.layers)
    return out


def _scratch(genome: Genome) -> np.ndarray:
    return np.empty(max((g.synapse_p.size for g in genome.genes), default=0), dtype=np.float32)


def expected_census(genome: Genome, factor: float, with_synapses: bool = True) -> list[LayerCensus]:
    """Expected census of an offspring sampled with environmental factor ``factor``.

    Channel decisions of different groups are independent, so kept fractions and synapse
    counts are exact expectations of the cluster and synapse draws (before constraints,
    dead-channel removal and trimming). ``with_synapses=False`` skips the synapse pass and
    reports 0 synapses.
    """
    return _census_at(genome, factor, with_synapses, _scratch(genome))


def _illinois(
    f: Callable[[float], float], lo: float, hi: float, f_lo: float, f_hi: float, tol: float
) -> float:
    """Root of a non-decreasing ``f`` with ``f(lo) < 0 < f(hi)`` (Illinois false position)."""
    side = 0
    x = lo
    for _ in range(_SOLVE_MAX_ITER):
        x = (lo * f_hi - hi * f_lo) / (f_hi - f_lo)
        fx = f(x)
        if abs(fx) <= tol or hi - lo <= 1e-12 * hi:
            return x
        if fx > 0:
            hi, f_hi = x, fx
            if side == -1:
                f_lo /= 2
            side = -1
        else:
            lo, f_lo = x, fx
            if side == 1:
                f_hi /= 2
            side = 1
    return x


@dataclass(frozen=True)
class Solution:
    """Environmental factor solved for a genome.

    Attributes:
        factor: ``λ = F_c = F_s``.
        budget: The environment's budget for this ancestor.
        expected_cost: Expected cost of an offspring at ``factor``.
        expected_synapses: Expected nonzero synapses of an offspring at ``factor``.
    """

    factor: float
    budget: float
    expected_cost: float
    expected_synapses: float


@dataclass
class _Solver:
    """Exact and row-subsampled cost evaluations of one solve (memoized)."""

    genome: Genome
    env: Environment
    budget: float
    scratch: np.ndarray
    memo: dict[float, list[LayerCensus]] = field(default_factory=dict)
    calls: int = 0

    def census(self, x: float) -> list[LayerCensus]:
        if x not in self.memo:
            self.calls += 1
            self.memo[x] = _census_at(self.genome, x, self.env.needs_synapses, self.scratch)
        return self.memo[x]

    def exact(self, x: float) -> float:
        return self.env.cost(self.census(x)) - self.budget

    def coarse(self, x: float, stride: int) -> float:
        return self.env.cost(_census_at(self.genome, x, True, self.scratch, stride)) - self.budget


def _coarse_stride(genome: Genome) -> int:
    total = sum(g.synapse_p.size for g in genome.genes)
    return max(1, total // _COARSE_SIZE)


def _bracketed(s: _Solver, f_top: float, tol: float) -> float:
    """Root in ``[0, e]``: a row-subsampled solve first (large genomes), then exact steps."""
    lo, f_lo, hi, f_hi = 0.0, s.exact(0.0), FACTOR_MAX, f_top
    stride = _coarse_stride(s.genome)
    coarse = lambda v: s.coarse(v, stride)  # noqa: E731
    if s.env.needs_synapses and stride > 1 and (c_hi := coarse(hi)) > 0:
        x = _illinois(coarse, lo, hi, f_lo, c_hi, 10 * tol)
        for _ in range(2):
            fx = s.exact(x)
            if abs(fx) <= tol:
                return x
            lo, f_lo, hi, f_hi = (lo, f_lo, x, fx) if fx > 0 else (x, fx, hi, f_hi)
            eps = 1e-3 * max(x, 1e-3)
            slope = (coarse(x + eps) - coarse(x - eps)) / (2 * eps)
            if slope <= 0:
                break
            x = min(max(x - fx / slope, lo), hi)
    return _illinois(s.exact, lo, hi, f_lo, f_hi, tol)


def solve_factor(genome: Genome) -> Solution:
    """Find ``λ`` in ``[0, e]`` whose expected offspring cost equals the budget."""
    env = genome.config.env
    ancestor = genome.ancestor
    budget = env.budget(ancestor)
    solver = _Solver(genome, env, budget, _scratch(genome))
    top = env.cost(ancestor)  # at λ = e every probability is 1
    if genome.cluster_factor is not None:  # clusters still die at λ = e
        top = env.cost(solver.census(FACTOR_MAX))
    if top <= budget:
        x = FACTOR_MAX
    elif solver.exact(0.0) >= 0:
        logger.warning("budget %.4g is below the cost of an empty offspring", budget)
        x = 0.0
    else:
        x = _bracketed(solver, top - budget, _SOLVE_RTOL * budget)
    final = _census_at(genome, x, True, solver.scratch) if not env.needs_synapses else None
    census = final if final is not None else solver.census(x)
    sol = Solution(x, budget, env.cost(census), sum(c.synapses for c in census))
    logger.debug(
        "factor %.6f after %d exact evaluations: expected cost %.6g for budget %.6g",
        x, solver.calls, sol.expected_cost, budget,
    )  # fmt: skip
    return sol


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True, eq=False)
class Offspring:
    """One sampled offspring: what surgery needs plus its expected and realized size.

    Attributes:
        plan: Kept channels of every prunable group that loses channels.
        masks: 0/1 float32 masks in the original weight shapes for weights that lose synapses
            inside surviving filters (``apply_plan(model, analysis, plan, masks)``).
        factor: Environmental factor ``λ = F_c = F_s``.
        budget: The environment's budget.
        expected_cost: Expected cost at ``factor``.
        realized_cost: Cost of this offspring (at most ``budget`` unless unattainable).
        ancestor_synapses: Nonzero conv/FC synapses of the ancestor.
        expected_synapses: Expected nonzero synapses at ``factor``.
        realized_synapses: Nonzero conv/FC synapses of this offspring after surgery.
    """

    plan: PrunePlan
    masks: dict[str, np.ndarray]
    factor: float
    budget: float
    expected_cost: float
    realized_cost: float
    ancestor_synapses: int
    expected_synapses: float
    realized_synapses: int


@dataclass(eq=False)
class _Draft:
    """Mutable state of one sampling run.

    ``masks`` are float32 0/1 arrays in canonical layout; ``counts`` the live synapses per
    kernel (``None`` when a weight has one entry per kernel: the mask is the count);
    ``masked`` whether a weight lost any nonzero synapse to its mask.
    """

    keep: dict[int, np.ndarray]
    kernels: list[np.ndarray | None]
    masks: list[np.ndarray] = field(default_factory=list)
    counts: list[np.ndarray | None] = field(default_factory=list)
    masked: list[bool] = field(default_factory=list)

    def kernel_counts(self, gi: int) -> np.ndarray:
        c = self.counts[gi]
        if c is not None:
            return c
        m = self.masks[gi]
        return m.reshape(m.shape[0], m.shape[1])


def _as_float(keep: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    return {gid: k.astype(np.float64) for gid, k in keep.items()}


def _required(n: int, size: int, cfg: EncodingConfig) -> int:
    """Smallest channel count ``>= n`` that satisfies ``min_channels`` and ``round_to``."""
    k = max(n, min(cfg.min_channels, size))
    if cfg.round_to and cfg.round_to > 1:
        k = min(size, -(-k // cfg.round_to) * cfg.round_to)
    return k


def _valid(k: int, size: int, cfg: EncodingConfig) -> bool:
    if k < max(1, min(cfg.min_channels, size)):
        return False
    return not cfg.round_to or k % cfg.round_to == 0 or k == size


def _enforce(keep: np.ndarray, prob: np.ndarray, cfg: EncodingConfig) -> np.ndarray:
    """Add back the highest-probability dead channels until the constraints hold."""
    n = int(keep.sum())
    need = _required(n, keep.size, cfg)
    if need <= n:
        return np.zeros(0, dtype=np.int64)
    dead = np.flatnonzero(~keep)
    add = dead[np.argsort(-prob[dead], kind="stable")[: need - n]]
    keep[add] = True
    return add


def _channel_any(genome: Genome, group: ChannelGroup, rows: Sequence[np.ndarray]) -> np.ndarray:
    """Channels of ``group`` with a positive row value in any producer filter."""
    total = np.zeros(group.size, dtype=np.float64)
    for gi, c in genome.producers[group.id]:
        total += np.bincount(c.channel, weights=rows[gi][c.index], minlength=group.size)
    return total > 0


def _sample_clusters(genome: Genome, factor: float, rng: np.random.Generator) -> _Draft:
    """Draw cluster survival: group channels (filter mode) or kernels (kernel mode)."""
    if genome.config.cluster_mode == "filter":
        keep = {
            g.id: rng.random(g.size) < genome.cluster_q(g.id, factor)
            for g in genome.groups
        }
        return _Draft(keep, [None] * len(genome.genes))
    kernels: list[np.ndarray | None] = []
    rows = []
    for gene in genome.genes:
        q = _kernel_q(gene, factor)
        alive = rng.random(q.shape, dtype=np.float32) < q
        kernels.append(alive)
        rows.append(np.asarray(alive.any(axis=1), dtype=np.float64))
    keep = {g.id: _channel_any(genome, g, rows) for g in genome.groups}
    return _Draft(keep, kernels)


def _apply_constraints(genome: Genome, draft: _Draft) -> None:
    """``min_channels``/``round_to`` for every group; revived channels get their kernels back."""
    for g in genome.groups:
        added = _enforce(draft.keep[g.id], genome.cluster_p[g.id], genome.config)
        if not added.size:
            continue
        for gi, c in genome.producers[g.id]:
            kern = draft.kernels[gi]
            if kern is not None:
                kern[c.index[np.isin(c.channel, added)]] = True


def _sample_synapses(
    genome: Genome, draft: _Draft, factor: float, rng: np.random.Generator
) -> None:
    """Draw synapse survival inside every weight; fills the draft's masks and counts."""
    for gene, kern in zip(genome.genes, draft.kernels, strict=True):
        ps = gene.synapse_p
        if not genome.config.synapse_level or factor >= FACTOR_MAX:
            mask = np.sign(ps)
        elif factor <= 0:
            mask = np.zeros_like(ps)
        else:
            mask = rng.random(ps.shape, dtype=np.float32)
            mask *= np.float32(1.0 / factor)
            np.copyto(mask, np.less(mask, ps))
        if kern is not None:
            mask *= kern[:, :, None]
        draft.masks.append(mask)
        draft.counts.append(_kernel_sums(mask) if ps.shape[2] > 1 else None)
        draft.masked.append(int(np.count_nonzero(mask)) < gene.nonzero)


def _axes(gene: Gene, keep: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    o, i, _ = gene.synapse_p.shape
    return _axis_values(gene.out_claims, o, keep), _axis_values(gene.in_claims, i, keep)


def _live_rows(genome: Genome, draft: _Draft, kf: Mapping[int, np.ndarray]) -> list[np.ndarray]:
    """Realized synapses per output filter of every weight (removed inputs excluded).

    Exact: float32 sums of at most ``in * rest < 2**24`` ones.
    """
    return [
        np.asarray(draft.kernel_counts(gi) @ _axes(g, kf)[1].astype(np.float32), np.float64)
        for gi, g in enumerate(genome.genes)
    ]


def _census_of(
    genome: Genome, kf: Mapping[int, np.ndarray], rows: Sequence[np.ndarray] | None
) -> list[LayerCensus]:
    """Realized census for kept channels ``kf`` (synapses 0 when ``rows`` is ``None``)."""
    out: list[LayerCensus] = []
    for gi, gene in enumerate(genome.genes):
        ko, ki = _axes(gene, kf)
        syn = float(ko @ rows[gi]) if rows is not None else 0.0
        out.extend(LayerCensus(lay, syn, float(ko.mean()), float(ki.mean())) for lay in gene.layers)
    return out


def _realized_census(
    genome: Genome, keep: Mapping[int, np.ndarray], draft: _Draft, with_synapses: bool = True
) -> list[LayerCensus]:
    kf = _as_float(keep)
    return _census_of(genome, kf, _live_rows(genome, draft, kf) if with_synapses else None)


def _prune_dead(genome: Genome, draft: _Draft) -> list[np.ndarray]:
    """Remove kept channels whose producer filters have no realized synapse (constraints kept).

    Returns:
        :func:`_live_rows` for the final kept channels.
    """
    cfg = genome.config
    for _ in range(_DEAD_PASSES):
        rows = _live_rows(genome, draft, _as_float(draft.keep))
        changed = False
        for g in genome.groups:
            if not genome.producers[g.id]:
                continue
            keep = draft.keep[g.id]
            dead = np.flatnonzero(keep & ~_channel_any(genome, g, rows))
            if not dead.size:
                continue
            n = int(keep.sum())
            target = next((k for k in range(n - dead.size, n) if _valid(k, g.size, cfg)), n)
            if target < n:
                order = np.argsort(genome.cluster_p[g.id][dead], kind="stable")
                keep[dead[order[: n - target]]] = False
                changed = True
        if not changed:
            return rows
    return _live_rows(genome, draft, _as_float(draft.keep))


def _smallest_k(ok: Callable[[int], bool], n: int) -> int | None:
    """Smallest ``k`` in ``[1, n]`` with ``ok(k)`` for a monotone ``ok`` (``None``: none)."""
    if n <= 0 or not ok(n):
        return None
    lo, hi = 0, n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _rank(genome: Genome, gene: Gene) -> np.ndarray:
    """Cluster probability of every kernel's cluster, ``(out, in)`` or ``(out, 1)``."""
    if gene.kernel_p is not None:
        return gene.kernel_p
    o = gene.synapse_p.shape[0]
    return _axis_values(gene.out_claims, o, genome.cluster_p).astype(np.float32)[:, None]


def _kernel_index(gene: Gene, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row (output filter) and column (input channel) of canonical flat indices."""
    _, i, r = gene.synapse_p.shape
    return flat // (i * r), (flat // r) % i


def _scores_at(gene: Gene, rank: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """``P_c · P_s`` at canonical flat indices."""
    row, col = _kernel_index(gene, flat)
    return gene.synapse_p.reshape(-1)[flat] * rank[row, col if rank.shape[1] > 1 else 0]


def _score_quantile(genome: Genome, draft: _Draft, frac: float) -> float:
    """Approximate ``frac`` quantile of ``P_c · P_s`` over realized synapses (subsampled)."""
    kf = _as_float(draft.keep)
    total = sum(g.synapse_p.size for g in genome.genes)
    step = max(1, total // _QUANTILE_SAMPLE)
    samples = []
    for gi, gene in enumerate(genome.genes):
        idx = np.arange(0, gene.synapse_p.size, step)
        row, col = _kernel_index(gene, idx)
        ko, ki = _axes(gene, kf)
        live = (draft.masks[gi].reshape(-1)[idx] > 0) & (ko[row] > 0) & (ki[col] > 0)
        samples.append(_scores_at(gene, _rank(genome, gene), idx[live]))
    pool = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    return float(np.quantile(pool, frac)) if pool.size else math.inf


def _candidates(
    genome: Genome, draft: _Draft, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Realized synapses with ``P_c · P_s <= threshold``: (gene, flat index, score) sorted."""
    kf = _as_float(draft.keep)
    genes, flats, scores = [], [], []
    for gi, gene in enumerate(genome.genes):
        ko, ki = _axes(gene, kf)
        rank = _rank(genome, gene)
        kept = (ko > 0)[:, None] & (ki > 0)[None, :]
        with np.errstate(divide="ignore", over="ignore"):
            limit = np.where(kept, np.float32(threshold) / rank, np.float32(-1)).astype(np.float32)
        sel = gene.synapse_p <= limit[:, :, None]
        sel &= draft.masks[gi] > 0
        flat = np.flatnonzero(sel)
        genes.append(np.full(flat.size, gi))
        flats.append(flat)
        scores.append(_scores_at(gene, rank, flat))
    g, f, s = (np.concatenate(x) if x else np.zeros(0) for x in (genes, flats, scores))
    order = np.lexsort((f, g, s))
    return g[order].astype(np.int64), f[order].astype(np.int64), s[order]


def _trim_synapses(
    genome: Genome, draft: _Draft, census: Sequence[LayerCensus], env: Environment, budget: float
) -> None:
    """Drop the lowest ``P_c · P_s`` realized synapses until the cost is within budget."""
    n_genes = len(genome.genes)
    frac = min(1.0, 2.0 * (1.0 - budget / env.cost(census)) + 1e-4)
    while True:
        threshold = _score_quantile(genome, draft, frac) if frac < 1.0 else math.inf
        gene_of, flat, _ = _candidates(genome, draft, threshold)

        def ok(k: int, gene_of: np.ndarray = gene_of) -> bool:
            removed = np.bincount(gene_of[:k], minlength=n_genes)
            return env.cost(_without(census, genome.genes, removed)) <= budget

        k = _smallest_k(ok, gene_of.size)
        if k is not None or frac >= 1.0:
            break
        frac = min(1.0, 4.0 * frac)
    if k is None:
        logger.warning("budget %.4g unattainable by removing synapses", budget)
        k = gene_of.size
    _remove_synapses(genome, draft, gene_of[:k], flat[:k])


def _remove_synapses(genome: Genome, draft: _Draft, gene_of: np.ndarray, flat: np.ndarray) -> None:
    for gi in np.unique(gene_of):
        local = flat[gene_of == gi]
        draft.masks[gi].reshape(-1)[local] = 0.0
        draft.masked[gi] = True
        cnt = draft.counts[gi]
        if cnt is not None:
            r = genome.genes[gi].synapse_p.shape[2]
            cnt.reshape(-1)[:] -= np.bincount(local // r, minlength=cnt.size).astype(np.float32)


def _without(
    census: Sequence[LayerCensus], genes: Sequence[Gene], removed: np.ndarray
) -> list[LayerCensus]:
    """Census after removing ``removed[g]`` synapses from every layer of gene ``g``."""
    per_layer = np.repeat(removed, [len(g.layers) for g in genes])
    return [
        LayerCensus(c.layer, c.synapses - float(d), c.out_fraction, c.in_fraction)
        for c, d in zip(census, per_layer, strict=True)
    ]


def _trim_kernels(
    genome: Genome, draft: _Draft, census: Sequence[LayerCensus], env: Environment, budget: float
) -> None:
    """Drop the lowest-probability realized kernels until the cost is within budget."""
    kf = _as_float(draft.keep)
    owners, flats, scores, sizes = [], [], [], []
    for gi, gene in enumerate(genome.genes):
        assert gene.kernel_p is not None
        ko, ki = _axes(gene, kf)
        cnt = draft.kernel_counts(gi)
        flat = np.flatnonzero((cnt > 0) & (ko > 0)[:, None] & (ki > 0)[None, :])
        owners.append(np.full(flat.size, gi))
        flats.append(flat)
        scores.append(gene.kernel_p.reshape(-1)[flat])
        sizes.append(cnt.reshape(-1)[flat].astype(np.float64))
    owner, flat, score, size = (np.concatenate(x) for x in (owners, flats, scores, sizes))
    order = np.lexsort((flat, owner, score))
    owner, flat, size = owner[order], flat[order], size[order]
    n_genes = len(genome.genes)

    def ok(k: int) -> bool:
        removed = np.bincount(owner[:k], weights=size[:k], minlength=n_genes)
        return env.cost(_without(census, genome.genes, removed)) <= budget

    k = _smallest_k(ok, flat.size)
    if k is None:
        logger.warning("budget %.4g unattainable by removing kernels", budget)
        k = flat.size
    for gi in np.unique(owner[:k]):
        local = flat[:k][owner[:k] == gi]
        mask = draft.masks[gi]
        mask.reshape(mask.shape[0] * mask.shape[1], -1)[local] = 0.0
        cnt = draft.counts[gi]
        if cnt is not None:
            cnt.reshape(-1)[local] = 0.0
        draft.masked[gi] = True


def _trim_clusters(genome: Genome, draft: _Draft, env: Environment, budget: float) -> None:
    """Drop the lowest-probability kept channels until the cost is within budget."""
    cfg = genome.config
    probs, owners, chans = [], [], []
    for gidx, g in enumerate(genome.groups):
        p = genome.cluster_p[g.id]
        kept = np.flatnonzero(draft.keep[g.id])
        protect = kept[np.argsort(-p[kept], kind="stable")[: min(cfg.min_channels, kept.size)]]
        free = np.setdiff1d(kept, protect)
        probs.append(p[free])
        owners.append(np.full(free.size, gidx))
        chans.append(free)
    if not probs:
        logger.warning("budget %.4g unattainable: no prunable channels", budget)
        return
    prob, owner, chan = np.concatenate(probs), np.concatenate(owners), np.concatenate(chans)
    order = np.lexsort((chan, owner, prob))
    owner, chan = owner[order], chan[order]

    def state(k: int) -> dict[int, np.ndarray]:
        keep = {gid: v.copy() for gid, v in draft.keep.items()}
        for gidx in np.unique(owner[:k]):
            g = genome.groups[gidx]
            keep[g.id][chan[:k][owner[:k] == gidx]] = False
            _enforce(keep[g.id], genome.cluster_p[g.id], cfg)
        return keep

    def ok(k: int) -> bool:
        census = _realized_census(genome, state(k), draft, env.needs_synapses)
        return env.cost(census) <= budget

    k = _smallest_k(ok, chan.size)
    if k is None:
        logger.warning("budget %.4g unattainable within the channel constraints", budget)
        k = chan.size
    draft.keep = state(k)


def _settle(genome: Genome, draft: _Draft) -> list[LayerCensus]:
    """Remove dead channels, then take the realized census."""
    rows = _prune_dead(genome, draft)
    return _census_of(genome, _as_float(draft.keep), rows)


def _trim(
    genome: Genome, draft: _Draft, census: list[LayerCensus], env: Environment, budget: float
) -> list[LayerCensus]:
    """Bring an over-budget offspring within budget; returns the final census.

    Cluster-level environments drop channels. Synapse-level ones drop synapses, or, for
    structured offspring (``synapse_level=False``), whole kernels (kernel mode) or channels
    (filter mode), falling back to synapses if the channel constraints stop them short.
    """
    cfg = genome.config
    if env.level == "cluster" or (not cfg.synapse_level and cfg.cluster_mode == "filter"):
        _trim_clusters(genome, draft, env, budget)
    elif not cfg.synapse_level:
        _trim_kernels(genome, draft, census, env, budget)
    else:
        _trim_synapses(genome, draft, census, env, budget)
    census = _settle(genome, draft)
    if env.needs_synapses and env.cost(census) > budget:
        _trim_synapses(genome, draft, census, env, budget)
        census = _settle(genome, draft)
    return census


def _offspring(
    genome: Genome, draft: _Draft, sol: Solution, census: Sequence[LayerCensus]
) -> Offspring:
    plan = {
        g.id: tuple(int(c) for c in np.flatnonzero(draft.keep[g.id]))
        for g in genome.groups
        if not draft.keep[g.id].all()
    }
    masks = {
        gene.name: _from_canonical(mask, gene.shape, gene.out_axis, gene.in_axis)
        for gene, mask, masked in zip(genome.genes, draft.masks, draft.masked, strict=True)
        if masked
    }
    return Offspring(
        plan=PrunePlan(plan),
        masks=masks,
        factor=sol.factor,
        budget=sol.budget,
        expected_cost=sol.expected_cost,
        realized_cost=genome.config.env.cost(census),
        ancestor_synapses=genome.ancestor_synapses,
        expected_synapses=sol.expected_synapses,
        realized_synapses=round(sum(c.synapses for c in census)),
    )


def sample(genome: Genome, rng: np.random.Generator, solution: Solution | None = None) -> Offspring:
    """Sample one offspring: clusters, constraints, synapses, dead channels, then trimming.

    Args:
        genome: The ancestor's encoding.
        rng: Source of randomness (same state, same offspring).
        solution: ``solve_factor(genome)``, to share between the offspring of one generation.
    """
    sol = solution or solve_factor(genome)
    env = genome.config.env
    draft = _sample_clusters(genome, sol.factor, rng)
    _apply_constraints(genome, draft)
    _sample_synapses(genome, draft, sol.factor, rng)
    census = _settle(genome, draft)
    if env.cost(census) > sol.budget:
        census = _trim(genome, draft, census, env, sol.budget)
    return _offspring(genome, draft, sol, census)


# --------------------------------------------------------------------------- entry points


def model_weights(model: onnx.ModelProto, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """Constant arrays of ``model`` by name (initializers, then lifted ``Constant`` nodes)."""
    found = {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if names is None or t.name in names
    }
    missing = (names or set()) - set(found)
    if missing:
        from evonnx.graph import to_graph

        graph = to_graph(model)
        for name, t in graph.tensors().items():
            if name in missing and hasattr(t, "values"):
                found[name] = np.asarray(t.values)
    return found


def synthesize(
    model: onnx.ModelProto,
    analysis: Analysis,
    config: EncodingConfig | None,
    rng: np.random.Generator,
) -> Offspring:
    """Encode ``model`` and sample one offspring.

    Args:
        model: The ancestor.
        analysis: ``analyze(model)``.
        config: Encoding configuration (``None``: :class:`EncodingConfig` defaults).
        rng: Source of randomness (same state, same offspring).

    Returns:
        The offspring; ``apply_plan(model, analysis, o.plan, o.masks)`` builds it.
    """
    weights = model_weights(model, {lay.weight for lay in analysis.layers})
    return sample(encode(analysis, weights, config), rng)


# --------------------------------------------------------------------------- efficiency


class SizeMetrics(Protocol):
    """What :func:`efficiency` reads (satisfied by :class:`evonnx.metrics.ModelMetrics`)."""

    @property
    def params(self) -> int: ...

    @property
    def synapses(self) -> int: ...

    @property
    def nonzero_synapses(self) -> int: ...

    @property
    def clusters(self) -> int: ...

    @property
    def live_clusters(self) -> int: ...

    @property
    def macs(self) -> int: ...


@dataclass(frozen=True)
class Efficiency:
    """Efficiency of a generation relative to the first-generation ancestor (×, higher is better).

    Attributes:
        architectural: A-E: gen-1 synapses / nonzero synapses now.
        cluster: C-E: gen-1 clusters (filters/neurons) / live clusters now.
        macs: Gen-1 MACs / MACs now.
        params: Gen-1 parameters / parameters now.
    """

    architectural: float
    cluster: float
    macs: float
    params: float


def _ratio(first: int, now: int) -> float:
    if now:
        return first / now
    return math.inf if first else 1.0


def efficiency(gen1: SizeMetrics, now: SizeMetrics) -> Efficiency:
    """A-E, C-E, MAC and parameter ratios of ``now`` against the first generation ``gen1``."""
    return Efficiency(
        architectural=_ratio(gen1.synapses, now.nonzero_synapses),
        cluster=_ratio(gen1.clusters, now.live_clusters),
        macs=_ratio(gen1.macs, now.macs),
        params=_ratio(gen1.params, now.params),
    )
