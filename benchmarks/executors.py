"""Executors side by side: one generation of population 4 (LeNet-5, built-in MNIST subset).

The same four offspring jobs (same seeds) run on the local executor (one after another),
a process pool and a local Ray cluster, each twice: the first call includes starting the
workers (pool spawn, ``ray.init``), the second is warm. Per job we report the seconds it
spent inside its worker (load, train, write back, score) and the overhead around it
(serialization, scheduling, transfer): ``(warm wall x slots - sum of job seconds) / jobs``,
where ``slots`` is how many jobs run at once. The three results must be equal.

Then one offspring retrained data-parallel on 2 CPU ranks (gloo), ``--ddp-repeats`` times
each (minimum kept): plain torch DDP (2 spawned processes, the local executors) against a
Ray Train ``TorchTrainer`` of 2 workers (the Ray executor); the trained models must be equal.

Run: ``python benchmarks/executors.py``; results go to docs/benchmarks.md (``executors``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import machine, update_section

from evonnx.data import load_builtin
from evonnx.evolution.lineage import EvolveConfig
from evonnx.evolution.loop import _offspring, generation_seed
from evonnx.execute.executors import make_executor
from evonnx.execute.jobs import OffspringJob, pack_split
from evonnx.model.files import load_model
from evonnx.pruning.analysis import analyze
from evonnx.retrain.demo import train_demo_ancestor
from evonnx.retrain.task import Split, split_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print, do not edit the docs")
    parser.add_argument(
        "--gpu-job-s",
        type=float,
        default=300.0,
        help="assumed GPU seconds to retrain one ResNet-56 offspring (projection)",
    )
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--paper-population", type=int, default=8)
    parser.add_argument("--ddp-repeats", type=int, default=3)
    args = parser.parse_args()
    data = load_builtin("mnist-demo")
    config = EvolveConfig(
        population=args.population, epochs=args.epochs, batch_size=32, optimizer="adam",
        lr=0.001, threads=1, keep=0.72,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lenet5.onnx"
        train_demo_ancestor(path, epochs=2, progress=False, dataset=data)
        parent = load_model(path)
    split = split_data(data, config)
    analysis = analyze(parent)
    jobs = [
        _offspring(parent, analysis, config, generation_seed(config.seed, 2, k))
        for k in range(config.population)
    ]
    payload = len(pack_split(split)) + sum(len(j.child) for j in jobs) // len(jobs)
    slots = min(config.population, os.cpu_count() or 1)
    rows = []
    results = {}
    overheads: dict[str, float] = {}
    makers = [
        ("local (sequential)", "local", 1),
        ("process pool", "process", slots),
        ("Ray (local cluster)", "ray", slots),
    ]
    for name, key, parallel in makers:
        start = time.perf_counter()
        with make_executor(
            replace(config.execution, executor=key),
            False,
            config.threads,
            config.population,  # type: ignore[arg-type]
        ) as executor:
            first = executor.run(jobs, split)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            warm_results = executor.run(jobs, split)
            warm = time.perf_counter() - start
        inside = sum(r.job_seconds for r in warm_results)
        overhead = (warm * parallel - inside) / len(jobs)
        overheads[name] = overhead
        results[name] = [(r.scores, r.model) for r in warm_results]
        assert [(r.scores, r.model) for r in first] == results[name]
        rows.append(
            f"| {name} | {parallel} | {cold:.1f} | {warm:.1f} | {inside / len(jobs):.2f} | "
            f"{overhead:.2f} |"
        )
        print(rows[-1], flush=True)
    same = len({repr(v) for v in results.values()}) == 1
    ddp = _ddp_line(config, split, jobs[0], args.ddp_repeats)
    projection = _projection(args, overheads["Ray (local cluster)"], payload)
    body = f"""## Executors: local, process pool, Ray (`benchmarks/executors.py`)

One generation of population {config.population} (LeNet-5 on the built-in MNIST
subset, {config.epochs} epoch per offspring, 1 training thread per job) on {machine()}, the
same four jobs on each executor, run twice in one process (`python benchmarks/executors.py`).
*first* includes starting the workers; *per job* is the time inside the worker (load, train,
write back, score with onnxruntime); *overhead* is `(warm wall x slots - sum of per-job
seconds) / jobs`: serialization, scheduling and transfer (about {payload / 1e6:.1f} MB of
task data and offspring per job), plus idle slots. Trained models and scores identical on
all three: **{same}**.

