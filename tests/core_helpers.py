"""Shared pieces of the core model tests: a small Japanese tokenizer and tiny Llama configs."""

from __future__ import annotations

import json
from functools import lru_cache

import torch

from orizuru.model.config import ModelConfig
from orizuru.model.llama import Llama
from orizuru.resources import DATA
from orizuru.tokenizer.tokenizer import Tokenizer, train_bpe

SAMPLE = DATA / "sample" / "wiki.jsonl"  # see orizuru/data/sample/SOURCES.md


@lru_cache(maxsize=1)
def ja_tokenizer() -> Tokenizer:
    """A ~1k-token byte-fallback BPE trained on 200 Japanese Wikipedia paragraphs."""
    texts = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()[:200]]
    return Tokenizer(train_bpe(texts, 1024, show_progress=False))


def ja_texts(n: int = 8) -> list[str]:
    rows = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()[200 : 200 + n]]
    return rows  # paragraphs the tokenizer did not see


def tiny_model(*, n_kv_heads: int = 2, tie: bool = False, vocab_size: int | None = None, seed: int = 0, **kw) -> Llama:
    """dim 64, 2 layers, 4 heads, the test tokenizer's vocabulary; std 0.1 init so logits are far
    from uniform (greedy is decisive)."""
    vocab_size = vocab_size or ja_tokenizer().vocab_size
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=n_kv_heads, vocab_size=vocab_size,
                      tie_embeddings=tie, max_seq_len=256, init_std=0.1, **kw)  # fmt: skip
    cfg.validate()
    model = Llama(cfg)
    model.init_weights(seed=seed)
    return model.eval()


def hf_logits(model, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=attention_mask).logits
