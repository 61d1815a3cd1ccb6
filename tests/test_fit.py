"""Fitting a measured latency budget: exhausted step grids, overshoot, unstable readings."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from fake_runtime import MacRuntime
from helpers import assert_same, check_function_kept, run
from torch import nn
from zoo import BasicBlock, input_feed, randomize_bn

from evonnx.errors import LatencyBudgetError
from evonnx.genetic import EncodingConfig, model_weights
from evonnx.latency import (
    LatencySettings,
    LatencyTable,
    Target,
    build_latency_model,
    check_reachable,
    fit_measured,
    latency_offspring,
)
from evonnx.latency.fit import OVERSHOOT
from evonnx.latency.measure import compare
from evonnx.latency.steps import Widths, grow
from evonnx.pruning.analysis import analyze
from evonnx.pruning.groups import Analysis
from evonnx.pruning.plan import PrunePlan, channel_strength, floor_channels, magnitude_plan
from evonnx.pruning.surgery import apply_plan


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVONNX_CACHE_DIR", str(tmp_path / "cache"))


class _ResNet(nn.Module):
    """A CIFAR ResNet in miniature: three stages of two basic blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        widths = [(16, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)]
        self.blocks = nn.Sequential(*(BasicBlock(*w) for w in widths))
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


def _dynamic_resnet() -> onnx.ModelProto:
    """Legacy export with a symbolic batch axis and trained-like BatchNorm statistics."""
    torch.manual_seed(0)
    module = _ResNet().eval()
    randomize_bn(module)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.randn(1, 3, 16, 16),), buf, dynamo=False, opset_version=17,
            input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}},
        )  # fmt: skip
    return onnx.load_from_string(buf.getvalue())


def _check_function(model: onnx.ModelProto, fit_plan: PrunePlan, fitted: onnx.ModelProto) -> None:
    """The dead-channel invariant where constants fold exactly, and the fitted model is the
    plan applied."""
    analysis = analyze(model)
    feed = input_feed(model)
    check_function_kept(model, analysis, fit_plan, feed)
    assert_same(run(apply_plan(model, analysis, fit_plan), feed), run(fitted, feed))


def test_exhausted_step_grid_falls_back_to_finer_widths() -> None:
    model = _dynamic_resnet()
    analysis = analyze(model)
    flat = LatencyTable(MacRuntime(device="blocked", pad=64), 1)  # every width costs the same
    lm = build_latency_model(model, analysis, flat, step=8, calibrate=False)
    groups = analysis.prunable_groups
    assert all(lm.steps[g.id] == (g.size,) for g in groups)  # the grid has full widths only
    rt = MacRuntime()  # the device itself does get faster with fewer channels
    fit = fit_measured(model, analysis, PrunePlan({}), model_weights(model), rt, lm, keep=0.5)
    assert fit.child_ms <= fit.budget_ms == pytest.approx(0.5 * fit.parent_ms)
    assert any(len(fit.plan.kept(g)) < g.size for g in groups)
    onnx.checker.check_model(fit.model, full_check=True)
    _check_function(model, fit.plan, fit.model)


def test_refuses_only_at_min_channels_and_says_what_was_reached() -> None:
    model = _dynamic_resnet()
    analysis = analyze(model)
    rt = MacRuntime()
    lm = build_latency_model(model, analysis, LatencyTable(rt, 1), step=8, calibrate=False)
    weights = model_weights(model)
    floor = r"min-channels 2, --min-fraction 0\) .* reached \d+\.\d+x"
    with pytest.raises(LatencyBudgetError, match=floor):
        fit_measured(model, analysis, PrunePlan({}), weights, rt, lm, keep=0.002, min_channels=2)


