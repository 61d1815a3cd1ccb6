"""The real-model benchmark's pure pieces: rendering, preprocessing, CTC decoding, metrics.

They need no downloaded model: the decoding is checked on hand-made score arrays, the
rendering on its shapes, value ranges and labels.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import real_data as rd
import real_tasks as rt

CLASSES = ["", "a", "b", "c", " "]


def one_hot(ids: list[int], n: int = len(CLASSES)) -> np.ndarray:
    out = np.full((len(ids), n), 0.01, np.float32)
    out[np.arange(len(ids)), ids] = 1.0
    return out


def test_ctc_greedy_merges_repeats_drops_blanks_and_strips():
    scores = np.stack([one_hot([1, 1, 0, 1, 2, 2, 0, 0]), one_hot([4, 3, 0, 3, 3, 4, 0, 0])])
    assert rd.ctc_greedy(scores, CLASSES) == ["aab", "cc"]


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet="abc", min_size=1, max_size=8))
def test_ctc_greedy_inverts_an_alignment_with_blanks_between_repeats(text):
    index = {c: i for i, c in enumerate(CLASSES) if c}
    ids = []
    for c in text:
        ids += [index[c], index[c], 0]  # each character twice, then a blank
    assert rd.ctc_greedy(one_hot(ids)[None], CLASSES) == [text]
    assert rd.encode_texts([text], CLASSES) == [[index[c] for c in text]]


def test_charset_puts_blank_first_and_space_last():
    assert rd.charset("x\ny") == ["", "x", "y", " "]


@pytest.mark.parametrize(
    ("a", "b", "d"),
    [("", "", 0), ("abc", "abc", 0), ("abc", "abd", 1), ("", "ab", 2), ("kitten", "sitting", 3)],
)
def test_edit_distance(a, b, d):
    assert rd.edit_distance(a, b) == d == rd.edit_distance(b, a)


def test_metrics():
    assert rd.exact_match(["ab", "c", "d"], ["ab", "c", "e"]) == pytest.approx(200 / 3)
    assert rd.char_accuracy(["ab", "cd"], ["ab", "ce"]) == pytest.approx(75.0)
    assert rd.char_accuracy(["abcdefgh"], ["a"]) == 0.0  # floored
    assert rd.top1(np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([1, 1])) == 50.0
    with pytest.raises(ValueError):
        rd.exact_match(["a"], [])
    with pytest.raises(ValueError):
        rd.top1(np.zeros((2, 2)), np.array([0]))


def test_line_tensor_keeps_aspect_normalizes_and_pads():
    rng = np.random.default_rng(0)
    img = rd.render_line("AB3", rng)
    x = rd.line_tensor(img, 160)
    assert x.shape == (3, 48, 160) and x.dtype == np.float32
    assert x.min() >= -1.0 and x.max() <= 1.0
    used = int(np.ceil(48 * img.size[0] / img.size[1]))
    assert (
        used < 160 and np.all(x[:, :, used:] == 0) and x[:, :, :used].mean() > 0
    )  # light background
    squeezed = rd.line_tensor(rd.render_line("ABDEFGHJKLMNPQRT", rng), 64)
    assert squeezed.shape == (3, 48, 64) and squeezed[:, :, -1].mean() != 0  # filled, no pad


def test_line_tensor_is_bgr():
    from PIL import Image

    x = rd.line_tensor(Image.new("RGB", (48, 48), (255, 0, 0)), 48)
    assert np.allclose(x[2], 1.0) and np.allclose(x[0], -1.0)  # red lands in channel 2


def test_rendered_splits_are_seeded_and_labelled():
    x1, t1 = rd.text_lines(4, 7, 160)
    x2, t2 = rd.text_lines(4, 7, 160)
    assert t1 == t2 and np.array_equal(x1, x2)
    assert all(3 <= len(t) <= 8 and set(t) <= set(rd.ALPHABET) for t in t1)
    x, y = rd.oriented_lines(6, 1, 192)
    assert x.shape == (6, 3, 48, 192) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    pages, labels = rd.oriented_pages(4, 2)
    assert pages.shape == (4, 3, 224, 224) and sorted(labels.tolist()) == [0, 1, 2, 3]


def test_page_labels_follow_the_turn():
    # a page turned counter-clockwise by 90 degrees is one that needs 270 clockwise
    rng = np.random.default_rng(0)
    page = rd.render_page(rng)
    upright = rd.page_tensor(page)
    turned = rd.page_tensor(page.rotate(90))
    assert not np.allclose(upright, turned)
    assert np.allclose(rd.page_tensor(page.rotate(90).rotate(-90)), upright)


def _task(teacher: bool) -> rt.RealTask:
    spec = rt.spec("rec")
    x = np.zeros((4, 3, 48, 16), np.float32)
    part = rt.Part(x, ["ab", "c", "a", "bb"])
    probs = np.tile(one_hot([1, 0, 2, 0])[None], (4, 1, 1))
    probs /= probs.sum(-1, keepdims=True)
    t = (probs, ["ab"] * 4) if teacher else None
    return rt.RealTask(spec, CLASSES, part, part, part, t, batch_size=2)


def test_task_ctc_loss_prefers_the_right_text():
    task = _task(False)
    (_, targets), _ = task.train_batches()
    good = torch.tensor(np.tile(one_hot([1, 0, 2, 0, 0, 0])[None], (2, 1, 1))) * 8  # logits
    bad = good.flip(-1)
    assert len(task.train_batches()) == 2
    assert task.loss(good, targets) < task.loss(bad, targets)


def test_task_label_free_loss_is_zero_on_the_teacher():
    task = _task(True)
    _, teacher = task.train_batches()[0]
    logits = torch.log(teacher.clamp_min(1e-12))
    assert float(task.loss(logits, teacher)) == pytest.approx(0.0, abs=1e-5)
    assert float(task.loss(logits.flip(-1), teacher)) > 0.1


def test_recognizer_trains_ctc_on_its_softmax_logits():
    """The recognizer's training graph ends before its Softmax, and CTC reads log-softmax of
    those logits: a confidently wrong line still gets a gradient (the log of clamped
    probabilities passed none)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(len(CLASSES), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]),
         helper.make_node("Softmax", ["z"], ["p"], axis=2)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6, len(CLASSES)])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["n", 6, len(CLASSES)])], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    task = _task(False)
    view = task.training_graph(model)
    assert [n.op_type for n in view.graph.node] == ["MatMul"]
    (_, targets), _ = task.train_batches()
    wrong = torch.tensor(np.tile(one_hot([3, 3, 3, 3, 3, 3])[None], (2, 1, 1)) * 60.0)
    wrong.requires_grad_(True)  # softmax of the right classes underflows to 0 in float32
    loss = task.loss(wrong, targets)
    loss.backward()
    assert torch.isfinite(loss) and float(wrong.grad.abs().sum()) > 0


