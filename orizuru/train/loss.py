"""The pre-training loss: next-token cross-entropy, with optional z-loss and document masking.

z-loss (PaLM): z_loss * mean(logsumexp(logits)^2) keeps the softmax normaliser near 1, so the
logits do not drift. Document masking (`train.doc_mask`): packed windows hold several
`<s> ... </s>` documents; each token then attends only to its own document, from position 0,
as it will when the model is used on one text.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from orizuru.train.batches import doc_ids_from_bos
from orizuru.train.config import TrainConfig


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, tcfg: TrainConfig, bos_id: int | None) -> torch.Tensor:
    """Summed training loss of one micro-batch (the step loop divides by the all-reduced target
    count); exactly `model(x, y, loss_reduction="sum")` when z-loss and doc_mask are off."""
    doc_ids = doc_ids_from_bos(x, bos_id) if tcfg.doc_mask and bos_id is not None else None
    kw = {} if doc_ids is None else {"doc_ids": doc_ids}
    if not tcfg.z_loss:
        return model(x, y, loss_reduction="sum", **kw)
    logits = model(x, **kw).float()
    flat = logits.view(-1, logits.size(-1))
    keep = y.reshape(-1) != -100
    z = torch.logsumexp(flat[keep], dim=-1)
    return F.cross_entropy(flat, y.reshape(-1), ignore_index=-100, reduction="sum") + tcfg.z_loss * z.pow(2).sum()
