"""Tasks: what offspring are trained on and how the written ONNX files are scored.

A :class:`Task` gives an evolution run its training batches, a loss, a hook for
distillation from the parent network, and a score (higher is better) that onnxruntime
computes on a written ``.onnx`` file, on a validation split (which selects offspring and
decides when to stop) and a test split (reported). :class:`ClassificationTask` is the
built-in top-1 task that ``evonnx evolve --data`` uses; ``--task path/to/task.py:NAME``
loads any other with :func:`load_task`.
"""

from __future__ import annotations

import abc
import hashlib
import importlib.util
import logging
import math
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import onnx

from evonnx.data.dataset import Dataset, check_labels, check_matches, stratified_split
from evonnx.errors import (
    ConfigError,
    EvonnxError,
    NonFiniteScoreError,
    TaskError,
    UnsupportedModelError,
)
from evonnx.model.files import save_model
from evonnx.model.textio import dangling_link
from evonnx.retrain import guard

if TYPE_CHECKING:
    from evonnx.retrain.settings import SelectionSettings

if TYPE_CHECKING:  # torch and onnxruntime load lazily: `import evonnx` stays light
    import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")

SplitName = Literal["val", "test"]
"""The split a score is computed on."""

TrainData = Dataset | Iterable[tuple[Any, Any]]
"""What :meth:`Task.train_batches` returns: a re-iterable of ``(inputs, targets)`` batches
(a list, a torch ``DataLoader``...) or a :class:`~evonnx.data.Dataset` (its training split is
shuffled with each offspring's seed)."""

DEFAULT_VAL_FRACTION = 0.1
"""Fraction of the training data :class:`ClassificationTask` holds out for validation."""

USER_TASK_PREFIX = "evonnx_user_task_"
"""Module-name prefix :func:`load_task` gives user task files."""


class Task(abc.ABC):
    """What an evolution run optimizes.

    Subclass it and implement :meth:`train_batches`, :meth:`loss` and :meth:`score`. A batch
    is an ``(inputs, targets)`` pair: ``inputs`` is a tensor, or a tuple with one tensor per
    graph input (multi-input graphs); ``targets`` is anything :meth:`loss` understands. The
    network's outputs reach :meth:`loss` as one tensor, or a tuple for multi-output graphs.

    Attributes:
        name: Names the task in reports; a resumed run must use a task of the same name.
        score_percent: The score is an accuracy in [0, 1], shown as a percentage. ``False``
            (the default) shows it as a plain number: mAP, IoU, a negative loss...
    """

    name: str = "task"
    score_percent: bool = False

    @abc.abstractmethod
    def train_batches(self) -> TrainData:
        """Training data, iterated once per epoch (never the validation or test split)."""

    @abc.abstractmethod
    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Scalar training loss of the network ``outputs`` on one batch."""

    @abc.abstractmethod
    def score(self, onnx_path: Path, split: SplitName) -> float:
        """Score of the ONNX file on ``split`` (``"val"`` or ``"test"``), higher is better.

        Compute it with onnxruntime (e.g. :func:`evonnx.retrain.predict_onnx`); the metric
        is the task's choice (top-1, mAP, IoU, a negative loss...).
        """

    @property
    def has_validation(self) -> bool:
        """Whether :meth:`score` accepts ``"val"``; without it only ``select_on="test"`` runs."""
        return True

    def distill_loss(
        self, outputs: Any, teacher: Any, targets: Any, temperature: float
    ) -> torch.Tensor:
        """Loss pulling ``outputs`` towards the parent's ``teacher`` outputs (distillation).

        The default is the mean squared error over every output tensor; classification
        overrides it with KL divergence at ``temperature``.
        """
        import torch
        from torch.nn import functional as F

        del targets, temperature
        pairs = list(zip(_tensors(outputs), _tensors(teacher), strict=True))
        return torch.stack([F.mse_loss(s, t) for s, t in pairs]).mean()

    def check(self, model: onnx.ModelProto) -> None:
        """Raise an :class:`~evonnx.errors.EvonnxError` if the task cannot use ``model``."""
        del model

    def training_graph(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The graph offspring (and the parent, when distilling) train as; default ``model``.

        It must keep every initializer of ``model`` (trained weights are written back into
        ``model`` by name), e.g. :func:`evonnx.retrain.heads.logits_view` to train on the logits
        before a terminal Softmax. :meth:`loss` receives this graph's outputs.
        """
        return model

    def fingerprint(self) -> str | None:
        """Content hash of the task's data, stored in ``lineage.json``; a resumed run must
        match it. ``None`` (the default) checks only the task's name on resume."""
        return None


