"""A small, seeded training loop for any ``torch.nn.Module``."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from evonnx.data.dataset import Dataset
from evonnx.errors import ConfigError
from evonnx.retrain.recipe import frozen_batch_norm, make_optimizer, make_scheduler
from evonnx.retrain.settings import Optimizer, TrainingSettings, recipe_problem

logger = logging.getLogger(__name__)

LossFn = Callable[[Any, Any], torch.Tensor]
"""``loss_fn(outputs, targets) -> scalar tensor``; ``outputs`` is a tuple for multi-output
modules."""

AfterStep = Callable[[nn.Module], None]
"""``after_step(module)``: called after every optimizer step (e.g. to re-apply masks)."""

Batch = tuple[Any, Any]
"""One ``(inputs, targets)`` batch; tensors anywhere inside are moved to the device."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train`.

    Attributes:
        epochs: Passes over the data.
        batch_size: Samples per step (only used when training on a :class:`Dataset`).
        lr: Peak learning rate.
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"`` or ``"adamw"`` (decoupled
            weight decay).
        momentum: SGD momentum, in [0, 1).
        nesterov: SGD with Nesterov momentum.
        weight_decay: Weight decay passed to the optimizer (L2 for SGD and Adam, decoupled
            for AdamW).
        schedule: ``"cosine"`` anneals the learning rate per step towards 0, ``"constant"``
            keeps it (both after the warm-up).
        warmup: Fraction of the training steps, in [0, 1), over which the learning rate
            rises linearly to ``lr`` first.
        steps: Train for exactly this many optimizer steps (cycling over the data, reshuffled
            each pass) instead of ``epochs`` passes; ``max_batches`` still caps each pass.
        clip_grad: Clip the gradients' global L2 norm to this before each step; None: no
            clipping.
        freeze_bn: Keep BatchNorm layers in eval mode while training: they normalize with
            their running statistics and never update them (scale and shift still train).
            Small fine-tuning batches then cannot disturb a pretrained network's statistics.
        seed: Seeds shuffling and every torch random op (dropout) during training.
        device: ``"auto"`` picks CUDA when available, else CPU.
        max_batches: Stop each epoch after this many batches (smoke tests); None for all.
        num_threads: CPU threads torch may use while training (restored afterwards); None
            keeps torch's setting. Small networks train fastest, and are far less hurt by
            other busy processes, with 1.
        deterministic: Train with deterministic torch algorithms only
            (``torch.use_deterministic_algorithms``, cuDNN deterministic and not
            benchmarking, ``CUBLAS_WORKSPACE_CONFIG``), so that a rerun on the same device
            gives the same weights bit for bit; the settings are restored afterwards.
    """

    epochs: int = 3
    batch_size: int = 64
    lr: float = 0.01
    optimizer: Optimizer = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup: float = 0.0
    steps: int | None = None
    clip_grad: float | None = None
    freeze_bn: bool = False
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batches: int | None = None
    num_threads: int | None = None
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"lr must be a positive number, got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        problem = recipe_problem(
            self.optimizer, self.schedule, self.momentum, self.weight_decay, self.warmup,
            self.steps, self.clip_grad,
        )  # fmt: skip
        if problem is not None:
            raise ConfigError(problem)
        if self.max_batches is not None and self.max_batches < 1:
            raise ConfigError(f"max_batches must be >= 1 or None, got {self.max_batches}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"num_threads must be >= 1 or None, got {self.num_threads}")

    @classmethod
    def for_offspring(cls, settings: TrainingSettings, seed: int) -> TrainConfig:
        """The training run of one offspring: the run's training settings and its seed."""
        recipe = {
            f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)
        }
        return cls(**recipe, seed=seed, num_threads=settings.threads)


