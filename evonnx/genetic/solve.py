"""Expected offspring census and the environmental factor that meets the budget."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from evonnx.genetic.config import FACTOR_MAX
from evonnx.genetic.environments import Environment, LayerCensus
from evonnx.genetic.genome import Gene, Genome, _axis_values
from evonnx.genetic.probabilities import _kernel_sums

logger = logging.getLogger(__name__)

_SOLVE_RTOL = 1e-5
_COARSE_SIZE = 1_500_000  # weights in the row-subsampled first solve
_SOLVE_MAX_ITER = 100


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
        kq = [_kernel_q(g, genome.kernel_f(i, factor), stride) for i, g in enumerate(genome.genes)]
        if stride == 1:
            values = _channel_survival(genome, kq)
        else:
            values = {g.id: np.ones(g.size) for g in genome.groups}
    else:
        values = {
            gid: genome.cluster_q(gid, factor) * genome.branch_q(gid, factor)
            for gid in genome.cluster_p
        }
    out: list[LayerCensus] = []
    for gi, gene in enumerate(genome.genes):
        o, i, _ = gene.synapse_p.shape
        axes = (_axis_values(gene.out_claims, o, values), _axis_values(gene.in_claims, i, values))
        syn = 0.0
        if with_synapses:
            k = kq[gi] if kernel else None
            sampled = genome.config.synapse_level and genome.maskable(gene)
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
        budget: The environment's budget (limit) for this parent.
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
    parent = genome.ancestor
    budget = env.budget(parent)
    solver = _Solver(genome, env, budget, _scratch(genome))
    top = env.cost(parent)  # at λ = e every probability is 1
    if genome.fixed_clusters:  # clusters still die at λ = e
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
