"""`orizuru pretrain`: next-token pre-training (or continued pre-training) of a LLaMA model.

Runs on the one step loop (loop.py: one CPU, one GPU or many under `torchrun`, DDP or FSDP2
with `train.fsdp`); this module supplies the token batches, the loss and the validation pass.
Everything a resumed run needs is in the training-state checkpoint (state.py); data order is a
function of the step (see batches.py), so SIGKILL + rerun of the same command continues exactly
where the last checkpoint left off, with any number of processes.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch

from orizuru.config import ConfigError, parse_command, save_config
from orizuru.errors import UserError
from orizuru.files import read_jsonl, write_json
from orizuru.model.checkpoint import load_model, save_model
from orizuru.model.flops import count_params, flops_per_token, mfu, peak_flops
from orizuru.model.llama import Llama
from orizuru.runtime import all_sum, barrier, init_distributed, process_group, setup_device
from orizuru.tokenizer.tokenizer import Tokenizer
from orizuru.train.batches import Source, TokenBatches, val_batches
from orizuru.train.config import PretrainConfig, TrainConfig
from orizuru.train.loop import Stage, export_shard_size, gathered, run_stage
from orizuru.train.loss import lm_loss, selective_lm_loss
from orizuru.train.tokenize import file_sha256, read_meta, token_bytes


def cuda_mfu(flops_per_token: float, tokens_per_s_per_gpu: float) -> float | None:
    """MFU of this process's GPU, or None on CPU or an unknown GPU (see mfu.py)."""
    if not torch.cuda.is_available():
        return None
    peak = peak_flops(torch.cuda.get_device_name())
    return None if peak is None else mfu(flops_per_token, tokens_per_s_per_gpu, peak)


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


def load_reference(cfg: PretrainConfig, data_meta: dict, tokenizer: Tokenizer, device) -> Llama:
    """Rho-1's reference model (`train.select_ref`), frozen and in eval mode on this process's
    device. Under DDP/FSDP2 every rank holds its own full copy: it only runs forward, and a
    reference is small next to the model being trained."""
    ref_dir = Path(cfg.train.select_ref)
    if not (ref_dir / "config.json").is_file():  # checked here, not at load: a pipeline's reference is built by an earlier stage
        what = "has no config.json" if ref_dir.is_dir() else "does not exist"
        raise ConfigError(f"config key 'train.select_ref': {ref_dir} {what} (expected a HF Llama model directory)")
    ref_tok = ref_dir / "tokenizer.json"
    ref = load_model(ref_dir, device="cpu")
    if ref_tok.exists() and file_sha256(ref_tok) != data_meta["tokenizer_sha256"]:
        raise ConfigError(f"config key 'train.select_ref': {ref_dir}/tokenizer.json is not the tokenizer of the shards in "
                          f"{cfg.data.dirs[0]} (sha256 differs); the reference must use the run's tokenizer")
    if (not ref_tok.exists() and ref.cfg.vocab_size != cfg.model.vocab_size) or ref.cfg.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"config key 'train.select_ref': {ref_dir} has vocab_size {ref.cfg.vocab_size}, the run's model "
                          f"{cfg.model.vocab_size} and its tokenizer {tokenizer.vocab_size} tokens; the reference must use the run's tokenizer")
    return ref.requires_grad_(False).eval().to(device)


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


