"""torch.distributed helpers: the same code runs as one process or under ``torchrun``.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is
started with NCCL on GPUs and gloo on CPU; otherwise every helper degrades to
the single-process answer.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


TIMEOUT_ENV = "WSSS_DIST_TIMEOUT_MIN"
"""Minutes a process waits in a collective (default 240): in a recipe the other ranks wait while
rank 0 alone evaluates a whole split, which takes longer than torch's 10-minute NCCL default."""


def init_distributed(device: str = "auto") -> torch.device:
    """Start the process group if launched by torchrun; return this rank's device."""
    if device == "cuda" and not torch.cuda.is_available():
        from wsss.config import ConfigError

        raise ConfigError(
            "--device cuda was asked for, but PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False: "
            "no GPU, no driver, or a CPU-only torch build). Use --device cpu, or --device auto to take a GPU when there is one."
        )
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        minutes = float(os.environ.get(TIMEOUT_ENV, "240"))
        dist.init_process_group(backend="nccl" if want_cuda else "gloo", timeout=timedelta(minutes=minutes))
    if want_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    if device not in ("auto", "cpu"):
        raise ValueError(f"device '{device}' is not available here: use cpu or auto")
    return torch.device("cpu")


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def is_main_process_env() -> bool:
    """Rank 0 by ``torchrun``'s environment (``RANK``), before the process group starts."""
    return int(os.environ.get("RANK", "0")) == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        t = t.clone()
        dist.all_reduce(t)
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor (same trailing shape, any first size) from every rank, in rank order."""
    if not is_dist():
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    top = int(max(s.item() for s in sizes))
    padded = torch.zeros((top,) + tuple(t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank (a picklable value); the value itself when not distributed."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
