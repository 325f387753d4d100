"""`orizuru ppo`: RLHF with PPO (InstructGPT step 3), maximizing E[r(x, y)] - beta KL(pi || ref).

Each step: sample answers to a batch of prompts with the KV-cache generator; score them (a reward
model from `orizuru reward`, or a rule such as "the answer contains the right number"); give each
answer token the reward -beta (log pi - log ref), plus the score on the last token; estimate
advantages with GAE from a value head on the policy's final hidden states; then run a few epochs
of the clipped PPO objective with a clipped value loss (Schulman et al. 2017; the details follow
Huang et al. 2024, "The N+ implementation details of RLHF with PPO"). The reference (SFT) model
stays in memory, frozen: its log-probs are needed for every new sample.

PPO keeps its own rollout loop but steps through the one loop's pieces (train/loop.py): the
process group and DDP (each process rolls out its own prompts; gradients are averaged),
activation checkpointing, `torch.compile`, the optimizer and schedule, DCP checkpoints and
`metrics.jsonl`. The rollout's log-probs are computed in the same precision (autocast) and the
same minibatches as the first update epoch, so the first minibatch's ratio is exactly 1.
"""

from __future__ import annotations

import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn as nn
from tqdm import tqdm

from orizuru.config import ConfigError, parse_command, save_config
from orizuru.errors import UserError
from orizuru.files import write_json
from orizuru.model.generate import generate
from orizuru.post.data import read_prompts
from orizuru.post.finetune import Seq, answer_seq, load_base, pad_batch, reject_unused, save_chat_model, token_logps
from orizuru.post.reward import load_reward_model, scores
from orizuru.runtime import all_sum, barrier, init_distributed, process_group, setup_device, world_info
from orizuru.tokenizer.chat import prompt_ids, stop_id
from orizuru.train.config import RunConfig, TrainConfig
from orizuru.train.loop import MetricsLog, wrap
from orizuru.train.optim import configure_optimizer, lr_at
from orizuru.train.state import Checkpointer, load_checkpoint


def add_value_head(policy: nn.Module) -> None:
    """Give the policy a scalar value head reading its final (normed) hidden states.

    The head is a submodule of the policy itself, so training checkpoints keep the policy's own
    parameter names (and its tied embeddings); it is removed before the final model is saved.
    """
    policy.value_head = nn.Linear(policy.cfg.dim, 1, bias=False, device=policy.lm_head.weight.device)
    nn.init.zeros_(policy.value_head.weight)


class ActorCritic(nn.Module):
    """The policy with its value head as one forward (ids -> logits, values), the module DDP wraps."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return logits_and_values(self.policy, x)


def logits_and_values(policy: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the decoder feeds both heads: the LM head's logits and the value head's values."""
    hidden = policy(x, return_hidden=True)
    return policy.lm_head(hidden), policy.value_head(hidden)[..., 0].float()


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over each row's masked (answer) positions; (advantages, returns)."""
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * m
        adv[:, t] = last
        next_value = values[:, t] * m
    return adv, adv + values


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def ppo_losses(logp, old_logp, values, old_values, adv, returns, mask, clip: float, value_clip: float):
    """Clipped policy-gradient loss, clipped value loss, and the fraction of clipped ratios."""
    ratio = torch.exp(logp - old_logp)
    pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    v_clipped = old_values + (values - old_values).clamp(-value_clip, value_clip)
    vf = 0.5 * torch.max((values - returns) ** 2, (v_clipped - returns) ** 2)
    clipped = ((ratio - 1).abs() > clip).float()
    return masked_mean(pg, mask), masked_mean(vf, mask), masked_mean(clipped, mask)


# ---------------------------------------------------------------- rewards


def contains_answer(text: str, row: dict) -> float:
    """1 if the answer text contains the row's expected `answer` (e.g. the right number), else 0."""
    return float(str(row["answer"]) in text)


RULES: dict[str, Callable[[str, dict], float]] = {"contains_answer": contains_answer}


def model_scorer(directory: str, device) -> Callable[[list[list[dict]], list[str]], list[float]]:
    rm, tok = load_reward_model(directory, device)

    def score(prompts: list[list[dict]], answers: list[str]) -> list[float]:
        with torch.no_grad():
            return scores(rm, [answer_seq(tok, p, a) for p, a in zip(prompts, answers)], tok.pad_id, device).tolist()

    return score


# ---------------------------------------------------------------- config


