"""The optimizer and the learning-rate schedule every trainer steps with.

`train.optimizer = "muon"` (the pre-training recipe): torch.optim.Muon for the 2-D hidden
matrices (attention and MLP projections), AdamW for the embeddings, the output head and the norm
gains, as in modded-nanogpt and nanochat. Muon's update is rescaled to AdamW's RMS
(`adjust_lr_fn="match_rms_adamw"`, Moonshot's "Muon is scalable"), so one learning rate and one
schedule drive both; `train.muon_lr_scale` multiplies it for the Muon matrices only.
`train.schedule = "wsd"`: warm-up, a constant stretch, then a linear decay over the last
`train.decay_frac` of the steps (warm-up-stable-decay, MiniCPM; nanochat's warm-down).
"""

from __future__ import annotations

import math

import torch

from orizuru.train.config import TrainConfig


def _split(model: torch.nn.Module) -> tuple[list, list, list]:
    """(hidden matrices, embedding/head matrices, vectors), each parameter once (tied head = embedding)."""
    hidden, embed, vectors, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.ndim < 2:
            vectors.append(p)
        elif "embed_tokens" in name or "lm_head" in name:
            embed.append(p)
        else:
            hidden.append(p)
    return hidden, embed, vectors


class MuonAdamW(torch.optim.Optimizer):
    """torch.optim.Muon on the hidden matrices plus torch.optim.AdamW on the rest, as one optimizer.

    The two share this object's `param_groups` and `state`, so a trainer sets `group["lr"]`,
    steps, zeroes and checkpoints it (torch.distributed.checkpoint included) like any optimizer.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW, muon_lr_scale: float = 1.0):
        self.muon, self.adamw, self.muon_lr_scale = muon, adamw, muon_lr_scale
        super().__init__(muon.param_groups + adamw.param_groups, {})  # the same group dicts, not copies
        self._share()

    def _share(self) -> None:
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        self.muon.state = self.adamw.state = self.state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # replaces param_groups and state: point both halves at them again
        self._share()

    @torch.no_grad()
    def step(self, closure=None):
        lrs = [g["lr"] for g in self.muon.param_groups]
        for g in self.muon.param_groups:
            g["lr"] = g["lr"] * self.muon_lr_scale
        self.muon.step()
        for g, lr in zip(self.muon.param_groups, lrs):
            g["lr"] = lr
        self.adamw.step()


def configure_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW (weight decay on matrices only, not on norms or embeddings, as in LLaMA/GPT practice),
    or Muon + AdamW with `train.optimizer = "muon"` (see the module docstring)."""
    hidden, embed, vectors = _split(model)
    fused = all(p.is_cuda for p in hidden + embed + vectors) or None
    betas = (tcfg.beta1, tcfg.beta2)
    if tcfg.optimizer == "adamw":
        # a tied head is the embedding (named_parameters yields it once, as embed_tokens): not decayed
        decay = hidden + [p for n, p in model.named_parameters() if n == "lm_head.weight" and p.requires_grad]
        no_decay = [p for p in hidden + embed + vectors if not any(p is q for q in decay)]
        groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=tcfg.lr, betas=betas, eps=1e-8, fused=fused)
    muon = torch.optim.Muon(hidden, lr=tcfg.lr, weight_decay=tcfg.weight_decay, momentum=tcfg.muon_momentum,
                            adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": embed + vectors, "weight_decay": 0.0}], lr=tcfg.lr, betas=betas, eps=1e-8, fused=fused)
    return MuonAdamW(muon, adamw, tcfg.muon_lr_scale)


def lr_at(step: int, tcfg: TrainConfig) -> float:
    """Linear warm-up to train.lr, then cosine decay to min_lr_ratio * lr at max_steps, or with
    `train.schedule = "wsd"` constant until the last decay_frac of the steps and linear down."""
    if tcfg.warmup_steps and step < tcfg.warmup_steps:
        return tcfg.lr * (step + 1) / tcfg.warmup_steps
    floor = tcfg.min_lr_ratio * tcfg.lr
    if tcfg.schedule == "wsd":
        decay = max(1, round(tcfg.decay_frac * tcfg.max_steps))
        start = tcfg.max_steps - decay
        if step < start:
            return tcfg.lr
        return tcfg.lr - (tcfg.lr - floor) * min(1.0, (step - start + 1) / decay)
    span = max(1, tcfg.max_steps - tcfg.warmup_steps)
    progress = min(1.0, (step - tcfg.warmup_steps) / span)
    return floor + 0.5 * (tcfg.lr - floor) * (1 + math.cos(math.pi * progress))
