"""A tiny random-init Llama + BPE tokenizer saved as an HF directory, shared by the eval tests."""

from __future__ import annotations

import json
from pathlib import Path

from orizuru.model.checkpoint import save_model
from orizuru.model.config import ModelConfig
from orizuru.model.llama import Llama
from orizuru.tokenizer.tokenizer import Tokenizer, train_bpe

ROOT = Path(__file__).resolve().parent.parent


def build_tiny_model(directory: Path, max_seq_len: int = 1024, seed: int = 0) -> Path:
    with open(ROOT / "orizuru" / "data" / "sample" / "wiki.jsonl", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for _, line in zip(range(300), f)]
    tok = Tokenizer(train_bpe(texts, 1024, show_progress=False))
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size, max_seq_len=max_seq_len)
    model = Llama(cfg)
    model.init_weights(seed)
    save_model(model, directory, tok)
    return directory
