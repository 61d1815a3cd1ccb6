"""One data-parallel rank's view of training: its slice of each batch and the DDP wrapper.

The leaf both :mod:`evonnx.execute.jobs` (a job trained on a rank) and
:mod:`evonnx.execute.ddp` (the ranks' processes) build on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from evonnx.retrain.train import LossFn

Rank = tuple[int, int]
"""(rank, world size)."""


def shard(value: Any, rank: Rank) -> Any:
    """This rank's slice of a batch: tensors and lists are sliced; tuples element-wise."""
    index, world = rank
    if isinstance(value, tuple):
        return tuple(shard(v, rank) for v in value)
    if hasattr(value, "shape") or isinstance(value, list):
        return value[index::world]
    return value


def data_parallel(
    trainee: torch.nn.Module, loss: LossFn, rank: Rank
) -> tuple[torch.nn.Module, LossFn]:
    """``trainee`` wrapped in DDP on this rank's slice of each batch, and the matching loss."""
    import torch
    from torch.nn.parallel import DistributedDataParallel

    class Sliced(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: Any) -> Any:
            return self.inner(*shard(inputs, rank))

    device = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    wrapped = DistributedDataParallel(Sliced(trainee), device_ids=device)

    def sliced_loss(outputs: Any, targets: Any) -> torch.Tensor:
        return loss(outputs, shard(targets, rank))

    return wrapped, sliced_loss