class ClassificationTask(Task):
    """Top-1 classification on an in-memory :class:`~evonnx.data.Dataset`.

    The validation split is ``val`` if given, else ``val_fraction`` of the training split,
    stratified by class and drawn with ``seed`` (:func:`validation_indices`); offspring train
    on the rest. The ancestor should not have been trained on that split, or its own
    validation score is inflated and the drop of every offspring overstated.

    Args:
        data: Training and test data.
        val_fraction: Fraction of the training split held out; ``0`` for no validation.
        seed: Seeds the stratified split.
        val: An explicit ``(x, y)`` validation split (``val_fraction`` is then ignored).
    """

    score_percent = True

    def __init__(
        self,
        data: Dataset,
        val_fraction: float = DEFAULT_VAL_FRACTION,
        seed: int = 0,
        val: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.name = data.name
        self.data = data
        self.val = val
        self.fit = data
        if val is None and val_fraction > 0:
            fit, held = validation_indices(data, val_fraction, seed)
            if not len(held) or not len(fit):
                raise ConfigError(
                    f"val_fraction {val_fraction} of {len(data.y_train)} training samples leaves "
                    f"{len(fit)} to train on and {len(held)} to validate on; both need at "
                    "least one"
                )
            self.val = (data.x_train[held], data.y_train[held])
            self.fit = replace(data, x_train=data.x_train[fit], y_train=data.y_train[fit])

    @property
    def has_validation(self) -> bool:
        """True when a validation split was held out or given."""
        return self.val is not None

    def train_batches(self) -> TrainData:
        """The training split without the validation samples."""
        return self.fit

    def training_graph(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """``model`` trained on its logits when it ends in Softmax/LogSoftmax (cross-entropy
        of probabilities trains badly, and KL of an underflowed one is NaN)."""
        from evonnx.retrain.heads import logits_view

        return logits_view(model)

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Cross-entropy of the class logits."""
        from torch.nn import functional as F

        return F.cross_entropy(_logits(outputs), targets)

    def distill_loss(
        self, outputs: Any, teacher: Any, targets: Any, temperature: float
    ) -> torch.Tensor:
        """``T² · KL(softmax(teacher / T) ‖ softmax(outputs / T))`` (Hinton et al.)."""
        from torch.nn import functional as F

        del targets
        t = float(temperature)
        log_p = F.log_softmax(_logits(outputs) / t, dim=1)
        log_q = F.log_softmax(_logits(teacher) / t, dim=1)
        return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * t * t

    def score(self, onnx_path: Path, split: SplitName) -> float:
        """Top-1 accuracy, measured with onnxruntime."""
        from evonnx.retrain.evaluate import evaluate_onnx

        if split == "test":
            return evaluate_onnx(onnx_path, self.data.x_test, self.data.y_test)
        if self.val is None:
            raise ConfigError(f"task {self.name!r} has no validation split")
        return evaluate_onnx(onnx_path, *self.val)

    def check(self, model: onnx.ModelProto) -> None:
        """One graph input whose shape fits the samples; every label below the output size."""
        weights = {t.name for t in model.graph.initializer}
        inputs = [i for i in model.graph.input if i.name not in weights]
        if len(inputs) != 1:
            raise UnsupportedModelError(
                f"classification needs a model with one input, found {len(inputs)}; "
                "write a Task for multi-input models (--task)"
            )
        dims = inputs[0].type.tensor_type.shape.dim
        check_matches(self.data, [d.dim_value if d.HasField("dim_value") else None for d in dims])
        from evonnx.retrain.evaluate import predict_onnx

        scores = predict_onnx(model, self.data.x_test[:1])[0]
        check_labels(self.data, int(np.prod(scores.shape[1:])))

    def fingerprint(self) -> str:
        """SHA-256 of the data set's arrays and of the validation split."""
        if self.val is None:
            return self.data.fingerprint()
        digest = hashlib.sha256(self.data.fingerprint().encode())
        for arr in self.val:
            digest.update(np.ascontiguousarray(arr).tobytes())
        return digest.hexdigest()

    def __repr__(self) -> str:
        val = 0 if self.val is None else len(self.val[1])
        return f"ClassificationTask({self.name!r}, train={len(self.fit.y_train)}, val={val})"


@dataclass(frozen=True)
class Split:
    """A run's task paired with its selection split: not a data split (see the glossary in
    ``docs/design.md``; the name is kept for compatibility).

    ``select_on`` names the data split whose score is the fitness that selects offspring
    (``"val"`` or ``"test"``). :meth:`score` always scores a written file on ``"test"``,
    and on ``"val"`` too unless selection is on ``"test"``.
    """

    task: Task
    select_on: str

    def score(self, path: Path) -> tuple[float, float | None]:
        """(test score, validation score or None when selecting on test) of a written file."""
        test = self._score(path, "test")
        return test, None if self.select_on == "test" else self._score(path, "val")

    def _score(self, path: Path, split: SplitName) -> float:
        value = guard.guarded(self.task.score, self.task.name, f"score(..., {split!r})")(
            path, split
        )
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TaskError(f"task {self.task.name!r} scored {split} as {value!r}, not a number")
        if not math.isfinite(value):
            raise NonFiniteScoreError(
                f"task {self.task.name!r} scored {split} as {value}, not a finite number"
            )
        if self.task.score_percent and not 0.0 <= value <= 1.0:
            raise TaskError(
                f"task {self.task.name!r} scored {split} as {value}; its score_percent says "
                "scores are fractions in [0, 1] (set score_percent = False for other scores)"
            )
        return float(value)

    def score_model(self, model: onnx.ModelProto) -> tuple[float, float | None]:
        """:meth:`score` of a model written to a temporary file."""
        with tempfile.TemporaryDirectory(prefix="evonnx-score-") as tmp:
            path = Path(tmp) / "candidate.onnx"
            save_model(model, path)
            return self.score(path)


def split_data(data: Dataset | Task, selection: SelectionSettings, seed: int = 0) -> Split:
    """The run's task (a data set becomes a :class:`ClassificationTask`, its validation split
    drawn with ``seed``) and selection split.

    Raises:
        ConfigError: Selection on ``"val"`` but the task has no validation split.
    """
    if isinstance(data, Task):
        task = data
    else:
        fraction = 0.0 if selection.select_on == "test" else selection.val_fraction
        task = ClassificationTask(data, fraction, seed)
    if selection.select_on == "val" and not task.has_validation:
        raise ConfigError(
            f"task {task.name!r} has no validation split to select offspring on; give it one "
            "(--val-fraction > 0 for --data) or select on the test split (--select-on test)"
        )
    return Split(task, selection.select_on)


def guarded(fn: Callable[..., T], what: str) -> Callable[..., T]:
    """``fn`` with any non-evonnx exception (user task code) turned into a :class:`TaskError`
    ``"<what> failed: ..."`` (see :mod:`evonnx.retrain.guard`, which names the task and the
    step)."""

    def call(*args: Any) -> T:
        try:
            return fn(*args)
        except EvonnxError:
            raise
        except (Exception, SystemExit) as exc:  # user code may raise anything
            raise TaskError(f"{what} failed: {type(exc).__name__}: {exc}") from exc

    return call


def validation_indices(
    data: Dataset, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) indices of ``data``'s training split, stratified by class.

    Train an ancestor on ``data.x_train[training]`` to keep it off the validation split.
    """
    return stratified_split(data.y_train, val_fraction, seed)


def load_task(spec: str) -> Task:
    """Load ``path/to/task.py:NAME``: a :class:`Task` instance, or a class or function
    that returns one when called without arguments.

    Raises:
        ConfigError: The spec is malformed, or the file or name does not exist.
        TaskError: Importing the file or building the task failed, or it is not a Task.
    """
    path_text, sep, name = spec.rpartition(":")
    if not sep or not path_text or not name.isidentifier():
        raise ConfigError(f"--task must look like path/to/task.py:NAME, got {spec!r}")
    path = Path(path_text)
    if not path.is_file():
        link = dangling_link(path)
        raise ConfigError(f"task file {link}" if link else f"task file {path} does not exist")
    module_name = f"{USER_TASK_PREFIX}{abs(hash(str(path.resolve())))}"
    try:
        module = import_task_file(path, module_name)
    except (Exception, SystemExit) as exc:  # user code: report any failure as one line
        sys.modules.pop(module_name, None)
        raise TaskError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    if module is None:
        raise ConfigError(f"cannot import {path} as a Python module")
    if not hasattr(module, name):
        raise ConfigError(f"{path} defines no {name!r}")
    obj = getattr(module, name)
    if not isinstance(obj, Task):
        if not callable(obj):
            raise TaskError(f"{spec} is neither a Task nor callable")
        try:
            obj = obj()
        except Exception as exc:  # user code
            raise TaskError(f"building {spec} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(obj, Task):
        raise TaskError(f"{spec} gave a {type(obj).__name__}, not an evonnx.Task")
    logger.info("loaded task %r from %s", obj.name, path)
    return obj


def import_task_file(path: Path, module_name: str) -> ModuleType | None:
    """Import the task file ``path`` as module ``module_name``, its folder on the import path
    (``None``: not importable as a Python module; the file's own exceptions propagate)."""
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    add_import_path(path)
    module_spec.loader.exec_module(module)
    return module


def add_import_path(task_file: Path) -> None:
    """Put the folder of a task file on the import path, as Python does for a script, so
    the task can import the modules beside it."""
    folder = str(task_file.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)


def _tensors(value: Any) -> Sequence[Any]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _logits(outputs: Any) -> torch.Tensor:
    """The first output as ``N×C`` (trailing singleton dims dropped)."""
    x = _tensors(outputs)[0]
    return x.reshape(x.shape[0], x.shape[1]) if x.dim() > 2 and x[0, 0].numel() == 1 else x
