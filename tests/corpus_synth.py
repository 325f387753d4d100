"""Corpora with planted duplicates, made from real Japanese text, to measure deduplication.

Original documents are random draws of real sentences (Aozora Bunko, Japanese Wikipedia)
grouped into paragraphs, so two originals share almost no character n-grams. Copies of
originals are planted with a known kind: exact copies, k% of characters edited, paragraphs
shuffled, or a page template added. Some originals also share one boilerplate paragraph: they
are distinct documents a deduplicator must keep. The truth (which document derives from which)
lets a test compute recall and precision against the true Jaccard similarity.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from orizuru.corpus.doc import Doc, write_shard
from orizuru.resources import DATA

SAMPLE_DIR = DATA / "ja_text"
KINDS = ("exact", "edit1", "edit2", "edit3", "edit5", "edit10", "shuffle", "template")
_SENTENCE = re.compile(r"[^。!?\n]+[。!?]")  # after NFKC, ！？ are ASCII


@dataclass
class PlantedCorpus:
    docs: list[Doc]
    origin: list[int]  # per document: index of the original it was made from (itself if original)
    pairs: list[tuple[int, int, str]]  # (original index, copy index, kind) for every planted copy


def load_sentences(paths: list[Path] | None = None) -> list[str]:
    """Distinct NFKC-normalized sentences (ending in 。!?, 10+ characters) from JSONL(.gz) files
    with a "text" field."""
    paths = paths or sorted(SAMPLE_DIR.glob("*.jsonl.gz"))
    seen: dict[str, None] = {}
    for path in paths:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                # NFKC as the corpus build's normalization step does before deduplication
                for s in _SENTENCE.findall(unicodedata.normalize("NFKC", json.loads(line)["text"])):
                    s = s.strip().lstrip("　「『")
                    if len(s) >= 10:
                        seen.setdefault(s, None)
    return list(seen)


def ngrams(text: str, n: int = 5) -> set[str]:
    """The character n-gram set MinHash estimates Jaccard on (a text shorter than n is one n-gram)."""
    return {text[i : i + n] for i in range(max(len(text) - n + 1, 1))}


def jaccard(a: str, b: str, n: int = 5) -> float:
    """Exact Jaccard similarity of the character n-gram sets: the reference for dedup tests."""
    x, y = ngrams(a, n), ngrams(b, n)
    return len(x & y) / len(x | y)


def _paragraphs(rng: random.Random, sentences: list[str], chars: int) -> list[str]:
    paras, size = [], 0
    while size < chars:
        para = "".join(rng.choice(sentences) for _ in range(rng.randint(2, 6)))
        paras.append(para)
        size += len(para) + 1
    return paras


def _edit(rng: random.Random, text: str, percent: int, alphabet: str) -> str:
    """Edit `percent`% of the characters: substitutions, insertions and deletions in equal parts."""
    chars = list(text)
    for pos in sorted(rng.sample(range(len(chars)), max(1, len(chars) * percent // 100)), reverse=True):
        op = rng.randrange(3)
        if op == 0:
            chars[pos] = rng.choice(alphabet)
        elif op == 1:
            chars.insert(pos, rng.choice(alphabet))
        else:
            del chars[pos]
    return "".join(chars)


def _copy(rng: random.Random, text: str, kind: str, sentences: list[str], alphabet: str) -> str:
    if kind == "exact":
        return text
    if kind.startswith("edit"):
        return _edit(rng, text, int(kind[4:]), alphabet)
    if kind == "shuffle":
        paras = text.split("\n")
        shuffled = paras[:]
        while len(paras) > 1 and shuffled == paras:
            rng.shuffle(shuffled)
        return "\n".join(shuffled)
    if kind == "template":  # the same article inside another site's header and footer
        head, foot = (_paragraphs(rng, sentences, len(text) // 20) for _ in range(2))
        return "\n".join(head + [text] + foot)
    raise ValueError(f"unknown copy kind {kind!r}")


def make_corpus(
    sentences: list[str],
    originals: int,
    copies: int,
    seed: int = 0,
    doc_chars: int = 1800,
    boilerplate_share: float = 0.3,
    kinds: tuple[str, ...] = KINDS,
) -> PlantedCorpus:
    """`originals` distinct documents plus `copies` planted copies, in a random order."""
    rng = random.Random(seed)
    alphabet = "".join(sorted(set("".join(sentences[:2000]))))
    boilerplate = "\n".join(_paragraphs(rng, sentences, doc_chars // 10))
    texts, origin, kind_of = [], [], []
    for i in range(originals):
        paras = _paragraphs(rng, sentences, doc_chars)
        if rng.random() < boilerplate_share:  # a site footer shared by unrelated pages
            paras.append(boilerplate)
        texts.append("\n".join(paras))
        origin.append(i)
        kind_of.append("original")
    for _ in range(copies):
        src = rng.randrange(originals)
        kind = rng.choice(kinds)
        texts.append(_copy(rng, texts[src], kind, sentences, alphabet))
        origin.append(src)
        kind_of.append(kind)
    order = list(range(len(texts)))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    docs = [Doc(id=f"synth/{new}", text=texts[old], meta={"kind": kind_of[old]}) for new, old in enumerate(order)]
    new_origin = [position[origin[old]] for old in order]
    pairs = [(new_origin[new], new, kind_of[old]) for new, old in enumerate(order) if kind_of[old] != "original"]
    return PlantedCorpus(docs=docs, origin=new_origin, pairs=pairs)


def write_shards(docs: list[Doc], out_dir: Path, shards: int) -> list[Path]:
    """Split documents, in order, into `shards` gzip-JSONL shards; returns their paths."""
    out_dir = Path(out_dir)
    size = -(-len(docs) // shards)
    paths = []
    for i in range(shards):
        path = out_dir / f"shard-{i:05d}.jsonl.gz"
        write_shard(path, docs[i * size : (i + 1) * size])
        paths.append(path)
    return paths
