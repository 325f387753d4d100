"""Where a process runs: its device and precision, and its place in a `torchrun` process group.

Training runs in float32 weights with bf16 autocast on CUDA; inference commands (`eval`, `judge`,
`generate`, sampling) hold the weights in the chosen dtype. `auto` means CUDA with bf16 when a
GPU is present, else the CPU in float32; training's `native` also takes bf16 autocast on a CPU
with bf16 instructions (the demo's pre-training: 1.24-1.31x the steps/s at the same loss on
AVX512-BF16). Under `torchrun` each process takes the GPU of its LOCAL_RANK (`cuda` without an
index), across one machine or several (`--nnodes`).
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch
import torch.distributed as dist

from orizuru.errors import UserError

DEVICES = "auto|cpu|cuda|cuda:N"


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> a torch device; 'cuda' and 'auto' take LOCAL_RANK's GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: no CUDA device is available (use --device cpu or auto)")
        index = int(device[5:]) if ":" in device else int(os.environ.get("LOCAL_RANK", 0))
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) present")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    raise UserError(f"--device: expected {DEVICES}, got {device!r}")


def setup_device(dtype: str = "auto", device: str = "auto") -> tuple[torch.device, torch.dtype | None]:
    """Training: (device, autocast dtype or None). bf16 autocast on CUDA unless `dtype` is "float32";
    the CPU in float32 unless bf16 is asked for ("bfloat16"), or "native" is and the CPU multiplies
    bf16 in hardware (elsewhere bf16 is emulated, slower than float32)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return dev, (None if dtype == "float32" else torch.bfloat16)
    return dev, (torch.bfloat16 if dtype == "bfloat16" or (dtype == "native" and cpu_has_bf16()) else None)


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 matrix instructions (x86 AVX512-BF16 or AMX; Arm BF16)."""
    if platform.machine().lower() in ("arm64", "aarch64"):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def inference_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Inference: (device, weight dtype). auto: bf16 on CUDA, float32 on the CPU."""
    dev = resolve_device(device)
    if dtype == "auto":
        return dev, (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    if dtype not in ("float32", "bfloat16"):
        raise UserError(f"--dtype: expected auto|float32|bfloat16, got {dtype!r}")
    return dev, getattr(torch, dtype)


def init_distributed() -> tuple[int, int]:
    """(rank, world) from torchrun's environment (one machine or many: RANK and WORLD_SIZE are
    global). Under torchrun a group starts even for one process, so `train.fsdp` shards (a group
    of one) as asked; a plain `python` process needs none."""
    launched = int(os.environ.get("WORLD_SIZE", 1)) > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return world_info()


def world_info() -> tuple[int, int]:
    """(rank, world) of an initialised process group, else (0, 1)."""
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_sum(values: list[float], device) -> list[float]:
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


@contextlib.contextmanager
def process_group():
    """A command's whole run: the process group (under torchrun) is torn down however it ends."""
    try:
        yield init_distributed()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
