"""Where a process runs: its device and precision, and its place in a `torchrun` process group."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def setup_device(dtype: str = "auto") -> tuple[torch.device, torch.dtype | None]:
    """(device, autocast dtype or None): CUDA if present (bf16 autocast unless `dtype` is "float32"),
    else the CPU in float32 (bf16 autocast only when asked for)."""
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
        return device, (None if dtype == "float32" else torch.bfloat16)
    if dtype == "bfloat16":
        return torch.device("cpu"), torch.bfloat16
    return torch.device("cpu"), None


def init_distributed() -> tuple[int, int]:
    """(rank, world) from torchrun's environment; a single process needs no process group."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank() if dist.is_initialized() else 0), world


def all_mean(value: float, device) -> float:
    if not dist.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def all_sum(values: list[float], device) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
