"""The model directory and token shards that bench/gpu_check.sh's steps share, built once.

    python bench/bench_model.py WORK [--size small|tiny]

Writes WORK/tokenizer (a byte-fallback BPE trained on the shipped sample text), WORK/data (token
shards of the sample, for `orizuru pretrain`) and WORK/model (a random-init HF Llama directory:
bench_mfu.py's dim 768 x 12 layers with an 8k vocabulary and 4 KV heads: 82M parameters, or a 0.13M test shape). Prints one
JSON line: the paths, parameters and vocabulary size.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from orizuru.model.checkpoint import save_model
from orizuru.model.config import ModelConfig
from orizuru.model.flops import count_params
from orizuru.model.llama import Llama
from orizuru.resources import DATA
from orizuru.tokenizer.tokenizer import Tokenizer, iter_texts, train_bpe
from orizuru.train.tokenize import tokenize_files

SIZES = {
    # bench_mfu.py's GPT-2-small shape (vocab cut to the tokenizer's), 4 KV heads as Llama 3 style models use
    "small": dict(vocab=8192, docs=None, model=dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, max_seq_len=1024)),
    "tiny": dict(vocab=512, docs=300, model=dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256)),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--size", choices=SIZES, default="small")
    a = ap.parse_args()
    size = SIZES[a.size]
    t0 = time.perf_counter()
    sample = DATA / "sample" / "wiki.jsonl"
    texts = list(iter_texts([sample]))[: size["docs"]]
    tok = Tokenizer(train_bpe(texts, size["vocab"], show_progress=False))
    tok.save(a.work / "tokenizer")
    corpus = a.work / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in iter_texts([sample])), encoding="utf-8")
    tokenize_files([corpus], a.work / "tokenizer", a.work / "data", val_fraction=0.1, seed=0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, tie_embeddings=True, **size["model"])
    cfg.validate()
    model = Llama(cfg)
    model.init_weights(seed=0)
    save_model(model, a.work / "model", tok)
    print(json.dumps({"bench": "model", "size": a.size, "model": str(a.work / "model"), "data": str(a.work / "data"),
                      "params": count_params(cfg).total, "vocab_size": tok.vocab_size, "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
