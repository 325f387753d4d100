"""Benchmark: orizuru's BPE trainer vs SentencePiece BPE on the same Japanese text, in one run.

Both train a byte-fallback BPE of the same vocabulary size on the same lines (SentencePiece with
character_coverage 0.9995, digits split, as Llama), then encode the same held-out documents.
Prints JSON with training seconds (wall and CPU: on a shared machine the CPU ratio is the steadier), Japanese characters per token, and the two ratios
(orizuru / sentencepiece): time below 1 is faster, chars/token above 1 compresses better.

    python bench/bench_tokenizer.py [--chars 2000000] [--vocab-size 16000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import sentencepiece as spm

from orizuru.tokenizer.tokenizer import Tokenizer, iter_texts, train_bpe

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path("/work/shared/data")
DEFAULT = [SHARED / "aozora_bunko_pd" / "works.jsonl", SHARED / "ja_wiki_paragraphs" / "paragraphs.jsonl"]
FALLBACK = [ROOT / "orizuru" / "data" / "sample" / "aozora.jsonl", ROOT / "orizuru" / "data" / "sample" / "wiki.jsonl"]


def load_docs(files: list[Path], chars: int, held_out: int) -> tuple[list[str], list[str]]:
    """Every 10th document of each file is held out; the rest are interleaved across files and cut at `chars`."""
    train_streams, test = [], []
    for f in files:
        docs = list(iter_texts([f]))
        train_streams.append([d for i, d in enumerate(docs) if i % 10 != 9])
        test += [d for i, d in enumerate(docs) if i % 10 == 9]
    interleaved = [d for group in zip(*train_streams) for d in group]
    interleaved += [d for s in train_streams for d in s[min(map(len, train_streams)) :]]
    train, used = [], 0
    for doc in interleaved:
        if used >= chars:
            break
        train.append(doc)
        used += len(doc)
    test.sort(key=len)  # keep short and long documents of every file alike when capping
    picked, used = [], 0
    for doc in test[:: max(1, len(test) // 400)]:
        if used < held_out:
            picked.append(doc)
            used += len(doc)
    return train, picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", nargs="+", type=Path, default=None, help="JSONL files (default: shared Aozora + Wikipedia)")
    parser.add_argument("--chars", type=int, default=2_000_000, help="training characters")
    parser.add_argument("--held-out", type=int, default=300_000, help="evaluation characters")
    parser.add_argument("--vocab-size", type=int, default=16000)
    args = parser.parse_args()
    files = args.input or (DEFAULT if all(p.is_file() for p in DEFAULT) else FALLBACK)
    train, test = load_docs(files, args.chars, args.held_out)
    lines = [line for doc in train for line in doc.split("\n") if line.strip()]

    start, cpu = time.perf_counter(), time.process_time()
    ours = Tokenizer(train_bpe(lines, args.vocab_size, show_progress=False))
    ours_s, ours_cpu = time.perf_counter() - start, time.process_time() - cpu

    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "train.txt"
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        start, cpu = time.perf_counter(), time.process_time()
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "sp"), vocab_size=args.vocab_size, model_type="bpe",
            byte_fallback=True, character_coverage=0.9995, split_digits=True, num_threads=os.cpu_count(),
            max_sentence_length=1 << 16, input_sentence_size=0, minloglevel=2,
        )  # fmt: skip
        sp_s, sp_cpu = time.perf_counter() - start, time.process_time() - cpu
        sp = spm.SentencePieceProcessor(model_file=str(Path(tmp) / "sp.model"))

    test_chars = sum(map(len, test))
    ours_cpt = test_chars / sum(len(ids) for ids in ours.encode_batch(test))
    sp_cpt = test_chars / sum(len(ids) for ids in sp.encode(test))
    print(json.dumps({
        "inputs": [str(f) for f in files],
        "train_chars": sum(map(len, train)),
        "held_out_chars": test_chars,
        "vocab_size": args.vocab_size,
        "cpu_count": os.cpu_count(),
        "orizuru": {"train_s": round(ours_s, 2), "train_cpu_s": round(ours_cpu, 2), "ja_chars_per_token": round(ours_cpt, 4)},
        "sentencepiece": {"train_s": round(sp_s, 2), "train_cpu_s": round(sp_cpu, 2), "ja_chars_per_token": round(sp_cpt, 4), "version": spm.__version__},
        "train_time_ratio": round(ours_s / sp_s, 3),
        "train_cpu_ratio": round(ours_cpu / sp_cpu, 3),
        "chars_per_token_ratio": round(ours_cpt / sp_cpt, 3),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
