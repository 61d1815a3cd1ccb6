"""Sampling offspring: clusters, constraints, synapses, dead channels, trimming."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import onnx

from evonnx.genetic.config import FACTOR_MAX, EncodingConfig
from evonnx.genetic.draft import _channel_any, _Draft, _enforce, _settle
from evonnx.genetic.genome import Genome, encode, model_weights
from evonnx.genetic.probabilities import _from_canonical, _kernel_sums
from evonnx.genetic.solve import Solution, _kernel_q, solve_factor
from evonnx.genetic.trim import _trim
from evonnx.pruning.plan import PrunePlan

if TYPE_CHECKING:
    from evonnx.genetic.environments import LayerCensus
    from evonnx.pruning.groups import Analysis

logger = logging.getLogger(__name__)


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
        ancestor_synapses: Nonzero conv/FC synapses of the parent (the model encoded); the
            name is kept for compatibility.
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


def _sample_clusters(genome: Genome, factor: float, rng: np.random.Generator) -> _Draft:
    """Draw cluster survival: group channels (filter mode) or kernels (kernel mode)."""
    if genome.config.cluster_mode == "filter":
        alive = {g.id: rng.random(g.size) < genome.cluster_q(g.id, factor) for g in genome.groups}
        for gid in genome.branch_p:  # depth clusters: a dead branch loses every channel
            if rng.random() >= genome.branch_q(gid, factor):
                alive[gid][:] = False
        return _Draft(alive, [None] * len(genome.genes))
    kernels: list[np.ndarray | None] = []
    rows = []
    for gi, gene in enumerate(genome.genes):
        q = _kernel_q(gene, genome.kernel_f(gi, factor))
        kern = rng.random(q.shape, dtype=np.float32) < q
        kernels.append(kern)
        rows.append(np.asarray(kern.any(axis=1), dtype=np.float64))
    alive = {g.id: _channel_any(genome, g, rows) for g in genome.groups}
    return _Draft(alive, kernels)


def _apply_constraints(genome: Genome, draft: _Draft) -> None:
    """``min_channels``/``round_to`` for every group; revived channels get their kernels back."""
    for g in genome.groups:
        added = _enforce(genome, g, draft.alive[g.id])
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
        sampled = genome.config.synapse_level and genome.maskable(gene)
        if not sampled or factor >= FACTOR_MAX:
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


def _offspring(
    genome: Genome, draft: _Draft, sol: Solution, census: Sequence[LayerCensus]
) -> Offspring:
    plan = {
        g.id: tuple(int(c) for c in np.flatnonzero(draft.alive[g.id]))
        for g in genome.groups
        if not draft.alive[g.id].all()
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
        genome: The parent's encoding.
        rng: Source of randomness (same state, same offspring).
        solution: ``solve_factor(genome)``, to share between the offspring of one generation.
    """
    sol = solution or solve_factor(genome)
    env = genome.config.env
    draft = _sample_clusters(genome, sol.factor, rng)
    _apply_constraints(genome, draft)
    _sample_synapses(genome, draft, sol.factor, rng)
    census = _settle(genome, draft)
    if env.trims and env.cost(census) > sol.budget:
        census = _trim(genome, draft, census, env, sol.budget)
    return _offspring(genome, draft, sol, census)


def synthesize(
    model: onnx.ModelProto,
    analysis: Analysis,
    config: EncodingConfig | None,
    rng: np.random.Generator,
) -> Offspring:
    """Encode ``model`` and sample one offspring.

    Args:
        model: The parent (the model to encode).
        analysis: ``analyze(model)``.
        config: Encoding configuration (``None``: :class:`EncodingConfig` defaults).
        rng: Source of randomness (same state, same offspring).

    Returns:
        The offspring; ``apply_plan(model, analysis, o.plan, o.masks)`` builds it.
    """
    weights = model_weights(model, {lay.weight for lay in analysis.layers})
    return sample(encode(analysis, weights, config), rng)
