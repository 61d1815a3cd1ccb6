"""Latency table (cache hits, misses, device invalidation), predictor, budget and fitting."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from fake_runtime import MacRuntime
from helpers import assert_same, check_function_kept, run
from hypothesis import given, settings
from hypothesis import strategies as st
from zoo import cached_case, helper_convnet, input_feed

from evonnx.errors import PlanError
from evonnx.genetic import EncodingConfig, encode, model_weights, sample
from evonnx.genetic.environments import LatencyBudget
from evonnx.latency import (
    LatencySettings,
    LatencyTable,
    build_latency_model,
    cache_dir,
    default_step,
    fit_measured,
    group_census,
    latency_offspring,
    latency_target,
    layer_shapes,
    width_grid,
)
from evonnx.latency.calibrate import Point, calibration_widths, solve
from evonnx.pruning.analysis import analyze
from evonnx.pruning.plan import PrunePlan
from evonnx.pruning.surgery import apply_plan
from evonnx.runtimes import RuntimeSettings


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EVONNX_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_cache_dir_follows_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("EVONNX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "evonnx"


def test_table_hit_miss_and_device_invalidation(_cache: Path) -> None:
    model = helper_convnet()
    shapes = layer_shapes(model, analyze(model), batch=2)
    queries = [(s, s.cin, s.cout) for s in shapes.values()] + [(shapes["conv2"], 3, 5)]
    rt = MacRuntime(pad=4)
    table = LatencyTable(rt, 2)
    first = table.lookup(queries)
    assert (table.misses, table.hits) == (4, 0) and rt.measured == [4]  # one pass
    files = list(_cache.glob("latency-ort-cpu-*.json"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) != "0o600"
    data = json.loads(files[0].read_text())
    assert data["device"] == "fake-device" and len(data["entries"]) == 4
    again = LatencyTable(MacRuntime(pad=4), 2)  # a new run, same device: all hits
    assert again.lookup(queries) == first and (again.misses, again.hits) == (0, 4)
    assert again.lookup(queries[:1]) == first[:1] and again.hits == 5
    other = MacRuntime(device="another-device", pad=4)  # different fingerprint: a file of its own
    table3 = LatencyTable(other, 2)
    table3.lookup(queries)
    assert table3.misses == 4 and len(list(_cache.glob("latency-*.json"))) == 2
    other_device = MacRuntime(device="another-device", pad=4)
    stale = LatencyTable(other_device, 2, path=files[0])  # the first device's file
    assert stale.entries == {}
    stale.lookup(queries[:2])
    assert stale.misses == 2
    assert LatencyTable(MacRuntime(pad=4), 4).lookup(queries[:1]) != first[:1]  # batch in the key


def test_single_layer_graphs_match_the_layer() -> None:
    model = helper_convnet()
    shapes = layer_shapes(model, analyze(model), batch=3)
    conv2 = shapes["conv2"]
    assert (conv2.cin, conv2.cout, conv2.spatial, conv2.kernel) == (6, 5, (8, 8), (3, 3))
    assert dict(conv2.attrs)["strides"] == "[2,2]"
    assert shapes["fc"].op == "Gemm" and (shapes["fc"].cin, shapes["fc"].cout) == (80, 4)
    for s in shapes.values():
        g = s.graph(3, max(1, s.cin // 2), max(1, s.cout // 2))
        onnx.checker.check_model(g)
        x = np.ones([d.dim_value for d in g.graph.input[0].type.tensor_type.shape.dim], np.float32)
        (y,) = run(g, {"x": x})
        assert y.shape[0] == 3 and y.shape[-1 if s.op == "Gemm" else 1] == max(1, s.cout // 2)


def test_default_step_is_the_runtimes_block() -> None:
    """onnxruntime's NCHWc block is 16 channels with AVX-512, else 8; GPUs step by 8."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    avx512 = any(ln.startswith("flags") and " avx512f" in ln for ln in flags.splitlines())
    assert default_step("ort-cpu") == (16 if avx512 else 8)
    assert default_step("torch-cuda") == default_step("tensorrt") == 8


def test_width_grid() -> None:
    assert width_grid(64, 8) == (8, 16, 24, 32, 40, 48, 56, 64)
    assert width_grid(6, 8) == (1, 2, 3, 4, 5, 6)
    assert width_grid(2048, 8, max_points=16)[-1] == 2048
    assert len(width_grid(2048, 8, max_points=16)) <= 16
    assert all(w % 8 == 0 for w in width_grid(2048, 8))


