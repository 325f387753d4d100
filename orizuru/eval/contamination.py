"""`orizuru contamination`: which evaluation examples also occur in a training corpus.

An example is flagged when any of its n-grams occurs in a corpus document (GPT-3's 13-gram
test). Text is NFKC-normalised with whitespace removed; Japanese text (any kana or kanji) is
compared in character n-grams (`--char-n`, default 13, about a short clause), other text in
whitespace word 13-grams. Only the example's own fields are compared, never the prompt
template, so shared instructions cannot cause hits. Reported per task: the flagged fraction,
the mean fraction of an example's n-grams found, and every hit (example, document, n-gram).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from orizuru.config import parse_command
from orizuru.corpus.doc import read_shard
from orizuru.errors import UserError
from orizuru.eval.tasks import load_examples, load_task, task_names
from orizuru.files import write_json
from orizuru.japanese import JAPANESE_RE
from orizuru.tokenizer.tokenizer import iter_texts


def ngrams(text: str, n_char: int = 13, n_word: int = 13) -> set[str]:
    text = unicodedata.normalize("NFKC", text)
    if JAPANESE_RE.search(text):
        s = "".join(text.split())
        return {s[i : i + n_char] for i in range(len(s) - n_char + 1)}
    words = text.lower().split()
    return {" ".join(words[i : i + n_word]) for i in range(len(words) - n_word + 1)}


def example_text(values: dict) -> str:
    """All string content of an example's fields (lists of strings included), one per line."""
    parts = []
    for v in values.values():
        if isinstance(v, str):
            parts.append(v)
        elif isinstance(v, list):
            parts += [x for x in v if isinstance(x, str)]
    return "\n".join(parts)


def corpus_docs(paths: list[Path]) -> Iterator[tuple[str, str]]:
    """(doc id, text) from corpus shards (*.jsonl.gz), JSONL with a 'text' field, or plain text."""
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.name.endswith((".jsonl.gz", ".jsonl", ".txt")))
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: corpus path not found")
    if not files:
        raise UserError(f"no corpus files (*.jsonl.gz, *.jsonl, *.txt) under {', '.join(map(str, paths))}")
    for f in files:
        if f.name.endswith(".gz"):
            for doc in read_shard(f):
                yield doc.id, doc.text
        else:
            for i, text in enumerate(iter_texts([f])):
                yield f"{f.name}/{i}", text


def check(corpus: list[Path], tasks: list[str], n_char: int = 13, n_word: int = 13, limit: int | None = None,
          max_hits: int = 1000) -> dict:
    index: dict[str, list[tuple[str, str]]] = {}  # n-gram -> [(task, example id)]
    grams_of: dict[tuple[str, str], int] = {}
    for name in tasks:
        examples, _ = load_examples(load_task(name))
        for ex in examples[:limit]:
            grams = ngrams(example_text(ex.vars), n_char, n_word)
            grams_of[(name, ex.id)] = len(grams)
            for g in grams:
                index.setdefault(g, []).append((name, ex.id))
    found: dict[tuple[str, str], set[str]] = {}
    hits: dict[str, list[dict]] = {name: [] for name in tasks}
    docs = 0
    for doc_id, text in tqdm(corpus_docs(corpus), desc="corpus", unit="doc"):
        docs += 1
        for g in ngrams(text, n_char, n_word) & index.keys():
            for key in index[g]:
                if g not in found.setdefault(key, set()) and len(hits[key[0]]) < max_hits:
                    hits[key[0]].append({"id": key[1], "doc": doc_id, "ngram": g})
                found[key].add(g)
    report = {"corpus": [str(p) for p in corpus], "documents": docs, "n_char": n_char, "n_word": n_word, "tasks": {}}
    for name in tasks:
        keys = [k for k in grams_of if k[0] == name]
        flagged = [k for k in keys if found.get(k)]
        ratios = [len(found.get(k, ())) / grams_of[k] for k in keys if grams_of[k]]
        report["tasks"][name] = {
            "examples": len(keys),
            "contaminated": len(flagged),
            "fraction": len(flagged) / len(keys) if keys else 0.0,
            "mean_overlap": sum(ratios) / len(ratios) if ratios else 0.0,
            "contaminated_ids": [k[1] for k in flagged],
            "hits": hits[name],
        }
    return report


@dataclass
class ContaminationConfig:
    """`orizuru contamination`: n-gram overlap between a corpus and eval sets."""

    corpus: list[str]  # corpus shards, JSONL or text files, or directories
    tasks: list[str] = field(default_factory=task_names)  # task names, also comma-separated
    char_n: int = 13  # character n-gram length for Japanese text
    word_n: int = 13  # word n-gram length for other text
    limit: int | None = None  # only the first N examples per task
    output: str | None = None  # write the report (with all hits) as JSON here


def main(argv: list[str]) -> int:
    a = parse_command(ContaminationConfig, argv, "orizuru contamination", ContaminationConfig.__doc__)
    tasks = [t.strip() for item in a.tasks for t in item.split(",") if t.strip()]
    for t in tasks:
        load_task(t)  # unknown names fail before reading the corpus
    report = check([Path(c) for c in a.corpus], tasks, a.char_n, a.word_n, a.limit)
    if a.output:
        write_json(a.output, report)
    print(f"{report['documents']} documents; n-grams: {a.char_n} characters (Japanese) / {a.word_n} words")
    print("| task | examples | contaminated | fraction | mean overlap |\n| --- | ---: | ---: | ---: | ---: |")
    for name, r in report["tasks"].items():
        print(f"| {name} | {r['examples']} | {r['contaminated']} | {r['fraction']:.3f} | {r['mean_overlap']:.3f} |")
    for name, r in report["tasks"].items():
        for h in r["hits"][:5]:
            print(f"  {name} {h['id']} ~ {h['doc']}: {h['ngram']}")
    return 0
