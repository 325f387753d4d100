"""How well tokenizers fit Japanese (and English): the numbers RECIPE.md §2 says to measure.

Per tokenizer and language: characters and UTF-8 bytes per token (fertility; higher is
cheaper), the byte-fallback rate (share of tokens that are raw bytes: characters the vocabulary
lacks, 3 tokens per kanji), and the token count of the same text (so base vs expanded reads as
before/after). Per vocabulary: CJK ideographs it holds as single-character tokens (Llama 2 ~700,
Llama 3 2,314) and its coverage of the Jōyō kanji (data/joyo_kanji, 2,136 characters).
Documents are assigned to "ja" or "en" by script, so one mixed text file serves both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from orizuru.errors import UserError
from orizuru.japanese import is_japanese_char, is_kanji
from orizuru.resources import DATA
from orizuru.tokenizer.tokenizer import BYTE_TOKENS, Tokenizer, iter_texts

JOYO_PATH = DATA / "joyo_kanji" / "joyo.txt"
BYTE_SET = set(BYTE_TOKENS)


def load_joyo(path: Path = JOYO_PATH) -> list[str]:
    try:
        chars = path.read_text(encoding="utf-8").split()
    except OSError as e:
        raise UserError(f"{path}: cannot read the Jōyō kanji list ({e.strerror})") from None
    if len(chars) != 2136:
        raise UserError(f"{path}: expected the 2,136 Jōyō kanji, found {len(chars)} entries")
    return chars


def language(text: str) -> str:
    """'ja' when at least a fifth of the non-space characters are kana or kanji, else 'en'."""
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return "en"
    return "ja" if sum(map(is_japanese_char, chars)) >= 0.2 * len(chars) else "en"


def split_by_language(texts: Iterable[str], max_chars: int | None = None) -> dict[str, list[str]]:
    """{"ja": docs, "en": docs}, each capped at about `max_chars` characters (whole documents)."""
    out: dict[str, list[str]] = {"ja": [], "en": []}
    used = {"ja": 0, "en": 0}
    for text in texts:
        lang = language(text)
        if text.strip() and (max_chars is None or used[lang] < max_chars):
            out[lang].append(text)
            used[lang] += len(text)
    return out


def vocab_stats(tok: Tokenizer, joyo: list[str]) -> dict:
    vocab = tok.hf.get_vocab(with_added_tokens=True)
    cjk = {t.replace("▁", "") for t in vocab if len(t.replace("▁", "")) == 1 and is_kanji(t.replace("▁", ""))}
    covered = sum(1 for k in joyo if k in vocab)
    return {"vocab_size": tok.vocab_size, "cjk_ideographs": len(cjk), "joyo_covered": covered, "joyo_coverage": covered / len(joyo)}


def text_stats(tok: Tokenizer, texts: list[str]) -> dict:
    chars = sum(map(len, texts))
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    tokens = fallback = 0
    for enc in tok.hf.encode_batch(texts, add_special_tokens=False):
        tokens += len(enc.ids)
        fallback += sum(1 for t in enc.tokens if t in BYTE_SET)
    return {
        "tokens": tokens,
        "chars_per_token": chars / max(tokens, 1),
        "bytes_per_token": nbytes / max(tokens, 1),
        "byte_fallback_rate": fallback / max(tokens, 1),
    }


def report_dict(tokenizers: dict[str, Tokenizer], texts: Iterable[str], *, max_chars: int | None = None) -> dict:
    """The report as plain data (JSON-ready): sample sizes, then one entry per tokenizer."""
    if not tokenizers:
        raise UserError("report needs at least one tokenizer")
    joyo = load_joyo()
    samples = split_by_language(texts, max_chars)
    if not samples["ja"] and not samples["en"]:
        raise UserError("report needs some text: the given files hold no non-empty document")
    return {
        "reference": {"name": "Jōyō kanji (2010)", "size": len(joyo), "source": "data/joyo_kanji/SOURCES.md"},
        "samples": {
            lang: {"docs": len(docs), "chars": sum(map(len, docs)), "bytes": sum(len(d.encode("utf-8")) for d in docs)}
            for lang, docs in samples.items()
        },
        "tokenizers": [
            {"name": name, **vocab_stats(tok, joyo), **{lang: text_stats(tok, docs) for lang, docs in samples.items() if docs}}
            for name, tok in tokenizers.items()
        ],
    }


def report_files(tokenizer_dirs: dict[str, str | Path], text_files: list[str | Path], *, max_chars: int | None = 1_000_000) -> dict:
    """`report_dict` from directories and text/JSONL files (what the CLI and the demo call)."""
    tokenizers = {name: Tokenizer.load(path) for name, path in tokenizer_dirs.items()}
    return report_dict(tokenizers, iter_texts(text_files), max_chars=max_chars)


def report_markdown(report: dict) -> str:
    """The report dict as Markdown: a vocabulary table, then one table per language."""
    rows = report["tokenizers"]
    ref = report["reference"]
    lines = [
        "## Tokenizers",
        "",
        f"| tokenizer | vocab | CJK ideographs | {ref['name']} covered |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {r['name']} | {r['vocab_size']:,} | {r['cjk_ideographs']:,} | {r['joyo_covered']:,} / {ref['size']:,} ({r['joyo_coverage']:.1%}) |"
        for r in rows
    ]
    for lang, title in (("ja", "Japanese"), ("en", "English")):
        sample = report["samples"][lang]
        if not sample["docs"]:
            continue
        first = rows[0][lang]["tokens"]
        lines += [
            "",
            f"### {title} ({sample['docs']:,} documents, {sample['chars']:,} characters, {sample['bytes']:,} bytes)",
            "",
            f"| tokenizer | tokens | vs {rows[0]['name']} | chars/token | bytes/token | byte fallback |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['name']} | {r[lang]['tokens']:,} | {r[lang]['tokens'] / max(first, 1):.3f} | {r[lang]['chars_per_token']:.3f} "
            f"| {r[lang]['bytes_per_token']:.3f} | {r[lang]['byte_fallback_rate']:.2%} |"
            for r in rows
        ]
    return "\n".join(lines) + "\n"
