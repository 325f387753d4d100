"""What the post-training stages share: their training options, data-parallel batches, the padded
batches and per-token log-probabilities every stage computes from (ids, loss mask) pairs, and
model/tokenizer loading. sft, dpo and reward train on the one step loop (`orizuru.train.loop`);
ppo keeps its rollout loop and steps through the loop's optimizer, distributed and checkpoint pieces.

Under `torchrun` each optimizer step takes one global batch of `train.batch_size` x processes
examples, and rank r trains on its r-th slice: 2 processes x batch B see what 1 x 2B sees.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from orizuru.config import ConfigError
from orizuru.errors import UserError
from orizuru.model.checkpoint import load_model, save_model
from orizuru.model.generate import generate
from orizuru.runtime import inference_device
from orizuru.tokenizer.chat import ChatTokenizer, prompt_ids, render, stop_id
from orizuru.tokenizer.tokenizer import Tokenizer
from orizuru.train.config import TrainConfig
from orizuru.train.loop import export_shard_size


def load_base(directory: str | Path, device) -> tuple[torch.nn.Module, ChatTokenizer]:
    """The HF Llama directory a stage starts from, and its tokenizer (which must hold the role tokens)."""
    if not (Path(directory) / "config.json").is_file():
        raise UserError(f"{directory}: not a model directory (no config.json); run 'orizuru pretrain' or 'orizuru demo' first")
    tok = ChatTokenizer(Tokenizer.load(directory).hf)
    stop_id(tok)  # fails clearly on a tokenizer without the reserved chat tokens
    return load_model(directory, device=device).train(), tok


def save_chat_model(model, directory: str | Path, tok: Tokenizer) -> None:
    """HF directory with the chat template and `<|end|>` as a stop token for HF `generate`."""
    save_model(model, directory, ChatTokenizer(tok.hf), generation={"eos_token_id": [tok.eos_id, stop_id(tok)]},
               max_shard_size=export_shard_size(model))


def sample_answers(model_dir: str | Path, questions: list[str], max_new_tokens: int = 48, device: str = "auto", dtype: str = "auto") -> list[str]:
    """Greedy chat answers of a model directory (for before/after comparisons in reports)."""
    dev, dt = inference_device(device, dtype)
    model, tok = load_model(model_dir, device=dev, dtype=dt).eval(), Tokenizer.load(model_dir)
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
    max_steps: int = 0  # cap on the steps schedule.epochs gives (0: none); with schedule.epochs = 0, the run's length
    eval_every: int = 50
    ckpt_every: int = 50

    def validate(self) -> None:
        reject_unused(self, ("init_from", "eval_batches"), "the starting model is the stage's `model`; validation uses the whole held-out set")
        reject_unused(self, ("select_ref", "select_ratio"), "Rho-1 token selection is a pre-training option")
        if self.max_steps < 0:
            raise ConfigError(f"config key 'train.max_steps' must be >= 0, got {self.max_steps}")
        TrainConfig.validate(replace(self, max_steps=max(1, self.max_steps)))


def reject_unused(section, keys: tuple[str, ...], why: str, prefix: str = "train") -> None:
    """A key this stage does not use must keep its default: a set value would be silently ignored."""
    defaults = {f.name: f.default for f in fields(section)}
    for key in keys:
        if getattr(section, key) != defaults[key]:
            raise ConfigError(f"config key '{prefix}.{key}' is not used by this stage ({why}); remove it")


# ---------------------------------------------------------------- data parallelism


def rank_share(indices: list[int], rank: int, world: int) -> tuple[list[int], bool]:
    """This rank's contiguous slice of a global batch, and whether it has one. A rank left without
    examples (a short last batch) gets the first example as a stand-in that carries no weight, so
    every rank runs the same forward and backward passes and the collectives stay in step."""
    per = math.ceil(len(indices) / world)
    mine = indices[rank * per : (rank + 1) * per]
    return (mine, True) if mine else (indices[:1], False)


def all_sums(sums: dict[str, float], device) -> dict[str, float]:
    """Sums of held-out metrics over every rank (the key order is the same on every rank)."""
    if not dist.is_initialized() or not sums:
        return sums
    keys = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


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
    """Epochs -> train.max_steps (capped by a positive train.max_steps), warm-up ratio -> train.warmup_steps."""
    if epochs > 0:
        steps = max(1, math.ceil(epochs * n_batches_per_epoch / tcfg.grad_accum))
        tcfg.max_steps = min(steps, tcfg.max_steps) if tcfg.max_steps else steps
    elif tcfg.max_steps == 0:
        raise ConfigError("schedule.epochs = 0 needs the run's length in 'train.max_steps'")
    if warmup_ratio > 0:
        tcfg.warmup_steps = math.ceil(warmup_ratio * tcfg.max_steps)
    if tcfg.warmup_steps >= tcfg.max_steps and tcfg.max_steps > 1:
        raise ConfigError(f"warm-up ({tcfg.warmup_steps} steps) must be shorter than the run ({tcfg.max_steps} steps)")


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
