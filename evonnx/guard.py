"""Calls into user task code: any failure becomes one :class:`~evonnx.errors.TaskError` line.

A user :class:`~evonnx.task.Task` may raise anything, return anything, or even call
``sys.exit``; evonnx reports each as ``task 'NAME': STEP failed: Type: message``, naming the
step that really failed (the task's own ``loss()``, ``score()``, ``train_batches()``...).
``KeyboardInterrupt`` always propagates (it is the user's Ctrl-C).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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
        return value

    return call
