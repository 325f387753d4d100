"""The pre-training loss: next-token cross-entropy, with optional z-loss and document masking.

z-loss (PaLM): z_loss * mean(logsumexp(logits)^2) keeps the softmax normaliser near 1, so the
logits do not drift. Document masking (`train.doc_mask`): packed windows hold several
`<s> ... </s>` documents; each token then attends only to its own document, from position 0,
as it will when the model is used on one text.

Rho-1 (`train.select_ref`, Lin et al. 2024, "Not All Tokens Are What You Need"): a frozen
reference model, trained on clean text, scores every target; the training loss covers only the
`train.select_ratio` share of each micro-batch's targets with the highest excess loss (model CE -
reference CE). Noise the reference cannot predict either, and text the model already knows, drop
out; what is learnable and not yet learned stays.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from orizuru.train.batches import doc_ids_from_bos
from orizuru.train.config import TrainConfig


def _doc_mask(x: torch.Tensor, tcfg: TrainConfig, bos_id: int | None) -> dict:
    """The model's `doc_ids` keyword when `train.doc_mask` is on (documents start at BOS)."""
    return {"doc_ids": doc_ids_from_bos(x, bos_id)} if tcfg.doc_mask and bos_id is not None else {}


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, tcfg: TrainConfig, bos_id: int | None) -> torch.Tensor:
    """Summed training loss of one micro-batch (the step loop divides by the all-reduced target
    count); exactly `model(x, y, loss_reduction="sum")` when z-loss and doc_mask are off."""
    kw = _doc_mask(x, tcfg, bos_id)
    if not tcfg.z_loss:
        return model(x, y, loss_reduction="sum", **kw)
    logits = model(x, **kw).float()
    flat = logits.view(-1, logits.size(-1))
    keep = y.reshape(-1) != -100
    z = torch.logsumexp(flat[keep], dim=-1)
    return F.cross_entropy(flat, y.reshape(-1), ignore_index=-100, reduction="sum") + tcfg.z_loss * z.pow(2).sum()


def select_tokens(excess: torch.Tensor, valid: torch.Tensor, ratio: float) -> torch.Tensor:
    """Boolean mask of the k = ceil(ratio x valid count) valid entries with the highest `excess`
    (ties: the earlier position), computed on the device without a host sync."""
    excess, valid = excess.reshape(-1), valid.reshape(-1)
    k = torch.ceil(ratio * valid.sum().double() - 1e-6)  # 0.7 * 10 is 7.000000000000001 in floats
    order = excess.masked_fill(~valid, float("-inf")).argsort(descending=True, stable=True)
    chosen = torch.zeros_like(valid)
    chosen[order] = torch.arange(order.numel(), device=order.device) < k
    return chosen & valid


def selective_lm_loss(model: torch.nn.Module, ref: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, tcfg: TrainConfig,
                      bos_id: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rho-1: (summed loss over the selected targets, selected count, valid target count) of one
    micro-batch. The reference runs once, without gradients, on the same inputs (and document mask);
    z-loss, when on, also covers the selected positions only."""
    kw = _doc_mask(x, tcfg, bos_id)
    flat_y = y.reshape(-1)
    logits = model(x, **kw).float()
    flat = logits.view(-1, logits.size(-1))
    ce = F.cross_entropy(flat, flat_y, ignore_index=-100, reduction="none")  # once: it scores and trains
    with torch.no_grad():
        ref_logits = ref(x, **kw).float()
        ref_ce = F.cross_entropy(ref_logits.view(-1, ref_logits.size(-1)), flat_y, ignore_index=-100, reduction="none")
    valid = flat_y != -100
    chosen = select_tokens(ce.detach() - ref_ce, valid, tcfg.select_ratio)
    loss = ce[chosen].sum()
    if tcfg.z_loss:
        loss = loss + tcfg.z_loss * torch.logsumexp(flat[chosen], dim=-1).pow(2).sum()
    return loss, chosen.sum(), valid.sum()