def test_prediction_is_exact_for_bilinear_costs() -> None:
    model = cached_case_or_helper()
    analysis = analyze(model)
    lm = build_latency_model(model, analysis, LatencyTable(MacRuntime(pad=4), 1), step=4)
    assert lm.predict(group_census(analysis, {})) == pytest.approx(lm.measured_ms, rel=1e-9)
    g = analysis.prunable_groups[0]
    for w in lm.steps[g.id]:
        plan = PrunePlan({g.id: tuple(range(w))})
        child = _apply(model, analysis, plan)
        measured = MacRuntime(pad=4).latencies([child], 1)[0]
        predicted = lm.predict(group_census(analysis, {g.id: w}))
        assert predicted == pytest.approx(measured, rel=0.02)


def cached_case_or_helper() -> onnx.ModelProto:
    return helper_convnet()


def _apply(model: onnx.ModelProto, analysis: object, plan: PrunePlan) -> onnx.ModelProto:
    from evonnx.pruning.surgery import apply_plan

    return apply_plan(model, analysis, plan)  # type: ignore[arg-type]


def test_latency_steps_skip_plateaus() -> None:
    model = helper_convnet()
    analysis = analyze(model)
    lm = build_latency_model(model, analysis, LatencyTable(MacRuntime(pad=4), 1), step=1)
    g1 = analysis.layers[0].out_group  # conv1: 6 channels; MacRuntime pads channels to 4
    assert g1 is not None
    steps = lm.steps[g1]
    assert steps[-1] == 6 and 4 in steps and 5 not in steps  # 5 runs as slow as 8 (padded)


@settings(max_examples=8, deadline=None)
@given(keep=st.floats(0.3, 0.95), seed=st.integers(0, 100))
def test_measured_budget_is_never_exceeded(keep: float, seed: int) -> None:
    model = helper_convnet()
    analysis = analyze(model)
    rt = MacRuntime(pad=4)
    target = latency_target(model, analysis, LatencySettings(step=1), runtime=rt)
    try:
        off, fit = latency_offspring(
            model, analysis, EncodingConfig(), target, keep, np.random.default_rng(seed)
        )
    except PlanError as exc:  # allowed only when the budget is out of reach
        assert "over" in str(exc)
        return
    assert off.expected_cost == pytest.approx(off.budget, rel=1e-3) or off.factor in (0, np.e)
    assert fit.child_ms <= fit.budget_ms == pytest.approx(keep * fit.parent_ms)
    assert fit.child_ms == rt.latencies([fit.model], 1)[0]
    feed = input_feed(model)
    check_function_kept(model, analysis, fit.plan, feed, off.masks)
    assert_same(run(apply_plan(model, analysis, fit.plan, off.masks), feed), run(fit.model, feed))


def test_fit_trims_until_the_measurement_fits() -> None:
    model = helper_convnet()
    analysis = analyze(model)
    rt = MacRuntime(pad=4)
    lm = build_latency_model(model, analysis, LatencyTable(rt, 1), step=1)
    weights = model_weights(model)
    fit = fit_measured(model, analysis, PrunePlan({}), weights, rt, lm, keep=0.6)
    assert fit.trimmed >= 1 and fit.child_ms <= 0.6 * fit.parent_ms
    # A table from another device (no padding): the measurement still decides.
    plain = LatencyTable(MacRuntime(device="unpadded"), 1)
    optimistic = build_latency_model(model, analysis, plain, step=1)
    fit = fit_measured(model, analysis, PrunePlan({}), weights, rt, optimistic, keep=0.6)
    assert fit.rounds >= 1 and fit.child_ms <= 0.6 * fit.parent_ms
    assert fit.child_ms == rt.latencies([fit.model], 1)[0]
    with pytest.raises(PlanError, match="over"):
        fit_measured(model, analysis, PrunePlan({}), weights, rt, lm, keep=0.01)


def test_latency_budget_snaps_widths_and_meets_prediction() -> None:
    model = helper_convnet()
    analysis = analyze(model)
    lm = build_latency_model(model, analysis, LatencyTable(MacRuntime(pad=4), 1), step=1)
    env = LatencyBudget(lm, keep=0.7)
    genome = encode(analysis, model_weights(model), EncodingConfig(environment=env))
    for seed in range(5):
        off = sample(genome, np.random.default_rng(seed))
        assert off.expected_cost == pytest.approx(off.budget, rel=1e-3)  # solved on prediction
        for g in analysis.prunable_groups:
            n = len(off.plan.kept(g))
            assert n in lm.steps[g.id]


