"""The step loop shared by the post-training stages (sft, dpo, reward): what `pretrain` does per step.

A stage supplies `micro(step, index) -> (loss, metrics)` (a pure function of the step, so a
resumed run sees the same batches) and `evaluate() -> metrics`; this loop owns the learning rate
schedule, gradient accumulation and clipping, progress bar, `metrics.jsonl` and the resumable
training-state checkpoints, all from `orizuru.train`. Also here: the padded batches and per-token
log-probabilities every stage computes from (ids, loss mask) pairs, and model/tokenizer loading.
"""

from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm

from orizuru.config import ConfigError
from orizuru.errors import UserError
from orizuru.model.checkpoint import load_model, save_model
from orizuru.model.generate import generate
from orizuru.tokenizer.chat import ChatTokenizer, prompt_ids, render, stop_id
from orizuru.tokenizer.tokenizer import Tokenizer
from orizuru.train.config import TrainConfig
from orizuru.train.optim import configure_optimizer, lr_at
from orizuru.train.pretrain import MetricsLog, load_checkpoint, save_checkpoint


def load_base(directory: str | Path, device) -> tuple[torch.nn.Module, ChatTokenizer]:
    """The HF Llama directory a stage starts from, and its tokenizer (which must hold the role tokens)."""
    if not (Path(directory) / "config.json").is_file():
        raise UserError(f"{directory}: not a model directory (no config.json); run 'orizuru pretrain' or 'orizuru demo' first")
    tok = ChatTokenizer(Tokenizer.load(directory).hf)
    stop_id(tok)  # fails clearly on a tokenizer without the reserved chat tokens
    return load_model(directory, device=device).train(), tok


def save_chat_model(model, directory: str | Path, tok: Tokenizer) -> None:
    """HF directory with the chat template and `<|end|>` as a stop token for HF `generate`."""
    save_model(model, directory, ChatTokenizer(tok.hf), generation={"eos_token_id": [tok.eos_id, stop_id(tok)]})


