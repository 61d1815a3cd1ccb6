"""Label-free evolution: offspring learn to reproduce the ancestor, scored by their fidelity.

:class:`FidelityTask` needs only the ancestor and some of its inputs (a folder of images or an
``.npz`` named after the graph inputs, :mod:`evonnx.data.unlabelled`). It runs the ancestor once
with onnxruntime on every input (the teacher outputs, cached), splits the inputs (seeded) into
training, validation and test parts, trains each offspring to reproduce the teacher outputs
on the training part, and scores the written ONNX file by its fidelity to the ancestor on the
validation and test parts, which it never trains on.

Per graph output, by kind (override with ``losses``, CLI ``--fidelity-loss OUTPUT=KIND``):

* **class scores** (``kl``): an output produced by a terminal Softmax/LogSoftmax, also behind
  ``Identity`` nodes (trained on the Softmax input, :mod:`evonnx.retrain.heads`), or a 2-D
  ``N×C`` output of a Gemm/MatMul (logits).
  Loss: ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` over the class axis, averaged over
  samples and positions. Score: top-1 agreement with the ancestor, per position for sequence
  or map outputs (``[T, N, C]`` CTC outputs are scored per time step).
* **per-element probabilities**: an output produced by a terminal Sigmoid (a DB text
  detector's map, an objectness score) is trained on the Sigmoid's input, the teacher held as
  logits. Default ``mse``: the squared error of the probabilities over the teacher's variance
  of them, through a Sigmoid whose gradient is floored
  (:func:`~evonnx.retrain.fidelity_outputs.floored_sigmoid`), so an offspring whose map
  saturated when it was pruned still learns (through a plain Sigmoid it stays blank). On the
  PP-OCRv4 detector's 1.5x offspring, both blank before training, 400 label-free steps kept
  0.0 / 88.9 F-measure (one-shot / magnitude) through a plain Sigmoid, 81.1 / 86.1 with a
  floor of 0.05, 86.7 / 85.3 at 0.01, 87.9 / 87.5 at 2e-3, 87.3 / 88.2 at 5e-4 (the
  default), 87.5 / 87.1 at 1e-4. On
  request ``bce``: the binary ``T² · KL(σ(teacher/T) ‖ σ(student/T))`` per element, averaged;
  on the pretrained PP-OCRv4 text detector (``benchmarks/real_models.py``, 160 steps) it kept
  less of the F-measure than ``mse`` (72.5 / 52.7 / 36.4 against 84.9 / 83.7 / 81.1 for
  evolution / one-shot / magnitude at 1.5x). Score: the dense figure below on the
  probabilities.
* **dense outputs** (``mse``, the default for everything else: maps, boxes, embeddings):
  mean squared error divided by the teacher's variance on the training part (``l1``: smooth
  L1 on values divided by the teacher's standard deviation). Score: ``max(0, 1 − RMSE /
  σ)``, the root-mean-square error to the ancestor over the teacher's own spread around its
  mean on that split: 1 is the ancestor's output exactly, 0 no better than its mean value.
* ``off``: neither trained nor scored.

The task's score is the mean of these figures over the scored outputs, in [0, 1] and shown as
a percentage (generation 1 scores exactly 100%); ``max_drop`` is in the same units (0.02: two
points of agreement). Each output's batch axis is found by running the ancestor on one and two
samples, so outputs that put it elsewhere (``[T, N, C]``) are handled.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from evonnx.data.unlabelled import ImagePreprocess, load_inputs
from evonnx.errors import (
    ConfigError,
    DataError,
    ModelLoadError,
    RebatchError,
    UnsupportedModelError,
)
from evonnx.model.batch import batch_info, dynamic_batch
from evonnx.model.files import load_model
from evonnx.model.graph import graph_inputs
from evonnx.model.session import make_session
from evonnx.retrain.fidelity_outputs import (
    LossChoice,
    OutputSpec,
    default_choice,
    fidelity,
    moved_class_axis,
    output_loss,
    parse_fidelity_losses,
    with_scale,
)
from evonnx.retrain.heads import logits_view, sigmoid_heads, softmax_heads
from evonnx.retrain.task import SplitName, Task, TrainData

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

RUN_CHUNK = 64
"""Samples per onnxruntime call while computing teacher outputs and scores."""


class FidelityTask(Task):
    """Train offspring to reproduce ``model``'s outputs on ``inputs``; score their fidelity.

    Args:
        model: The ancestor (the run's generation 1), a ModelProto or a path.
        inputs: A folder of images, an ``.npz`` whose arrays are named after the graph
            inputs, or such arrays.
        preprocess: Image settings (folders only).
        losses: Loss per output name, overriding the default of its kind (see the module).
        val_fraction: Part of the inputs held out to select offspring (0: none).
        test_fraction: Part of the inputs held out for the reported score.
        seed: Seeds the split.
        batch_size: Training batch size.
        temperature: Temperature of the KL loss on class outputs.

    Raises:
        DataError: Inputs that do not fit the model, or too few of them.
        UnsupportedModelError: No output can be scored.
        ConfigError: Bad fractions, a loss for an output the model lacks.
    """

    score_percent = True

    def __init__(
        self,
        model: onnx.ModelProto | str | Path,
        inputs: str | Path | Mapping[str, np.ndarray],
        *,
        preprocess: ImagePreprocess | None = None,
        losses: Mapping[str, LossChoice | str] | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        seed: int = 0,
        batch_size: int = 32,
        temperature: float = 1.0,
    ) -> None:
        _check_settings(val_fraction, test_fraction, batch_size, temperature)
        proto = _runnable(model if isinstance(model, onnx.ModelProto) else load_model(model))
        arrays = load_inputs(inputs, proto, preprocess)
        self.input_names = [i.name for i in graph_inputs(proto)]
        self.output_names = [o.name for o in proto.graph.output]
        self.name = f"fidelity:{_label(inputs)}"
        self.batch_size, self.temperature, self.seed = batch_size, float(temperature), seed
        self.fractions = (val_fraction, test_fraction)
        n = len(arrays[self.input_names[0]])
        self.parts = split_indices(n, val_fraction, test_fraction, seed)
        choices = _choices(losses, self.output_names)
        self.specs, self.kl_outputs, teacher = _teacher(proto, arrays, choices)
        self.inputs = {part: _take(arrays, idx) for part, idx in self.parts.items()}
        self.targets = {
            part: [np.take(t, idx, axis=0) for t in teacher] for part, idx in self.parts.items()
        }
        self.specs = [
            with_scale(s, t) for s, t in zip(self.specs, self.targets["train"], strict=True)
        ]
        logger.info(
            "fidelity task: %d inputs (train %d, val %d, test %d); %s",
            n,
            *(len(self.parts[p]) for p in ("train", "val", "test")),
            "; ".join(s.describe() for s in self.specs),
        )

    # ------------------------------------------------------------------ Task interface

    @property
    def has_validation(self) -> bool:
        """True unless ``val_fraction`` was 0."""
        return len(self.parts["val"]) > 0

    def train_batches(self) -> TrainData:
        """Shuffled ``(inputs, teacher outputs)`` batches of the training part."""
        return TeacherBatches(
            tuple(self.inputs["train"][n] for n in self.input_names),
            tuple(self.targets["train"]),
            self.batch_size,
        )

    def training_graph(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """``model`` with its KL-trained Softmax/LogSoftmax outputs (and its trained Sigmoid
        outputs) replaced by the logits."""
        return logits_view(model, self.kl_outputs)

    def loss(self, outputs: Any, targets: Any) -> torch.Tensor:
        """Mean over the scored outputs of each one's loss to the ancestor's outputs."""
        return self._compare(outputs, targets, self.temperature)

    def distill_loss(
        self, outputs: Any, teacher: Any, targets: Any, temperature: float
    ) -> torch.Tensor:
        """The same per-output losses, to the parent's outputs (``--distill``)."""
        del targets
        moved = [_tensors(teacher)[s.index].movedim(s.batch_axis, 0) for s in self.specs]
        return self._compare(outputs, moved, temperature)

    def score(self, onnx_path: Path, split: SplitName) -> float:
        """Mean fidelity figure of the scored outputs on ``split``, in [0, 1]."""
        if split == "val" and not self.has_validation:
            raise ConfigError(f"task {self.name!r} has no validation split")
        got = run_outputs(
            onnx_path,
            self.inputs[split],
            [s.name for s in self.specs],
            [s.batch_axis for s in self.specs],
        )
        ref = self.targets[split]
        return float(
            np.mean([fidelity(s, g, r) for s, g, r in zip(self.specs, got, ref, strict=True)])
        )

    def check(self, model: onnx.ModelProto) -> None:
        """Refuse a model other than the one the teacher outputs came from."""
        names = [i.name for i in graph_inputs(model)], [o.name for o in model.graph.output]
        if names != (self.input_names, self.output_names):
            raise ConfigError(
                f"the fidelity task was built for a model with inputs {self.input_names} and "
                f"outputs {self.output_names}; this one has {names[0]} and {names[1]}"
            )
        probe = {k: v[:2] for k, v in self.inputs["train"].items()}
        got = run_outputs(
            logits_view(model, self.kl_outputs),
            probe,
            [s.name for s in self.specs_view()],
            [s.batch_axis for s in self.specs],
        )
        for spec, g, t in zip(self.specs, got, self.targets["train"], strict=True):
            if not np.allclose(g, t[:2], rtol=1e-3, atol=1e-4 * max(spec.scale, 1e-6)):
                raise ConfigError(
                    f"output {spec.name!r} of the model differs from the fidelity task's "
                    "teacher outputs: build the task on the model being evolved"
                )

    def fingerprint(self) -> str:
        """SHA-256 of the inputs, the split and the per-output losses."""
        digest = hashlib.sha256()
        for part in ("train", "val", "test"):
            digest.update(self.parts[part].tobytes())
            for name in self.input_names:
                digest.update(name.encode())
                digest.update(np.ascontiguousarray(self.inputs[part][name]).tobytes())
        digest.update("|".join(s.describe() for s in self.specs).encode())
        digest.update(f"T={self.temperature}".encode())
        return digest.hexdigest()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{p}={len(i)}" for p, i in self.parts.items())
        return f"FidelityTask({self.name!r}, {sizes})"

    # ------------------------------------------------------------------ internals

    def specs_view(self) -> list[OutputSpec]:
        """The specs, named as the training graph names its outputs (logits for KL heads)."""
        return [replace(s, name=self.kl_outputs.get(s.name, s.name)) for s in self.specs]

    def _compare(self, outputs: Any, refs: Any, temperature: float) -> torch.Tensor:
        import torch

        outs = _tensors(outputs)
        terms = [
            output_loss(spec, outs[spec.index].movedim(spec.batch_axis, 0), ref, temperature)
            for spec, ref in zip(self.specs, _tensors(refs), strict=True)
        ]
        return torch.stack(terms).mean()


class TeacherBatches:
    """Re-iterable ``(inputs, teacher outputs)`` batches, reshuffled on every pass.

    The order comes from torch's global generator, which :func:`evonnx.retrain.train` seeds
    with each offspring's seed. A trailing batch of one sample is dropped (BatchNorm cannot
    train on it) unless it is the only one.
    """

    def __init__(
        self, inputs: tuple[np.ndarray, ...], targets: tuple[np.ndarray, ...], batch_size: int
    ) -> None:
        self.inputs, self.targets, self.batch_size = inputs, targets, batch_size

    def __len__(self) -> int:
        n = len(self.inputs[0])
        full, rest = divmod(n, self.batch_size)
        return full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)

    def __iter__(self) -> Iterator[tuple[Any, tuple[Any, ...]]]:
        import torch

        n = len(self.inputs[0])
        order = torch.randperm(n).numpy()
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            if len(idx) == 1 and start > 0:
                return
            x = tuple(torch.from_numpy(a[idx]) for a in self.inputs)
            y = tuple(torch.from_numpy(t[idx]) for t in self.targets)
            yield (x[0] if len(x) == 1 else x), y