def test_decode_and_metric_by_kind():
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert rt.decode("class", probs, []).tolist() == [1, 0]
    assert rt.metric("class", np.array([1, 0]), np.array([1, 1])) == 50.0
    assert rt.metric("ctc", ["a", "b"], ["a", "b"]) == 100.0


def test_scenes_are_seeded_and_their_line_boxes_hold_the_ink():
    x, boxes = rd.text_scenes(4, 7, 128)
    again, same = rd.text_scenes(4, 7, 128)
    assert x.shape == (4, 3, 128, 128) and x.dtype == np.float32
    assert np.array_equal(x, again)
    assert all(np.array_equal(a, b) for a, b in zip(boxes, same, strict=True))
    img, b = rd.text_scene(np.random.default_rng(3), 128)
    ink = np.asarray(img.convert("L"), np.float32)
    dark = ink < ink.max() - 60  # the ink is far darker than the background
    inside = np.zeros_like(dark)
    for x0, y0, x1, y1 in b.astype(int):
        inside[y0 : y1 + 1, x0 : x1 + 1] = True
    assert 1 <= len(b) <= 4 and dark.any() and not (dark & ~inside).any()
    assert rd.box_iou(b, b).diagonal() == pytest.approx(1.0)
    rng, heights = np.random.default_rng(3), []
    for _ in range(4):  # line boxes: the ink's width, the font's height (ascender to descender)
        img, b = rd.text_scene(rng, 128)
        dark = np.asarray(img.convert("L"), np.float32) < 150
        for x0, y0, x1, y1 in b.astype(int):
            rows, cols = np.nonzero(dark[y0:y1, x0:x1])
            assert cols.max() - cols.min() + 1 >= 0.85 * (x1 - x0)
            heights.append((rows.max() - rows.min() + 1) / (y1 - y0))
    assert max(heights) < 0.95 and np.mean(heights) < 0.85