def sample_answers(model_dir: str | Path, questions: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy chat answers of a model directory (for before/after comparisons in reports)."""
    model, tok = load_model(model_dir).eval(), Tokenizer.load(model_dir)
    room = model.cfg.max_seq_len - max_new_tokens
    prompts = [tok.encode_prompt(prompt_ids(tok, [{"role": "user", "content": q}]), room)[0] for q in questions]
    outs = generate(model, prompts, max_new_tokens, eos_id=[stop_id(tok), tok.eos_id])
    return [tok.decode(o).strip() for o in outs]


@dataclass
class PostTrain(TrainConfig):
    """Post-training defaults (a subclass, so `--set train.x=...` keeps the others): PLaMo-13B-Instruct's
    lr 1e-5 decaying to 0, no weight decay, a 1,024-token context. sft and reward use it; dpo lowers lr."""

    lr: float = 1e-5
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    seq_len: int = 1024
    eval_every: int = 50
    ckpt_every: int = 50


# ---------------------------------------------------------------- sequences and batches


@dataclass
class Seq:
    ids: list[int]
    mask: list[int]  # 1 = this token is a target (carries loss / log-prob)


def fit(seqs: list[Seq], max_len: int, overlong: str, what: str) -> tuple[list[Seq], int, int]:
    """Cut sequences to `max_len` tokens: (kept, n_truncated, n_dropped because no target token is left).

    overlong='error' refuses the first sequence that does not fit instead.
    """
    kept, truncated, dropped = [], 0, 0
    for i, s in enumerate(seqs):
        if len(s.ids) > max_len:
            if overlong == "error":
                raise UserError(
                    f"{what} #{i} has {len(s.ids)} tokens, more than the context of {max_len}; "
                    "shorten it or set data.overlong='truncate'"
                )
            s = Seq(s.ids[:max_len], s.mask[:max_len])
            truncated += 1
        if sum(s.mask[1:]) == 0:
            dropped += 1
            continue
        kept.append(s)
    return kept, truncated, dropped


def pad_batch(seqs: list[Seq], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (inputs, targets): targets are the next tokens where the mask is 1, else -100.

    Right padding needs no attention mask: causal attention never lets a real token see the
    padding after it, and padded positions carry no target.
    """
    T = max(len(s.ids) for s in seqs) - 1
    x = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    y = torch.full((len(seqs), T), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s.ids) - 1
        x[i, :n] = torch.tensor(s.ids[:-1])
        y[i, :n] = torch.tensor([t if m else -100 for t, m in zip(s.ids[1:], s.mask[1:])])
    return x.to(device), y.to(device)


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) per position (B, T) in float32, 0 where the target is -100."""
    valid = targets != -100
    logp = torch.gather(F.log_softmax(logits.float(), -1), 2, targets.clamp(min=0)[..., None])[..., 0]
    return logp * valid


def sequence_logps(model, seqs: list[Seq], pad_id: int, device) -> torch.Tensor:
    """Sum of log-probs of each sequence's target tokens: log pi(y | x) per row."""
    x, y = pad_batch(seqs, pad_id, device)
    return token_logps(model(x), y).sum(-1)


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of example indices: shuffled, grouped by length to waste little padding."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    chunk = batch_size * 32  # sort within chunks: similar lengths per batch, still random overall
    order = [i for c in range(0, len(order), chunk) for i in sorted(order[c : c + chunk], key=lengths.__getitem__)]
    batches = [order[b : b + batch_size] for b in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


class Batches:
    """Batch number -> example indices, deterministic in the batch number (for exact resume)."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.per_epoch = math.ceil(len(lengths) / batch_size)
        self._cache: tuple[int, list[list[int]]] | None = None

    def __call__(self, n: int) -> list[int]:
        epoch, b = divmod(n, self.per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, epoch_batches(self.lengths, self.batch_size, self.seed, epoch))
        return self._cache[1][b]


def split_val(items: list, fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic (train, val) split; val is empty when fraction is 0."""
    idx = list(range(len(items)))
    random.Random(seed).shuffle(idx)
    n_val = min(len(items) - 1, max(1, round(fraction * len(items)))) if fraction > 0 and len(items) > 1 else 0
    val = set(idx[:n_val])
    return [x for i, x in enumerate(items) if i not in val], [x for i, x in enumerate(items) if i in val]


def schedule(tcfg: TrainConfig, epochs: int, warmup_ratio: float, n_batches_per_epoch: int) -> None:
    """Epochs -> train.max_steps, warm-up ratio -> train.warmup_steps (PLaMo-Instruct style)."""
    if epochs > 0:
        tcfg.max_steps = max(1, math.ceil(epochs * n_batches_per_epoch / tcfg.grad_accum))
    if warmup_ratio > 0:
        tcfg.warmup_steps = math.ceil(warmup_ratio * tcfg.max_steps)
    if tcfg.warmup_steps >= tcfg.max_steps and tcfg.max_steps > 1:
        raise ConfigError(f"warm-up ({tcfg.warmup_steps} steps) must be shorter than the run ({tcfg.max_steps} steps)")


# ---------------------------------------------------------------- the loop


def run_steps(
    name: str,
    model: torch.nn.Module,
    tcfg: TrainConfig,
    run_dir: Path,
    micro: Callable[[int, int], tuple[torch.Tensor, dict]],
    evaluate: Callable[[], dict],
    device,
    amp,
) -> dict:
    """Train from the latest checkpoint in `run_dir` (if any) to `tcfg.max_steps`; the last logged row."""
    optimizer = configure_optimizer(model, tcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    resumed = load_checkpoint(run_dir, model, optimizer)
    start = resumed[0] if resumed else 0
    log = MetricsLog(run_dir, resume_step=start)
    if start:
        print(f"orizuru {name}: resumed at step {start}", file=sys.stderr)
    bar = tqdm(total=tcfg.max_steps, initial=start, desc=name, unit="step", file=sys.stderr, dynamic_ncols=True)
    model.train()
    sums: dict[str, float] = {}
    last: dict = {}
    t0, steps_since = time.perf_counter(), 0
    for step in range(start, tcfg.max_steps):
        lr = lr_at(step, tcfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for m in range(tcfg.grad_accum):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss, metrics = micro(step, m)
            (loss / tcfg.grad_accum).backward()
            for k, v in {"loss": loss.item(), **metrics}.items():  # tokens add up, the rest average
                sums[k] = sums.get(k, 0.0) + float(v) / (1 if k == "tokens" else tcfg.grad_accum)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps_since += 1
        done = step + 1
        bar.update(1)
        if done % tcfg.log_every == 0 or done == tcfg.max_steps:
            elapsed = time.perf_counter() - t0
            row = {k: round(v / steps_since, 6) for k, v in sums.items() if k != "tokens"}
            if "tokens" in sums:
                row["tokens_per_s"] = round(sums["tokens"] / elapsed, 1)
            row.update(lr=lr, grad_norm=round(float(grad_norm), 6))
            if done % tcfg.eval_every == 0 or done == tcfg.max_steps:
                model.eval()
                with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    row.update({f"val_{k}": round(v, 6) for k, v in evaluate().items()})
                model.train()
            log.log(done, **row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", **({"val": f"{row['val_loss']:.3f}"} if "val_loss" in row else {}))
            last, sums, t0, steps_since = row, {}, time.perf_counter(), 0
        if done % tcfg.ckpt_every == 0 or done == tcfg.max_steps:
            save_checkpoint(run_dir, done, model, optimizer, {})
    bar.close()
    return last


def answer_seq(tok, prompt: list[dict], answer: str) -> Seq:
    """Prompt + answer with the mask on the final answer only (earlier assistant turns are context)."""
    n = len(render(tok, prompt, add_generation_prompt=True).ids)
    r = render(tok, prompt + [{"role": "assistant", "content": answer}])
    return Seq(r.ids, [0] * n + r.mask[n:])


@dataclass
class Schedule:
    epochs: int = 3  # 0: run train.max_steps instead
    warmup_ratio: float = 0.03  # 0: use train.warmup_steps

    def validate(self) -> None:
        if self.epochs < 0 or not 0 <= self.warmup_ratio < 1:
            raise ConfigError("config keys 'schedule.epochs' >= 0 and 'schedule.warmup_ratio' in [0, 1) expected")
