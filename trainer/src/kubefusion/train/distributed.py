"""Process-group setup and the few collectives the trainer needs, identical with and without torchrun.

Under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the process group uses NCCL when CUDA is present
and gloo otherwise, with a timeout on initialisation and on every collective, so a dead peer ends in an
error instead of a hang (torchrun's agent also tears the remaining ranks down when one exits). Without
torchrun the trainer is one process and every collective is the identity.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Runtime:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None
    """``nccl``, ``gloo``, or None for a single process without a process group."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(timeout_seconds: float) -> Runtime:
    """Join the process group torchrun describes (or stay single-process) and pick this rank's device."""
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    backend = None
    if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
        backend = "nccl" if cuda else "gloo"
        # NCCL only honours the timeout with async error handling on (the default in recent torch; be explicit).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_seconds),
                                device_id=device if cuda else None)
    return Runtime(rank=rank, local_rank=local_rank, world_size=world_size, device=device, backend=backend)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (float64/int64 tensors keep exact counts). NCCL only reduces CUDA tensors, so
    a CPU tensor (metric counters) makes the round trip through this rank's GPU."""
    if distributed():
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            on_gpu = tensor.cuda()
            dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
            tensor.copy_(on_gpu.cpu())
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(obj: Any) -> list[Any]:
    if not distributed():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them before each forward
    only, so after the last training step every rank holds the statistics of its own last batch; evaluation
    and the saved model must all use the same ones."""
    if distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
