"""Data-parallel training over several processes (``torchrun``): who this process is, and the few
collectives the Trainer needs.

``torchrun --nproc_per_node N`` sets WORLD_SIZE, RANK and LOCAL_RANK; ``init_from_env`` then joins the
process group (NCCL on CUDA, Gloo on the CPU). The Trainer picks up any initialised group by itself
(``current()``), so API users who set one up themselves get the same behaviour as the CLI.

The convention: ``TrainConfig.batch`` is the *global* batch. It is cut into processes x ``accumulate``
equal shards; shard k draws its patches and masks from its own random stream, derived from (seed, k).
Training therefore depends on the number of shards, not on how they are spread: two processes with
``accumulate=1`` train exactly like one process with ``accumulate=2`` (up to float rounding), which the
tests check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import SelfDenoiseError
from ..nn.device import resolve_device


@dataclass(frozen=True)
class Group:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that validates, reports, and writes files."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def current() -> Group:
    """The group this process belongs to now (the single-process group if none is initialised)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return Group()
    return Group(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def init_from_env(device: str = "auto") -> Group:
    """Join the process group that ``torchrun`` describes in the environment; no-op for one process."""
    if not launched_by_torchrun() or (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return current()
    if not torch.distributed.is_available():
        raise SelfDenoiseError("this PyTorch build has no torch.distributed; train in one process")
    target = training_device(device, Group(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]),
                                           int(os.environ.get("LOCAL_RANK", "0"))))
    if target.type == "cuda":
        torch.cuda.set_device(target)
    torch.distributed.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return current()


def shutdown() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def training_device(name: str, group: Group) -> torch.device:
    """The device this process trains on: with several processes, each takes the GPU of its LOCAL_RANK."""
    device = resolve_device(name)
    if not group.active:
        return device
    if device.type == "mps":
        raise SelfDenoiseError("training in several processes needs CUDA GPUs or the CPU; use --device cpu")
    if device.type != "cuda":
        return device
    if name not in ("auto", "cuda"):
        raise SelfDenoiseError(f"under torchrun use --device auto or cuda (each process takes the GPU of its "
                               f"LOCAL_RANK), not {name}")
    if group.local_rank >= torch.cuda.device_count():
        raise SelfDenoiseError(f"process LOCAL_RANK {group.local_rank} has no GPU: this machine has "
                               f"{torch.cuda.device_count()}; use --nproc_per_node {torch.cuda.device_count()}")
    return torch.device("cuda", group.local_rank)


def shard_seeds(seed: int, shards) -> list[tuple[object, int]]:
    """(numpy seed, torch seed) for each shard index: shard 0 keeps the single-process seeds."""
    seeds = []
    for k in shards:
        if k == 0:
            seeds.append((seed, seed))
        else:
            sequence = np.random.SeedSequence([seed, k])
            seeds.append((sequence, int(sequence.generate_state(1, np.uint64)[0] >> 1)))
    return seeds


def _comm_device() -> torch.device:
    # NCCL reduces CUDA tensors only; Gloo reduces CPU tensors.
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", current().local_rank)
    return torch.device("cpu")


def sum_over_processes(values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all processes (each process gets the result)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    torch.distributed.all_reduce(tensor)
    return tensor.cpu().tolist()


def broadcast_from_main(value: float) -> float:
    """Rank 0's ``value`` on every process."""
    tensor = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    torch.distributed.broadcast(tensor, src=0)
    return float(tensor.item())
