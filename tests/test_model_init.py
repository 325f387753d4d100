"""`Llama.init_weights`: the stated standard deviations, and repeatability from a seed."""

import math

import torch

from orizuru.model.config import ModelConfig
from orizuru.model.llama import Llama


def test_init_std_and_scaled_residual_projections():
    cfg = ModelConfig(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, vocab_size=4096, init_std=0.02)
    cfg.validate()
    model = Llama(cfg)
    model.init_weights(seed=0)
    residual = 0.02 / math.sqrt(2 * cfg.n_layers)
    for name, p in model.named_parameters():
        if p.ndim == 1:
            assert torch.equal(p, torch.ones_like(p)), name
            continue
        want = residual if name.endswith(("o_proj.weight", "down_proj.weight")) else 0.02
        assert abs(p.std().item() - want) < 0.03 * want, (name, p.std().item(), want)
        assert abs(p.mean().item()) < 0.05 * want, name
    again = Llama(cfg)
    again.init_weights(seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