def pretrain_loss(model, batch, tcfg: TrainConfig | None = None, bos_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(summed next-token loss, number of targets, metric sums) of one micro-batch; z-loss and
    document masking as `tcfg` says (train/loss.py)."""
    x, y = batch
    return lm_loss(model, x, y, tcfg or TrainConfig(), bos_id), (y != -100).sum(), {"tokens": x.numel()}


def pretrain(cfg: PretrainConfig) -> dict:
    if not cfg.data.dirs:
        raise ConfigError("config key 'data.dirs' is empty: give at least one token shard directory")
    rank, world = init_distributed()
    device, amp = setup_device(cfg.train.dtype, cfg.train.device)
    tcfg = cfg.train
    metas = [read_meta(d) for d in cfg.data.dirs]
    if len({m["tokenizer_sha256"] for m in metas}) > 1:
        raise ConfigError(f"config key 'data.dirs': shard sets were tokenized with different tokenizers: {cfg.data.dirs}")
    run_dir = Path(cfg.run.dir)
    model, tokenizer = _init_model(cfg, metas[0], device)
    ref = load_reference(cfg, metas[0], tokenizer, device) if tcfg.select_ref else None
    train_sources = [Source(d, "train", tcfg.seq_len) for d in cfg.data.dirs]
    val_source = Source(cfg.data.dirs[0], "val", tcfg.seq_len)
    batches = TokenBatches(train_sources, cfg.data.weights or [1.0] * len(train_sources), tcfg.batch_size, tcfg.grad_accum, world, tcfg.seed)
    tbytes = torch.from_numpy(token_bytes(tokenizer)).to(device)
    if (run_dir / "summary.json").exists() and (run_dir / "model" / "config.json").exists():
        done = json.loads((run_dir / "summary.json").read_text())
        if done.get("step") == tcfg.max_steps:
            return done  # finished earlier: nothing to do
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")

    n_params = count_params(model.cfg).total
    fpt = flops_per_token(model.cfg, tcfg.seq_len)
    tokens_per_step = tcfg.batch_size * tcfg.seq_len * tcfg.grad_accum * world
    if rank == 0:
        print(f"orizuru pretrain: {n_params / 1e6:.2f}M parameters, {tokens_per_step} tokens/step, {world} process(es) on {device.type}", file=sys.stderr)

    def batch(step: int, micro: int):
        x, y = batches.batch(step, micro, rank)
        return torch.from_numpy(x).to(device, non_blocking=True), torch.from_numpy(y).to(device, non_blocking=True)

    def on_log(done: int, row: dict) -> None:
        row["tokens"] = done * tokens_per_step
        util = cuda_mfu(fpt, row["tokens_per_s"] / world)
        if util is not None:
            row["mfu"] = round(util, 4)

    def validate(m) -> dict:
        loss, bpb = evaluate(m, val_source, tcfg, world, rank, tbytes, device, amp)
        return {"loss": loss, "bpb": bpb}

    def loss(m, b):
        if ref is None:
            return pretrain_loss(m, b, tcfg, tokenizer.bos_id)
        x, y = b
        loss_sum, n_selected, n_valid = selective_lm_loss(m, ref, x, y, tcfg, tokenizer.bos_id)
        return loss_sum, n_selected, {"tokens": x.numel(), "selected_frac": (n_selected, n_valid)}

    stage = Stage("pretrain", batch, loss, validate, on_log, extra=lambda step: {"epochs": batches.epochs(step)})
    trained = run_stage(stage, model, tcfg, run_dir, device, amp)
    summary = {
        "step": tcfg.max_steps,
        "tokens": tcfg.max_steps * tokens_per_step,
        "params": n_params,
        "flops": fpt * tcfg.max_steps * tokens_per_step,
        "epochs": batches.epochs(tcfg.max_steps),
    }
    final = gathered(trained.model, lambda: Llama(cfg.model))
    if rank == 0:
        rows = read_jsonl(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
        for key, src in (("train_loss", "loss"), ("val_loss", "val_loss"), ("val_bpb", "val_bpb")):
            summary[key] = next((r[src] for r in reversed(rows) if src in r), None)
        save_model(final, run_dir / "model", tokenizer, max_shard_size=export_shard_size(final))
        write_json(run_dir / "summary.json", summary)
    barrier()
    return summary


def main(argv: list[str]) -> int:
    cfg = parse_command(PretrainConfig, argv, "orizuru pretrain", __doc__.split("\n\n")[0],
                        aliases={"init-from": "train.init_from"})
    with process_group() as (rank, _):
        summary = pretrain(cfg)
        if rank == 0:
            print(json.dumps(summary))
    return 0
