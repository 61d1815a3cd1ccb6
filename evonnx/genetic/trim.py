"""Trimming an over-budget offspring until it fits (the budget is never exceeded)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np

from evonnx.environments import Environment, LayerCensus
from evonnx.genetic.draft import _as_float, _axes, _Draft, _enforce, _realized_census, _settle
from evonnx.genetic.genome import Gene, Genome, _axis_values

logger = logging.getLogger(__name__)

_QUANTILE_SAMPLE = 1 << 18  # weights sampled to pick the trimming threshold


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
            _enforce(genome, g, keep[g.id])
        return keep

    def ok(k: int) -> bool:
        census = _realized_census(genome, state(k), draft, env.needs_synapses)
        return env.cost(census) <= budget

    k = _smallest_k(ok, chan.size)
    if k is None:
        logger.warning("budget %.4g unattainable within the channel constraints", budget)
        k = chan.size
    draft.keep = state(k)


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