def test_depth_removal_reaches_budget_on_resnet(zoo_dir: Path) -> None:
    model = cached_case("resnet@legacy", zoo_dir)
    analysis = analyze(model)
    rt = MacRuntime(pad=4)
    target = latency_target(model, analysis, LatencySettings(step=4), runtime=rt)
    off, fit = latency_offspring(
        model, analysis, EncodingConfig(), target, 0.5, np.random.default_rng(0)
    )
    assert fit.child_ms <= fit.budget_ms
    onnx.checker.check_model(fit.model, full_check=True)
    feed = input_feed(model)
    check_function_kept(model, analysis, fit.plan, feed, off.masks)
    assert_same(run(apply_plan(model, analysis, fit.plan, off.masks), feed), run(fit.model, feed))


def test_real_runtime_predicts_its_own_model() -> None:
    """ort-cpu end to end on a tiny graph: the table fills, the fit's invariant holds."""
    from evonnx.runtimes import make_runtime

    model = helper_convnet()
    analysis = analyze(model)
    rt = make_runtime(RuntimeSettings("ort-cpu", threads=1, warmup=1, runs=5))
    target = latency_target(model, analysis, LatencySettings(batch=2), runtime=rt)
    assert set(target.model.curves) == {lay.node for lay in analysis.layers}
    assert target.model.measured_ms > 0
    floor = 100 * target.model.measured_ms  # a tiny graph is all overhead: a generous floor
    off, fit = latency_offspring(
        model, analysis, EncodingConfig(), target, 0.5, np.random.default_rng(0), floor_ms=floor
    )
    assert fit.rounds == 1 and fit.budget_ms >= floor and fit.child_ms <= fit.budget_ms
    assert off.factor > 0