def test_db_decoding_recovers_shrunk_boxes_and_hmean_counts_matches():
    truth = np.array([[10, 10, 70, 30], [20, 60, 100, 90]], np.float32)
    prob = rd.shrunk_mask(truth, 128) * 0.9  # a perfect DB map: shrunk regions
    found = rd.db_boxes(prob)
    assert len(found) == 2
    assert rd.hmean([found], [truth]) == 100.0
    assert rd.box_iou(found, truth).max(1) == pytest.approx([0.8, 0.8], abs=0.2)
    assert rd.hmean([found[:1]], [truth]) == pytest.approx(100 * 2 / 3)
    assert rd.hmean([np.zeros((0, 4), np.float32)], [truth]) == 0.0
    assert len(rd.db_boxes(prob * 0.5)) == 0  # below the box threshold: nothing
    assert rt.metric("det", rt.decode("det", prob[None, None], []), [truth]) == 100.0


def test_detector_losses_prefer_the_target_and_train_a_saturated_map():
    mask = torch.from_numpy(rd.shrunk_mask(np.array([[8, 8, 40, 24]], np.float32), 48))[None]
    good, bad = mask * 8 - 4, 4 - mask * 8  # logits
    assert rt.balanced_bce(good, mask) < rt.balanced_bce(bad, mask)
    assert rt.pixel_bce(good, torch.sigmoid(good)) < rt.pixel_bce(bad, torch.sigmoid(good))
    dead = torch.full_like(mask, -120.0, requires_grad=True)  # sigmoid is 0.0 in float32
    rt.balanced_bce(dead, mask).backward()
    assert float(dead.grad.abs().sum()) > 0  # the logits still get a gradient


def _result(name: str, score: float) -> dict:
    row = {
        "method": "evolution", "labels": True, "target": 1.5, "measured_speedup": 1.52,
        "measured_speedup_default_threads": 1.4, "score": score, "drop_points": 1.0,
        "train_steps": 16, "minutes": 2.0,
        "generations": [{"generation": 2, "wall_s": 10.0, "train_s": 8.0, "score_s": 1.0,
                         "overhead_s": 1.0, "fit_speedup": 1.2}],
    }  # fmt: skip
    model = {
        "name": name, "package": "pkg==1", "file": "m.onnx", "metric": "top-1 %",
        "input_shape": [1, 3, 8, 8], "inputs": "rendered", "splits": {"test": 10},
        "ancestor_score": 99.0, "magnitude_keep_0.99_score": 98.0, "rows": [row],
        "skipped": [{"methods": ["one-shot"], "target": 2.0, "reason": "no static shape"}],
    }  # fmt: skip
    settings = {"steps": 8, "batch": 16, "lr": 1e-4, "n_train": 1, "n_val": 1, "n_test": 10}
    return {"machine": "m", "settings": settings, "models": [model], "recipe": "adamw"}


def test_markdown_shows_rows_refusals_and_the_overhead_share():
    import real_models as rm

    text = rm.markdown(_result("A", 98.0))
    assert "| 1.5x | evolution | yes | 1.52x | 1.40x | 98.00 | +1.00 | 16 | 2.0 |" in text
    assert "not run: no static shape" in text
    assert "- a finding" in rm.markdown({**_result("A", 98.0), "notes": ["a finding"]})
    assert "**10%**" in text  # 1 s of overhead in a 10 s generation
    assert rm.overhead_share(_result("A", 98.0)["models"][0]["rows"]) == (8.0, 1.0, 1.0)