# --------------------------------------------------------------------------- scoring


def split_indices(
    n: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Disjoint ``train``/``val``/``test`` sample indices (sorted), drawn with ``seed``.

    Each held-out part gets at least one sample (none for a fraction of 0).

    Raises:
        DataError: Too few samples to leave at least one to train on.
    """
    n_test, n_val = _held_out(n, val_fraction, test_fraction)
    if n - n_test - n_val < 1:
        need = next(
            (k for k in range(n + 1, n + 10_000) if k > sum(_held_out(k, val_fraction,
                                                                     test_fraction))),
            None,
        )  # fmt: skip
        raise DataError(
            f"{n} input sample(s) cannot be split into training, validation and test parts: "
            f"the test split takes {n_test} and the validation split {n_val}, leaving "
            f"{max(0, n - n_test - n_val)} to train on; "
            + (f"give at least {need} inputs" if need else "lower the held-out fractions")
        )
    order = np.random.default_rng(seed).permutation(n)
    return {
        "test": np.sort(order[:n_test]),
        "val": np.sort(order[n_test : n_test + n_val]),
        "train": np.sort(order[n_test + n_val :]),
    }


def _held_out(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """Samples of the test and validation splits of ``n`` (each at least one if asked)."""
    n_test = max(1, round(test_fraction * n))
    return n_test, (max(1, round(val_fraction * n)) if val_fraction > 0 else 0)


def run_outputs(
    model: onnx.ModelProto | str | Path,
    inputs: Mapping[str, np.ndarray],
    names: Sequence[str],
    batch_axes: Sequence[int],
    chunk: int = RUN_CHUNK,
) -> list[np.ndarray]:
    """The named outputs of ``model`` on ``inputs``, run by onnxruntime in chunks, each with
    its batch axis moved first.

    Raises:
        ModelLoadError: onnxruntime cannot load or run the model.
        DataError: An output is missing.
    """
    session = make_session(model, error=ModelLoadError, label="the model")
    available = [o.name for o in session.get_outputs()]
    missing = [n for n in names if n not in available]
    if missing:
        raise DataError(f"the model has no output(s) {missing} (outputs: {available})")
    n = len(next(iter(inputs.values())))
    parts: list[list[np.ndarray]] = [[] for _ in names]
    for start in range(0, n, chunk):
        feed = {k: v[start : start + chunk] for k, v in inputs.items()}
        try:
            outs = session.run(list(names), feed)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"onnxruntime cannot run the model: {exc}") from exc
        for k, (out, axis) in enumerate(zip(outs, batch_axes, strict=True)):
            parts[k].append(np.moveaxis(np.asarray(out), axis, 0))
    return [np.concatenate(p, axis=0) for p in parts]


# --------------------------------------------------------------------------- internals


def _check_settings(val: float, test: float, batch_size: int, temperature: float) -> None:
    if not 0.0 <= val < 1.0 or not 0.0 < test < 1.0 or val + test >= 1.0:
        raise ConfigError(
            f"val_fraction {val} and test_fraction {test} must be in [0, 1) and (0, 1) and "
            "leave inputs to train on"
        )
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")


def _runnable(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ancestor with a symbolic batch (as evolution trains it)."""
    try:
        return model if batch_info(model).fixed is None else dynamic_batch(model)
    except RebatchError as exc:
        raise UnsupportedModelError(f"the fidelity task needs a batched model: {exc}") from exc


def _label(inputs: str | Path | Mapping[str, np.ndarray]) -> str:
    return "arrays" if isinstance(inputs, Mapping) else Path(inputs).name


def _take(arrays: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v[idx]) for k, v in arrays.items()}


