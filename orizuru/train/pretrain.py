"""`orizuru pretrain`: next-token pre-training (or continued pre-training) of a LLaMA model.

One loop for one CPU, one GPU or many under `torchrun` (DDP, or FSDP2 with `train.fsdp`).
Everything a resumed run needs is in the training-state checkpoint (weights, AdamW state, step,
RNG); data order is a function of the step (see data.py), so SIGKILL + rerun of the same
command continues exactly where the last checkpoint left off.

The pieces (`save_checkpoint`, `load_checkpoint`, `MetricsLog`; the optimizer and schedule in
optim.py) are reused by the post-training stages.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from orizuru.config import ConfigError, parse_command, save_config
from orizuru.errors import UserError
from orizuru.files import append_jsonl, atomic_dir, atomic_write, read_jsonl, write_json
from orizuru.model.checkpoint import load_model, save_model
from orizuru.model.flops import count_params, flops_per_token, mfu, peak_flops
from orizuru.model.llama import Llama
from orizuru.runtime import all_mean, all_sum, init_distributed, setup_device
from orizuru.tokenizer.tokenizer import Tokenizer
from orizuru.train.batches import Source, TokenBatches, val_batches
from orizuru.train.config import PretrainConfig, TrainConfig
from orizuru.train.loss import lm_loss
from orizuru.train.optim import configure_optimizer, lr_at
from orizuru.train.tokenize import file_sha256, read_meta, token_bytes

# ---------------------------------------------------------------- pieces reused by other stages


CKPT_DIR = "checkpoints"
LATEST = "latest.txt"


def _full_state(model: torch.nn.Module, optimizer) -> tuple[dict, dict]:
    """Unsharded model/optimizer state on CPU (a collective under DDP/FSDP: call on every rank)."""
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_state_dict(model, optimizer, options=opts)
    if getattr(model, "cfg", None) is not None and model.cfg.tie_embeddings:
        msd.pop("lm_head.weight", None)  # one tensor, stored once (as in HF checkpoints)
    return msd, osd


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, optimizer, extra: dict, keep: int = 2) -> None:
    """Atomic training state: checkpoints/step_N/{model.safetensors, trainer.pt, state.json}, then latest.txt.

    `model` is the unwrapped module (FSDP2 shards it in place, which is fine). Call on every rank.
    """
    msd, osd = _full_state(model, optimizer)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if rank == 0:
        root = Path(run_dir) / CKPT_DIR
        name = f"step_{step:08d}"
        with atomic_dir(root / name) as tmp:
            save_file({k: v.contiguous() for k, v in msd.items()}, str(tmp / "model.safetensors"))
            trainer = {"optimizer": osd, "rng_cpu": torch.get_rng_state()}
            if torch.cuda.is_available():
                trainer["rng_cuda"] = torch.cuda.get_rng_state()
            torch.save(trainer, tmp / "trainer.pt")
            (tmp / "state.json").write_text(json.dumps({"step": step, **extra}))
        with atomic_write(root / LATEST) as f:
            f.write(name)
        done = sorted(p for p in root.glob("step_*") if p.is_dir())
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


def load_checkpoint(run_dir: str | Path, model: torch.nn.Module, optimizer) -> tuple[int, dict] | None:
    """Restore the latest complete checkpoint into `model`/`optimizer`; (step, extra) or None."""
    root = Path(run_dir) / CKPT_DIR
    latest = root / LATEST
    if not latest.is_file():
        return None
    path = root / latest.read_text().strip()
    try:
        msd = load_file(str(path / "model.safetensors"))
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        info = json.loads((path / "state.json").read_text())
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: training checkpoint is unreadable ({e}); delete it to start over") from None
    if getattr(model, "cfg", None) is not None and model.cfg.tie_embeddings:
        msd["lm_head.weight"] = msd["model.embed_tokens.weight"]
    expected = set(get_model_state_dict(model).keys())
    if set(msd) != expected:
        raise UserError(
            f"{path}: checkpoint does not match the configured model "
            f"(missing {sorted(expected - set(msd))[:3]}, unexpected {sorted(set(msd) - expected)[:3]})"
        )
    set_state_dict(model, optimizer, model_state_dict=msd, optim_state_dict=trainer["optimizer"], options=StateDictOptions(full_state_dict=True))
    torch.set_rng_state(trainer["rng_cpu"])
    if "rng_cuda" in trainer and torch.cuda.is_available():
        torch.cuda.set_rng_state(trainer["rng_cuda"])
    step = info.pop("step")
    return step, info


class MetricsLog:
    """Appends one JSON object per logged step to <run_dir>/metrics.jsonl (rank 0 only).

    On resume, rows past the checkpoint's step are dropped: the resumed run logs them again.
    """

    def __init__(self, run_dir: str | Path, resume_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = not dist.is_initialized() or dist.get_rank() == 0
        if self.enabled and self.path.exists():
            rows = [r for r in read_jsonl(self.path) if r.get("step", 0) <= resume_step]
            with atomic_write(self.path) as f:
                for r in rows:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")

    def log(self, step: int, **metrics) -> None:
        if self.enabled:
            append_jsonl(self.path, {"step": step, **metrics})


# ---------------------------------------------------------------- distributed helpers


def wrap_parallel(model: Llama, tcfg: TrainConfig, device) -> torch.nn.Module:
    """DDP (default) or FSDP2 under torchrun; the plain model otherwise."""
    if not dist.is_initialized():
        return model
    if tcfg.fsdp:
        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
        return model
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def cuda_mfu(flops_per_token: float, tokens_per_s_per_gpu: float) -> float | None:
    """MFU of this process's GPU, or None on CPU or an unknown GPU (see mfu.py)."""
    if not torch.cuda.is_available():
        return None
    peak = peak_flops(torch.cuda.get_device_name())
    return None if peak is None else mfu(flops_per_token, tokens_per_s_per_gpu, peak)