def test_merged_keeps_models_not_rerun_with_their_settings(tmp_path):
    import json

    import real_models as rm

    old = _result(rt.SPECS[1].name, 90.0)
    old["models"].append(_result(rt.SPECS[0].name, 80.0)["models"][0])
    path = tmp_path / "r.json"
    path.write_text(json.dumps(old))
    new = _result(rt.SPECS[0].name, 95.0)
    out = rm.merged(new, path)
    assert [m["name"] for m in out["models"]] == [rt.SPECS[0].name, rt.SPECS[1].name]
    assert out["models"][0]["rows"][0]["score"] == 95.0  # the rerun replaces the old one
    assert out["models"][1]["settings"] == old["settings"]
    assert rm.merged(new, tmp_path / "missing.json") is new


def test_generations_step_at_most_about_1_3x():
    import real_models as rm

    assert rm.generations_for(1.5) == 2 and rm.generations_for(2.0) == 3
    for target in (1.2, 1.5, 2.0, 3.0):
        g = rm.generations_for(target)
        assert target ** (1 / g) <= 1.3 + 1e-9


def test_every_method_trains_with_evonnxs_recipe():
    """The benchmark's retraining goes through the sectioned EvolveConfig's step options (it
    once fell back to the old Adam-and-epochs settings without saying so)."""
    import real_models as rm

    used = rm.recipe(120, 10)
    assert used == {"steps": 120, **rm.RECIPE}
    s = rm.parse(["--train-threads", "2", "--steps", "7"])[0]
    config = rm.evolve_config(s, 1.5, 2, 7)
    assert config.steps == 7 and config.optimizer == "adamw" and config.freeze_bn
    assert config.threads == 2


def test_a_population_keeps_every_methods_steps_equal():
    """``--population K``: evolution breeds K offspring a generation, each trained ``--steps``;
    one-shot and magnitude fine-tune for as many steps in all."""
    import real_models as rm

    s = rm.parse(["--steps", "300", "--population", "2"])[0]
    config = rm.evolve_config(s, 2.0, rm.generations_for(2.0), s.steps)
    assert config.population == 2 and config.steps == 300
    assert s.total_steps(2.0) == 3 * 2 * 300
    assert rm.parse(["--steps", "600"])[0].total_steps(2.0) == 3 * 600
    assert "2 offspring per generation" in rm.markdown(
        {**_result("A", 98.0), "settings": {**_result("A", 98.0)["settings"], "population": 2}}
    )


def test_teacher_reaches_evolutions_config_and_needs_distill():
    """``--teacher ancestor`` with ``--distill T``: evolution's offspring distil from the
    ancestor (evonnx's ``teacher``), and the docs say so; without ``--distill`` it is refused."""
    import real_models as rm

    s = rm.parse(["--distill", "4", "--teacher", "ancestor"])[0]
    config = rm.evolve_config(s, 1.5, 2, 7, s.distill)
    assert config.distill == 4.0 and config.teacher == "ancestor"
    assert rm.evolve_config(rm.parse([])[0], 1.5, 2, 7).teacher == "parent"
    with pytest.raises(SystemExit):
        rm.parse(["--teacher", "ancestor"])
    meta = {**_result("A", 98.0)["settings"], "distill": 4.0, "teacher": "ancestor"}
    assert "distil at T=4 from the ancestor (every method)" in rm.markdown(
        {**_result("A", 98.0), "settings": meta}
    )


