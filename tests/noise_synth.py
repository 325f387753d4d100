"""A pre-training corpus with planted noise, to measure Rho-1's token selection (train.select_ref).

Clean documents are real text (the shipped Wikipedia sample). The noisy corpus is every training
document with spans of random tokens planted between its sentences: each noise span is a
uniform draw of ordinary (non-special, non-byte) vocabulary pieces, so nothing in it can be
predicted, by any model. The reference corpus is a clean subset of the same training documents
(no noise), as Rho-1 trains its reference on a small high-quality set. Both shard directories
share one clean validation split (documents never trained on), so a pre-training run's logged
`val_loss` is its clean-text loss.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from orizuru.files import write_json
from orizuru.tokenizer.tokenizer import BYTE_TOKENS, Tokenizer
from orizuru.train.tokenize import read_meta, tokenize_files

_SENTENCE_END = re.compile(r"(?<=[。．！？!?.])")


def noise_pieces(tok: Tokenizer) -> list[str]:
    """Vocabulary pieces a noise span is drawn from: every ordinary token, decoded to text."""
    specials = {t.content for t in tok.hf.get_added_tokens_decoder().values() if t.special}
    skip = specials | set(BYTE_TOKENS)
    pieces = [tok.decode([i]) for p, i in sorted(tok.hf.get_vocab().items(), key=lambda kv: kv[1]) if p not in skip]
    return [p for p in pieces if p.strip() and "\ufffd" not in p]


def plant_noise(text: str, pieces: list[str], rng: random.Random, noise_frac: float, span: tuple[int, int]) -> str:
    """`text` with random-piece spans inserted at sentence ends until about `noise_frac` of the
    result's characters are noise."""
    sentences = [s for s in _SENTENCE_END.split(text) if s]
    out, clean_chars, noise_chars = [], 0, 0
    for s in sentences:
        out.append(s)
        clean_chars += len(s)
        while noise_chars < noise_frac / (1 - noise_frac) * clean_chars:
            noise = "".join(rng.choice(pieces) for _ in range(rng.randint(*span)))
            out.append(noise)
            noise_chars += len(noise)
    return "".join(out)


def shards_with_val(work: Path, name: str, train_texts: list[str], val_texts: list[str], tokenizer_dir: Path) -> Path:
    """Token shards (the real `tokenize_files`) whose train split is `train_texts` and whose val split
    is exactly `val_texts` (the held-out file's documents are moved to the val split, as
    bench/bench_recipe.py does)."""
    work.mkdir(parents=True, exist_ok=True)
    files = []
    for part, texts in (("train", train_texts), ("val", val_texts)):
        files.append(work / f"{name}-{part}.jsonl")
        with open(files[-1], "w", encoding="utf-8") as f:
            for t in texts:
                f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    data = work / name
    tokenize_files(files, tokenizer_dir, data, val_fraction=1e-12, seed=0)
    meta = read_meta(data)
    _, held = meta["inputs"]
    held.update(val=held["train"], val_tokens=held["train_tokens"], val_bytes=held["train_bytes"],
                val_documents=held["train_documents"], train_tokens=0, train_bytes=0, train_documents=0)
    write_json(data / "meta.json", meta)
    return data


def noisy_and_clean_shards(work: Path, texts: list[str], tokenizer_dir: Path, *, noise_frac: float = 0.4,
                           ref_frac: float = 0.5, val_every: int = 10, span: tuple[int, int] = (4, 12),
                           seed: int = 0) -> tuple[Path, Path]:
    """(noisy shards, clean reference shards): every `val_every`-th text is clean validation in both;
    the rest are noisy training text, and their first `ref_frac` share, clean, is the reference's."""
    rng = random.Random(seed)
    pieces = noise_pieces(Tokenizer.load(tokenizer_dir))
    val = texts[::val_every]
    train = [t for i, t in enumerate(texts) if i % val_every]
    noisy = [plant_noise(t, pieces, rng, noise_frac, span) for t in train]
    clean = train[: max(1, int(len(train) * ref_frac))]
    return (shards_with_val(work, "noisy", noisy, val, tokenizer_dir),
            shards_with_val(work, "clean", clean, val, tokenizer_dir))