@dataclass
class PPOOptions:
    reward_model: str | None = None  # a directory written by `orizuru reward`
    rule: Literal["contains_answer"] | None = None  # or a rule-based reward (rows need an 'answer')
    kl_coef: float = 0.05
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    ppo_epochs: int = 4
    rollout_batch: int = 16  # prompts sampled per step
    max_new_tokens: int = 64
    temperature: float = 1.0

    def validate(self) -> None:
        if (self.reward_model is None) == (self.rule is None):
            raise ConfigError("set exactly one of 'ppo.reward_model' (a reward model directory) and 'ppo.rule'")
        for key in ("ppo_epochs", "rollout_batch", "max_new_tokens"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key 'ppo.{key}' must be positive")
        if self.temperature <= 0 or self.kl_coef < 0 or not 0 < self.clip < 1:
            raise ConfigError("config keys 'ppo.temperature' > 0, 'ppo.kl_coef' >= 0, 'ppo.clip' in (0, 1) expected")


@dataclass
class PPOData:
    prompts: list[str] = field(default_factory=list)  # JSONL/JSON prompt rows (see data.py), plus 'answer' for a rule
    strict: bool = False  # stop at the first bad row instead of skipping it

    def validate(self) -> None:
        if not self.prompts:
            raise ConfigError("config key 'data.prompts' is empty: give at least one prompt file")


@dataclass
class PPOTrain(TrainConfig):
    """train.max_steps counts PPO iterations (rollout + ppo_epochs of updates); batch_size is the minibatch."""

    lr: float = 1e-6
    min_lr_ratio: float = 1.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_steps: int = 200
    log_every: int = 1
    ckpt_every: int = 20

    def validate(self) -> None:
        reject_unused(self, ("seq_len", "grad_accum", "eval_every", "eval_batches", "init_from"),
                      "lengths come from the prompts and ppo.max_new_tokens; each minibatch is one update; there is no held-out pass")
        reject_unused(self, ("fsdp",), "rollouts decode with the whole policy on every process; DDP is used under torchrun")
        reject_unused(self, ("select_ref", "select_ratio"), "Rho-1 token selection is a pre-training option")
        super().validate()


@dataclass
class PPOConfig:
    model: str = "runs/sft/model"  # the SFT policy to start from
    reference: str | None = None  # KL reference; None: the starting policy
    data: PPOData = field(default_factory=PPOData)
    ppo: PPOOptions = field(default_factory=PPOOptions)
    train: PPOTrain = field(default_factory=PPOTrain)
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/ppo"))


# ---------------------------------------------------------------- the loop


def ppo(cfg: PPOConfig) -> dict:
    rank, world = init_distributed()
    device, amp = setup_device(cfg.train.dtype, cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    o, tcfg = cfg.ppo, cfg.train
    prompts, report = read_prompts(cfg.data.prompts, cfg.data.strict, needs=("answer",) if o.rule else ())
    if not prompts:
        raise UserError(f"{', '.join(cfg.data.prompts)}: no usable prompts ({report.rows} read, {report.skipped} skipped)")
    policy, tok = load_base(cfg.model, device)
    ref, _ = load_base(cfg.reference or cfg.model, device)
    ref.eval().requires_grad_(False)
    add_value_head(policy)
    end = stop_id(tok)
    if o.rule:
        rule = RULES[o.rule]

        def score(ms, answers, rows):
            return [rule(a, r) for a, r in zip(answers, rows)]
    else:
        scorer = model_scorer(o.reward_model, device)

        def score(ms, answers, rows):
            return scorer(ms, answers)

    run_dir = Path(cfg.run.dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.toml")
    model = ActorCritic(policy)
    train_model = wrap(model, tcfg, device)
    optimizer = configure_optimizer(model, tcfg)
    params = [p for p in model.parameters() if p.requires_grad]
    resumed = load_checkpoint(run_dir, model, optimizer)
    start = resumed[0] if resumed else 0
    log = MetricsLog(run_dir, resume_step=start)
    ckpt = Checkpointer(run_dir, asynchronous=tcfg.ckpt_async)
    autocast = lambda: torch.autocast(device.type, dtype=amp, enabled=amp is not None)  # noqa: E731
    max_prompt = policy.cfg.max_seq_len - o.max_new_tokens
    bar = tqdm(total=tcfg.max_steps, initial=start, desc="ppo", unit="step", disable=rank != 0, file=sys.stderr, dynamic_ncols=True)
    last: dict = {}
    for step in range(start, tcfg.max_steps):
        t0 = time.perf_counter()
        lr = lr_at(step, tcfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rng = random.Random((tcfg.seed * 7919 + step) * 1009 + rank)  # each process its own prompts
        batch = [prompts[rng.randrange(len(prompts))] for _ in range(o.rollout_batch)]
        encoded = [tok.encode_prompt(prompt_ids(tok, m), max_prompt) for m, _ in batch]  # over-long: BOS + the end
        p_ids = [ids for ids, _ in encoded]

        # rollout: sample, score, and freeze log-probs / values / rewards
        train_model.eval()
        with torch.no_grad(), autocast():
            outs = generate(policy, p_ids, o.max_new_tokens, temperature=o.temperature, eos_id=end, seed=(tcfg.seed + step) * 1009 + rank)
        answers = [tok.decode(a) for a in outs]
        outs = [a + [end] if len(a) < o.max_new_tokens else a for a in outs]  # it stopped at <|end|>: learn that too
        scores_ = torch.tensor(score([m for m, _ in batch], answers, [r for _, r in batch]), dtype=torch.float32, device=device)
        seqs = [Seq(p + a, [0] * len(p) + [1] * len(a)) for p, a in zip(p_ids, outs)]
        x, y = pad_batch(seqs, tok.pad_id, device)
        mask = (y != -100).float()
        orders = [torch.randperm(len(seqs), generator=torch.Generator().manual_seed(tcfg.seed + step * 31 + e)).tolist() for e in range(o.ppo_epochs)]
        minibatches = [[torch.tensor(order[b : b + tcfg.batch_size], device=device) for b in range(0, len(seqs), tcfg.batch_size)] for order in orders]
        old_logp, old_values = torch.zeros_like(mask), torch.zeros_like(mask)
        with torch.no_grad(), autocast():
            for i in minibatches[0]:  # the first epoch's minibatches and precision: its first ratio is exactly 1
                logits, values = train_model(x[i])
                old_logp[i], old_values[i] = token_logps(logits, y[i]), values
            ref_logp = token_logps(ref(x), y)
        kl = (old_logp - ref_logp) * mask
        rewards = -o.kl_coef * kl
        last_pos = mask.cumsum(1).argmax(1)  # each row's final answer position
        rewards[torch.arange(len(seqs), device=device), last_pos] += scores_
        adv, returns = gae(rewards, old_values * mask, mask, o.gamma, o.lam)
        adv = whiten(adv, mask)

        # PPO epochs over minibatches of the rollout
        train_model.train()
        stats = {"pg_loss": 0.0, "vf_loss": 0.0, "clipfrac": 0.0}
        n_updates, first_ratio = 0, None
        for epoch_batches in minibatches:
            for i in epoch_batches:
                with autocast():
                    logits, values = train_model(x[i])
                logp = token_logps(logits, y[i])
                if first_ratio is None:
                    first_ratio = ((logp - old_logp[i]).exp() - 1).abs().mul(mask[i]).max().item()
                pg, vf, clipfrac = ppo_losses(logp, old_logp[i], values, old_values[i], adv[i], returns[i], mask[i], o.clip, o.value_clip)
                (pg + o.vf_coef * vf).backward()
                torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for k, v in (("pg_loss", pg), ("vf_loss", vf), ("clipfrac", clipfrac)):
                    stats[k] += v.detach()
                n_updates += 1
        done = step + 1
        bar.update(1)
        means = all_sum([scores_.mean().item(), kl.sum(1).mean().item(), mask.sum(1).mean().item(),
                         *(float(v) / n_updates for v in stats.values())], device)
        row = {
            "score": round(means[0] / world, 6),
            "kl": round(means[1] / world, 6),
            "answer_tokens": round(means[2] / world, 2),
            "prompts_truncated": sum(cut > 0 for _, cut in encoded),
            **{k: round(v / world, 6) for k, v in zip(stats, means[3:])},
            "first_ratio_dev": first_ratio,  # |ratio - 1| at the first minibatch: 0 exactly
            "lr": lr,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if done % tcfg.log_every == 0 or done == tcfg.max_steps:
            log.log(done, **row)
        bar.set_postfix(score=f"{row['score']:.3f}", kl=f"{row['kl']:.3f}")
        last = row
        if done % tcfg.ckpt_every == 0 or done == tcfg.max_steps:
            ckpt.save(done, model, optimizer, {})
    ckpt.wait()
    bar.close()
    del policy.value_head
    summary = {"step": tcfg.max_steps, "rows": report.rows, "skipped": report.skipped, **{k: last[k] for k in ("score", "kl") if k in last}}
    if rank == 0:
        save_chat_model(policy, run_dir / "model", tok)
        write_json(run_dir / "summary.json", summary)
    barrier()
    return summary


def main(argv: list[str]) -> int:
    cfg = parse_command(PPOConfig, argv, "orizuru ppo", __doc__.split("\n\n")[0])
    with process_group():
        summary = ppo(cfg)
        if world_info()[0] == 0:
            print(json.dumps(summary, ensure_ascii=False))
    return 0
