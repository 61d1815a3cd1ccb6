"""Trimming an over-budget offspring until it fits (the budget is never exceeded)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import NoReturn

import numpy as np

from evonnx.errors import PlanError
from evonnx.genetic.draft import (
    _as_float,
    _axes,
    _Draft,
    _enforce,
    _realized_census,
    _settle,
    group_floor,
)
from evonnx.genetic.environments import Environment, LayerCensus, MacBudget, SynapseBudget
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
    kf = _as_float(draft.alive)
    total = sum(g.synapse_p.size for g in genome.genes)
    step = max(1, total // _QUANTILE_SAMPLE)
    samples = []
    for gi, gene in enumerate(genome.genes):
        if not genome.maskable(gene):
            continue
        idx = np.arange(0, gene.synapse_p.size, step)
        row, col = _kernel_index(gene, idx)
        ko, ki = _axes(gene, kf)
        live = (draft.masks[gi].reshape(-1)[idx] > 0) & (ko[row] > 0) & (ki[col] > 0)
        samples.append(_scores_at(gene, _rank(genome, gene), idx[live]))
    pool = np.concatenate(samples) if samples else np.zeros(0, np.float32)
    return float(np.quantile(pool, frac)) if pool.size else math.inf


def _trimmable(
    genome: Genome, draft: _Draft, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Realized synapses with ``P_c · P_s <= threshold``: (gene, flat index, score) sorted."""
    kf = _as_float(draft.alive)
    genes, flats, scores = [], [], []
    for gi, gene in enumerate(genome.genes):
        if not genome.maskable(gene):
            continue
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
        gene_of, flat, _ = _trimmable(genome, draft, threshold)

        def ok(k: int, gene_of: np.ndarray = gene_of) -> bool:
            removed = np.bincount(gene_of[:k], minlength=n_genes)
            return env.cost(_without(census, genome.genes, removed)) <= budget

        k = _smallest_k(ok, gene_of.size)
        if k is not None or frac >= 1.0:
            break
        frac = min(1.0, 4.0 * frac)
    if k is None:
        removed = np.bincount(gene_of, minlength=n_genes)
        _unreachable(genome, env, budget, env.cost(_without(census, genome.genes, removed)))
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
    kf = _as_float(draft.alive)
    owners, flats, scores, sizes = [], [], [], []
    for gi, gene in enumerate(genome.genes):
        assert gene.kernel_p is not None
        if not genome.maskable(gene):
            continue
        ko, ki = _axes(gene, kf)
        cnt = draft.kernel_counts(gi)
        flat = np.flatnonzero((cnt > 0) & (ko > 0)[:, None] & (ki > 0)[None, :])
        owners.append(np.full(flat.size, gi))
        flats.append(flat)
        scores.append(gene.kernel_p.reshape(-1)[flat])
        sizes.append(cnt.reshape(-1)[flat].astype(np.float64))
    cat = [np.concatenate(x) if x else np.zeros(0) for x in (owners, flats, scores, sizes)]
    owner, flat, score, size = cat[0].astype(np.int64), cat[1].astype(np.int64), cat[2], cat[3]
    order = np.lexsort((flat, owner, score))
    owner, flat, size = owner[order], flat[order], size[order]
    n_genes = len(genome.genes)

    def ok(k: int) -> bool:
        removed = np.bincount(owner[:k], weights=size[:k], minlength=n_genes)
        return env.cost(_without(census, genome.genes, removed)) <= budget

    k = _smallest_k(ok, flat.size)
    if k is None:  # what kernels cannot reach, synapses may (the caller's fallback)
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
    probs, owners, chans = [], [], []
    for gidx, g in enumerate(genome.groups):
        p = genome.cluster_p[g.id]
        kept = np.flatnonzero(draft.alive[g.id])
        floor = min(group_floor(genome, g), kept.size)
        protect = kept[np.argsort(-p[kept], kind="stable")[:floor]]
        free = np.setdiff1d(kept, protect)
        probs.append(p[free])
        owners.append(np.full(free.size, gidx))
        chans.append(free)
    if not probs:
        _unreachable(genome, env, budget, env.cost(_realized_census(genome, draft.alive, draft)))
    prob, owner, chan = np.concatenate(probs), np.concatenate(owners), np.concatenate(chans)
    order = np.lexsort((chan, owner, prob))
    owner, chan = owner[order], chan[order]

    def state(k: int) -> dict[int, np.ndarray]:
        alive = {gid: v.copy() for gid, v in draft.alive.items()}
        for gidx in np.unique(owner[:k]):
            g = genome.groups[gidx]
            alive[g.id][chan[:k][owner[:k] == gidx]] = False
            _enforce(genome, g, alive[g.id])
        return alive

    def ok(k: int) -> bool:
        census = _realized_census(genome, state(k), draft, env.needs_synapses)
        return env.cost(census) <= budget

    k = _smallest_k(ok, chan.size)
    if k is None and (env.needs_synapses and cfg_synapses(genome)):
        k = chan.size  # synapses inside the kept channels make up the rest
    elif k is None:
        best = _realized_census(genome, state(chan.size), draft, env.needs_synapses)
        _unreachable(genome, env, budget, env.cost(best))
    draft.alive = state(k)


def _trim(
    genome: Genome, draft: _Draft, census: list[LayerCensus], env: Environment, budget: float
) -> list[LayerCensus]:
    """Bring an over-budget offspring within budget; returns the final census.

    Cluster-level environments drop channels. Synapse-level ones drop synapses, or, for
    structured offspring (``synapse_level=False``), whole kernels (kernel mode) or channels
    (filter mode). Only kernel clusters fall back to single synapses when kernels stop short;
    structured filter offspring never lose synapses inside kept filters. Synapses of frozen
    layers are never removed (unless ``frozen_synapses``), and no group goes below its floor.

    Raises:
        PlanError: The budget is out of reach within the floor and the frozen layers (the
            message gives the reachable figure).
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
        if not cfg_synapses(genome):
            _unreachable(genome, env, budget, env.cost(census))
        _trim_synapses(genome, draft, census, env, budget)
        census = _settle(genome, draft)
    return census


def cfg_synapses(genome: Genome) -> bool:
    """Whether trimming may remove single synapses: synapse-level sampling or kernel
    clusters (whose trimming falls back to synapses)."""
    cfg = genome.config
    return cfg.synapse_level or cfg.cluster_mode == "kernel"


def _unreachable(genome: Genome, env: Environment, budget: float, best: float) -> NoReturn:
    """Refuse a budget the floor and the frozen layers put out of reach (one line)."""
    full = env.cost(genome.ancestor)
    unit = {SynapseBudget: "nonzero synapses", MacBudget: "MACs"}.get(type(env), "cost")
    cfg = genome.config
    hint = "" if cfg_synapses(genome) else ", add --synapses"
    if best >= full:
        raise PlanError(
            "nothing was pruned: every layer is frozen or at its floor (see `evonnx inspect`; "
            f"--min-fraction lowers the floor{hint}); no file written"
        )
    raise PlanError(
        f"the budget ({budget / full:.3g} of the {unit}) is out of reach: frozen layers and "
        f"the per-layer floor (min_fraction {cfg.floor:g}, min_channels "
        f"{cfg.min_channels}) keep at least {best / full:.3g}; keep {best / full:.3g} or more"
        f"{hint}, or lower the floor (--min-fraction)"
    )
