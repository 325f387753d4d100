"""`orizuru sft`: instruction tuning, full or LoRA, with loss only on the assistant's tokens.

Conversations (Alpaca / OpenAI messages / ShareGPT files, plus FLAN-templated task data) are
rendered with the one chat template (chat.py); the loss is L = -E log pi(y | x) over answer tokens
only. Batches are right-padded and grouped by length (see finetune.py for why no attention mask
is needed); epochs and a warm-up ratio set the schedule (PLaMo-13B-Instruct: lr 1e-5, warm-up
0.03). Output: `<run.dir>/model/` (HF directory with the chat template; LoRA merged into it),
`<run.dir>/adapter/` (peft layout) for LoRA runs, `metrics.jsonl`, `summary.json`.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from orizuru.config import ConfigError, parse_command, save_config
from orizuru.files import write_json
from orizuru.model.llama import Llama
from orizuru.model.lora import apply_lora, merge_lora, save_adapter
from orizuru.post.data import flan_messages, read_instructions
from orizuru.post.finetune import (
    Batches,
    PostTrain,
    Schedule,
    Seq,
    all_sums,
    fit,
    load_base,
    pad_batch,
    rank_share,
    save_chat_model,
    schedule,
    split_val,
)
from orizuru.runtime import barrier, init_distributed, process_group, setup_device, world_info
from orizuru.tokenizer.chat import render
from orizuru.train.config import RunConfig
from orizuru.train.loop import Stage, gathered, run_stage


@dataclass
class SFTData:
    train: list[str] = field(default_factory=list)  # instruction files (.jsonl or .json)
    flan: list[str] = field(default_factory=list)  # "task=path" (tasks: jcommonsenseqa, jnli, jsquad, niilc)
    val: list[str] = field(default_factory=list)  # held-out files; empty: val_fraction of train
    val_fraction: float = 0.05
    strict: bool = False  # stop at the first bad row instead of skipping it
    overlong: Literal["truncate", "error"] = "truncate"
    drop_unknown: bool = False  # drop rows that `orizuru slick` labelled Unknown

    def validate(self) -> None:
        if not self.train and not self.flan:
            raise ConfigError("config key 'data.train' is empty: give at least one instruction file")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"config key 'data.val_fraction' must be in [0, 1), got {self.val_fraction}")
        for item in self.flan:
            if "=" not in item:
                raise ConfigError(f"config key 'data.flan': expected 'task=path', got {item!r}")


@dataclass
class LoRAConfig:
    rank: int = 0  # 0: full fine-tuning
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    def validate(self) -> None:
        if self.rank < 0 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ConfigError("config keys 'lora.rank' >= 0, 'lora.alpha' > 0, 'lora.dropout' in [0, 1) expected")
        if self.rank and not self.targets:
            raise ConfigError("config key 'lora.targets' is empty")


@dataclass
class SFTConfig:
    model: str = "runs/demo/model"  # HF Llama directory to start from
    data: SFTData = field(default_factory=SFTData)
    train: PostTrain = field(default_factory=PostTrain)
    schedule: Schedule = field(default_factory=Schedule)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/sft"))


def read_chats(d: SFTData, files: list[str]) -> tuple[list[list[dict]], dict]:
    chats, report = read_instructions(files, strict=d.strict, drop_labels=("Unknown",) if d.drop_unknown else ())
    return chats, {"rows": report.rows, "skipped": report.skipped, "dropped_unknown": report.dropped}


def load_examples(cfg: SFTConfig, tok) -> tuple[list[Seq], list[Seq], dict]:
    """(train, val) token sequences with loss masks, and counts of what was skipped or cut."""
    d = cfg.data
    chats, counts = read_chats(d, d.train)
    for item in d.flan:
        task, path = item.split("=", 1)
        more, report = flan_messages(task, path, seed=cfg.train.seed, strict=d.strict)
        chats += more
        counts["rows"] += report.rows
        counts["skipped"] += report.skipped
    if d.val:
        val_chats, _ = read_chats(d, d.val)
        train_chats = chats
    else:
        train_chats, val_chats = split_val(chats, d.val_fraction, cfg.train.seed)
    max_len = cfg.train.seq_len + 1  # inputs are ids[:-1]
    seqs = [Seq(r.ids, r.mask) for r in (render(tok, c) for c in train_chats)]
    train, counts["truncated"], counts["dropped_too_long"] = fit(seqs, max_len, d.overlong, "training example")
    val, _, _ = fit([Seq(r.ids, r.mask) for r in (render(tok, c) for c in val_chats)], max_len, "truncate", "validation example")
    if not train:
        raise ConfigError("no usable training examples (all rows were skipped or did not fit train.seq_len)")
    counts.update(train=len(train), val=len(val))
    return train, val, counts


def sft(cfg: SFTConfig) -> dict:
    rank, world = init_distributed()
    device, amp = setup_device(cfg.train.dtype, cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    model, tok = load_base(cfg.model, device)
    if cfg.train.seq_len > model.cfg.max_seq_len:
        raise ConfigError(f"config key 'train.seq_len' ({cfg.train.seq_len}) exceeds the model's context ({model.cfg.max_seq_len})")
    train_set, val, counts = load_examples(cfg, tok)
    if cfg.lora.rank:
        apply_lora(model, cfg.lora.rank, cfg.lora.alpha, cfg.lora.targets, cfg.lora.dropout)
    B = cfg.train.batch_size
    batches = Batches([len(s.ids) for s in train_set], B * world, cfg.train.seed)
    schedule(cfg.train, cfg.schedule.epochs, cfg.schedule.warmup_ratio, batches.per_epoch)
    run_dir = Path(cfg.run.dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")
        print(f"orizuru sft: {json.dumps(counts)}; {cfg.train.max_steps} steps, {world} process(es)", file=sys.stderr)

    def padded(seqs: list[Seq], live: bool):
        x, y = pad_batch(seqs, tok.pad_id, device)
        return x, (y if live else torch.full_like(y, -100)), sum(len(s.ids) - 1 for s in seqs) if live else 0

    def batch(step: int, m: int):
        idx, live = rank_share(batches(step * cfg.train.grad_accum + m), rank, world)
        return padded([train_set[i] for i in idx], live)

    def loss(model, b):
        x, y, tokens = b
        return model(x, y, loss_reduction="sum"), (y != -100).sum(), {"tokens": tokens}  # real tokens, not padding

    def evaluate(model) -> dict:
        nats = n = 0.0
        for start in range(0, len(val), B * world):
            idx, live = rank_share(list(range(start, min(start + B * world, len(val)))), rank, world)
            x, y, _ = padded([val[i] for i in idx], live)
            nats += model(x, y, loss_reduction="sum").item()
            n += (y != -100).sum().item()
        total = all_sums({"nats": nats, "n": n}, device)
        return {"loss": total["nats"] / total["n"]} if total["n"] else {}

    trained = run_stage(Stage("sft", batch, loss, evaluate), model, cfg.train, run_dir, device, amp)
    last = trained.last
    lora = cfg.lora

    def build():
        fresh = Llama(model.cfg)
        if lora.rank:
            apply_lora(fresh, lora.rank, lora.alpha, lora.targets, lora.dropout)
        return fresh

    final = gathered(trained.model, build)
    if rank == 0:
        if lora.rank:
            save_adapter(final, run_dir / "adapter", rank=lora.rank, alpha=lora.alpha, targets=lora.targets, dropout=lora.dropout, base_model=cfg.model)
            merge_lora(final)
        save_chat_model(final, run_dir / "model", tok)
    summary = {"step": cfg.train.max_steps, "epochs": cfg.schedule.epochs, **counts, **{k: last[k] for k in ("loss", "val_loss") if k in last}}
    if rank == 0:
        write_json(run_dir / "summary.json", summary)
    barrier()
    return summary


def main(argv: list[str]) -> int:
    cfg = parse_command(SFTConfig, argv, "orizuru sft", __doc__.split("\n\n")[0],
                        aliases={"lora-rank": "lora.rank", "strict": "data.strict"})
    with process_group():
        summary = sft(cfg)
        if world_info()[0] == 0:
            print(json.dumps(summary, ensure_ascii=False))
    return 0
