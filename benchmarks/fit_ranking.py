"""The latency fit's channel ranking on a pretrained model: L1 norm against deviation.

Run: ``python benchmarks/fit_ranking.py [--only rec] [--target 1.5]`` (the models of
``benchmarks/real_models.py``, in ``.real_models/``). For each criterion the latency fit
(:func:`evonnx.latency.fit_measured`) steps the *full* ancestor down to the target speed-up on
``ort-cpu`` at one thread, ranking channels and groups by that criterion: ``l1``, the norm of
the producer filters (the genetic encoding's and the fit's default), or ``deviation``, how far a
channel's values are from the constant its removal folds into its readers, weighed by the
readers (:func:`evonnx.pruning.importance.deviation_strength` on seeded synthetic inputs, what
``evonnx prune --method magnitude`` ranks by). No genetic sampling: the two offspring differ only
in the ranking. Each is fine-tuned label-free (``evonnx.FidelityTask``) with the real-model
benchmark's recipe for the steps a 1.5x row gets there, and scored by the model's metric on the
labelled test split. Writes ``docs/results/fit_ranking.json`` and the ``fit-ranking`` section of
``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_models as rm
import real_tasks as rt
from report import machine, update_section

from evonnx.genetic import model_weights
from evonnx.latency import fit_measured, latency_target
from evonnx.model.graph import constant_values
from evonnx.model.shapes import shaped_graph
from evonnx.model.textio import write_text_atomic
from evonnx.pruning.analysis.driver import analyze_graph
from evonnx.pruning.importance import deviation_strength, reader_deviation, synthetic_inputs
from evonnx.pruning.plan import PrunePlan
from evonnx.pruning.surgery import apply_plan

RESULTS = rm.ROOT / "docs" / "results" / "fit_ranking.json"
SIZES = {
    "rec": ["--steps", "200", "--batch", "16", "--n-train", "1024", "--n-val", "128",
            "--n-test", "200"],
    "cls": ["--steps", "600", "--batch", "16", "--n-train", "4096", "--n-val", "256",
            "--n-test", "1000"],
    "det": ["--steps", "200", "--batch", "8", "--n-train", "480", "--n-val", "64",
            "--n-test", "150"],
}  # fmt: skip
"""The real-model benchmark's sizes per model (its table's commands)."""


def one_model(key: str, target: float) -> dict[str, Any]:
    """Both criteria on one model: fitted speed-up, kept channels, score before and after."""
    s, _ = rm.parse(["--only", key, "--lr", "1e-3", "--train-threads", "2", *SIZES[key]])
    spec = rt.spec(key)
    prep = rm.prepare(spec, s.models / Path(spec.inside).name, s)
    assert prep.free is not None
    model = prep.ancestor
    graph, resolved = shaped_graph(model)
    analysis = analyze_graph(graph, resolved.hint())
    lat = latency_target(model, analysis, rm.latency_settings(1))
    weights = model_weights(model, {lay.weight for lay in analysis.layers})
    values = constant_values(graph)
    deviation = reader_deviation(model, analysis, graph, synthetic_inputs(graph))
    ranks = {"l1": None, "deviation": deviation_strength(analysis, values, deviation)}
    config = rm.evolve_config(s, target, rm.generations_for(target), s.steps)
    out: dict[str, Any] = {"model": spec.name, "metric": spec.metric, "target": target}
    out["ancestor_score"] = rm.score_of(model, prep.labelled)
    for name, strength in ranks.items():
        fit = fit_measured(
            model, analysis, PrunePlan({}), weights, lat.runtime, lat.model, 1.0 / target,
            strength=strength,
        )  # fmt: skip
        offspring = apply_plan(model, analysis, fit.plan)
        start = time.perf_counter()
        trained, _ = rm.finetune(offspring, prep.free, config, s.total_steps(target))
        kept = [len(fit.plan.kept(g)) / g.size for g in analysis.prunable_groups]
        out[name] = {
            "fit_speedup": round(fit.speedup, 3),
            "kept_min": round(min(kept), 2),
            "kept_median": round(float(np.median(kept)), 2),
            "score_before": round(rm.score_of(offspring, prep.labelled), 2),
            "score": round(rm.score_of(trained, prep.labelled), 2),
            "steps": s.total_steps(target),
            "minutes": round((time.perf_counter() - start) / 60, 1),
        }
        print(f"  {spec.key} {name}: {out[name]}", flush=True)
    return out


def kept_with(models: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """``models`` and, after them, the models of an earlier result at ``path`` not rerun."""
    if not path.exists():
        return models
    rerun = {(m["model"], m["target"]) for m in models}
    old = json.loads(path.read_text())["models"]
    return models + [m for m in old if (m["model"], m["target"]) not in rerun]


def markdown(result: dict[str, Any]) -> str:
    """The ``fit-ranking`` section."""
    lines = [
        "## The latency fit's channel ranking on pretrained models (`benchmarks/fit_ranking.py`)",
        "",
        f"{result['machine']}; {result['minutes']:.1f} minutes (the last run). The latency fit "
        "steps the full "
        "ancestor to the target on `ort-cpu` (one thread), ranking channels by the L1 norm of "
        "their filters (the fit's and the genetic encoding's default) or by their deviation "
        "from the constant their removal folds in (what magnitude pruning ranks by); no genetic "
        "sampling, so the offspring differ only in the ranking. Each is fine-tuned label-free "
        "with the real-model benchmark's recipe and scored on its labelled test split.",
        "",
        "| model | target | ranking | fitted speed-up | kept per group (min / median) | "
        "score before training | after | steps | min |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in result["models"]:
        for name in ("l1", "deviation"):
            r = m[name]
            lines.append(
                f"| {m['model']} ({m['metric']}, ancestor {m['ancestor_score']:.1f}) | "
                f"{m['target']:g}x | {name} | {r['fit_speedup']:.2f}x | {r['kept_min']:.2f} / "
                f"{r['kept_median']:.2f} | {r['score_before']:.1f} | **{r['score']:.1f}** | "
                f"{r['steps']} | {r['minutes']:.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--only", default="rec", help="comma-separated model keys")
    p.add_argument("--target", type=float, default=1.5)
    a = p.parse_args(argv)
    start = time.perf_counter()
    models = [one_model(k, a.target) for k in a.only.split(",")]
    result = {"machine": machine(), "models": kept_with(models, RESULTS),
              "minutes": round((time.perf_counter() - start) / 60, 1)}  # fmt: skip
    write_text_atomic(RESULTS, json.dumps(result, indent=1) + "\n")
    update_section("fit-ranking", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