@dataclass(frozen=True)
class TrainResult:
    """What a :func:`train` run did.

    Attributes:
        losses: Mean training loss of each epoch.
        seconds: Wall-clock training time.
        images_per_second: Training throughput (samples per second).
        steps: Optimizer steps taken.
        images: Samples trained on, over all epochs.
        device: The device trained on (``"cpu"``, ``"cuda"``, ``"cuda:1"``...).
    """

    losses: tuple[float, ...]
    seconds: float
    images_per_second: float
    steps: int
    images: int
    device: str


def resolve_device(device: str) -> torch.device:
    """Turn ``"auto"``/``"cpu"``/``"cuda"`` into a torch device (auto: CUDA if available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available to torch")
    return torch.device(device)


def train(
    module: nn.Module,
    data: Dataset | Iterable[Batch],
    config: TrainConfig,
    *,
    loss_fn: LossFn | None = None,
    after_step: AfterStep | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``module`` in place.

    Args:
        module: Any torch module; it is moved to the training device and back afterwards, and
            its train/eval mode is restored.
        data: A :class:`Dataset` (its training split is shuffled with ``config.seed``), or a
            re-iterable of ``(inputs, targets)`` batches such as a ``DataLoader``.
        config: Hyper-parameters.
        loss_fn: ``loss_fn(outputs, targets)``; cross-entropy by default.
        after_step: Called with the module after every optimizer step.
        progress: Show a tqdm bar (only on a terminal).

    Returns:
        Per-epoch losses and throughput.
    """
    device = resolve_device(config.device)
    criterion: LossFn = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the module has no trainable parameters")
    passes = config.epochs > 1 or config.steps is not None
    if not isinstance(data, Dataset) and iter(data) is data and passes:
        raise ValueError(
            "data is a one-shot iterator; pass a re-iterable (e.g. a DataLoader) "
            "to train for several epochs or a number of steps"
        )
    original_device = _module_device(module)
    was_training = module.training
    module.to(device)
    module.train()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    threads = torch.get_num_threads()
    try:
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        with (
            torch.random.fork_rng(devices=fork_devices),
            deterministic_mode(config.deterministic),
            frozen_batch_norm(module, config.freeze_bn),
        ):
            torch.manual_seed(config.seed)
            return _run(module, data, config, device, criterion, after_step, params, progress)
    finally:
        torch.set_num_threads(threads)
        module.train(was_training)
        module.to(original_device)


CUBLAS_WORKSPACE = ":4096:8"
"""``CUBLAS_WORKSPACE_CONFIG`` that makes cuBLAS deterministic (CUDA >= 10.2)."""


@contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[None]:
    """Run the body with deterministic torch algorithms; restore the previous settings.

    Sets ``CUBLAS_WORKSPACE_CONFIG`` (if unset; cuBLAS reads it when CUDA starts, so set
    it before the first CUDA call to be sure), ``torch.use_deterministic_algorithms(True)``,
    ``cudnn.deterministic = True`` and ``cudnn.benchmark = False``. An op without a
    deterministic implementation then raises instead of silently varying.
    """
    if not enabled:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic = saved[2]
        torch.backends.cudnn.benchmark = saved[3]


# --------------------------------------------------------------------------- internals


