"""Data-parallel training under ``torchrun``, and the batch order every run shares.

``torchrun --nproc_per_node=N -m segforge train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; ``fit`` then joins the process group (NCCL on GPUs, gloo on
the CPU), wraps the model in ``DistributedDataParallel`` and lets rank 0 alone write files.

``data.batch_size`` is the *global* batch: each of the N processes takes ``batch_size / N`` images of
every batch. With the batch order below, a run on N processes sees exactly the batches a
single-process run sees, so the same config gives the same training on 1 CPU or 8 GPUs (with
SyncBatchNorm when the model has batch norm, and up to how the mean of the per-process losses
weighs processes whose images hold different numbers of labelled pixels).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class Process:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run joined the process group, so it leaves it at the end

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when there is a GPU, else the CPU; a CUDA device on a machine without one is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(
            f"device {name!r} is not a device: use auto, cpu, cuda or cuda:N (N: the GPU's index)"
        ) from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r}: segforge runs on cpu or cuda (auto picks CUDA when present)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device is {name!r} but CUDA is not available here; use 'cpu' or 'auto'")
    return device


def start(device_name: str) -> tuple[Process, torch.device]:
    """Joins the ``torchrun`` process group when there is one; returns this process and its device.

    Args:
        device_name: ``train.device`` (auto, cpu, cuda); under torchrun a CUDA device becomes
            ``cuda:LOCAL_RANK``.
    """
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Process(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process {rank} has LOCAL_RANK {local_rank} but this machine has "
                f"{torch.cuda.device_count()} GPU(s): start at most that many per node "
                "(torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Process(dist.get_rank(), dist.get_world_size(), local_rank, owns), device


def stop(process: Process) -> None:
    """Leaves the process group this run joined.

    ``DistributedDataParallel`` can sit in a reference cycle, so without a collection it (and the gloo or
    NCCL work it holds) is freed at interpreter exit, where a gloo worker thread destroyed too late
    aborts the process ("terminate called without an active exception") after a run that succeeded.
    """
    if process.owns_group and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, process: Process) -> torch.Tensor:
    """Sums ``tensor`` over the processes, in place (a no-op in a one-process run)."""
    return sum_over_processes(tensor) if process.distributed else tensor


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """Sums ``tensor`` over the processes in place when ``torch.distributed`` is started (else a no-op); a CPU
    tensor goes through the GPU under NCCL, which reduces GPU tensors only."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensor
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        moved = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        return tensor.copy_(moved)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast(value, process: Process):
    """Rank 0's ``value`` (any picklable object), on every process."""
    if not process.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(process: Process) -> None:
    if process.distributed:
        dist.barrier()


class StreamBatchSampler(Sampler[list[int]]):
    """This process's share of each global batch of an endless, seeded stream of epochs.

    Epoch ``e`` draws its order from seed ``seed + e`` and is cut into ``batches_per_epoch`` global
    batches of ``batch_size`` (a last, incomplete batch is dropped unless the whole dataset is smaller
    than one batch); epochs follow one another without end, so a run's length (epochs, steps or a time
    budget) is the loop's business. Global batch ``g`` is the same whatever the number of processes:
    process ``rank`` takes the ``rank``-th of ``world_size`` equal slices of it. ``start`` skips the
    global batches a resumed run has done.

    Each index is yielded as ``epoch * size + sample``, so the dataset can draw the sample's
    augmentation from ``(seed, epoch, sample)`` (``EpochSamples``): every process, worker and resumed
    run augments a sample of an epoch alike.

    Raises:
        ValueError: the global batch does not split evenly over the processes, or a process would get
            no sample.
    """

    def __init__(
        self, size: int, batch_size: int, *, seed: int = 0, start: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"data.batch_size {batch_size} is the global batch and must be a multiple of the "
                f"{world_size} processes; use {batch_size - batch_size % world_size or world_size} or "
                f"{batch_size + world_size - batch_size % world_size}"
            )
        if world_size > 1 and size < batch_size:
            raise ValueError(
                f"the training set has {size} samples, fewer than one global batch of {batch_size}: "
                "lower data.batch_size"
            )
        self.size, self.batch_size, self.seed, self.start = size, batch_size, seed, start
        self.rank, self.world_size = rank, world_size

    @property
    def batches_per_epoch(self) -> int:
        return max(self.size // self.batch_size, 1)

    def __iter__(self) -> Iterator[list[int]]:
        share = self.batch_size // self.world_size
        epoch, first = divmod(self.start, self.batches_per_epoch)
        while True:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
            for batch in range(first, self.batches_per_epoch):
                chosen = order[batch * self.batch_size : (batch + 1) * self.batch_size]
                if self.size >= self.batch_size:
                    chosen = chosen[self.rank * share : (self.rank + 1) * share]
                yield (chosen + epoch * self.size).tolist()
            epoch, first = epoch + 1, 0


def shard(size: int, process: Process) -> list[int]:
    """Indices of ``size`` samples that process ``rank`` evaluates: every ``world_size``-th, so each sample
    is counted once (confusion matrices are then summed)."""
    return list(range(process.rank, size, process.world_size))
