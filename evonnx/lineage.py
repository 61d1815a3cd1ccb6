"""Run settings and lineage records of an evolution run (no torch import)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from evonnx.encoding import EncodingConfig
from evonnx.environments import Environment, MacBudget, SynapseBudget
from evonnx.errors import EvonnxError

LINEAGE_VERSION = 1
# Fields a resumed run may change; every other config field must match the original run.
RESUMABLE = frozenset({"generations", "max_drop"})


class RunDirectoryError(EvonnxError):
    """The output directory holds something other than this run."""


@dataclass(frozen=True)
class EvolveConfig:
    """Settings of an evolution run (shared by the CLI and the Python API).

    Attributes:
        generations: Last generation to synthesize (generation 1 is the ancestor).
        max_drop: Stop once top-1 accuracy (the fitness) falls more than this below
            generation 1.
        val_fraction: Hold out this fraction of the training split (stratified) as a
            validation set that selects offspring and decides when to stop; ``0`` uses the
            test split for both, as the paper does. Test accuracy is always reported.
        keep: Budget of the environment: fraction of the parent's nonzero synapses
            (``env="synapses"``) or MACs (``env="macs"``) an offspring may keep.
        env: Environment model.
        cluster: ``"filter"`` (output filter/neuron) or ``"kernel"`` (k×k slice) clusters.
        round_to: Keep channel counts multiples of this (accelerator friendliness).
        cluster_keep: Expected fraction of clusters surviving each generation; ``None``
            shares one environmental factor between clusters and synapses (the paper).
        min_channels: Fewest channels any prunable group keeps.
        population: Offspring synthesized per generation; the most accurate survives.
        init: ``"inherit"`` the parent's surviving weights or start from ``"random"`` ones.
        epochs: Retraining epochs per offspring.
        lr: Initial learning rate.
        batch_size: Training batch size.
        optimizer: ``"sgd"`` (momentum 0.9) or ``"adam"``.
        weight_decay: L2 penalty.
        seed: Seeds sampling, initialization and training.
        threads: CPU threads for training (None: torch's default).
        max_batches: Cap on batches per epoch (smoke tests).
    """

    generations: int = 10
    max_drop: float = 0.04
    val_fraction: float = 0.0
    keep: float = 0.8
    env: Literal["synapses", "macs"] = "synapses"
    cluster: Literal["filter", "kernel"] = "filter"
    round_to: int | None = None
    cluster_keep: float | None = None
    min_channels: int = 1
    population: int = 1
    init: Literal["inherit", "random"] = "inherit"
    epochs: int = 2
    lr: float = 0.01
    batch_size: int = 64
    optimizer: Literal["sgd", "adam"] = "sgd"
    weight_decay: float = 0.0
    seed: int = 0
    threads: int | None = None
    max_batches: int | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.generations >= 1, "generations must be at least 1"),
            (0.0 <= self.max_drop <= 1.0, "max_drop must be in [0, 1]"),
            (0.0 <= self.val_fraction < 1.0, "val_fraction must be in [0, 1)"),
            (0.0 < self.keep <= 1.0, "keep must be in (0, 1]"),
            (self.env in ("synapses", "macs"), "env must be 'synapses' or 'macs'"),
            (self.cluster in ("filter", "kernel"), "cluster must be 'filter' or 'kernel'"),
            (self.population >= 1, "population must be at least 1"),
            (self.init in ("inherit", "random"), "init must be 'inherit' or 'random'"),
            (self.round_to is None or self.round_to >= 1, "round_to must be positive"),
            (
                self.cluster_keep is None or 0.0 < self.cluster_keep <= 1.0,
                "cluster_keep must be in (0, 1]",
            ),
            (
                self.cluster_keep is None or (self.cluster == "filter" and self.env == "synapses"),
                "cluster_keep needs --cluster filter and --env synapses",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise EvonnxError(message)

    def environment(self) -> Environment:
        """The environmental factor model."""
        return MacBudget(self.keep) if self.env == "macs" else SynapseBudget(self.keep)

    def encoding(self) -> EncodingConfig:
        """Genetic-encoding settings."""
        return EncodingConfig(
            keep=self.keep,
            environment=self.environment(),
            cluster_mode=self.cluster,
            round_to=self.round_to,
            min_channels=self.min_channels,
            cluster_keep=self.cluster_keep,
            synapse_level=self.env == "synapses",
        )


@dataclass(frozen=True)
class GenerationRecord:
    """One row of the lineage: the surviving offspring of a generation."""

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
    candidates: tuple[float, ...] = ()
    val_accuracy: float | None = None

    @property
    def fitness(self) -> float:
        """What selection and the stopping rule use: validation accuracy, else test accuracy."""
        return self.accuracy if self.val_accuracy is None else self.val_accuracy


@dataclass(frozen=True)
class Lineage:
    """A whole run: configuration, data set and one record per finished generation."""

    ancestor_sha256: str
    data: str
    config: EvolveConfig
    records: tuple[GenerationRecord, ...]

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
            "config": asdict(self.config),
            "generations": [asdict(r) for r in self.records],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lineage:
        """Inverse of :meth:`to_dict`."""
        if data.get("version") != LINEAGE_VERSION:
            raise RunDirectoryError(f"unsupported lineage version {data.get('version')}")
        records = tuple(
            GenerationRecord(**{**r, "candidates": tuple(r.get("candidates", ()))})
            for r in data["generations"]
        )
        return cls(data["ancestor_sha256"], data["data"], EvolveConfig(**data["config"]), records)