def _run(
    module: nn.Module,
    data: Dataset | Iterable[Batch],
    config: TrainConfig,
    device: torch.device,
    criterion: LossFn,
    after_step: AfterStep | None,
    params: list[nn.Parameter],
    progress: bool,
) -> TrainResult:
    optimizer = make_optimizer(
        params, config.optimizer, config.lr, config.momentum, config.weight_decay, config.nesterov
    )
    per_epoch = _batches_per_epoch(data, config)
    per_step = config.steps is not None or per_epoch is not None
    total = config.steps or config.epochs * (per_epoch or 1)
    scheduler = make_scheduler(optimizer, total, config.warmup, config.schedule)
    generator = torch.Generator().manual_seed(config.seed)
    show = progress and sys.stderr.isatty()
    losses: list[float] = []
    steps = images = epoch = 0
    start = time.perf_counter()
    while epoch < config.epochs if config.steps is None else steps < config.steps:
        total_loss, count = 0.0, 0
        batches = _epoch_batches(data, config, generator)
        bar = tqdm(batches, total=per_epoch, disable=not show, leave=False,
                   desc=_bar_title(config, epoch, steps), unit="batch")  # fmt: skip
        for x, y in bar:
            loss, n = _step(module, optimizer, criterion, config.clip_grad,
                            _to_device(x, device), _to_device(y, device))  # fmt: skip
            if after_step is not None:
                after_step(module)
            if scheduler is not None and per_step:
                scheduler.step()
            steps += 1
            images += n
            total_loss += loss * n
            count += n
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if config.steps is not None and steps >= config.steps:
                break
        if scheduler is not None and not per_step:
            scheduler.step()
        losses.append(_epoch_loss(total_loss, count, epoch))
        epoch += 1
    seconds = time.perf_counter() - start
    logger.info("trained %d epochs (%d steps) in %.1fs on %s; final loss %.4f",
                epoch, steps, seconds, device, losses[-1])  # fmt: skip
    return TrainResult(
        tuple(losses), seconds, images / seconds if seconds > 0 else 0.0, steps, images, str(device)
    )


def _bar_title(config: TrainConfig, epoch: int, steps: int) -> str:
    if config.steps is None:
        return f"epoch {epoch + 1}/{config.epochs}"
    return f"step {steps}/{config.steps}"


def _step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: LossFn,
    clip_grad: float | None,
    x: Any,
    y: Any,
) -> tuple[float, int]:
    optimizer.zero_grad(set_to_none=True)
    loss = criterion(module(*x) if isinstance(x, (tuple, list)) else module(x), y)
    loss.backward()
    if clip_grad is not None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    optimizer.step()
    return float(loss.detach()), _batch_len(x)


def _epoch_loss(total: float, count: int, epoch: int) -> float:
    if count == 0:
        raise ValueError(f"epoch {epoch + 1} saw no batches; is the data empty?")
    mean = total / count
    if not math.isfinite(mean):
        logger.warning("training loss is %s in epoch %d; the network diverged", mean, epoch + 1)
    return mean


def _batches_per_epoch(data: Dataset | Iterable[Batch], config: TrainConfig) -> int | None:
    if isinstance(data, Dataset):
        n = len(data.x_train)
        full = n // config.batch_size
        rest = n % config.batch_size
        length: int | None = full + (1 if rest > 1 or (rest == 1 and full == 0) else 0)
    elif isinstance(data, Sized):
        length = len(data)
    else:
        length = None
    if config.max_batches is None:
        return length
    return config.max_batches if length is None else min(length, config.max_batches)


def _epoch_batches(
    data: Dataset | Iterable[Batch], config: TrainConfig, generator: torch.Generator
) -> Iterator[Batch]:
    source = (
        _dataset_batches(data, config.batch_size, generator)
        if isinstance(data, Dataset)
        else iter(data)
    )
    for i, batch in enumerate(source):
        if config.max_batches is not None and i >= config.max_batches:
            return
        yield _unpack(batch)


def _dataset_batches(data: Dataset, batch_size: int, generator: torch.Generator) -> Iterator[Batch]:
    """Shuffled batches of the training split; a trailing batch of one sample is dropped
    (BatchNorm cannot train on it) unless it is the only one."""
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    order = torch.randperm(len(x), generator=generator)
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) == 1 and start > 0:
            return
        yield x[idx], y[idx]


def _unpack(batch: Any) -> Batch:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(
        f"expected (inputs, targets) batches, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, Sized) else "")
    )


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj).to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _batch_len(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0]) if x.ndim else 1
    if isinstance(x, (list, tuple)):
        return _batch_len(x[0]) if x and isinstance(x[0], torch.Tensor) else len(x)
    return 1


def _module_device(module: nn.Module) -> torch.device:
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