| executor | slots | first call (s) | warm call (s) | per job (s) | overhead per job (s) |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}

On Ray, an offspring job is a Ray task (`--threads` CPUs, one GPU on a cluster with GPUs);
with `--gpus-per-offspring N > 1` it is a Ray Train `TorchTrainer` of N workers (gloo on CPU,
one GPU each with GPUs) running the same per-rank function as the plain DDP of the local
executors. Latency measurements (`--measure`, `--env latency`) are Ray jobs of their own with
a whole device (one GPU for a GPU runtime, else the runtime's threads, all CPUs of a node for
0), submitted only while no training job of the run is in flight.

{ddp}

{projection}
"""
    print(body)
    if not same:
        raise SystemExit("executors disagree")
    if not args.no_write:
        update_section("executors", body)


def _ddp_line(config: EvolveConfig, split: Split, job: OffspringJob, repeats: int) -> str:
    """Plain torch DDP against Ray Train, one offspring on 2 CPU ranks (min of ``repeats``)."""
    config = replace(config, population=1, gpus_per_offspring=2)
    job = replace(job, training=config.training, ranks=config.gpus_per_offspring)
    walls: dict[str, float] = {}
    inside: dict[str, float] = {}
    models = set()
    for key in ("local", "ray"):
        with make_executor(
            replace(config.execution, executor=key),
            False,
            config.threads,
            config.population,  # type: ignore[arg-type]
        ) as executor:
            for _ in range(repeats):
                start = time.perf_counter()
                (result,) = executor.run([job], split)
                wall = time.perf_counter() - start
                if wall < walls.get(key, float("inf")):
                    walls[key], inside[key] = wall, result.job_seconds
                models.add(result.model)
        print(f"DDP on {key}: {walls[key]:.1f} s (rank 0 inside {inside[key]:.1f} s)", flush=True)
    if len(models) != 1:
        raise SystemExit("plain DDP and Ray Train disagree")
    over = {k: walls[k] - inside[k] for k in walls}
    local, ray = walls["local"], walls["ray"]
    load = os.getloadavg()[0]
    return f"""**Data-parallel retraining of one offspring, 2 CPU ranks (gloo)**, min of
{repeats} runs each (1-minute load average {load:.1f} at the end), same job:
plain torch DDP (2 spawned processes, local executors)
**{local:.1f} s** per job ({over["local"]:.1f} s around rank 0's {inside["local"]:.1f} s of
load, train and score: process spawn, torch import, rendezvous); Ray Train `TorchTrainer`
(Ray executor, warm cluster) **{ray:.1f} s** ({over["ray"]:.1f} s around {inside["ray"]:.1f} s:
trainer controller, worker group start, process group setup), {ray / local:.2f}x the plain
DDP time. Trained models identical: **True**."""


def _projection(args: argparse.Namespace, overhead: float, payload: int) -> str:
    """Generation time of the paper's ResNet-56/CIFAR-10 run on ``args.gpus`` GPUs."""
    from cifar_models import resnet56_onnx

    model_mb = len(resnet56_onnx().SerializeToString()) / 1e6
    cifar_mb = 50_000 * 3 * 32 * 32 * 4 / 1e6
    rounds = -(-args.paper_population // args.gpus)
    per_job = args.gpu_job_s + overhead * (1 + (model_mb + cifar_mb) / (payload / 1e6))
    sequential = args.paper_population * (args.gpu_job_s + overhead)
    pop = args.paper_population
    return f"""**Projection, ResNet-56 on CIFAR-10, population {pop} on {args.gpus}
GPUs (Ray, one GPU per job).** Not measured (no GPU here): a job is assumed to take
{args.gpu_job_s:.0f} GPU seconds (retraining a few epochs). The overhead per job measured above
for Ray ({overhead:.2f} s for {payload / 1e6:.1f} MB) is scaled by the bytes a ResNet-56 job moves
({model_mb:.1f} MB of ONNX each way plus {cifar_mb:.0f} MB of CIFAR-10 training data, shipped once
per generation through the object store and counted here per job as the worst case): about
{per_job:.0f} s per job. With {rounds} round(s) of {args.gpus} parallel jobs a generation takes
about **{rounds * per_job / 60:.1f} min** instead of {sequential / 60:.1f} min one after
another on one GPU ({sequential / (rounds * per_job):.1f}x); selection, synthesis and the file
writes in the driver take well under a second per generation at this size."""


if __name__ == "__main__":
    main()