@settings(max_examples=20, deadline=None)
@given(
    coef=st.tuples(
        st.floats(0.0, 1.0),
        st.floats(0.1, 2.0),
        st.floats(0.0, 2.0),
        st.floats(0.0, 1.0),
        st.floats(0.0, 1.0),
        st.floats(0.0, 0.1),
        st.floats(0.0, 1.0),
    ),
    seed=st.integers(0, 1000),
)
def test_solve_recovers_exact_coefficients(coef: tuple[float, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    feats = [
        (1.0, *rng.uniform(0.1, 3.0, 4), float(rng.integers(1, 40)), rng.uniform(0, 1))
        for _ in range(12)
    ]
    points = [Point(f, float(np.dot(coef, f))) for f in feats]
    got = solve(points, (True,) * 7, intercept_ms=0.5)
    for f, p in zip(feats, points, strict=True):  # every measured point reproduced
        assert np.dot(got, f) == pytest.approx(p.ms, rel=1e-6, abs=1e-9)
    assert all(c >= 0 for c in got)
    assert solve(points[:1], (True,) * 7, 0.5)[0] == 0.5  # one point: proportional
    assert solve(points, (False, True) + (False,) * 5, 0.5)[3:] == (0.0,) * 4  # unusable: unused


def test_calibration_offspring_are_measured_with_the_parent(zoo_dir: Path) -> None:
    model = cached_case("resnet@legacy", zoo_dir)
    analysis = analyze(model)
    rt = MacRuntime()
    lm = build_latency_model(model, analysis, LatencyTable(rt, 1), step=4)
    widths = calibration_widths(analysis, lm.steps)
    removable = [g.id for g in analysis.prunable_groups if g.removable]
    assert len(removable) >= 2 and len(widths) == 6
    assert rt.measured[-1] == 1 + len(widths)  # parent and calibration offspring side by side
    assert len(lm.points) == 1 + len(widths) and lm.points[0].ms == lm.measured_ms
    for w in widths:
        for gid, n in w.items():
            assert (n == 0 and gid in removable) or n in lm.steps[gid]
    gone = widths[1]
    assert {gid for gid, n in gone.items() if n == 0} == set(removable[1::2])
    # A MAC-proportional device: the MAC feature is exact, so is every point.
    for p, w in zip(lm.points[1:], widths, strict=True):
        assert lm.predict(group_census(analysis, w)) == pytest.approx(p.ms, rel=1e-9)
    uncalibrated = build_latency_model(model, analysis, LatencyTable(rt, 1), 4, calibrate=False)
    assert len(uncalibrated.points) == 1 and rt.measured[-1] == 1


def test_recalibration_learns_what_the_table_misses(zoo_dir: Path) -> None:
    """A device with a cost per node and per activation element (which single-layer timings
    do not show): the calibrated predictor reproduces its measured points and predicts held-out
    offspring better than the proportional one; each measurement refits it."""
    model = cached_case("resnet@legacy", zoo_dir)
    analysis = analyze(model)
    rt = MacRuntime(pad=4, per_node=0.002, per_element=2e-7)
    proportional = build_latency_model(model, analysis, LatencyTable(rt, 4), 4, calibrate=False)
    lm = build_latency_model(model, analysis, LatencyTable(rt, 4), step=4)
    assert lm.predict(group_census(analysis, {})) == pytest.approx(lm.measured_ms, rel=0.02)
    weights = model_weights(model)
    errors: dict[str, list[float]] = {"calibrated": [], "proportional": []}
    for keep in (0.7, 0.5, 0.35):
        for seed in range(2):
            env = LatencyBudget(proportional, keep=keep)
            off = sample(
                encode(analysis, weights, EncodingConfig(environment=env)),
                np.random.default_rng(seed),
            )
            widths = {g.id: len(off.plan.kept(g)) for g in analysis.prunable_groups}
            parent_ms, child_ms = rt.latencies([model, _apply(model, analysis, off.plan)], 4)
            census = group_census(analysis, widths)
            for name, m in (("calibrated", lm), ("proportional", proportional)):
                pred = m.predict(census) / m.predict(group_census(analysis, {})) * parent_ms
                errors[name].append(abs(pred - child_ms) / child_ms)
                refit = lm.recalibrated(census, child_ms, parent_ms)
                assert len(refit.points) == len(lm.points) + 1
                assert refit.points[-1].ms == pytest.approx(child_ms, rel=1e-12)
    assert np.mean(errors["calibrated"]) < np.mean(errors["proportional"])


@settings(max_examples=15, deadline=None)
@given(fracs=st.lists(st.floats(0.0, 1.0), min_size=6, max_size=6), which=st.integers(0, 5))
def test_calibrated_prediction_is_monotone(fracs: list[float], which: int) -> None:
    model = helper_convnet()
    analysis = analyze(model)
    rt = MacRuntime(pad=4, per_node=0.01, per_element=1e-6)
    lm = build_latency_model(model, analysis, LatencyTable(rt, 2), step=1)
    assert all(c >= 0 for c in lm.coef)
    sizes = {g.id: g.size for g in analysis.prunable_groups}
    gids = sorted(sizes)
    widths = {gid: round(f * sizes[gid]) for gid, f in zip(gids, fracs, strict=False)}
    gid = gids[which % len(gids)]
    wider = {**widths, gid: sizes[gid]}
    assert lm.predict(group_census(analysis, wider)) >= lm.predict(group_census(analysis, widths))


def test_fit_reports_the_prediction_made_before_measuring() -> None:
    model = helper_convnet()
    analysis = analyze(model)
    rt = MacRuntime(pad=4, per_node=0.0005)
    lm = build_latency_model(model, analysis, LatencyTable(rt, 1), step=1, calibrate=False)
    fit = fit_measured(model, analysis, PrunePlan({}), model_weights(model), rt, lm, keep=0.8)
    assert fit.rounds == 1 and fit.child_ms <= fit.budget_ms
    widths = {g.id: len(fit.plan.kept(g)) for g in analysis.prunable_groups}
    ratio = lm.predict(group_census(analysis, widths)) / lm.measured_ms
    assert fit.predicted_ms == pytest.approx(ratio * fit.parent_ms, rel=1e-12)
    assert fit.predicted_ms != pytest.approx(fit.child_ms, rel=1e-6)  # not fitted to it


class _LuckyOnce(MacRuntime):
    """Measures every offspring 40% faster than it is the first time it sees it (a lucky,
    noisy run); later runs are exact."""

    def __init__(self) -> None:
        super().__init__(pad=4)
        self.seen: set[bytes] = set()

    def latencies(self, models: Sequence[onnx.ModelProto], batch: int) -> list[float]:
        out = super().latencies(models, batch)
        for i, m in enumerate(models[1:], 1):
            key = m.SerializeToString()
            if key not in self.seen:
                self.seen.add(key)
                out[i] *= 0.6
        return out


def test_fit_confirms_a_measurement_within_budget() -> None:
    model = helper_convnet()
    analysis = analyze(model)
    rt = _LuckyOnce()
    optimistic = LatencyTable(MacRuntime(device="unpadded"), 1)  # under-predicts rt
    lm = build_latency_model(model, analysis, optimistic, step=1, calibrate=False)
    fit = fit_measured(model, analysis, PrunePlan({}), model_weights(model), rt, lm, keep=0.6)
    exact = MacRuntime(pad=4)
    parent_ms, child_ms = exact.latencies([model, fit.model], 1)
    assert child_ms <= 0.6 * parent_ms  # the lucky first reading alone was not accepted
    assert fit.child_ms == pytest.approx(child_ms) and fit.parent_ms == pytest.approx(parent_ms)