# ---------------------------------------------------------------- the loop


def _init_model(cfg: PretrainConfig, data_meta: dict, device) -> tuple[Llama, Tokenizer]:
    data_dir = Path(cfg.data.dirs[0])
    tokenizer = Tokenizer.load(data_dir)
    if cfg.train.init_from:
        model = load_model(cfg.train.init_from, device="cpu")
        cfg.model = model.cfg
        init_tok = Path(cfg.train.init_from) / "tokenizer.json"
        if init_tok.exists() and file_sha256(init_tok) != data_meta["tokenizer_sha256"]:
            raise UserError(
                f"{data_dir}: tokenized with a different tokenizer than the model in {cfg.train.init_from}; "
                f"re-run 'orizuru tokenize --tokenizer {cfg.train.init_from}'"
            )
    else:
        torch.manual_seed(cfg.train.seed)
        model = Llama(cfg.model)
        model.init_weights(seed=cfg.train.seed)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise ConfigError(
            f"tokenizer in {data_dir} has {tokenizer.vocab_size} tokens but 'model.vocab_size' is {cfg.model.vocab_size}"
        )
    return model.to(device), tokenizer


def evaluate(model, val: Source, tcfg: TrainConfig, world: int, rank: int, tbytes: torch.Tensor, device, amp) -> tuple[float, float]:
    """Validation loss (nats/token) and bits per byte over a fixed set of held-out windows."""
    model.eval()
    nats = tokens = nbytes = 0.0
    with torch.no_grad():
        for x, y in val_batches(val, tcfg.batch_size, tcfg.eval_batches, world, rank):
            x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = model(x, y, loss_reduction="sum")
            nats += loss.item()
            tokens += y.numel()
            nbytes += tbytes[y].sum().item()
    model.train()
    nats, tokens, nbytes = all_sum([nats, tokens, nbytes], device)
    return nats / tokens, nats / (math.log(2) * max(nbytes, 1.0))


