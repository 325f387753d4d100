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
    """Mean training loss of one micro-batch; exactly `model(x, y)` when z-loss and doc_mask are off."""
    doc_ids = doc_ids_from_bos(x, bos_id) if tcfg.doc_mask and bos_id is not None else None
    if not tcfg.z_loss:
        return model(x, y) if doc_ids is None else model(x, y, doc_ids=doc_ids)
    logits = model(x, doc_ids=doc_ids).float()
    flat = logits.view(-1, logits.size(-1))
    keep = y.reshape(-1) != -100
    z = torch.logsumexp(flat[keep], dim=-1)
    return F.cross_entropy(flat, y.reshape(-1), ignore_index=-100) + tcfg.z_loss * z.pow(2).mean()