def _gemm_classifier(seed: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(3, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [w, b],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_distill_teaches_labelled_fine_tuning_from_the_ancestor(monkeypatch):
    """``--distill T``: labelled fine-tuning (one-shot, magnitude) also learns from the
    ancestor, as evolution's offspring learn from their parent; label-free rows never do."""
    import real_models as rm
    from onnx import numpy_helper

    from evonnx.data import Dataset
    from evonnx.retrain.task import ClassificationTask

    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    task = ClassificationTask(Dataset(x, y, x, y, "tiny"), val_fraction=0.0)
    seen = []
    original = task.distill_loss

    def spy(outputs, teacher, targets, temperature):
        seen.append(temperature)
        return original(outputs, teacher, targets, temperature)

    monkeypatch.setattr(task, "distill_loss", spy)
    s = rm.parse(["--distill", "4", "--steps", "3", "--batch", "8"])[0]
    assert s.distill == 4.0
    config = rm.evolve_config(s, 1.5, 2, 3, s.distill)
    assert config.distill == 4.0 and rm.evolve_config(s, 1.5, 2, 3).distill is None
    student, teacher = _gemm_classifier(1), _gemm_classifier(2)
    taught, _ = rm.finetune(student, task, config, 3, teacher)
    assert seen and set(seen) == {4.0}
    seen.clear()
    plain, _ = rm.finetune(student, task, config, 3)  # no teacher: labels only
    assert not seen
    w = [numpy_helper.to_array(m.graph.initializer[0]) for m in (taught, plain)]
    assert not np.allclose(w[0], w[1])
    assert "distil at T=4" in rm.markdown(
        {**_result("A", 98.0), "settings": {**_result("A", 98.0)["settings"], "distill": 4.0}}
    )


class _FakeBench:
    """``benchmark`` that times a model by its number of nodes (ms): min at 1 thread, twice
    that at default threads, the median 10% above the min; it records what it compared."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def __call__(self, models, threads, warmup, runs):
        from types import SimpleNamespace

        self.calls.append((len(models), threads))
        factor = 1.0 if threads == 1 else 2.0
        return SimpleNamespace(
            models=[
                SimpleNamespace(
                    timings=[
                        SimpleNamespace(
                            min_ms=factor * len(m.graph.node),
                            median_ms=1.1 * factor * len(m.graph.node),
                        )
                    ]
                )
                for m in models
            ]
        )


def _relu_chain(n: int):
    import onnx
    from helpers import make_model
    from onnx import TensorProto, helper

    names = ["x"] + [f"t{k}" for k in range(n)]
    nodes = [helper.make_node("Relu", [a], [b]) for a, b in itertools.pairwise(names)]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes, "chain", [value("x", TensorProto.FLOAT, [1, 4])],
        [value(names[-1], TensorProto.FLOAT, [1, 4])],
    )  # fmt: skip
    model = make_model(graph)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_each_offspring_is_measured_beside_the_ancestor_alone(monkeypatch):
    import real_models as rm

    fake = _FakeBench()
    monkeypatch.setattr(rm, "benchmark", fake)
    speeds = rm.measured(_relu_chain(6), [_relu_chain(3), _relu_chain(2)], runs=5)
    assert speeds == {"1": [2.0, 3.0], "0": [2.0, 3.0], "1-median": [2.0, 3.0]}
    assert all(n == 2 for n, _ in fake.calls)  # pairs, never all offspring at once
    assert len(fake.calls) == 2 * 2 * rm.COMPARISONS  # offspring x thread counts x repeats


def test_remeasure_rewrites_the_speedups_of_saved_offspring(monkeypatch, tmp_path):
    import real_models as rm

    from evonnx import api

    monkeypatch.setattr(rm, "benchmark", _FakeBench())
    spec = rt.SPECS[0]
    result = _result(spec.name, 97.0)
    where = tmp_path / spec.key
    where.mkdir()
    api.save(_relu_chain(4), where / "ancestor.onnx")
    api.save(_relu_chain(1), where / f"{rm.saved_name('evolution', True, 1.5)}.onnx")
    s = rm.parse(["--only", spec.key])[0]
    out = rm.remeasured(result, tmp_path, s)
    row = out["models"][0]["rows"][0]
    assert row["measured_speedup"] == 4.0 and row["measured_speedup_default_threads"] == 4.0
    assert row["score"] == 97.0  # scores stay
    assert out["models"][0]["measured_as"] == rm.PAIRS
    assert "beside the ancestor alone" in rm.markdown(out)
    other = rm.parse(["--only", rt.SPECS[1].key])[0]  # a model not asked for is left alone
    assert (
        rm.remeasured(_result(spec.name, 97.0), tmp_path, other)["models"][0]["rows"][0][
            "measured_speedup"
        ]
        == 1.52
    )


def test_classifier_task_trains_on_logits():
    """The classifier's training graph is its Softmax's logits; the losses read them as such
    (cross-entropy on the labels, KL from the teacher's probabilities)."""
    spec = rt.spec("cls")
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0], [-20.0, 20.0]])
    y = torch.tensor([0, 1, 0])  # the last one confidently wrong: a gradient all the same
    part = rt.Part(np.zeros((3, 3, 48, 192), np.float32), y.numpy())
    labelled = rt.RealTask(spec, [], part, part, part, None, batch_size=3)
    expected = torch.nn.functional.cross_entropy(logits, y)
    assert float(labelled.loss(logits, y)) == pytest.approx(float(expected), rel=1e-6)
    teacher = torch.softmax(logits, -1)
    free = rt.RealTask(spec, [], part, part, part, (teacher.numpy(), [0, 1, 1]), batch_size=3)
    assert float(free.loss(logits, teacher)) == pytest.approx(0.0, abs=1e-6)
    assert float(free.loss(logits.flip(-1), teacher)) > 0.1