def _choices(
    losses: Mapping[str, LossChoice | str] | None, outputs: list[str]
) -> dict[str, LossChoice]:
    given = {
        k: v if isinstance(v, LossChoice) else parse_fidelity_losses([f"{k}={v}"])[k]
        for k, v in (losses or {}).items()
    }
    unknown = sorted(set(given) - set(outputs))
    if unknown:
        raise ConfigError(f"fidelity loss for {unknown}: not outputs of the model ({outputs})")
    return given


def _teacher(
    model: onnx.ModelProto, arrays: dict[str, np.ndarray], choices: dict[str, LossChoice]
) -> tuple[list[OutputSpec], dict[str, str], list[np.ndarray]]:
    """Specs of the scored outputs, the KL outputs' logits names, and the teacher outputs
    (batch axis first) on every input."""
    heads, sigmoids = softmax_heads(model), sigmoid_heads(model)
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    axes = _batch_axes(model, arrays)
    specs: list[OutputSpec] = []
    kl_outputs: dict[str, str] = {}
    for index, out in enumerate(model.graph.output):
        info = axes[out.name]
        choice = choices.get(out.name) or default_choice(out.name, heads, producer, info)
        if info is None or choice.kind == "off":
            continue
        batch, rank = info[0], len(info[1])
        class_axis = None
        if choice.kind == "kl":
            head = heads.get(out.name)
            axis = choice.axis if choice.axis is not None else head.axis if head else rank - 1
            class_axis = moved_class_axis(out.name, axis, batch, rank)
            if head is not None:
                kl_outputs[out.name] = head.logits
        if choice.kind == "bce" and out.name not in sigmoids:
            raise ConfigError(f"fidelity loss bce needs a Sigmoid's output, not {out.name!r}")
        sigmoid = choice.kind in ("bce", "mse") and out.name in sigmoids
        if sigmoid:
            kl_outputs[out.name] = sigmoids[out.name]
        specs.append(OutputSpec(out.name, index, choice.kind, batch, class_axis, 1.0, sigmoid))
    if not specs:
        raise UnsupportedModelError(
            "no output of this model can be scored by fidelity (each needs a float tensor "
            "with a batch axis); see the warnings above"
        )
    view = logits_view(model, kl_outputs)
    names = [kl_outputs.get(s.name, s.name) for s in specs]
    teacher = run_outputs(view, arrays, names, [s.batch_axis for s in specs])
    for spec, t in zip(specs, teacher, strict=True):
        if not np.isfinite(t).all():
            raise UnsupportedModelError(f"the ancestor's output {spec.name!r} is not finite")
    return specs, kl_outputs, [t.astype(np.float32, copy=False) for t in teacher]


