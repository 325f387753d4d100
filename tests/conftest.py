"""Shared fixtures: a small tokenizer and token shards built once per test session from the
shipped sample text (data/sample), so tests exercise the real formats quickly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "orizuru" / "data" / "sample"


def sample_texts(n: int = 300) -> list[str]:
    """The first `n` Wikipedia paragraphs of the shipped sample."""
    with open(SAMPLE / "wiki.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for _, line in zip(range(n), f)]


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    from orizuru.tokenizer.tokenizer import Tokenizer, train_bpe

    out = tmp_path_factory.mktemp("tokenizer")
    Tokenizer(train_bpe(sample_texts(), 512, show_progress=False)).save(out)
    return out


@pytest.fixture(scope="session")
def tiny_shards_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    from orizuru.train.tokenize import tokenize_files

    work = tmp_path_factory.mktemp("shards")
    corpus = work / "corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for text in sample_texts(600):
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    tokenize_files([corpus], tiny_tokenizer_dir, work / "data", val_fraction=0.1, seed=0)
    return work / "data"


def tiny_overrides(shards: Path, run_dir: Path, **extra) -> list[str]:
    """`--set` overrides for a ~100k-parameter model that trains in seconds on the CPU."""
    base = {
        "data.dirs": f'["{shards}"]',
        "run.dir": f'"{run_dir}"',
        "model.vocab_size": "512",
        "model.dim": "64",
        "model.n_layers": "2",
        "model.n_heads": "4",
        "model.n_kv_heads": "2",
        "train.seq_len": "32",
        "train.batch_size": "4",
        "train.max_steps": "20",
        "train.warmup_steps": "4",
        "train.lr": "3e-3",
        "train.log_every": "1",
        "train.eval_every": "10",
        "train.eval_batches": "2",
        "train.ckpt_every": "5",
    }
    base.update({k: str(v) for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]