def test_no_labels_runs_the_label_free_rows_only(monkeypatch):
    """``--no-labels``: every method runs on the label-free task alone (its rows are still
    scored on the labelled test split); asking for neither signal is refused."""
    import real_models as rm

    monkeypatch.setattr(rm, "one_shot_model", lambda a, t, seed: (a, t))
    monkeypatch.setattr(rm, "magnitude_model", lambda a, t: (a, t))

    def candidate(method, labels, target):
        return rm.Candidate(method, labels, target, None, 0.0, 0, 0.0, target)

    monkeypatch.setattr(rm, "run_evolution", lambda p, task, s, t, labels: candidate(
        "evolution", labels, t))  # fmt: skip
    monkeypatch.setattr(rm, "tuned", lambda method, built, task, p, s, t: candidate(
        method, task is p.labelled, t))  # fmt: skip
    labelled, free = object(), object()
    prep = rm.Prepared(None, labelled, free, "evonnx.FidelityTask")  # type: ignore[arg-type]
    both = rm.candidates_for(prep, rm.parse([])[0], 1.5, [])
    assert sorted((c.method, c.labels) for c in both) == sorted(
        (m, lab) for m in ("evolution", "one-shot", "magnitude") for lab in (True, False)
    )
    s = rm.parse(["--no-labels"])[0]
    assert not s.labelled and s.label_free
    only = rm.candidates_for(prep, s, 1.5, [])
    assert [(c.method, c.labels) for c in only] == [
        ("evolution", False),
        ("one-shot", False),
        ("magnitude", False),
    ]
    with pytest.raises(SystemExit):
        rm.parse(["--no-labels", "--no-label-free"])


def test_fit_ranking_keeps_earlier_models_and_shows_both_rankings(tmp_path):
    import json

    import fit_ranking as fr

    def model(name: str, dev: float) -> dict:
        r = {"fit_speedup": 1.58, "kept_min": 0.4, "kept_median": 0.75, "score_before": 0.0,
             "steps": 400, "minutes": 4.0}  # fmt: skip
        return {"model": name, "metric": "m %", "target": 1.5, "ancestor_score": 97.5,
                "l1": {**r, "score": 32.0}, "deviation": {**r, "score": dev}}  # fmt: skip

    path = tmp_path / "r.json"
    path.write_text(json.dumps({"models": [model("rec", 94.5), model("cls", 97.0)]}))
    kept = fr.kept_with([model("cls", 98.0)], path)
    assert [(m["model"], m["deviation"]["score"]) for m in kept] == [("cls", 98.0), ("rec", 94.5)]
    assert fr.kept_with(kept, tmp_path / "missing.json") is kept
    text = fr.markdown({"machine": "m", "minutes": 1.0, "models": kept})
    assert "| 1.5x | deviation | 1.58x | 0.40 / 0.75 | 0.0 | **94.5** | 400 | 4.0 |" in text
    assert text.count("| l1 |") == 2