def test_overshooting_offspring_gets_channels_back() -> None:
    model = _dynamic_resnet()
    analysis = analyze(model)
    rt = MacRuntime()
    lm = build_latency_model(model, analysis, LatencyTable(rt, 1), step=1, calibrate=False)
    weights = model_weights(model)
    stripped = magnitude_plan(analysis, weights, 0.2)  # far past a 0.8 budget
    parent_ms, stripped_ms = rt.latencies([model, _apply(model, analysis, stripped)], 1)
    assert stripped_ms * OVERSHOOT < 0.8 * parent_ms
    fit = fit_measured(model, analysis, stripped, weights, rt, lm, keep=0.8)
    assert fit.grown >= 1
    assert fit.child_ms <= fit.budget_ms <= OVERSHOOT * fit.child_ms * 1.0001
    _check_function(model, fit.plan, fit.model)


def _apply(model: onnx.ModelProto, analysis: object, plan: PrunePlan) -> onnx.ModelProto:
    return apply_plan(model, analysis, plan)  # type: ignore[arg-type]


class _Noisy(MacRuntime):
    """Rounds whose first reading has one model's even rounds slowed tenfold (a neighbour's
    burst); later readings are clean."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def rounds(self, models: Sequence[onnx.ModelProto], batch: int) -> np.ndarray:
        self.calls += 1
        base = np.array(self.latencies(models, batch))[:, None] * np.ones((1, 8))
        if self.calls == 1:
            base[1, 0::2] *= 10.0
        return base


def test_unstable_reading_is_measured_again() -> None:
    model = _dynamic_resnet()
    child = _apply(model, analyze(model), magnitude_plan(analyze(model), model_weights(model), 0.5))
    rt = _Noisy()
    m = compare(rt, model, child, 1)
    assert rt.calls == 2 and m.rounds == 16  # pooled with a second reading
    parent_ms, child_ms = MacRuntime().latencies([model, child], 1)
    assert m.stable and m.child_ms == pytest.approx(child_ms) and m.parent_ms == parent_ms


def test_grow_takes_finer_widths_when_every_step_up_passes_the_ceiling() -> None:
    model = _dynamic_resnet()
    analysis = analyze(model)
    rt = MacRuntime()
    lm = build_latency_model(model, analysis, LatencyTable(rt, 1), step=1, calibrate=False)
    groups = {g.id: g for g in analysis.prunable_groups}
    coarse = replace(lm, steps={gid: (g.size,) for gid, g in groups.items()})  # full widths only
    weights = model_weights(model)
    stripped = magnitude_plan(analysis, weights, 0.3)
    w = Widths(
        analysis, groups, {gid: stripped.kept(g) for gid, g in groups.items()},
        {gid: channel_strength(g, weights) for gid, g in groups.items()}, coarse,
    )  # fmt: skip
    now = w.predict()
    full_step = min(
        w.predict({**w.counts(), gid: g.size}) - now
        for gid, g in groups.items()
        if w.counts()[gid] < g.size
    )
    add = full_step / 4  # every step on the grid costs more than this
    assert grow(w, add, ceiling=now + add) >= 1
    assert now < w.predict() <= now + add + 1e-9


def test_reach_counts_the_narrowest_step_above_the_floor_when_the_floor_is_slower() -> None:
    """At the floor (a quarter: 4 of 16, 8 of 32 channels) the convs fall off the blocked
    layout and get slower; each group at its narrowest latency step above the floor is faster,
    and that is what the reach check measures (else a reachable target is refused)."""
    model = _dynamic_resnet()
    analysis = analyze(model)
    rt = MacRuntime(pad=16, off_block=6.0)  # narrowed off the blocks, a conv gets slower
    lm = build_latency_model(model, analysis, LatencyTable(rt, 1), step=16, calibrate=False)
    target = Target(rt, lm, LatencySettings())
    groups = analysis.prunable_groups
    floors = {g.id: 0 if g.removable else floor_channels(g.size, 1, 0.25) for g in groups}
    stepped = {
        g.id: 0 if g.removable else min(w for w in lm.steps[g.id] if w >= floors[g.id])
        for g in groups
    }
    assert stepped != floors

    def speedup(widths: dict[int, int]) -> float:
        child = apply_plan(
            model, analysis, PrunePlan({k: tuple(range(n)) for k, n in widths.items()})
        )
        m = compare(rt, model, child, 1)
        return m.parent_ms / m.child_ms

    at_floor, at_steps = speedup(floors), speedup(stepped)
    assert at_floor < at_steps
    between = (at_floor + at_steps) / 2
    reach = check_reachable(model, analysis, target, between, min_fraction=0.25, margin=1e9)
    assert reach == pytest.approx(at_steps)
    with pytest.raises(LatencyBudgetError, match=rf"measures {at_steps:.2f}x"):
        check_reachable(model, analysis, target, at_steps * 1.1, min_fraction=0.25, margin=1e9)


def test_trim_cost_is_the_squared_share_of_a_groups_strength() -> None:
    """Strengths of layers with different fan-in are not comparable; shares are. Squared, a
    deep cut into one group costs more than the same share spread over two."""
    strength = {0: np.array([1.0, 1.0, 1.0, 1.0]), 1: 100.0 * np.array([1.0, 1.0, 1.0, 1.0])}
    kept = {gid: np.arange(4) for gid in strength}
    w = Widths(None, {}, kept, strength, None)  # type: ignore[arg-type]
    assert w.changed(0, 3) == pytest.approx(w.changed(1, 3)) == pytest.approx(0.25**2)
    w.set(0, 3)
    deeper = w.changed(0, 2)
    assert deeper == pytest.approx(0.5**2 - 0.25**2)
    assert deeper > w.changed(1, 3)  # the second cut into group 0 costs more than a first
    assert w.changed(0, 4) == pytest.approx(0.25**2)  # growing back regains the same
    w.strength[1][:] = 0.0  # an all-zero group costs nothing
    assert w.changed(1, 1) == 0.0


def _smallest_ms(
    rt: MacRuntime, model: onnx.ModelProto, analysis: Analysis, fraction: float
) -> float:
    groups = analysis.prunable_groups
    widths = {g.id: 0 if g.removable else floor_channels(g.size, 1, fraction) for g in groups}
    child = apply_plan(model, analysis, PrunePlan({k: tuple(range(n)) for k, n in widths.items()}))
    return rt.latencies([child], 1)[0]


def _fine_grid() -> tuple[onnx.ModelProto, Analysis, Target]:
    """The dynamic ResNet on the stand-in device, its latency steps one channel apart."""
    model = _dynamic_resnet()
    analysis = analyze(model)
    rt = MacRuntime()
    lm = build_latency_model(model, analysis, LatencyTable(rt, 1), step=1, calibrate=False)
    return model, analysis, Target(rt, lm, LatencySettings())


def _keep_between_quarter_and_eighth(
    model: onnx.ModelProto, analysis: Analysis, rt: MacRuntime
) -> float:
    """A latency budget out of reach with every group at a quarter of its channels, within
    reach at an eighth."""
    quarter, eighth = (_smallest_ms(rt, model, analysis, f) for f in (0.25, 0.125))
    assert eighth < quarter
    return (quarter + 3 * eighth) / 4 / rt.latencies([model], 1)[0]


def test_default_floor_is_lowered_only_as_far_as_the_budget_needs() -> None:
    """A budget out of reach at the default floor (a quarter of every group) but within reach
    at an eighth: the default floor goes down to an eighth, not further, and says so; a floor
    asked for holds and the budget is refused."""
    model, analysis, target = _fine_grid()
    keep = _keep_between_quarter_and_eighth(model, analysis, MacRuntime())
    sampled = EncodingConfig(synapse_level=False, depth=True)
    assert sampled.min_fraction is None and sampled.floor == 0.25

    _, fit = latency_offspring(model, analysis, sampled, target, keep, np.random.default_rng(0))
    assert fit.min_fraction == 0.125
    assert fit.child_ms <= fit.budget_ms == pytest.approx(keep * fit.parent_ms)
    kept = {g.id: len(fit.plan.kept(g)) for g in analysis.prunable_groups if not g.removable}
    sizes = {g.id: g.size for g in analysis.prunable_groups}
    assert all(n >= floor_channels(sizes[gid], 1, 0.125) for gid, n in kept.items())
    assert any(n < floor_channels(sizes[gid], 1, 0.25) for gid, n in kept.items())
    onnx.checker.check_model(fit.model, full_check=True)
    _check_function(model, fit.plan, fit.model)
    assert check_reachable(model, analysis, target, 1 / keep, min_fraction=None, margin=1e9)

    held = replace(sampled, min_fraction=0.25)
    with pytest.raises(LatencyBudgetError, match=r"min-fraction 0\.25\)"):
        latency_offspring(model, analysis, held, target, keep, np.random.default_rng(0))
    with pytest.raises(LatencyBudgetError, match=r"--min-fraction 0\.25, every removable"):
        check_reachable(model, analysis, target, 1 / keep, min_fraction=0.25, margin=1e9)


def test_out_of_reach_at_the_lowest_floor_is_refused_with_the_figure() -> None:
    model, analysis, target = _fine_grid()
    rt = MacRuntime()
    best = rt.latencies([model], 1)[0] / _smallest_ms(rt, model, analysis, 0.0)
    lowered = r"the default floor 0\.25 lowered as far as 0, every removable branch\) measures "
    with pytest.raises(LatencyBudgetError, match=lowered + rf"{best:.2f}x"):
        check_reachable(model, analysis, target, best * 1.2, min_fraction=None, margin=1e9)


def test_a_lowered_floor_gives_the_fit_its_round_back() -> None:
    """Lowering the floor costs a measurement (the one that found every group at it); the fit
    gets it back, so one allowed round still ends within budget."""
    model, analysis, target = _fine_grid()
    rt, lm = MacRuntime(), target.model
    keep = _keep_between_quarter_and_eighth(model, analysis, rt)
    weights = model_weights(model)
    fit = fit_measured(
        model, analysis, PrunePlan({}), weights, rt, lm, keep, max_rounds=1,
        min_fraction=0.25, lower_floors=(0.125,),
    )  # fmt: skip
    assert fit.min_fraction == 0.125 and fit.rounds == 2
    assert fit.child_ms <= fit.budget_ms
    with pytest.raises(LatencyBudgetError, match=r"over its latency budget|min-fraction 0\.25"):
        fit_measured(
            model, analysis, PrunePlan({}), weights, rt, lm, keep, max_rounds=1,
            min_fraction=0.25,
        )  # fmt: skip


class _Spiked(MacRuntime):
    """Readings whose offspring (the second model) is slowed ``factor`` times in the first
    ``spikes`` comparisons (a neighbour's burst on every round); later readings are clean."""

    def __init__(self, spikes: int, factor: float = 3.0) -> None:
        super().__init__()
        self.spikes, self.factor, self.calls = spikes, factor, 0

    def rounds(self, models: Sequence[onnx.ModelProto], batch: int) -> np.ndarray:
        self.calls += 1
        base = np.array(self.latencies(models, batch))[:, None] * np.ones((1, 8))
        if self.calls <= self.spikes and len(models) == 2:
            base[1] *= self.factor
        return base


def test_a_spiked_reading_does_not_put_a_reachable_target_out_of_reach() -> None:
    model = _dynamic_resnet()
    analysis = analyze(model)
    clean = MacRuntime()
    lm = build_latency_model(model, analysis, LatencyTable(clean, 1), step=1, calibrate=False)
    best = check_reachable(model, analysis, Target(clean, lm, LatencySettings()), 1.5, margin=1e9)
    assert best is not None and best > 1.5
    spiked = _Spiked(spikes=1)  # the smallest offspring's first reading: 3x too slow
    reach = check_reachable(model, analysis, Target(spiked, lm, LatencySettings()), best * 0.9,
                            min_fraction=0.0, margin=1e9)  # fmt: skip
    assert reach == pytest.approx(best) and spiked.calls == 3  # settled on 3 readings
    slow = _Spiked(spikes=9)  # every reading spiked: the median refuses, as it must
    with pytest.raises(LatencyBudgetError, match="out of reach"):
        check_reachable(model, analysis, Target(slow, lm, LatencySettings()), best * 0.9,
                        min_fraction=0.0, margin=1e9)  # fmt: skip


def test_the_smallest_offspring_is_settled_on_the_median_before_a_refusal() -> None:
    """Every group at its floor and the readings over budget: before "nothing left", the
    smallest offspring is measured again; within budget on the median, it is the fit."""
    model = _dynamic_resnet()
    analysis = analyze(model)
    clean = MacRuntime()
    lm = build_latency_model(model, analysis, LatencyTable(clean, 1), step=8, calibrate=False)
    weights = model_weights(model)
    smallest = PrunePlan({g.id: () if g.removable else (0,) for g in analysis.prunable_groups})
    parent_ms, least_ms = clean.latencies([model, _apply(model, analysis, smallest)], 1)
    keep = 1.02 * least_ms / parent_ms  # only the smallest offspring fits
    fit = fit_measured(model, analysis, smallest, weights, _Spiked(spikes=1, factor=1.1), lm,
                       keep=keep, max_rounds=2)  # fmt: skip
    assert fit.child_ms == pytest.approx(least_ms) and fit.child_ms <= fit.budget_ms
    _check_function(model, fit.plan, fit.model)
    with pytest.raises(LatencyBudgetError, match="no branch is left"):
        fit_measured(model, analysis, smallest, weights, _Spiked(spikes=9, factor=1.1), lm,
                     keep=keep, max_rounds=2)  # fmt: skip


class _FastConfirmation(MacRuntime):
    """Clean readings, except that the first offspring measured twice in a row (its
    confirmation) reads ``factor`` times faster: a reading that alone would accept an
    offspring far past its target."""

    def __init__(self, factor: float = 0.6) -> None:
        super().__init__()
        self.factor, self.last, self.spiked = factor, b"", False

    def rounds(self, models: Sequence[onnx.ModelProto], batch: int) -> np.ndarray:
        base = np.array(self.latencies(models, batch))[:, None] * np.ones((1, 8))
        if len(models) == 2:
            key = models[1].SerializeToString()
            if key == self.last and not self.spiked:
                base[1] *= self.factor
                self.spiked = True
            self.last = key
        return base


def test_a_confirmation_far_past_the_target_gives_channels_back() -> None:
    """The first reading within the band, its confirmation within budget but far faster: on
    both readings together the offspring overshoots, so it gets channels back instead of being
    accepted; the fit then lands within the band on clean readings."""
    model = _dynamic_resnet()
    analysis = analyze(model)
    clean = MacRuntime()
    lm = build_latency_model(model, analysis, LatencyTable(clean, 1), step=1, calibrate=False)
    weights = model_weights(model)
    rt = _FastConfirmation()
    fit = fit_measured(model, analysis, PrunePlan({}), weights, rt, lm, keep=0.6)
    assert rt.spiked and fit.grown >= 1
    assert fit.child_ms <= fit.budget_ms <= OVERSHOOT * fit.child_ms * 1.0001
    parent_ms, child_ms = clean.latencies([model, fit.model], 1)
    assert fit.child_ms == pytest.approx(child_ms) and fit.parent_ms == pytest.approx(parent_ms)
    _check_function(model, fit.plan, fit.model)


def test_the_fit_ranks_channels_by_the_strength_it_is_given() -> None:
    """``strength`` (e.g. the deviation criterion) replaces the L1 ranking: every trimmed group
    keeps its channels strongest by the given measure, here the reverse of L1."""
    model = _dynamic_resnet()
    analysis = analyze(model)
    rt = MacRuntime()
    lm = build_latency_model(model, analysis, LatencyTable(rt, 1), step=8, calibrate=False)
    weights = model_weights(model)
    groups = analysis.prunable_groups
    reverse = {
        g.id: channel_strength(g, weights).max() - channel_strength(g, weights) for g in groups
    }
    fit = fit_measured(model, analysis, PrunePlan({}), weights, rt, lm, keep=0.6, strength=reverse)
    trimmed = [g for g in groups if 0 < len(fit.plan.kept(g)) < g.size]
    assert trimmed and fit.child_ms <= fit.budget_ms
    for g in trimmed:
        kept = np.asarray(fit.plan.kept(g))
        top = np.argsort(-reverse[g.id], kind="stable")[: kept.size]
        assert set(kept.tolist()) == set(top.tolist())
    _check_function(model, fit.plan, fit.model)
