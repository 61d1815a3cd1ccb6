"""One home for errors (evonnx.errors) and settings built from named options."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable

import click
import numpy as np
import pytest

import evonnx
from evonnx.cli.demo import demo
from evonnx.cli.evolve import evolve, make_config
from evonnx.cli.fidelity_options import FIDELITY_OPTIONS
from evonnx.data import Dataset
from evonnx.errors import ConfigError, EvonnxError
from evonnx.evolution.lineage import EvolveConfig
from evonnx.genetic import EncodingConfig
from evonnx.genetic.environments import SynapseBudget
from evonnx.retrain import TrainConfig
from evonnx.retrain.task import ClassificationTask


def tiny_dataset() -> Dataset:
    """Eight samples of two classes: too few for a 0.1% validation split."""
    return Dataset(np.zeros((8, 1, 2, 2)), np.arange(8) % 2, np.zeros((2, 1, 2, 2)), [0, 1])


def test_every_error_class_lives_in_errors_py() -> None:
    found = {}
    for info in pkgutil.walk_packages(evonnx.__path__, "evonnx."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("evonnx")
            ):
                found[name] = obj.__module__
    assert found and set(found.values()) == {"evonnx.errors"}, found
    assert issubclass(ConfigError, EvonnxError) and issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "build",
    [
        lambda: EvolveConfig(keep=0.0),
        lambda: EvolveConfig(cluster_keep=0.5, env="macs"),
        lambda: TrainConfig(epochs=0),
        lambda: TrainConfig(optimizer="rmsprop"),  # type: ignore[arg-type]
        lambda: EncodingConfig(keep=1.5),
        lambda: EncodingConfig(min_channels=0),
        lambda: SynapseBudget(0.0),
        lambda: ClassificationTask(tiny_dataset(), val_fraction=0.001),
    ],
)
def test_bad_settings_raise_config_error(build: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        build()


def test_make_config_takes_named_options_only() -> None:
    config = make_config(keep=0.5, lr=0.2, epochs=3)
    assert (config.keep, config.lr, config.epochs) == (0.5, 0.2, 3)
    with pytest.raises(TypeError):
        make_config(0.5)  # type: ignore[misc]
    with pytest.raises(TypeError):
        make_config(not_a_field=1)


@pytest.mark.parametrize("command", [evolve, demo])
def test_every_evolution_option_is_a_config_field(command: click.Command) -> None:
    """An option reaches EvolveConfig by name, or the command handles it itself."""
    handled = {
        "model", "data", "task_spec", "out", "resume", "ancestor_epochs", "arch", "input_shapes",
        "normalize", "inputs", *FIDELITY_OPTIONS,  # the --inputs task's, not run settings
    }  # fmt: skip
    names = set(EvolveConfig().options())  # every section's fields, by their flat names
    options = {p.name for p in command.params if isinstance(p, click.Option)}
    assert options - handled <= names, sorted(options - handled - names)
