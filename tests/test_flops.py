"""The one parameter/FLOP counter (orizuru.model.flops) against real models, and its callers."""

import pytest

from orizuru.model.config import ModelConfig
from orizuru.model.flops import count_params, flops_per_token
from orizuru.model.llama import Llama
from orizuru.scaling.plan import Sizing, make_plan
from orizuru.scaling.sweep import SweepConfig, SweepSection, sweep_runs
from orizuru.train.config import DataConfig, TrainConfig

CONFIGS = [
    ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=100),  # derived ffn_dim, head_dim
    ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=100, tie_embeddings=True),  # GQA, tied
    ModelConfig(dim=48, n_layers=2, n_heads=6, n_kv_heads=1, vocab_size=257, ffn_dim=100),  # MQA, custom ffn
    ModelConfig(dim=64, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=50, head_dim=40, tie_embeddings=True),
    ModelConfig(dim=96, n_layers=2, n_heads=3, n_kv_heads=3, vocab_size=300, head_dim=16, ffn_dim=256),
]
VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"d{c.dim}h{c.n_heads}kv{c.n_kv_heads}")
def test_count_matches_a_real_model(cfg):
    before = (cfg.ffn_dim, cfg.head_dim)
    counted = count_params(cfg)
    assert (cfg.ffn_dim, cfg.head_dim) == before  # counting does not fill in the caller's config
    model = Llama(cfg)
    params = dict(model.named_parameters())  # a tied matrix appears once
    assert counted.total == sum(p.numel() for p in params.values())
    assert counted.embedding == sum(p.numel() for k, p in params.items() if k in VOCAB)
    assert counted.non_embedding == sum(p.numel() for k, p in params.items() if k not in VOCAB)
    # FLOPs: 6 x every parameter that multiplies an activation (not the untied input lookup) + attention
    matmul = sum(p.numel() for k, p in params.items() if k != "model.embed_tokens.weight" or cfg.tie_embeddings)
    attention = 12 * cfg.n_layers * cfg.n_heads * model.cfg.head_dim * 64
    assert flops_per_token(cfg, 64) == 6 * matmul + attention


def test_plan_reports_the_count_of_the_model_it_writes():
    plan = make_plan(params=3e6, tokens=6e7, sizing=Sizing(vocab_size=1000, seq_len=128, kv_groups=2))
    m = plan["model"]
    cfg = ModelConfig(**{k: m[k] for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "ffn_dim",
                                            "vocab_size", "tie_embeddings")})
    assert m["params"] == count_params(cfg).total == sum(p.numel() for p in Llama(cfg).parameters())


def test_sweep_steps_spend_the_budget_at_pretrains_count():
    train = TrainConfig(seq_len=32, batch_size=4)
    cfg = SweepConfig(
        sweep=SweepSection(computes=[3e9], depths=[1, 2, 3], aspect=16, min_steps=1, max_epochs=0),
        model=ModelConfig(vocab_size=512, head_dim=16, n_kv_heads=2, max_seq_len=32),
        train=train, data=DataConfig(dirs=["unused"]),
    )
    runs, skipped = sweep_runs(cfg)
    assert len(runs) == 3 and not skipped
    for _, compute, run in runs:
        per_step = flops_per_token(run.model, 32) * 4 * 32  # what pretrain will report per step
        assert abs(run.train.max_steps * per_step - compute) <= per_step / 2
