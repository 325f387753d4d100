"""Shared helpers for the post-training tests: a tiny Japanese tokenizer and model saved as HF dirs."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from orizuru.model.config import ModelConfig
from orizuru.model.llama import Llama
from orizuru.tokenizer.tokenizer import Tokenizer, train_bpe

DATA = Path(__file__).resolve().parent.parent / "orizuru" / "data" / "post"


def sample_texts() -> list[str]:
    texts = []
    with open(DATA / "instruction_ja.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            texts += [row["instruction"], row["output"]]
    return texts + ["0123456789"] * 2000  # digits are frequent enough to be tokens of their own


@lru_cache(maxsize=1)
def tiny_tokenizer(vocab_size: int = 512) -> Tokenizer:
    return Tokenizer(train_bpe(sample_texts(), vocab_size, show_progress=False))


def tiny_model(vocab_size: int, seed: int = 0, dim: int = 64, n_layers: int = 2, **kw) -> Llama:
    cfg = ModelConfig(dim=dim, n_layers=n_layers, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, max_seq_len=256, **kw)
    cfg.validate()
    model = Llama(cfg)
    model.init_weights(seed)
    return model


def tiny_model_dir(directory: Path, seed: int = 0, vocab_size: int = 512, **kw) -> Path:
    """A random tiny Llama + chat tokenizer saved as an HF directory (what every stage reads)."""
    from orizuru.model.checkpoint import save_model

    tok = tiny_tokenizer(vocab_size)
    save_model(tiny_model(tok.vocab_size, seed=seed, **kw), directory, tok)
    return directory


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine they lose ~10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
