"""Run settings and lineage records of an evolution run (no torch import)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

from evonnx.errors import ConfigError, RunDirectoryError
from evonnx.genetic import DEFAULT_MIN_FRACTION, EncodingConfig
from evonnx.genetic.environments import Environment, MacBudget, SynapseBudget
from evonnx.latency.budget import LatencySettings
from evonnx.retrain.settings import Optimizer, recipe_problem
from evonnx.runtimes import RuntimeSettings

LINEAGE_VERSION = 1
# Fields a resumed run may change; every other config field must match the original run.
# Where offspring jobs run does not change the lineage, so it may change on resume too.
# Whether speed-ups are measured (``measure``) changes no model file either.
SPEEDUP_RULE = "a speed-up is a finite number above 1 (1.5: 1.5 times as fast as the ancestor)"
"""What a speed-up target (``--speedup``, ``--target-speedup``) may be."""

RESUMABLE = frozenset({"generations", "max_drop", "patience", "executor", "ray_address", "measure"})


@dataclass(frozen=True)
class EvolveConfig:
    """Settings of an evolution run (shared by the CLI and the Python API).

    Attributes:
        generations: Last generation to synthesize (generation 1 is the ancestor).
        max_drop: Budget: how far the fitness (the task's score on the selection split)
            may fall below generation 1.
        val_fraction: Fraction of the training split (stratified) a classification task
            holds out as its validation split (a user task brings its own).
        select_on: ``"val"``: offspring are selected, and the budget checked, on the
            validation split; the test score is only reported (honest). ``"test"``: on the
            test split, as the paper did (the validation split is then not held out).
        patience: Stop after this many consecutive generations over the budget. A
            generation over it is recorded but not bred from: the next one samples again
            from the latest generation within the budget (a retry with fresh seeds; one
            generation's score is noisy, about ±0.8 points on 400 validation images). The
            best generation is the last one within the budget; 1 is the paper's rule.
        distill: Temperature of distillation from the parent while retraining (its outputs
            are soft targets, weighted 0.5 against the task's loss); ``None`` turns it off.
            On by default (T=4): on the paper's LeNet-5, validation-selected runs with it
            stayed within the test budget for 3 seeds of 3, without it for 1 of 3.
        deterministic: Retrain with deterministic torch algorithms (see
            :func:`evonnx.retrain.deterministic_mode`).
        keep: Budget of the environment: fraction of the parent's nonzero synapses
            (``env="synapses"``), MACs (``env="macs"``) or measured latency
            (``env="latency"``) an offspring may keep.
        env: Environment model.
        runtime: Where latency is measured (``env="latency"``: default ``ort-cpu``; with the
            other environments a runtime adds measured latency to every lineage row).
        latency_batch: Batch size latency is measured at.
        latency_statistic: A model's latency: the ``"min"`` (default: robust on machines
            shared with other jobs) or the ``"median"`` of its timed runs.
        runtime_threads: ``ort-cpu`` intra-op threads (0: onnxruntime's default).
        fp16: Measure in fp16 (``torch-cuda``, ``tensorrt``).
        target_speedup: ``env="latency"``: the budget stops shrinking at this speed-up over
            the ancestor.
        depth: Removable residual branches are clusters too (filter clusters); ``None``
            (default): on with ``env="latency"`` and filter clusters.
        cluster: ``"filter"`` (output filter/neuron) or ``"kernel"`` (k×k slice) clusters.
        round_to: Keep channel counts multiples of this (accelerator friendliness).
        cluster_keep: Expected fraction of clusters surviving each generation; ``None``
            shares one environmental factor between clusters and synapses (the paper).
        min_channels: Fewest channels any prunable group keeps.
        min_fraction: Per-layer floor: each generation keeps at least this fraction of
            every prunable group's channels of its parent (0: off).
        population: Offspring synthesized per generation; the most accurate survives.
        init: ``"inherit"`` the parent's surviving weights or start from ``"random"`` ones.
        epochs: Retraining epochs per offspring (unless ``steps`` is set).
        lr: Peak learning rate. The default recipe (SGD, momentum 0.9, lr 1e-3, 10% warm-up
            then cosine, BatchNorm frozen) is the one ``benchmarks/retrain_defaults.py`` chose:
            it never lowered an unpruned pretrained model and recovered pruned ones best
            (SGD at 0.01, the earlier default, took a pretrained text-line classifier from
            96.5% to 72.3% in 30 steps).
        batch_size: Training batch size.
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"`` or ``"adamw"``.
        weight_decay: Weight decay (L2 for SGD and Adam, decoupled for AdamW).
        seed: Seeds sampling, initialization and training.
        threads: CPU threads for training (None: torch's default).
        max_batches: Cap on batches per epoch (smoke tests).
        executor: Where offspring are retrained: ``"local"`` (one after another in this
            process), ``"process"`` (a pool of processes on this machine) or ``"ray"``
            (see :mod:`evonnx.execute.executors`). The lineage does not depend on it on CPU when
            ``threads`` is set.
        ray_address: Ray cluster address (``"auto"``: a running cluster); ``None`` starts a
            local one.
        gpus_per_offspring: Data-parallel ranks (torch DDP) retraining each offspring: one
            GPU each, or on CPU one process each (gloo); see :mod:`evonnx.execute.ddp`.
        steps: Retrain each offspring for this many optimizer steps instead of ``epochs``
            passes over the data.
        momentum: SGD momentum.
        schedule: Learning rate after the warm-up: ``"cosine"`` (per step, towards 0) or
            ``"constant"``.
        warmup: Fraction of the steps over which the learning rate rises linearly first.
        clip_grad: Clip the gradients' global L2 norm to this (None: no clipping).
        freeze_bn: Keep BatchNorm layers in eval mode while retraining (running statistics
            used and kept; scale and shift train).
    """

    generations: int = 10
    max_drop: float = 0.04
    val_fraction: float = 0.1
    select_on: Literal["val", "test"] = "val"
    patience: int = 2
    distill: float | None = 4.0
    deterministic: bool = False
    keep: float = 0.8
    env: Literal["synapses", "macs", "latency"] = "synapses"
    cluster: Literal["filter", "kernel"] = "filter"
    round_to: int | None = None
    cluster_keep: float | None = None
    min_channels: int = 1
    min_fraction: float = DEFAULT_MIN_FRACTION
    population: int = 1
    init: Literal["inherit", "random"] = "inherit"
    epochs: int = 2
    lr: float = 0.001
    batch_size: int = 64
    optimizer: Optimizer = "sgd"
    weight_decay: float = 0.0
    seed: int = 0
    threads: int | None = None
    max_batches: int | None = None
    runtime: str | None = None
    latency_batch: int = 1
    latency_statistic: Literal["median", "min"] = "min"
    runtime_threads: int = 0
    fp16: bool = False
    target_speedup: float | None = None
    depth: bool | None = None
    executor: Literal["local", "process", "ray"] = "local"
    ray_address: str | None = None
    gpus_per_offspring: int = 1
    measure: bool = True
    # ---- retraining recipe (issue 21; see :mod:`evonnx.retrain.recipe`) ----
    steps: int | None = None
    momentum: float = 0.9
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup: float = 0.1
    clip_grad: float | None = None
    freeze_bn: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.generations >= 1, "generations must be at least 1"),
            (
                0.0 <= self.max_drop < math.inf,
                "max_drop must be a number >= 0 (in the score's units)",
            ),
            (0.0 < self.lr < math.inf, "lr must be a positive number (not NaN or infinite)"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (self.select_on in ("val", "test"), "select_on must be 'val' or 'test'"),
            (self.patience >= 1, "patience must be at least 1"),
            (
                self.distill is None or 0.0 < self.distill < math.inf,
                "distill temperature must be a number > 0 (not NaN or infinite), or off",
            ),
            (0.0 < self.keep <= 1.0, "keep must be in (0, 1]"),
            (
                self.env in ("synapses", "macs", "latency"),
                "env must be 'synapses', 'macs' or 'latency'",
            ),
            (
                self.target_speedup is None or self.env == "latency",
                "target_speedup needs --env latency",
            ),
            (
                self.target_speedup is None or 1.0 < self.target_speedup < math.inf,
                f"target_speedup {self.target_speedup} is not allowed: {SPEEDUP_RULE}",
            ),
            (self.latency_batch >= 1, "latency_batch must be at least 1"),
            (self.runtime_threads >= 0, "runtime_threads must be >= 0"),
            (not self.depth or self.cluster == "filter", "depth needs --cluster filter"),
            (
                self.runtime is not None
                or self.env == "latency"
                or (
                    self.latency_batch == 1
                    and not self.runtime_threads
                    and not self.fp16
                    and self.latency_statistic == "min"
                ),
                "--batch, --runtime-threads, --fp16 and --latency-statistic need --runtime",
            ),
            (self.cluster in ("filter", "kernel"), "cluster must be 'filter' or 'kernel'"),
            (
                self.executor in ("local", "process", "ray"),
                "executor must be 'local', 'process' or 'ray'",
            ),
            (
                self.ray_address is None or self.executor == "ray",
                "ray_address needs --executor ray",
            ),
            (self.population >= 1, "population must be at least 1"),
            (0.0 <= self.min_fraction <= 1.0, "min_fraction must be in [0, 1]"),
            (self.seed >= 0, "seed must be >= 0"),
            (self.gpus_per_offspring >= 1, "gpus_per_offspring must be at least 1"),
            (self.init in ("inherit", "random"), "init must be 'inherit' or 'random'"),
            (self.round_to is None or self.round_to >= 1, "round_to must be positive"),
            (
                self.cluster_keep is None or 0.0 < self.cluster_keep <= 1.0,
                "cluster_keep must be in (0, 1]",
            ),
            (
                self.cluster_keep is None or self.env == "synapses",
                "cluster_keep needs --env synapses",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self._check_recipe()
        self.latency()  # checks the runtime settings

    def _check_recipe(self) -> None:
        """Refuse retraining settings that are not finite and in range (NaN included)."""
        if not (0.0 < self.lr < math.inf):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be at least 1")
        problem = recipe_problem(
            self.optimizer, self.schedule, self.momentum, self.weight_decay, self.warmup,
            self.steps, self.clip_grad,
        )  # fmt: skip
        if problem is not None:
            raise ConfigError(problem)

    def environment(self) -> Environment:
        """The environmental factor model (``env="latency"``: the MAC budget stands in until
        a parent's latency model replaces it, see :mod:`evonnx.latency`)."""
        return SynapseBudget(self.keep) if self.env == "synapses" else MacBudget(self.keep)

    def latency(self) -> LatencySettings | None:
        """Latency measurement settings, or ``None`` when nothing is measured."""
        if self.runtime is None and self.env != "latency":
            return None
        rt = RuntimeSettings(
            self.runtime or "ort-cpu",
            self.runtime_threads,
            self.fp16,
            statistic=self.latency_statistic,
        )
        return LatencySettings(rt, batch=self.latency_batch)

    def encoding(self) -> EncodingConfig:
        """Genetic-encoding settings."""
        return EncodingConfig(
            keep=self.keep,
            environment=self.environment(),
            cluster_mode=self.cluster,
            round_to=self.round_to,
            min_channels=self.min_channels,
            min_fraction=self.min_fraction,
            cluster_keep=self.cluster_keep,
            synapse_level=self.env == "synapses",
            depth=self.depth
            if self.depth is not None
            else (self.env == "latency" and self.cluster == "filter"),
        )


@dataclass(frozen=True)
class GenerationRecord:
    """One row of the lineage: the surviving offspring of a generation.

    ``candidates`` holds every offspring's fitness (``None``: it failed) and ``failures``
    why each failed (``None``: it did not), in the order they were sampled.
    """

    generation: int
    parent: int | None
    seed: int | None
    file: str
    accuracy: float
    ae: float
    ce: float
    mac_ratio: float
    params: int
    synapses: int
    nonzero_synapses: int
    clusters: int
    live_clusters: int
    macs: int
    train_seconds: float
    candidates: tuple[float | None, ...] = ()
    val_accuracy: float | None = None
    latency_ms: float | None = None
    speedup: float | None = None
    sha256: str | None = None
    failures: tuple[str | None, ...] = ()

    @property
    def fitness(self) -> float:
        """What selection and the stopping rule use: validation accuracy, else test accuracy."""
        return self.accuracy if self.val_accuracy is None else self.val_accuracy


@dataclass(frozen=True)
class Lineage:
    """A whole run: configuration, data set and one record per finished generation.

    ``data_sha256`` is the content hash of the run's data (:meth:`Task.fingerprint`), or
    ``None`` when the task gives none (then a resumed run only checks the name ``data``).
    ``score_percent`` is the task's :attr:`~evonnx.Task.score_percent`: reports show scores
    as percentages (accuracy) or as plain numbers (mAP, IoU, a negative loss...).
    """

    ancestor_sha256: str
    data: str
    config: EvolveConfig
    records: tuple[GenerationRecord, ...]
    data_sha256: str | None = None
    score_percent: bool = True

    def show_score(self, value: float | None, unit: bool = False) -> str:
        """``value`` as reports show it: ``97.50`` (``97.50%`` with ``unit``) for an accuracy,
        ``0.8123`` for any other score, ``-`` for none."""
        return show_score(value, self.score_percent, unit)

    @property
    def best(self) -> GenerationRecord:
        """The last generation within the accuracy budget."""
        first = self.records[0].fitness
        ok = [r for r in self.records if r.fitness >= first - self.config.max_drop - 1e-12]
        return ok[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``lineage.json``)."""
        return {
            "version": LINEAGE_VERSION,
            "ancestor_sha256": self.ancestor_sha256,
            "data": self.data,
            "data_sha256": self.data_sha256,
            "score_percent": self.score_percent,
            "config": asdict(self.config),
            # test_score/val_score name what accuracy/val_accuracy hold for any task's score
            "generations": [
                {**asdict(r), "test_score": r.accuracy, "val_score": r.val_accuracy}
                for r in self.records
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Lineage:
        """Inverse of :meth:`to_dict`.

        Raises:
            RunDirectoryError: ``data`` is not a lineage with generations 1, 2, ... in order.
        """
        if not isinstance(data, dict):
            raise RunDirectoryError(f"expected a JSON object, found {type(data).__name__}")
        if data.get("version") != LINEAGE_VERSION:
            raise RunDirectoryError(f"unsupported lineage version {data.get('version')}")
        gens = data.get("generations")
        if not isinstance(gens, list) or not gens or not all(isinstance(r, dict) for r in gens):
            raise RunDirectoryError("'generations' must be a non-empty list of records")
        if not isinstance(data.get("config"), dict):
            raise RunDirectoryError("'config' must be an object")
        try:
            records = tuple(GenerationRecord(**_record_fields(r)) for r in gens)
            config = EvolveConfig(**data["config"])
            lineage = cls(
                data["ancestor_sha256"], data["data"], config, records, data.get("data_sha256"),
                bool(data.get("score_percent", True)),
            )  # fmt: skip
        except (TypeError, KeyError, ValueError) as exc:
            raise RunDirectoryError(f"malformed lineage ({type(exc).__name__}: {exc})") from exc
        if [r.generation for r in records] != list(range(1, len(records) + 1)):
            raise RunDirectoryError("generations must be numbered 1, 2, ... in order")
        odd = [r.file for r in records if r.file != f"gen_{r.generation:03d}.onnx"]
        if odd:
            raise RunDirectoryError(f"unexpected model file names {odd}")
        return lineage


def _record_fields(r: dict[str, Any]) -> dict[str, Any]:
    """A stored generation's fields (``test_score``/``val_score`` are aliases, and a lineage
    may hold only them)."""
    fields = {k: v for k, v in r.items() if k not in ("test_score", "val_score")}
    fields["candidates"] = tuple(r.get("candidates", ()))
    fields["failures"] = tuple(r.get("failures", ()))
    fields.setdefault("accuracy", r.get("test_score"))
    fields.setdefault("val_accuracy", r.get("val_score"))
    return fields


def show_score(value: float | None, percent: bool, unit: bool = False) -> str:
    """A task's score as reports show it.

    Args:
        value: The score (``None``: not measured, shown as ``-``).
        percent: The score is an accuracy in [0, 1], shown as a percentage (``97.50``);
            otherwise it is shown as a plain number (``0.8123``, ``-1.234``).
        unit: Append ``%`` to percentages.
    """
    if value is None:
        return "-"
    if percent:
        return f"{100 * value:.2f}{'%' if unit else ''}"
    return f"{value:.4g}"
