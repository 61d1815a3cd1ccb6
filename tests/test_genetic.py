"""Genetic encoding and offspring sampling: formulas, statistics, budgets and constraints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo import cached_case

from evonnx.errors import PlanError
from evonnx.genetic import (
    FACTOR_MAX,
    ClusterMode,
    EncodingConfig,
    Offspring,
    Solution,
    Truncation,
    cluster_probabilities,
    efficiency,
    encode,
    expected_census,
    kernel_strengths,
    model_weights,
    sample,
    solve_factor,
    synapse_norm,
    synapse_probabilities,
    synthesize,
    truncated_magnitude,
)
from evonnx.genetic.environments import Census, Environment, Level, MacBudget, SynapseBudget
from evonnx.pruning.groups import Analysis, ChannelGroup, Layer, Member, Role
from evonnx.pruning.plan import PrunePlan, channel_strength, floor_channels

E = math.e

# --------------------------------------------------------------------------- hand-built nets


@dataclass
class Net:
    """A hand-built analysis with its weights."""

    analysis: Analysis
    weights: dict[str, np.ndarray]


@dataclass(frozen=True)
class Spec:
    """One prunable layer of a chain: ``k=0`` is an FC layer (after a flatten when the
    previous layer is a conv and ``flatten > 1``); ``twin`` adds a second producer (a
    residual-style 1×1 conv reading the same input) coupled to the same output channels."""

    cout: int
    k: int = 3
    twin: bool = False
    flatten: int = 1


def chain(
    specs: list[Spec],
    cin: int = 3,
    classes: int = 4,
    seed: int = 0,
    zeros: float = 0.0,
    scales: list[np.ndarray] | None = None,
) -> Net:
    """Input group (frozen) → specs → FC head (frozen output group)."""
    rng = np.random.default_rng(seed)
    members: list[list[Member]] = [[]]
    sizes, frozen = [cin], {0: "input channels of the network"}
    layers: list[Layer] = []
    weights: dict[str, np.ndarray] = {}

    def layer(name: str, src: int, dst: int, k: int, block: int, scale: np.ndarray | None) -> None:
        shape = (sizes[dst], sizes[src] * block) + ((k, k) if k else ())
        w = rng.standard_normal(shape).astype(np.float32)
        if scale is not None:
            w *= scale.reshape((-1,) + (1,) * (w.ndim - 1)).astype(np.float32)
        w[rng.random(shape) < zeros] = 0.0
        weights[name] = w
        members[dst].append(Member(Role.PRODUCER, name, name, 0))
        members[dst].append(Member(Role.BIAS, name + ".b", name, 0))
        members[src].append(Member(Role.CONSUMER, name, name, 1, 0, block))
        macs = int(np.prod(shape)) * (16 if k else 1)
        layers.append(Layer(name, "Conv" if k else "Gemm", name, 0, 1, dst, (src,), macs))

    prev = 0
    for n, s in enumerate(specs):
        members.append([])
        sizes.append(s.cout)
        dst = len(sizes) - 1
        scale = scales[n] if scales and n < len(scales) else None
        layer(f"L{n}", prev, dst, s.k, s.flatten if s.k == 0 else 1, scale)
        if s.twin:
            layer(f"L{n}twin", prev, dst, 1 if s.k else 0, s.flatten if s.k == 0 else 1, None)
        prev = dst
    members.append([])
    sizes.append(classes)
    frozen[len(sizes) - 1] = "channels reach the graph output"
    layer("head", prev, len(sizes) - 1, 0, 1, None)
    groups = tuple(
        ChannelGroup(i, sizes[i], tuple(m), frozen.get(i)) for i, m in enumerate(members)
    )
    return Net(Analysis(groups, tuple(layers)), weights)


SMALL = [Spec(8), Spec(12, twin=True), Spec(10, k=0, flatten=4), Spec(6, k=0)]


def small(seed: int = 0, zeros: float = 0.0) -> Net:
    return chain(SMALL, seed=seed, zeros=zeros)


def realize(net: Net, off: Offspring) -> tuple[int, int]:
    """Synapses and MACs of the offspring, computed like surgery + metrics would."""
    removed = {g.id: np.setdiff1d(np.arange(g.size), off.plan.kept(g)) for g in net.analysis.groups}
    cuts: dict[tuple[str, int], set[int]] = {}
    for g in net.analysis.groups:
        for m in g.members:
            if m.role in (Role.PRODUCER, Role.CONSUMER) and m.name in net.weights:
                cuts.setdefault((m.name, m.axis), set()).update(m.indices(removed[g.id]).tolist())
    synapses = macs = 0
    for lay in net.analysis.layers:
        w = net.weights[lay.weight] * off.masks.get(lay.weight, 1.0)
        kept = []
        for axis in (lay.out_axis, lay.in_axis):
            gone = sorted(cuts.get((lay.weight, axis), ()))
            w = np.delete(w, gone, axis=axis)
            kept.append(1 - len(gone) / net.weights[lay.weight].shape[axis])
        synapses += int(np.count_nonzero(w))
        macs += lay.macs * kept[0] * kept[1]
    return synapses, round(macs)


def nonzero(net: Net) -> int:
    return sum(int(np.count_nonzero(w)) for w in net.weights.values())


def check_plan(net: Net, off: Offspring, cfg: EncodingConfig) -> None:
    """Plan lists only prunable groups, sorted channels, and respects the constraints."""
    for gid, kept in off.plan.keep.items():
        g = net.analysis.group(gid)
        assert g.prunable, g.frozen
        assert list(kept) == sorted(set(kept)) and kept[0] >= 0 and kept[-1] < g.size
        n = len(kept)
        assert n >= floor_channels(g.size, cfg.min_channels, cfg.floor)
        if cfg.round_to and g.size >= cfg.round_to:  # smaller groups are not rounded
            assert n % cfg.round_to == 0 or n == g.size, (n, g.size)


# --------------------------------------------------------------------------- eq. 4 and eq. 5


def test_cluster_probabilities_formula() -> None:
    p = cluster_probabilities(np.array([4.0, 2.0, 0.0]))
    np.testing.assert_allclose(p, [1.0, math.exp(-0.5), math.exp(-1.0)])
    np.testing.assert_allclose(cluster_probabilities(np.array([1.0]), norm=4.0), [math.exp(-0.75)])
    np.testing.assert_allclose(cluster_probabilities(np.zeros(3)), np.ones(3))


def test_synapse_probabilities_formula() -> None:
    w = np.array([[2.0, -1.0], [0.0, 0.5]], dtype=np.float32)
    expect = np.exp(np.abs(w) / 2.0 - 1.0)
    np.testing.assert_allclose(synapse_probabilities(w), expect, rtol=1e-6)
    np.testing.assert_allclose(
        synapse_probabilities(w, z=1.0), np.minimum(1, np.exp(np.abs(w) - 1))
    )
    assert synapse_norm(w) == 2.0
    assert synapse_norm(w, "quantile", 0.5) == pytest.approx(1.0)


def test_truncation_thresholds() -> None:
    w = np.array([0.0, 0.01, -0.2, 1.0, 2.0], dtype=np.float32)
    mean_nz = (0.01 + 0.2 + 1.0 + 2.0) / 4
    assert Truncation().threshold(np.abs(w)) == pytest.approx(0.1 * mean_nz)
    np.testing.assert_allclose(truncated_magnitude(w), [0.0, 0.0, 0.2, 1.0, 2.0])
    np.testing.assert_allclose(truncated_magnitude(w, Truncation("none")), np.abs(w))
    np.testing.assert_allclose(truncated_magnitude(w, Truncation("absolute", 1.0)), [0, 0, 0, 1, 2])
    q = Truncation("quantile", 0.5).threshold(np.abs(w))
    assert q == pytest.approx(np.quantile([0.01, 0.2, 1.0, 2.0], 0.5))
    with pytest.raises(ValueError):
        Truncation("quantile", 2.0)


def test_channel_strengths_sum_over_coupled_producers_and_blocks() -> None:
    a = np.array([[1.0, -2.0], [0.5, 0.0], [3.0, 3.0]], dtype=np.float32)  # 3 filters
    b = np.array([[1.0], [1.0], [1.0], [1.0], [1.0], [4.0]], dtype=np.float32)  # block 2
    group = ChannelGroup(
        0,
        3,
        (
            Member(Role.PRODUCER, "a", "a", 0),
            Member(Role.PRODUCER, "b", "b", 0, 0, 2),
            Member(Role.PRODUCER, "a", "a", 0),  # duplicate member counts once
        ),
    )
    s = channel_strength(group, {"a": a, "b": b}, Truncation("none"))
    np.testing.assert_allclose(s, [3.0 + 2.0, 0.5 + 2.0, 6.0 + 5.0])
    # Truncation is per tensor: 0.1 * mean|a| (nonzero) = 0.19 keeps every nonzero entry of a.
    s = channel_strength(group, {"a": a, "b": b}, Truncation("absolute", 0.6))
    np.testing.assert_allclose(s, [3.0 + 2.0, 0.0 + 2.0, 6.0 + 5.0])


def test_kernel_strengths() -> None:
    w = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2) - 5
    k = kernel_strengths(w, 0, 1, Truncation("none"))
    np.testing.assert_allclose(k, np.abs(w).sum(axis=(2, 3)))
    kt = kernel_strengths(np.moveaxis(w, 0, 1), 1, 0, Truncation("none"))
    np.testing.assert_allclose(kt, k)


def test_encode_matches_formulas_per_group() -> None:
    net = small()
    genome = encode(net.analysis, net.weights, EncodingConfig(truncation=Truncation("none")))
    for g in net.analysis.prunable_groups:
        s = channel_strength(g, net.weights, Truncation("none"))
        np.testing.assert_allclose(genome.cluster_p[g.id], np.exp(s / s.max() - 1), rtol=1e-5)
        assert genome.cluster_p[g.id].max() == pytest.approx(1.0)
    gene = genome.genes[0]
    w = net.weights[gene.name]
    np.testing.assert_allclose(
        gene.synapse_p.reshape(w.shape), synapse_probabilities(w), rtol=1e-5, atol=1e-7
    )


def test_global_scope_normalizes_over_all_groups() -> None:
    net = small()
    cfg = EncodingConfig(cluster_scope="global", truncation=Truncation("none"))
    genome = encode(net.analysis, net.weights, cfg)
    strengths = {g.id: channel_strength(g, net.weights, Truncation("none")) for g in genome.groups}
    top = max(s.max() for s in strengths.values())
    for gid, s in strengths.items():
        np.testing.assert_allclose(genome.cluster_p[gid], np.exp(s / top - 1), rtol=1e-5)
    assert max(p.max() for p in genome.cluster_p.values()) == pytest.approx(1.0)
    assert min(p.max() for p in genome.cluster_p.values()) < 0.99


def test_quantile_synapse_norm_and_kernel_scopes() -> None:
    net = small()
    cfg = EncodingConfig(synapse_norm="quantile", synapse_quantile=0.5, cluster_mode="kernel")
    genome = encode(net.analysis, net.weights, cfg)
    for gene in genome.genes:
        assert gene.synapse_p.max() == pytest.approx(1.0)
        assert gene.synapse_p.min() >= 1 / E - 1e-6
        assert gene.kernel_p is not None
        assert gene.kernel_p.min() >= 1 / E - 1e-6 and gene.kernel_p.max() == pytest.approx(1.0)
    cfg = EncodingConfig(cluster_mode="kernel", cluster_scope="global")
    genome = encode(net.analysis, net.weights, cfg)
    tops = [float(g.kernel_p[g.prunable_rows].max()) for g in genome.genes if g.prunable_rows.any()]
    assert max(tops) == pytest.approx(1.0) and min(tops) < 0.99
    sol = solve_factor(genome)
    assert abs(sol.expected_cost - sol.budget) <= 0.01 * sol.budget


def test_zero_weights_are_not_synapses() -> None:
    net = small(zeros=0.5)
    genome = encode(net.analysis, net.weights, EncodingConfig())
    assert genome.ancestor_synapses == nonzero(net)
    gene = genome.genes[0]
    zero = net.weights[gene.name].reshape(gene.synapse_p.shape) == 0
    assert np.all(gene.synapse_p[zero] == 0) and np.all(gene.synapse_p[~zero] >= 1 / E - 1e-6)


# --------------------------------------------------------------------------- sampling


def test_stronger_clusters_survive_more_often() -> None:
    scales = [np.linspace(0.05, 1.0, 16)]  # filter i of the first layer has scale ~ i
    net = chain([Spec(16, k=3), Spec(8, k=0)], scales=scales, seed=3)
    cfg = EncodingConfig(keep=0.7, synapse_level=False)
    genome = encode(net.analysis, net.weights, cfg)
    sol = solve_factor(genome)
    gid = net.analysis.layers[0].out_group
    assert gid is not None
    group = net.analysis.group(gid)
    p = genome.cluster_p[gid]
    assert np.corrcoef(np.arange(16), p)[0, 1] > 0.9
    # Without trimming (unbounded budget) survival is Bernoulli(min(1, λ P_c)) per cluster.
    q = np.minimum(1.0, sol.factor * p)
    free = Solution(sol.factor, math.inf, sol.expected_cost, sol.expected_synapses)
    n = 300
    kept = np.zeros(16)
    for seed in range(n):
        kept[sample(genome, np.random.default_rng(seed), free).plan.kept(group)] += 1
    freq = kept / n
    tol = 4.5 * np.sqrt(q * (1 - q) / n) + 1.5 / n  # binomial, 4.5 sigma per cluster
    assert np.all(np.abs(freq - q) <= tol), (freq, q)
    # Within the budget, trimming removes the weakest clusters first: the bias only grows.
    kept[:] = 0
    for seed in range(100):
        kept[sample(genome, np.random.default_rng(seed), sol).plan.kept(group)] += 1
    order = np.argsort(p)
    assert kept[order[:4]].mean() < kept[order[-4:]].mean() - 30


def test_expected_count_within_one_percent_of_target() -> None:
    for keep in (0.3, 0.5, 0.8, 0.95):
        for mode in ("filter", "kernel"):
            net = small(seed=int(keep * 100))
            genome = encode(net.analysis, net.weights, EncodingConfig(keep=keep, cluster_mode=mode))
            sol = solve_factor(genome)
            target = keep * nonzero(net)
            assert sol.budget == pytest.approx(target)
            assert abs(sol.expected_cost - target) <= 0.01 * target
            assert sol.expected_synapses == pytest.approx(sol.expected_cost)
            assert 0 < sol.factor < FACTOR_MAX


@pytest.mark.parametrize("mode", ["filter", "kernel"])
def test_expectation_is_unbiased(mode: str) -> None:
    """Without trimming (infinite budget), realized synapses average to the expectation."""
    net = chain([Spec(8), Spec(8, twin=True), Spec(6, k=0, flatten=4)], seed=5)
    genome = encode(net.analysis, net.weights, EncodingConfig(cluster_mode=mode))
    factor = 1.2
    expect = sum(c.synapses for c in expected_census(genome, factor))
    free = Solution(factor, math.inf, expect, expect)
    counts = [sample(genome, np.random.default_rng(s), free).realized_synapses for s in range(200)]
    sem = np.std(counts) / np.sqrt(len(counts))
    assert abs(np.mean(counts) - expect) <= 4.5 * sem + 0.002 * expect


@settings(max_examples=60, deadline=None)
@given(
    widths=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    kinds=st.lists(st.sampled_from(["conv", "twin", "fc"]), min_size=4, max_size=4),
    keep=st.floats(0.05, 1.0),
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["filter", "kernel"]),
    round_to=st.sampled_from([None, 2, 4]),
    min_channels=st.integers(1, 3),
    zeros=st.sampled_from([0.0, 0.3]),
    macs=st.booleans(),
)
def test_cap_never_exceeded(
    widths: list[int],
    kinds: list[str],
    keep: float,
    seed: int,
    mode: ClusterMode,
    round_to: int | None,
    min_channels: int,
    zeros: float,
    macs: bool,
) -> None:
    specs, conv = [], True
    for w, kind in zip(widths, kinds, strict=False):
        if kind == "fc" or not conv:
            specs.append(Spec(w, k=0, flatten=4 if conv else 1))
            conv = False
        else:
            specs.append(Spec(w, k=3, twin=kind == "twin"))
    net = chain(specs, seed=seed, zeros=zeros)
    cfg = EncodingConfig(
        keep=keep,
        environment=MacBudget(keep) if macs else None,
        cluster_mode=mode,
        round_to=round_to,
        min_channels=min_channels,
    )
    genome = encode(net.analysis, net.weights, cfg)
    sol = solve_factor(genome)
    assert abs(sol.expected_cost - sol.budget) <= 0.01 * sol.budget or sol.factor in (0, E)
    ancestor_macs = sum(lay.macs for lay in net.analysis.layers)
    floor = sum(lay.macs * _min_fraction(net, lay, cfg) for lay in net.analysis.layers)
    for s in range(3):
        try:
            off = sample(genome, np.random.default_rng([seed, s]), sol)
        except PlanError as exc:  # refused only where the floor puts the budget out of reach
            assert macs and floor > keep * ancestor_macs - 1, exc
            msg = str(exc)  # or, where the floor leaves nothing at all to remove, says so
            assert ("out of reach" in msg and "keep at least" in msg) or msg.startswith(
                "nothing was pruned: every layer is frozen or at its floor"
            ), msg
            continue
        synapses, realized_macs = realize(net, off)
        assert synapses == off.realized_synapses
        if macs:
            assert realized_macs <= keep * ancestor_macs + 1
        else:
            assert synapses <= math.floor(keep * nonzero(net) + 1e-9)
        check_plan(net, off, cfg)


def _min_fraction(net: Net, lay: Layer, cfg: EncodingConfig) -> float:
    """Smallest kept MAC fraction of a layer that the channel constraints allow."""
    frac = 1.0
    for gid in (lay.out_group, *lay.in_groups):
        g = net.analysis.group(gid) if gid is not None else None
        if g is None or not g.prunable:
            continue
        n = floor_channels(g.size, cfg.min_channels, cfg.floor)
        if cfg.round_to and g.size >= cfg.round_to:
            n = min(g.size, -(-n // cfg.round_to) * cfg.round_to)
        frac *= n / g.size
    return frac


def test_cap_on_many_seeds_with_large_overshoot_constraints() -> None:
    """round_to and min_channels add clusters back; trimming still meets the cap."""
    net = chain([Spec(6), Spec(5, twin=True), Spec(7, k=0, flatten=4)], seed=1)
    cfg = EncodingConfig(keep=0.2, round_to=4, min_channels=3)
    genome = encode(net.analysis, net.weights, cfg)
    sol = solve_factor(genome)
    for s in range(60):
        off = sample(genome, np.random.default_rng(s), sol)
        assert realize(net, off)[0] == off.realized_synapses <= 0.2 * nonzero(net)
        check_plan(net, off, cfg)


def test_determinism() -> None:
    net = small()
    genome = encode(net.analysis, net.weights, EncodingConfig(cluster_mode="kernel"))
    a, b, c = (sample(genome, np.random.default_rng(s), None) for s in (7, 7, 8))
    assert a.plan == b.plan
    assert a.masks.keys() == b.masks.keys()
    for name in a.masks:
        np.testing.assert_array_equal(a.masks[name], b.masks[name])
    assert a.plan != c.plan or any(
        not np.array_equal(a.masks[n], c.masks.get(n, 0)) for n in a.masks
    )


def test_round_to_and_min_channels() -> None:
    net = chain([Spec(16), Spec(20), Spec(3), Spec(12, k=0, flatten=4)], seed=2)
    for cfg in (
        EncodingConfig(keep=0.3, round_to=8),
        EncodingConfig(keep=0.05, min_channels=2),
        EncodingConfig(keep=0.05, min_channels=2, round_to=4, cluster_mode="kernel"),
    ):
        genome = encode(net.analysis, net.weights, cfg)
        for s in range(10):
            off = sample(genome, np.random.default_rng(s), None)
            check_plan(net, off, cfg)
            for g in net.analysis.prunable_groups:
                n = len(off.plan.kept(g))
                assert n >= min(cfg.min_channels, g.size)
                if cfg.round_to and g.size >= cfg.round_to:  # smaller groups are not rounded
                    assert n % cfg.round_to == 0 or n == g.size


def test_frozen_groups_untouched() -> None:
    net = small()
    frozen = {g.id for g in net.analysis.groups if not g.prunable}
    genome = encode(net.analysis, net.weights, EncodingConfig(keep=0.2))
    assert frozen.isdisjoint(genome.cluster_p)
    for s in range(10):
        off = sample(genome, np.random.default_rng(s), None)
        assert frozen.isdisjoint(off.plan.keep)
    # Synapse sampling does reach the head, whose output group is frozen.
    assert "head" in off.masks
    assert off.masks["head"].shape == net.weights["head"].shape


def test_kernel_mode_masks_whole_kernels() -> None:
    net = chain([Spec(6, k=3), Spec(5, k=3), Spec(4, k=0)], seed=4)
    cfg = EncodingConfig(keep=0.4, cluster_mode="kernel", synapse_level=False)
    genome = encode(net.analysis, net.weights, cfg)
    saw_dead = False
    for s in range(10):
        off = sample(genome, np.random.default_rng(s), None)
        m = off.masks.get("L1")
        if m is None:
            continue
        per_kernel = m.reshape(m.shape[0], m.shape[1], -1)
        dead = per_kernel.max(axis=2) == 0
        live = per_kernel.min(axis=2) == 1
        # Structured offspring: every kernel is entirely alive or entirely dead.
        assert np.all(dead | live)
        saw_dead |= bool(dead.any())
        # A kept channel keeps at least one kernel in its filter (or min_channels keeps it).
        kept = off.plan.kept(net.analysis.group(net.analysis.layers[1].out_group or 0))
        alive_rows = per_kernel.reshape(m.shape[0], -1).any(axis=1)
        assert alive_rows[kept].sum() >= len(kept) - 1
    assert saw_dead


def test_kernel_mode_removes_channels_that_lose_every_kernel() -> None:
    net = chain([Spec(12, k=1), Spec(6, k=0)], cin=1, seed=6)  # one kernel per filter
    cfg = EncodingConfig(keep=0.4, cluster_mode="kernel", synapse_level=False)
    genome = encode(net.analysis, net.weights, cfg)
    off = sample(genome, np.random.default_rng(0), None)
    g = net.analysis.group(net.analysis.layers[0].out_group or 0)
    kept = off.plan.kept(g)
    assert 0 < len(kept) < g.size
    m = off.masks.get("L0", np.ones_like(net.weights["L0"]))
    assert np.all(m[kept].reshape(len(kept), -1).max(axis=1) == 1)


def test_mac_budget_respected() -> None:
    net = chain([Spec(16), Spec(12, twin=True), Spec(10), Spec(8, k=0, flatten=4)], seed=9)
    ancestor_macs = sum(lay.macs for lay in net.analysis.layers)
    for keep in (0.3, 0.6, 0.9):
        for mode in ("filter", "kernel"):
            cfg = EncodingConfig(environment=MacBudget(keep), cluster_mode=mode)
            genome = encode(net.analysis, net.weights, cfg)
            sol = solve_factor(genome)
            assert abs(sol.expected_cost - keep * ancestor_macs) <= 0.01 * keep * ancestor_macs
            for s in range(5):
                off = sample(genome, np.random.default_rng(s), sol)
                _, macs = realize(net, off)
                assert macs <= keep * ancestor_macs + 1
                assert off.realized_cost == pytest.approx(macs, abs=1)
                check_plan(net, off, cfg)


def test_structured_only_offspring_has_no_masks_in_mac_mode() -> None:
    net = small()
    cfg = EncodingConfig(environment=MacBudget(0.5), synapse_level=False)
    off = sample(encode(net.analysis, net.weights, cfg), np.random.default_rng(0), None)
    assert off.masks == {}
    assert off.plan.keep


def test_keep_everything() -> None:
    net = small()
    off = sample(
        encode(net.analysis, net.weights, EncodingConfig(keep=1.0)), np.random.default_rng(0)
    )
    assert off.factor == FACTOR_MAX
    assert off.plan == PrunePlan({}) and off.masks == {}
    assert off.realized_synapses == nonzero(net)


def test_empty_analysis() -> None:
    off = sample(encode(Analysis((), ()), {}, EncodingConfig()), np.random.default_rng(0))
    assert off.plan == PrunePlan({}) and off.realized_synapses == 0


def test_config_validation() -> None:
    for bad in (
        {"keep": 0.0},
        {"keep": 1.5},
        {"min_channels": 0},
        {"round_to": 0},
        {"cluster_mode": "row"},
        {"cluster_scope": "layer"},
        {"synapse_quantile": 0.0},
    ):
        with pytest.raises(ValueError):
            EncodingConfig(**bad)
    with pytest.raises(ValueError):
        SynapseBudget(0.0)
    assert EncodingConfig(keep=0.5).env == SynapseBudget(0.5)


@dataclass(frozen=True)
class Latency(Environment):
    """A latency-like environment: a fixed overhead per layer plus its MACs."""

    keep: float
    level: ClassVar[Level] = "cluster"
    needs_synapses: ClassVar[bool] = False

    def budget(self, ancestor: Census) -> float:
        return self.keep * self.cost(ancestor)

    def cost(self, census: Census) -> float:
        return float(sum(10.0 + c.macs for c in census))


def test_custom_environment_plugs_in() -> None:
    net = small()
    cfg = EncodingConfig(environment=Latency(0.6))
    genome = encode(net.analysis, net.weights, cfg)
    for s in range(5):
        off = sample(genome, np.random.default_rng(s), None)
        assert off.realized_cost <= off.budget
    assert off.budget == pytest.approx(0.6 * cfg.env.cost(genome.ancestor))


def test_efficiency() -> None:
    @dataclass(frozen=True)
    class M:
        params: int
        synapses: int
        nonzero_synapses: int
        clusters: int
        live_clusters: int
        macs: int

    gen1 = M(100, 80, 80, 20, 20, 1000)
    now = M(50, 60, 20, 20, 5, 250)
    eff = efficiency(gen1, now)
    assert (eff.architectural, eff.cluster, eff.macs, eff.params) == (4.0, 4.0, 4.0, 2.0)
    assert efficiency(gen1, M(0, 0, 0, 0, 0, 0)).architectural == math.inf


def test_missing_weight_raises() -> None:
    from evonnx.errors import PlanError

    net = small()
    with pytest.raises(PlanError):
        encode(net.analysis, {}, EncodingConfig())


# --------------------------------------------------------------------------- real graphs

ZOO = [
    "lenet5@legacy",
    "vgg@legacy",
    "resnet@legacy",
    "mobilenetv2@legacy",
    "inception@legacy",
    "se@legacy",
    "mlp@legacy",
    "helper_convnet",
    "helper_residual_concat",
    "parser_depthwise_convtranspose",
]


@pytest.fixture(params=ZOO)
def legacy_case(request: pytest.FixtureRequest, zoo_dir: Path) -> onnx.ModelProto:
    return cached_case(request.param, zoo_dir)


@pytest.mark.parametrize(
    "cfg",
    [
        EncodingConfig(),
        EncodingConfig(keep=0.5, cluster_mode="kernel"),
        EncodingConfig(environment=MacBudget(0.6), round_to=2),
    ],
    ids=["default", "kernel", "macs"],
)
def test_zoo_offspring_through_surgery(legacy_case: onnx.ModelProto, cfg: EncodingConfig) -> None:
    from evonnx.pruning.analysis import analyze
    from evonnx.pruning.metrics import compute_metrics
    from evonnx.pruning.surgery import apply_plan

    model = legacy_case
    analysis = analyze(model)
    off = synthesize(model, analysis, cfg, np.random.default_rng(0))
    before = compute_metrics(model)
    after = compute_metrics(apply_plan(model, analysis, off.plan, off.masks))
    assert off.ancestor_synapses == before.nonzero_synapses
    assert after.nonzero_synapses == off.realized_synapses
    if isinstance(cfg.env, MacBudget):
        assert after.macs <= cfg.env.keep * before.macs + 1
        assert after.macs == pytest.approx(off.realized_cost, abs=1)
    else:
        assert after.nonzero_synapses <= cfg.keep * before.nonzero_synapses
    eff = efficiency(before, after)
    assert eff.architectural >= 1.0 and eff.cluster >= 1.0


def test_weight_in_a_constant_node() -> None:
    from zoo import helper_convnet

    from evonnx.pruning.analysis import analyze
    from evonnx.pruning.metrics import compute_metrics
    from evonnx.pruning.surgery import apply_plan

    model = helper_convnet()
    w2 = next(t for t in model.graph.initializer if t.name == "w2")
    model.graph.initializer.remove(w2)
    const = onnx.helper.make_node("Constant", [], ["w2"], value=w2, name="w2const")
    model.graph.node.insert(0, const)
    analysis = analyze(model)
    assert "w2" in model_weights(model, {"w2"})
    off = synthesize(model, analysis, EncodingConfig(keep=0.5), np.random.default_rng(0))
    after = compute_metrics(apply_plan(model, analysis, off.plan, off.masks))
    assert after.nonzero_synapses == off.realized_synapses <= 0.5 * off.ancestor_synapses


def test_zoo_weights_and_determinism(zoo_dir: Path) -> None:
    from evonnx.pruning.analysis import analyze

    model = cached_case("resnet@legacy", zoo_dir)
    analysis = analyze(model)
    weights = model_weights(model, {lay.weight for lay in analysis.layers})
    assert set(weights) == {lay.weight for lay in analysis.layers}
    cfg = EncodingConfig(keep=0.6)
    a = synthesize(model, analysis, cfg, np.random.default_rng(3))
    b = synthesize(model, analysis, cfg, np.random.default_rng(3))
    assert a.plan == b.plan and a.realized_synapses == b.realized_synapses


# --------------------------------------------------------------------------- cluster_keep


def test_cluster_keep_sets_cluster_survival_and_solves_synapses() -> None:
    net = chain([Spec(32), Spec(48, twin=True), Spec(40, k=0, flatten=4)], seed=11)
    cfg = EncodingConfig(keep=0.5, cluster_keep=0.8)
    genome = encode(net.analysis, net.weights, cfg)
    assert genome.cluster_factor is not None
    p = np.concatenate([genome.cluster_p[g.id] for g in genome.groups])
    assert np.minimum(genome.cluster_factor * p, 1).mean() == pytest.approx(0.8, abs=1e-6)
    sol = solve_factor(genome)
    assert abs(sol.expected_cost - 0.5 * nonzero(net)) <= 0.01 * 0.5 * nonzero(net)
    kept_fraction, total = [], nonzero(net)
    for seed in range(40):
        off = sample(genome, np.random.default_rng(seed), sol)
        synapses, _ = realize(net, off)
        assert synapses == off.realized_synapses <= 0.5 * total
        kept = sum(len(off.plan.kept(g)) for g in genome.groups)
        kept_fraction.append(kept / sum(g.size for g in genome.groups))
    # clusters die at the chosen pace (dead-channel removal and trimming only lower it)
    assert 0.7 <= float(np.mean(kept_fraction)) <= 0.82
    plain = encode(net.analysis, net.weights, EncodingConfig(keep=0.5))
    plain_off = sample(plain, np.random.default_rng(0))
    assert sum(len(plain_off.plan.kept(g)) for g in plain.groups) > np.mean(kept_fraction) * sum(
        g.size for g in plain.groups
    )


def test_cluster_keep_when_clusters_alone_meet_the_budget() -> None:
    net = small(seed=3)
    genome = encode(net.analysis, net.weights, EncodingConfig(keep=0.95, cluster_keep=0.5))
    sol = solve_factor(genome)
    assert sol.factor == FACTOR_MAX
    off = sample(genome, np.random.default_rng(0), sol)
    assert off.realized_synapses <= 0.95 * nonzero(net)


def test_cluster_keep_kernel_clusters() -> None:
    """Kernel mode: F_c fixes the pace at which kernels die; F_s alone meets the budget."""
    from evonnx.genetic.sample import _sample_clusters

    net = chain([Spec(32), Spec(48, twin=True), Spec(40, k=0, flatten=4)], seed=11)
    cfg = EncodingConfig(keep=0.5, cluster_keep=0.4, cluster_mode="kernel")
    genome = encode(net.analysis, net.weights, cfg)
    assert genome.cluster_factor is None and genome.kernel_factors is not None
    for g, f in zip(genome.genes, genome.kernel_factors, strict=True):  # each tensor's pace
        if g.kernel_p is not None and g.prunable_rows.any():
            p = g.kernel_p[g.prunable_rows]
            assert np.minimum(f * p, 1).mean() == pytest.approx(0.4, abs=1e-6)
    sol = solve_factor(genome)  # kernels alone meet the budget here: F_s keeps every synapse
    assert sol.factor == FACTOR_MAX and sol.expected_cost <= 0.5 * nonzero(net)
    alive = []
    for seed in range(20):
        draft = _sample_clusters(genome, sol.factor, np.random.default_rng(seed))
        rows = [(k[g.prunable_rows], g) for k, g in zip(draft.kernels, genome.genes, strict=True)
                if k is not None]  # fmt: skip
        alive.extend(float(k.mean()) for k, _ in rows if k.size)
        off = sample(genome, np.random.default_rng(seed), sol)
        synapses, _ = realize(net, off)
        assert synapses == off.realized_synapses <= 0.5 * nonzero(net)
    assert float(np.mean(alive)) == pytest.approx(0.4, abs=0.03)
    shared = encode(net.analysis, net.weights, EncodingConfig(keep=0.5, cluster_mode="kernel"))
    draft = _sample_clusters(shared, solve_factor(shared).factor, np.random.default_rng(0))
    kept = [k[g.prunable_rows] for k, g in zip(draft.kernels, shared.genes, strict=True)
            if k is not None]  # fmt: skip
    assert abs(sum(int(k.sum()) for k in kept) / sum(k.size for k in kept) - 0.4) > 0.1


def test_cluster_keep_validation() -> None:
    with pytest.raises(ValueError, match="cluster_keep"):
        EncodingConfig(cluster_keep=0.0)
    with pytest.raises(ValueError, match="synapse-level"):
        EncodingConfig(cluster_keep=0.5, environment=MacBudget(0.5))
