"""The run's settings: :class:`EvolveConfig`, composed of the sections each layer owns.

=============  ==============================================  =============================
section        class                                           owned by
=============  ==============================================  =============================
``training``   :class:`~evonnx.retrain.settings.TrainingSettings`    :mod:`evonnx.retrain`
``selection``  :class:`~evonnx.retrain.settings.SelectionSettings`   :mod:`evonnx.retrain`
``encoding``   :class:`~evonnx.genetic.config.EncodingSettings`      :mod:`evonnx.genetic`
``latency``    :class:`~evonnx.latency.settings.MeasurementSettings` :mod:`evonnx.latency`
``execution``  :class:`~evonnx.execute.settings.ExecutionSettings`   :mod:`evonnx.execute`
=============  ==============================================  =============================

Every option has one name, unique across the sections, so ``EvolveConfig(lr=1e-3, keep=0.5)``
routes each keyword to its section and ``config.lr`` reads it back. Adding an option means
adding a field to its section (and a CLI option to its option group); nothing here changes.
A job receives its sections, not the run (:class:`~evonnx.execute.jobs.OffspringJob`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from evonnx.errors import ConfigError, require
from evonnx.execute.settings import ExecutionSettings
from evonnx.genetic.config import EncodingSettings
from evonnx.latency.settings import LatencySettings, MeasurementSettings
from evonnx.retrain.settings import SelectionSettings, TrainingSettings

if TYPE_CHECKING:
    from evonnx.genetic.config import EncodingConfig

SECTIONS: dict[str, type] = {
    "training": TrainingSettings,
    "selection": SelectionSettings,
    "encoding": EncodingSettings,
    "latency": MeasurementSettings,
    "execution": ExecutionSettings,
}
"""The sections of a run's settings, by name, in the order ``lineage.json`` stores them."""

OWNER: dict[str, str] = {f.name: name for name, cls in SECTIONS.items() for f in fields(cls)}
"""Which section holds each option."""

RUN_FIELDS = ("generations", "seed")
"""Options of the run itself (no section)."""


@dataclass(frozen=True, init=False)
class EvolveConfig:
    """Settings of an evolution run (shared by the CLI and the Python API).

    Built from sections, from flat options, or both: ``EvolveConfig(epochs=1, keep=0.5)``
    equals ``EvolveConfig(training=TrainingSettings(epochs=1),
    encoding=EncodingSettings(keep=0.5))``; flat options override the sections given. Reading
    ``config.epochs`` reads ``config.training.epochs``.

    Attributes:
        generations: Last generation to synthesize (generation 1 is the ancestor).
        seed: Seeds sampling, initialization and training.
        training: How offspring are retrained.
        selection: Which offspring survive and when the run stops.
        encoding: How parents are encoded and offspring sampled.
        latency: What the run measures, and the speed-up it aims at.
        execution: Where offspring jobs run.
    """

    generations: int
    seed: int
    training: TrainingSettings
    selection: SelectionSettings
    encoding: EncodingSettings
    latency: MeasurementSettings
    execution: ExecutionSettings

    def __init__(
        self,
        generations: int = 10,
        seed: int = 0,
        training: TrainingSettings | None = None,
        selection: SelectionSettings | None = None,
        encoding: EncodingSettings | None = None,
        latency: MeasurementSettings | None = None,
        execution: ExecutionSettings | None = None,
        **options: Any,
    ) -> None:
        given = {
            "training": training, "selection": selection, "encoding": encoding,
            "latency": latency, "execution": execution,
        }  # fmt: skip
        unknown = sorted(set(options) - set(OWNER))
        if unknown:
            raise TypeError(f"EvolveConfig got unexpected options {unknown}")
        object.__setattr__(self, "generations", generations)
        object.__setattr__(self, "seed", seed)
        for name, cls in SECTIONS.items():
            mine = {k: v for k, v in options.items() if OWNER[k] == name}
            section: Any = given[name] if given[name] is not None else cls()
            object.__setattr__(self, name, replace(section, **mine) if mine else section)
        self.__post_init__()

    def __post_init__(self) -> None:
        env, lat = self.encoding.env, self.latency
        require(
            [
                (self.generations >= 1, "generations must be at least 1"),
                (self.seed >= 0, "seed must be >= 0"),
                (
                    lat.target_speedup is None or env == "latency",
                    "target_speedup needs --env latency",
                ),
                (
                    lat.runtime is not None or env == "latency" or not lat.tuned,
                    "--batch, --runtime-threads, --fp16 and --latency-statistic need --runtime",
                ),
            ]
        )
        self.measurement()  # checks the runtime settings

    def __getattr__(self, name: str) -> Any:
        """A section's option by its flat name (``config.lr`` is ``config.training.lr``)."""
        section = OWNER.get(name)
        if section is None:
            raise AttributeError(f"EvolveConfig has no option {name!r}")
        return getattr(object.__getattribute__(self, section), name)

    def measurement(self) -> LatencySettings | None:
        """Latency measurement settings, or ``None`` when nothing is measured."""
        return self.latency.latency(self.encoding.env == "latency")

    def encoding_config(self) -> EncodingConfig:
        """Genetic-encoding settings of the sampler."""
        return self.encoding.encoding()

    def options(self) -> dict[str, Any]:
        """Every option by its flat name (the run's fields and each section's)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in RUN_FIELDS}
        for name in SECTIONS:
            out.update(asdict(getattr(self, name)))
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, by section (``lineage.json`` version 2)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in RUN_FIELDS}
        out.update({name: asdict(getattr(self, name)) for name in SECTIONS})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvolveConfig:
        """Inverse of :meth:`to_dict`; a flat dict (``lineage.json`` version 1) is read too.

        Raises:
            ConfigError: An option is out of range.
            TypeError: An unknown option or section.
        """
        if not any(isinstance(data.get(name), dict) for name in SECTIONS):
            return cls(**data)  # version 1: every option at the top level
        sections = {name: SECTIONS[name](**data.get(name, {})) for name in SECTIONS}
        extra = sorted(set(data) - set(SECTIONS) - set(RUN_FIELDS))
        if extra:
            raise ConfigError(f"unknown settings {extra}")
        return cls(**{k: data[k] for k in RUN_FIELDS if k in data}, **sections)
