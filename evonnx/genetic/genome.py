"""The genome: a parent's probabilistic DNA, computed once per generation."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
from onnx import numpy_helper

from evonnx.errors import PlanError
from evonnx.genetic.config import FACTOR_MAX, EncodingConfig, Scope
from evonnx.genetic.environments import LayerCensus
from evonnx.genetic.probabilities import (
    _canonical,
    _cluster_q,
    _eq5_inplace,
    _kernel_eq4,
    _kernel_sums,
    _norm_of,
    cluster_probabilities,
)
from evonnx.pruning.groups import Analysis, ChannelGroup, Layer, Role
from evonnx.pruning.plan import magnitudes, unique_members

logger = logging.getLogger(__name__)


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
    def frozen(self) -> bool:
        """No axis of the weight belongs to a prunable group: a frozen layer."""
        return not (self.out_claims or self.in_claims)

    @property
    def nonzero(self) -> int:
        """Nonzero weights of the tensor."""
        return round(float(self.nonzero_counts.sum(dtype=np.float64)))


@dataclass(frozen=True, eq=False)
class Genome:
    """Probabilistic DNA of a parent: everything sampling needs, computed once.

    Attributes:
        config: The encoding configuration.
        genes: One per distinct conv/FC weight tensor, in layer order.
        groups: Prunable groups, in analysis order.
        cluster_p: Eq. 4 per channel of each prunable group (kernel mode: used to rank
            channels for the constraints and for trimming).
        producers: Per prunable group, ``(gene index, claim)`` of each producer filter slice.
        cluster_factor: Fixed ``F_c`` (from ``config.cluster_keep``, filter mode), or
            ``None`` when ``F_c = F_s``.
        branch_p: Depth clusters (``config.depth``): eq. 4 of each removable group's summed
            strength, by group id.
        kernel_factors: Kernel mode with ``config.cluster_keep``: a fixed ``F_c`` per gene,
            so that every weight tensor keeps ``cluster_keep`` of its kernels in expectation
            (one global factor would let the many one-synapse "kernels" of FC layers set the
            pace and spare the conv kernels); ``None`` otherwise.
    """

    config: EncodingConfig
    genes: tuple[Gene, ...]
    groups: tuple[ChannelGroup, ...]
    cluster_p: dict[int, np.ndarray]
    producers: dict[int, tuple[tuple[int, Claim], ...]]
    cluster_factor: float | None = None
    branch_p: dict[int, float] = field(default_factory=dict)
    kernel_factors: tuple[float, ...] | None = None

    def branch_q(self, gid: int, factor: float) -> float:
        """Survival probability of the branch of group ``gid`` (1 if it is no depth cluster)."""
        p = self.branch_p.get(gid)
        return 1.0 if p is None else float(_cluster_q(np.array([p]), self.cluster_f(factor))[0])

    def cluster_q(self, gid: int, factor: float) -> np.ndarray:
        """Survival probability of the channels of group ``gid`` at factor ``F_s = factor``."""
        return _cluster_q(self.cluster_p[gid], self.cluster_f(factor))

    def cluster_f(self, factor: float) -> float:
        """``F_c`` at ``F_s = factor``: the fixed cluster factor if any, else ``factor``."""
        return self.cluster_factor if self.cluster_factor is not None else factor

    def kernel_f(self, gene: int, factor: float) -> float:
        """Kernel mode: ``F_c`` of gene ``gene`` at ``F_s = factor``."""
        return factor if self.kernel_factors is None else self.kernel_factors[gene]

    def maskable(self, gene: Gene) -> bool:
        """Whether synapses of ``gene`` may be zeroed: it touches a prunable group, or
        ``config.frozen_synapses`` opens frozen layers too."""
        return not gene.frozen or self.config.frozen_synapses

    @property
    def fixed_clusters(self) -> bool:
        """Whether ``F_c`` is fixed (``cluster_keep``): clusters still die at ``λ = e``."""
        return self.cluster_factor is not None or self.kernel_factors is not None

    @property
    def ancestor(self) -> list[LayerCensus]:
        """Census of the parent being encoded (everything kept); the name is kept for
        compatibility."""
        return [LayerCensus(lay, float(g.nonzero)) for g in self.genes for lay in g.layers]

    @property
    def ancestor_synapses(self) -> int:
        """Nonzero conv/FC synapses of the parent being encoded (shared weights counted per
        layer); the name is kept for compatibility."""
        return sum(g.nonzero * len(g.layers) for g in self.genes)


def _axis_values(
    claims: Sequence[Claim], size: int, values: Mapping[int, np.ndarray]
) -> np.ndarray:
    """Per-index product of the group values of every claim on a weight axis (float64)."""
    v = np.ones(size, dtype=np.float64)
    for c in claims:
        v[c.index] *= values[c.gid][c.channel]
    return v


def _claims(analysis: Analysis, names: set[str]) -> dict[tuple[str, int], list[Claim]]:
    """Prunable-group slices of conv/FC weights, keyed by ``(weight, axis)``."""
    out: dict[tuple[str, int], list[Claim]] = {}
    for g in analysis.prunable_groups:
        channels = np.arange(g.size, dtype=np.int64)
        for m in unique_members(g.members):
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
    a = magnitudes(_canonical(np.asarray(w), lay.out_axis, lay.in_axis))
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
    """Encode a parent: cluster and synapse probabilities of every conv/FC weight.

    Args:
        analysis: Channel groups and layers of the parent.
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
    fixed, per_gene = None, None
    if cfg.cluster_keep is not None and cfg.cluster_mode == "kernel":
        per_gene = tuple(_kernel_factor(g, cfg.cluster_keep) for g in genes)
    elif cfg.cluster_keep is not None:
        fixed = cluster_factor_for(cluster_p, cfg.cluster_keep)
    branches = [g.id for g in groups if g.removable] if cfg.depth else []
    branch_s = np.array([strengths[gid].sum() for gid in branches], dtype=np.float64)
    branch_p = dict(zip(branches, cluster_probabilities(branch_s).tolist(), strict=True))
    return Genome(cfg, tuple(genes), groups, cluster_p, producers, fixed, branch_p, per_gene)


def _kernel_factor(gene: Gene, survival: float) -> float:
    """``F_c`` keeping ``survival`` of the kernels of the gene's prunable filters."""
    if gene.kernel_p is None or not gene.prunable_rows.any():
        return FACTOR_MAX
    return cluster_factor_for({0: gene.kernel_p[gene.prunable_rows]}, survival)


def cluster_factor_for(cluster_p: Mapping[int, np.ndarray], keep: float) -> float:
    """``F_c`` whose expected surviving fraction of all clusters, ``mean(min(1, F_c P_c))``,
    is ``keep`` (bisection; ``e`` keeps everything since every ``P_c >= 1/e``)."""
    p = np.concatenate([v.ravel() for v in cluster_p.values()]) if cluster_p else np.ones(1)
    lo, hi = 0.0, FACTOR_MAX
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.minimum(mid * p, 1.0).mean() < keep else (lo, mid)
    return hi


def model_weights(model: onnx.ModelProto, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """Constant arrays of ``model`` by name (initializers, then lifted ``Constant`` nodes)."""
    found = {
        t.name: numpy_helper.to_array(t)
        for t in model.graph.initializer
        if names is None or t.name in names
    }
    missing = (names or set()) - set(found)
    if missing:
        from evonnx.model.graph import to_graph

        graph = to_graph(model)
        for name, t in graph.tensors().items():
            if name in missing and hasattr(t, "values"):
                found[name] = np.asarray(t.values)
    return found
