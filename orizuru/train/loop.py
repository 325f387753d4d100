"""The one step loop every gradient trainer runs: pretrain, sft, dpo (all its losses), reward.

A stage supplies a `Stage`: `batch(step, micro)` (this rank's micro-batch, a pure function of
both, so a resumed run sees the same data) and `loss(model, batch) -> (loss_sum, n_targets,
metrics)`. The loop owns the rest: the process group (gloo on CPU, NCCL on GPU), DDP or FSDP2
(`train.fsdp`), activation checkpointing, `torch.compile`, bf16 autocast on CUDA, gradient
accumulation with the gradient all-reduce only on the last micro-step, the schedule, clipping,
`metrics.jsonl`, evaluation and DCP checkpoints (state.py).

The step's loss is sum(loss sums over micro-batches and ranks) / (all-reduced target count): the
gradient of every micro-batch's *sum* is accumulated, then scaled by world / total count (DDP and
FSDP2 average over ranks), so micro-batches and ranks with different numbers of targets weigh as
one full batch would. Sums stay on the device; the host reads them only at log time.

`metrics` values are sums over the same units as the target count (logged divided by the global
count), or (sum, count) pairs with their own count; `tokens` is the tokens processed (throughput).
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor
from torch.distributed.tensor.experimental import implicit_replication
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from orizuru.files import append_jsonl, atomic_write, read_jsonl
from orizuru.model.llama import Block, Llama, rope_inv_freq
from orizuru.runtime import world_info
from orizuru.train.config import TrainConfig
from orizuru.train.optim import configure_optimizer, lr_at
from orizuru.train.state import Checkpointer, load_checkpoint


class MetricsLog:
    """Appends one JSON object per logged step to <run_dir>/metrics.jsonl (rank 0 only).

    On resume, rows past the checkpoint's step are dropped: the resumed run logs them again.
    """

    def __init__(self, run_dir: str | Path, resume_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = world_info()[0] == 0
        if self.enabled and self.path.exists():
            rows = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            with atomic_write(self.path) as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")

    def log(self, step: int, **metrics) -> None:
        if self.enabled:
            append_jsonl(self.path, {"step": step, **metrics})


# ---------------------------------------------------------------- the distributed pieces


def wrap(model: nn.Module, tcfg: TrainConfig, device) -> nn.Module:
    """The module the loop calls: activation checkpointing, then FSDP2 (every decoder block, then
    the root) or DDP under torchrun, then `torch.compile`. `model` itself stays the module whose
    parameter names checkpoints use (FSDP2 shards it in place)."""
    for m in model.modules():
        if isinstance(m, Llama):
            m.activation_checkpointing = tcfg.activation_checkpointing
    out = model
    if dist.is_initialized():
        if tcfg.fsdp:
            for m in model.modules():
                if isinstance(m, Block):
                    fully_shard(m)
            fully_shard(model)
        else:
            out = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(out) if tcfg.compile else out


@contextlib.contextmanager
def grad_sync(train_model: nn.Module, model: nn.Module, sync: bool):
    """Micro-steps before the last skip the gradient all-reduce (DDP no_sync, FSDP2's switch)."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)
        yield
    elif not sync and isinstance(getattr(train_model, "_orig_mod", train_model), DDP):
        with getattr(train_model, "_orig_mod", train_model).no_sync():
            yield
    else:
        yield


def peak_memory_mb(device) -> float:
    """The largest peak over ranks: CUDA memory allocated on a GPU, resident set size on the CPU."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    t = torch.tensor([peak], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return round(t.item(), 1)


def state_memory_mb(model: nn.Module, optimizer) -> float:
    """This rank's training state (parameters, their gradients, optimizer state), largest over ranks:
    what FSDP2 divides by the number of processes and DDP replicates."""
    local = lambda t: t.to_local() if isinstance(t, DTensor) else t  # noqa: E731
    params = {id(p): p for p in model.parameters()}.values()
    n = sum(local(p).numel() * p.element_size() * (2 if p.requires_grad else 1) for p in params)
    n += sum(local(v).numel() * v.element_size() for st in optimizer.state.values() for v in st.values() if torch.is_tensor(v) and v.ndim)
    t = torch.tensor([n / 2**20], dtype=torch.float64, device=next(iter(params)).device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return round(t.item(), 1)


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(t)
    return t


def gathered(model: nn.Module, build: Callable[[], nn.Module]) -> nn.Module | None:
    """The whole trained model on rank 0 for export (None elsewhere); a collective under FSDP2.

    Sharded parameters are gathered one tensor at a time into a fresh module made by `build()`
    on the meta device, so rank 0 holds the full model once, never twice."""
    rank = world_info()[0]
    if not isinstance(model, FSDPModule):
        return model if rank == 0 else None
    full = {}
    for k, v in model.state_dict().items():
        t = v.full_tensor() if isinstance(v, DTensor) else v
        if rank == 0:
            full[k] = t.detach().cpu()
        del t
    if rank != 0:
        return None
    with torch.device("meta"):
        fresh = build()
    fresh.load_state_dict(full, assign=True)
    for m in fresh.modules():  # the one non-persistent buffer, not in any state dict
        if isinstance(m, Llama):
            m.inv_freq = rope_inv_freq(m.cfg)
    return fresh


SHARD_BYTES = 5 * 2**30  # transformers' default max_shard_size


def export_shard_size(model: nn.Module) -> int | None:
    """save_model's max_shard_size for the final export: 5 GiB shards once the weights need more
    than one (as transformers writes them), else one model.safetensors."""
    total = sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())
    return SHARD_BYTES if total > SHARD_BYTES else None


# ---------------------------------------------------------------- the loop


@dataclass
class Stage:
    name: str
    batch: Callable[[int, int], Any]  # (step, micro) -> this rank's micro-batch
    loss: Callable[[nn.Module, Any], tuple]  # (model, batch) -> (loss sum, target count, metric sums)
    evaluate: Callable[[nn.Module], dict] | None = None  # held-out metrics, already reduced over ranks
    on_log: Callable[[int, dict], None] | None = None  # adds stage fields to a logged row
    extra: Callable[[int], dict] = field(default=lambda step: {})  # checkpoint extras (state.json)


@dataclass
class Trained:
    model: nn.Module  # the unwrapped, trained module (FSDP2: still sharded; see gathered)
    last: dict  # the last logged row


def _f64(value, device) -> torch.Tensor:
    return torch.as_tensor(value, device=device, dtype=torch.float64).detach()


def accumulate(stage: Stage, train_model: nn.Module, model: nn.Module, step: int, grad_accum: int, params: list, device, amp,
               sums: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """One step's gradients: backward of every micro-batch's loss sum (the all-reduce on the last
    only), then scaled by world / all-reduced target count. Adds the stage's metric sums to `sums`;
    returns the device tensor [loss sum, target count] over all ranks."""
    world = world_info()[1]
    step_sum, step_n = _f64(0.0, device), _f64(0.0, device)
    for micro in range(grad_accum):
        batch = stage.batch(step, micro)
        with grad_sync(train_model, model, micro == grad_accum - 1):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss_sum, n, metrics = stage.loss(train_model, batch)
            loss_sum.float().backward()
        n = _f64(n, device)
        step_sum += loss_sum.detach().double()
        step_n += n
        for k, v in metrics.items():
            s, c = v if isinstance(v, tuple) else (v, n if k != "tokens" else 1.0)
            acc = sums.setdefault(k, [_f64(0.0, device), _f64(0.0, device)])
            acc[0] += _f64(s, device)
            acc[1] += _f64(c, device)
    total = all_reduce_(torch.stack([step_sum, step_n]))
    scale = (world / total[1].clamp(min=1)).float()
    with implicit_replication():  # the scale is the same on every rank: FSDP2's sharded gradients take it as is
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    return total


def _reduce_log(sums: dict[str, list[torch.Tensor]], device) -> dict[str, tuple[float, float]]:
    keys = sorted(sums)
    flat = torch.stack([torch.stack(sums[k]) for k in keys]).to(torch.float64) if keys else torch.zeros(0, 2, device=device)
    flat = all_reduce_(flat).tolist()
    return {k: (s, c) for k, (s, c) in zip(keys, flat)}


def run_stage(stage: Stage, model: nn.Module, tcfg: TrainConfig, run_dir: str | Path, device, amp) -> Trained:
    """Train `model` from the latest checkpoint in `run_dir` (if any) to `tcfg.max_steps`."""
    rank, world = world_info()
    run_dir = Path(run_dir)
    train_model = wrap(model, tcfg, device)
    optimizer = configure_optimizer(model, tcfg)  # after FSDP2 has swapped in sharded parameters
    params = [p for p in model.parameters() if p.requires_grad]
    resumed = load_checkpoint(run_dir, model, optimizer)
    start = resumed[0] if resumed else 0
    log = MetricsLog(run_dir, resume_step=start)
    ckpt = Checkpointer(run_dir, asynchronous=tcfg.ckpt_async)
    if start and rank == 0:
        print(f"orizuru {stage.name}: resumed at step {start}", file=sys.stderr)
    bar = tqdm(total=tcfg.max_steps, initial=start, desc=stage.name, unit="step", disable=rank != 0, file=sys.stderr, dynamic_ncols=True)
    train_model.train()
    sums: dict[str, list[torch.Tensor]] = {}
    loss_acc, t_last, steps_since, last = _f64(0.0, device), time.perf_counter(), 0, {}
    for step in range(start, tcfg.max_steps):
        lr = lr_at(step, tcfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = accumulate(stage, train_model, model, step, tcfg.grad_accum, params, device, amp, sums)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_acc += total[0] / total[1].clamp(min=1)
        steps_since += 1
        done = step + 1
        bar.update(1)
        if done % tcfg.log_every == 0 or done == tcfg.max_steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t_last
            reduced = _reduce_log(sums, device)
            row = {"loss": round(loss_acc.item() / steps_since, 6)}
            row.update({k: round(s / max(c, 1e-12), 6) for k, (s, c) in reduced.items() if k != "tokens"})
            if "tokens" in reduced:
                row["tokens_per_s"] = round(reduced["tokens"][0] / elapsed, 1)
            row.update(lr=lr, grad_norm=round(float(grad_norm), 6), steps_per_s=round(steps_since / elapsed, 4),
                       peak_mem_mb=peak_memory_mb(device), state_mb=state_memory_mb(model, optimizer))
            if stage.on_log is not None:
                stage.on_log(done, row)
            if stage.evaluate is not None and (done % tcfg.eval_every == 0 or done == tcfg.max_steps):
                row.update({f"val_{k}": round(v, 6) for k, v in evaluate(stage, train_model, device, amp).items()})
            log.log(done, **row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", **({"val": f"{row['val_loss']:.3f}"} if "val_loss" in row else {}))
            last, sums, loss_acc, t_last, steps_since = row, {}, _f64(0.0, device), time.perf_counter(), 0
        if done % tcfg.ckpt_every == 0 or done == tcfg.max_steps:
            ckpt.save(done, model, optimizer, stage.extra(done))
    ckpt.wait()
    bar.close()
    return Trained(model, last)


def evaluate(stage: Stage, train_model: nn.Module, device, amp) -> dict:
    """The stage's held-out metrics, in eval mode, without gradients, under the training precision."""
    train_model.eval()
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        out = stage.evaluate(train_model)
    train_model.train()
    return out
