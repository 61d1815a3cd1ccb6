"""Synaptic cluster-driven genetic encoding and offspring sampling (paper §II.B–II.D).

Modules: :mod:`~evonnx.genetic.config` (settings), :mod:`~evonnx.genetic.probabilities`
(eq. 4, eq. 5), :mod:`~evonnx.genetic.genome` (encoding a parent),
:mod:`~evonnx.genetic.solve` (the environmental factor), :mod:`~evonnx.genetic.sample` and
:mod:`~evonnx.genetic.trim` (offspring within budget); A-E and C-E are
:func:`~evonnx.pruning.metrics.efficiency` (re-exported here).

The "DNA" of a parent (the model being encoded) is the pair of probabilities

* eq. 4, cluster: ``P_c = exp(sum_{i in c} trunc(|w_i|) / Z - 1)``, and
* eq. 5, synapse: ``P_s = exp(|w_i| / z - 1)``,

and an offspring keeps cluster ``c`` with probability ``min(1, F_c · P_c)`` and, inside a kept
cluster, synapse ``i`` with probability ``min(1, F_s · P_s)`` (eq. 3).

Design choices (all configurable through :class:`EncodingConfig`):

* **Clusters.** ``cluster_mode="filter"`` (default): a cluster is one channel of a prunable
  :class:`~evonnx.pruning.groups.ChannelGroup`, i.e. *every* producer filter/neuron writing that
  channel (filters coupled by a residual ``Add`` live or die together); its strength sums over
  all producer members. ``"kernel"``: a cluster is one kernel ``W[o, i, ...]`` of a filter of a
  prunable group (for an FC weight, a single weight); a channel whose producer filters lose
  every kernel is removed. Cluster sampling only touches prunable groups; filters of frozen
  groups are never removed.
* **Synapses.** Synapse sampling and trimming apply to the conv/FC weights that touch a
  prunable group (as output filters or input channels). A frozen layer, whose weight touches
  none, stays byte-identical unless ``frozen_synapses=True`` opens it too.
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
* **Environment** (:mod:`evonnx.genetic.environments`): one scalar factor ``F_c = F_s = λ`` is
solved
  (safeguarded secant / Illinois on the monotone expected cost, bracket ``[0, e]``, where
  ``λ = e`` keeps everything) so that the *expected* cost equals the budget; ``λ = 1`` is pure
  heredity. A sampled offspring over budget is then trimmed until it fits, so the budget is
  never exceeded: lowest-``P_c`` channels for cluster-level environments (MACs), lowest
  ``P_c · P_s`` synapses for synapse-level ones (structured offspring, ``synapse_level=False``:
  lowest-``P_c`` kernels or channels). The default is
  :class:`~evonnx.genetic.environments.SynapseBudget` (``keep=0.8`` of the parent's nonzero
  synapses, counted after the consumer slices of removed channels are gone). As sampling is
  unbiased and trimming only removes, realized counts average slightly below the budget.
* **Constraints.** Each group keeps at least ``min_channels`` and the floor
  ``ceil(min_fraction * size)`` (default 0.25: a global budget is never met by emptying a few
  layers; a budget the floor puts out of reach is refused with the reachable figure); counts
  are rounded up by the one rule of :func:`evonnx.pruning.plan.round_channels`: multiples of
  ``round_to`` (or the full size; groups smaller than ``round_to`` are free), or the
  environment's widths
  (:meth:`Environment.widths <evonnx.genetic.environments.Environment.widths>`, e.g. latency steps).
  Both add back the highest-probability dead clusters. Channels whose producer filters end up
  with no realized synapse are removed (their output would be a constant) as long as the
  constraints allow.
* **Depth clusters** (``depth=True``, filter mode): a removable residual branch is a cluster
  with the eq.-4 probability of its summed strength (``Z``: the strongest branch), drawn after
  the channels; a dead branch loses every channel and the surgery removes it whole.
* **Environments that trim themselves** (``Environment.trims = False``, the latency budget):
  the encoder samples at the solved factor and leaves trimming to the environment's own rule.

Sampling order with an explicit :class:`numpy.random.Generator`: clusters (groups in analysis
order; kernel mode: weight tensors in layer order), then synapses (tensors in layer order).
Everything after that is deterministic, so the same seed gives the same offspring.
"""

from __future__ import annotations

from evonnx.genetic.config import (
    DEFAULT_MIN_FRACTION,
    FACTOR_MAX,
    ClusterMode,
    EncodingConfig,
    Scope,
    SynapseNorm,
    Truncation,
    TruncationKind,
)
from evonnx.genetic.genome import Claim, Gene, Genome, cluster_factor_for, encode, model_weights
from evonnx.genetic.probabilities import (
    cluster_probabilities,
    kernel_strengths,
    synapse_norm,
    synapse_probabilities,
    truncated_magnitude,
)
from evonnx.genetic.sample import Offspring, sample, synthesize
from evonnx.genetic.solve import Solution, expected_census, solve_factor
from evonnx.pruning.metrics import Efficiency, SizeMetrics, efficiency

__all__ = [
    "DEFAULT_MIN_FRACTION",
    "FACTOR_MAX",
    "Claim",
    "ClusterMode",
    "Efficiency",
    "EncodingConfig",
    "Gene",
    "Genome",
    "Offspring",
    "Scope",
    "SizeMetrics",
    "Solution",
    "SynapseNorm",
    "Truncation",
    "TruncationKind",
    "cluster_factor_for",
    "cluster_probabilities",
    "efficiency",
    "encode",
    "expected_census",
    "kernel_strengths",
    "model_weights",
    "sample",
    "solve_factor",
    "synapse_norm",
    "synapse_probabilities",
    "synthesize",
    "truncated_magnitude",
]
