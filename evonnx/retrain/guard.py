"""Calls into user task code: any failure becomes one :class:`~evonnx.errors.TaskError` line.

A user :class:`~evonnx.retrain.task.Task` may raise anything, return anything, or even call
``sys.exit``; evonnx reports each as ``task 'NAME': STEP failed: Type: message``, naming the
step that really failed (the task's own ``loss()``, ``score()``, ``train_batches()``...).
``KeyboardInterrupt`` always propagates (it is the user's Ctrl-C).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import Any, TypeVar

from evonnx.errors import EvonnxError, TaskError

T = TypeVar("T")


@contextlib.contextmanager
def user_code(task: str, step: str) -> Iterator[None]:
    """Run the block as user code of ``task``: errors and ``sys.exit`` become a TaskError.

    Args:
        task: The task's name.
        step: What the block does, as it completes ``"task 'NAME': <step> failed"``.
    """
    try:
        yield
    except EvonnxError:
        raise
    except SystemExit as exc:
        raise TaskError(
            f"task {task!r}: {step} called sys.exit({exc.code!r}); a task must raise instead"
        ) from exc
    except Exception as exc:  # user code may raise anything
        raise TaskError(f"task {task!r}: {step} failed: {type(exc).__name__}: {exc}") from exc


def guarded(fn: Callable[..., T], task: str, step: str) -> Callable[..., T]:
    """``fn`` run as :func:`user_code` of ``task`` at ``step``."""

    def call(*args: Any) -> T:
        with user_code(task, step):
            return fn(*args)

    return call


def guarded_loss(fn: Callable[..., Any], task: str, step: str) -> Callable[..., Any]:
    """A task's loss (``loss()``, ``distill_loss()``) that must return a scalar tensor."""
    import torch

    def call(*args: Any) -> torch.Tensor:
        with user_code(task, step):
            value = fn(*args)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
            raise TaskError(
                f"task {task!r}: {step} returned {type(value).__name__}"
                f"{'' if shape is None else f' of shape {shape}'}, not a scalar tensor"
            )
        if torch.is_grad_enabled() and not value.requires_grad:
            raise TaskError(
                f"task {task!r}: {step} returned a constant {float(value.detach()):g} (a tensor "
                "without gradient: it does not depend on the outputs), so training cannot use "
                "it; compute the loss from the outputs with torch operations"
            )
        return value

    return call


def checked_batches(batches: Any, task: str) -> Any:
    """``batches`` (a task's ``train_batches()``), each checked as it is drawn: its inputs
    and targets must hold the same number of samples.

    A :class:`~evonnx.data.Dataset` is returned as it is (its splits are checked on load);
    a one-shot iterator stays one (a generator); a re-iterable stays re-iterable (and sized
    when it was).
    """
    from evonnx.data.dataset import Dataset

    if isinstance(batches, Dataset):
        return batches
    if isinstance(batches, Iterator):
        return _checked(batches, task)
    if isinstance(batches, Sized):
        return _SizedCheckedBatches(batches, task)  # type: ignore[arg-type]
    return _CheckedBatches(batches, task)


class _CheckedBatches:
    """A re-iterable of checked batches."""

    def __init__(self, source: Iterable[Any], task: str) -> None:
        self.source = source
        self.task = task

    def __iter__(self) -> Iterator[Any]:
        return _checked(iter(self.source), self.task)


class _SizedCheckedBatches(_CheckedBatches):
    """A re-iterable of checked batches with its source's ``len``."""

    def __len__(self) -> int:
        return len(self.source)  # type: ignore[arg-type]


def _checked(batches: Iterator[Any], task: str) -> Iterator[Any]:
    for k, batch in enumerate(batches, 1):
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            problem = batch_mismatch(batch[0], batch[1])
            if problem is not None:
                raise TaskError(f"task {task!r}: train_batches() batch {k} has {problem}")
        yield batch


def batch_mismatch(inputs: Any, targets: Any) -> str | None:
    """Why ``targets`` cannot be the targets of ``inputs`` (their sample counts differ), else
    ``None``. Judged only where it is certain: all inputs share one leading size ``N`` and
    no target has ``N`` anywhere in its shape (time-major targets ``[T, N, ...]`` pass), nor
    is a list of ``N`` items."""
    sizes = {shape[0] for shape in map(_shape, _arrays(inputs)) if shape}
    if len(sizes) != 1:
        return None
    (n,) = sizes
    shaped = [shape for shape in map(_shape, _arrays(targets)) if shape]
    if not shaped or any(n in shape for shape in shaped):
        return None
    if isinstance(targets, (tuple, list)) and len(targets) == n:
        return None
    return f"{n} inputs but targets of shape {' and '.join(map(str, shaped))}"


def _arrays(value: Any) -> list[Any]:
    """The tensors and arrays of a batch part: itself, or those of a tuple, list or dict."""
    items = value.values() if isinstance(value, dict) else value
    if isinstance(items, (tuple, list)) or isinstance(value, dict):
        return [v for v in items if _shape(v) is not None]
    return [value] if _shape(value) is not None else []


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    try:
        return tuple(int(d) for d in shape) if shape is not None else None
    except (TypeError, ValueError):
        return None
