"""Lineage records of an evolution run: one row per generation, with the run's settings
(no torch import)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from evonnx.errors import ConfigError, RunDirectoryError
from evonnx.evolution.settings import EvolveConfig

LINEAGE_VERSION = 2
"""Version 2 stores the settings by section (:meth:`EvolveConfig.to_dict`); version 1 stored
them flat, and is still read (a version-1 run folder resumes)."""
READABLE_VERSIONS = (1, 2)

# Options a resumed run may change; every other option must match the original run.
# Where offspring jobs run does not change the lineage, so it may change on resume too.
# Whether speed-ups are measured (``measure``) changes no model file either.
RESUMABLE = frozenset({"generations", "max_drop", "patience", "executor", "ray_address", "measure"})


@dataclass(frozen=True)
class GenerationRecord:
    """One row of the lineage: the surviving offspring of a generation.

    ``candidates`` holds every offspring's fitness (``None``: it failed) and ``failures``
    why each failed (``None``: it did not), in the order they were sampled.
    ``train_seconds`` and ``score_seconds`` are summed over the generation's offspring: the
    time spent retraining them, and scoring them once trained; the rest of a generation's
    wall time is the tool's (synthesis, latency fit, surgery, conversion, measurement).
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
    score_seconds: float = 0.0

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
            "config": self.config.to_dict(),
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
        if data.get("version") not in READABLE_VERSIONS:
            raise RunDirectoryError(f"unsupported lineage version {data.get('version')}")
        gens = data.get("generations")
        if not isinstance(gens, list) or not gens or not all(isinstance(r, dict) for r in gens):
            raise RunDirectoryError("'generations' must be a non-empty list of records")
        if not isinstance(data.get("config"), dict):
            raise RunDirectoryError("'config' must be an object")
        try:
            records = tuple(GenerationRecord(**_record_fields(r)) for r in gens)
            config = EvolveConfig.from_dict(data["config"])
            lineage = cls(
                data["ancestor_sha256"], data["data"], config, records, data.get("data_sha256"),
                bool(data.get("score_percent", True)),
            )  # fmt: skip
        except (TypeError, KeyError, ValueError, ConfigError) as exc:
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