def pretrain(cfg: PretrainConfig) -> dict:
    if not cfg.data.dirs:
        raise ConfigError("config key 'data.dirs' is empty: give at least one token shard directory")
    rank, world = init_distributed()
    device, amp = setup_device(cfg.train.dtype)
    tcfg = cfg.train
    metas = [read_meta(d) for d in cfg.data.dirs]
    if len({m["tokenizer_sha256"] for m in metas}) > 1:
        raise ConfigError(f"config key 'data.dirs': shard sets were tokenized with different tokenizers: {cfg.data.dirs}")
    run_dir = Path(cfg.run.dir)
    model, tokenizer = _init_model(cfg, metas[0], device)
    train_sources = [Source(d, "train", tcfg.seq_len) for d in cfg.data.dirs]
    val_source = Source(cfg.data.dirs[0], "val", tcfg.seq_len)
    batches = TokenBatches(train_sources, cfg.data.weights or [1.0] * len(train_sources), tcfg.batch_size, tcfg.grad_accum, world, tcfg.seed)
    tbytes = torch.from_numpy(token_bytes(tokenizer)).to(device)

    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")
    model.activation_checkpointing = tcfg.activation_checkpointing
    train_model = torch.compile(model) if tcfg.compile else model
    train_model = wrap_parallel(train_model, tcfg, device)
    optimizer = configure_optimizer(model, tcfg)  # after FSDP2 has swapped in sharded parameters
    resumed = load_checkpoint(run_dir, model, optimizer)
    start = resumed[0] if resumed else 0
    if start >= tcfg.max_steps and (run_dir / "summary.json").exists() and (run_dir / "model" / "config.json").exists():
        return json.loads((run_dir / "summary.json").read_text())  # finished earlier: nothing to do
    log = MetricsLog(run_dir, resume_step=start)

    n_params = count_params(model.cfg).total
    fpt = flops_per_token(model.cfg, tcfg.seq_len)
    tokens_per_step = tcfg.batch_size * tcfg.seq_len * tcfg.grad_accum * world
    if rank == 0:
        print(
            f"orizuru pretrain: {n_params / 1e6:.2f}M parameters, {tokens_per_step} tokens/step, "
            f"{world} process(es) on {device.type}{' (resumed at step %d)' % start if start else ''}",
            file=sys.stderr,
        )
    bar = tqdm(total=tcfg.max_steps, initial=start, desc="pretrain", unit="step", disable=rank != 0, file=sys.stderr, dynamic_ncols=True)
    train_model.train()
    # the loss is summed on the device and read at log time only: a .item() per micro-step would
    # make the host wait for the GPU every step instead of queueing the next one
    loss_acc, t_last, steps_since = torch.zeros((), device=device), time.perf_counter(), 0
    for step in range(start, tcfg.max_steps):
        lr = lr_at(step, tcfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(tcfg.grad_accum):
            x, y = batches.batch(step, micro, rank)
            x, y = torch.from_numpy(x).to(device, non_blocking=True), torch.from_numpy(y).to(device, non_blocking=True)
            sync = micro == tcfg.grad_accum - 1 or not hasattr(train_model, "no_sync")
            with contextlib.nullcontext() if sync else train_model.no_sync():
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    loss = lm_loss(train_model, x, y, tcfg, tokenizer.bos_id) / tcfg.grad_accum
                loss.backward()
            loss_acc += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps_since += 1
        done = step + 1
        bar.update(1)
        if done % tcfg.log_every == 0 or done == tcfg.max_steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - t_last
            train_loss = all_mean(loss_acc.item() / steps_since, device)
            tps = tokens_per_step * steps_since / elapsed
            row = {"loss": round(train_loss, 6), "lr": lr, "grad_norm": round(float(grad_norm), 6), "tokens_per_s": round(tps, 1),
                   "tokens": done * tokens_per_step}
            util = cuda_mfu(fpt, tps / world)
            if util is not None:
                row["mfu"] = round(util, 4)
            if done % tcfg.eval_every == 0 or done == tcfg.max_steps:
                row["val_loss"], row["val_bpb"] = (round(v, 6) for v in evaluate(train_model, val_source, tcfg, world, rank, tbytes, device, amp))
            log.log(done, **row)
            bar.set_postfix(loss=f"{train_loss:.3f}", **({"val": f"{row['val_loss']:.3f}"} if "val_loss" in row else {}), tok_s=f"{tps:,.0f}")
            loss_acc, t_last, steps_since = torch.zeros((), device=device), time.perf_counter(), 0
        if done % tcfg.ckpt_every == 0 and done < tcfg.max_steps:
            save_checkpoint(run_dir, done, model, optimizer, {"epochs": batches.epochs(done)})
    bar.close()
    if start < tcfg.max_steps:
        save_checkpoint(run_dir, tcfg.max_steps, model, optimizer, {"epochs": batches.epochs(tcfg.max_steps)})
    summary = {
        "step": tcfg.max_steps,
        "tokens": tcfg.max_steps * tokens_per_step,
        "params": n_params,
        "flops": fpt * tcfg.max_steps * tokens_per_step,
        "epochs": batches.epochs(tcfg.max_steps),
    }
    final = model
    if tcfg.fsdp and dist.is_initialized():
        msd, _ = _full_state(model, optimizer)  # gathers the shards (collective)
        if rank == 0:
            final = Llama(cfg.model)
            if cfg.model.tie_embeddings:
                msd["lm_head.weight"] = msd["model.embed_tokens.weight"]
            final.load_state_dict(msd)
    if rank == 0:
        rows = read_jsonl(log.path) if log.path.exists() else []
        for key, src in (("train_loss", "loss"), ("val_loss", "val_loss"), ("val_bpb", "val_bpb")):
            summary[key] = next((r[src] for r in reversed(rows) if src in r), None)
        save_model(final, run_dir / "model", tokenizer)
        write_json(run_dir / "summary.json", summary)
    if dist.is_initialized():
        dist.barrier()
    return summary


def main(argv: list[str]) -> int:
    cfg = parse_command(PretrainConfig, argv, "orizuru pretrain", __doc__.split("\n\n")[0],
                        aliases={"init-from": "train.init_from"})
    try:
        summary = pretrain(cfg)
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(json.dumps(summary))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0
