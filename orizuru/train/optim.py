"""The optimizer and the learning-rate schedule every trainer steps with."""

from __future__ import annotations

import math

import torch

from orizuru.train.config import TrainConfig


def configure_optimizer(model: torch.nn.Module, tcfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms or embeddings, as in LLaMA/GPT practice)."""
    decay, no_decay = [], []
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        # a tied output matrix is the embedding (named_parameters yields it once, as embed_tokens)
        (decay if p.ndim >= 2 and "embed_tokens" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": tcfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.is_cuda for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), eps=1e-8, fused=fused or None)


def lr_at(step: int, tcfg: TrainConfig) -> float:
    """Linear warm-up to train.lr, then cosine decay to min_lr_ratio * lr at max_steps."""
    if tcfg.warmup_steps and step < tcfg.warmup_steps:
        return tcfg.lr * (step + 1) / tcfg.warmup_steps
    span = max(1, tcfg.max_steps - tcfg.warmup_steps)
    progress = min(1.0, (step - tcfg.warmup_steps) / span)
    floor = tcfg.min_lr_ratio * tcfg.lr
    return floor + 0.5 * (tcfg.lr - floor) * (1 + math.cos(math.pi * progress))