def _batch_axes(
    model: onnx.ModelProto, arrays: Mapping[str, np.ndarray]
) -> dict[str, tuple[int, tuple[int, ...]] | None]:
    """Per output: (batch axis, shape at batch 1), or ``None`` (warned) if it cannot be scored."""
    session = make_session(model, error=ModelLoadError, label="the model")
    names = [o.name for o in model.graph.output]
    try:
        one = session.run(names, {k: v[:1] for k, v in arrays.items()})
        two = session.run(names, {k: v[:2] for k, v in arrays.items()})
    except Exception as exc:  # onnxruntime raises its own exception types
        raise DataError(f"onnxruntime cannot run the ancestor on these inputs: {exc}") from exc
    out: dict[str, tuple[int, tuple[int, ...]] | None] = {}
    for name, a, b in zip(names, one, two, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        changed = [
            k for k in range(a.ndim) if a.ndim == b.ndim and (a.shape[k], b.shape[k]) == (1, 2)
        ]
        if not np.issubdtype(a.dtype, np.floating):
            logger.warning("output %r is %s, not float: neither trained nor scored", name, a.dtype)
            out[name] = None
        elif len(changed) != 1 or any(
            a.shape[k] != b.shape[k] for k in range(a.ndim) if k != changed[0]
        ):
            logger.warning(
                "output %r (shape %s) has no batch axis: neither trained nor scored", name, a.shape
            )
            out[name] = None
        else:
            out[name] = (changed[0], a.shape)
    return out


def _tensors(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
