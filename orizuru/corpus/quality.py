"""Quality rules: Swallow's for Japanese, Gopher's and C4's for English.

`ja_metrics(text)` / `en_metrics(text)` measure a document; `ja_failing_rule(...)` /
`en_failing_rule(...)` compare the measures with the config and name the first rule that drops
it (None: kept). Measuring and judging are separate so `--dry-run` can print both.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from orizuru.corpus.config import EnQualityConfig, JaQualityConfig
from orizuru.japanese import HIRAGANA, KANJI, KATAKANA, count_in

PUNCT = [(ord(c), ord(c)) for c in "、，。．！？"]  # tōten and kuten


_SENTENCE = re.compile(r"[^。．！？!?]+[。．！？!?]*|[。．！？!?]+")


def lines_of(text: str) -> list[str]:
    """Paragraphs are lines; blank lines carry no content."""
    return [line for line in (s.strip() for s in text.split("\n")) if line]


def sentences_of(lines: list[str]) -> list[str]:
    """Runs ending in 。．！？!? within a line (a line's unterminated tail is a sentence too)."""
    return [s for line in lines for s in (m.strip() for m in _SENTENCE.findall(line)) if s]


def duplicate_fractions(items: list[str]) -> tuple[float, float]:
    """(share of items that repeat an earlier one, share of characters in those repeats)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = 0
    for item in items:
        if item in seen:
            dup += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup / len(items), dup_chars / max(1, sum(map(len, items)))


_P = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier for polynomial n-gram hashes


def _units(units: list | str) -> tuple[np.ndarray, np.ndarray | None]:
    """Characters -> code points; words -> per-document ids and their character lengths."""
    if isinstance(units, str):
        return np.frombuffer(units.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64), None
    ids: dict[str, int] = {}
    arr = np.fromiter((ids.setdefault(u, len(ids)) for u in units), dtype=np.uint64, count=len(units))
    return arr, np.fromiter(map(len, units), dtype=np.int64, count=len(units))


def _groups(h: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One unstable sort instead of np.unique's stable one: (first position of each position's
    n-gram, occurrences per distinct n-gram, first position per distinct n-gram)."""
    order = np.argsort(h)
    sorted_h = h[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_h[1:] != sorted_h[:-1]]))
    group_first = np.minimum.reduceat(order, starts)
    counts = np.diff(np.append(starts, len(h)))
    first = np.empty_like(order)
    first[order] = np.repeat(group_first, counts)
    return first, counts, group_first


def _gopher_dup(h: np.ndarray, n: int, span: np.ndarray | None, first: np.ndarray) -> int:
    """Units in repeats, scanning left to right and jumping past each repeat (datatrove's counting).
    Only positions whose n-gram occurred earlier can be repeats, so the Python loop visits just those."""
    skipped = np.zeros(len(h), dtype=bool)
    added_late: set[int] = set()  # n-grams first seen at a position whose earlier twin was skipped
    dup, skip_end = 0, 0
    for i in np.flatnonzero(first < np.arange(len(h))).tolist():
        if i < skip_end:
            continue
        if not skipped[first[i]] or int(h[i]) in added_late:
            dup += n if span is None else int(span[i])
            skipped[i + 1:i + n] = True
            skip_end = i + n
        else:
            added_late.add(int(h[i]))
    return dup


def ngram_fractions(units: list | str, top_ns=(2, 3, 4), dup_ns=tuple(range(5, 11)),
                    definition: str = "gopher") -> tuple[list[float], list[float]]:
    """Gopher's repetition measures over characters (str) or words (list), vectorized with 64-bit hashes.

    top: share of all units taken by the most frequent n-gram's occurrences.
    dup (gopher): share of units in repeats of an n-gram seen earlier (first occurrence not counted);
    dup (swallow_distinct): distinct repeated n-grams / distinct n-grams (Swallow's code)."""
    ids, lengths = _units(units)
    total = len(ids) if lengths is None else int(lengths.sum())
    cum = None if lengths is None else np.concatenate([[0], np.cumsum(lengths)])
    top, dup = [], []
    h = ids.copy()
    for n in range(1, max(max(top_ns), max(dup_ns)) + 1):
        if n > 1:
            h = h[:-1] * _P + ids[n - 1:] if len(h) > 1 else h[:0]
        if n not in top_ns and n not in dup_ns:
            continue
        if len(h) == 0 or total == 0:
            (top if n in top_ns else dup).append(0.0)
            continue
        span = None if cum is None else cum[n:n + len(h)] - cum[:len(h)]
        first, counts, group_first = _groups(h)
        if n in top_ns:
            best = int(np.argmax(counts))
            size = n if span is None else int(span[group_first[best]])
            top.append(int(counts[best]) * size / total)
        elif definition == "swallow_distinct":
            dup.append(float((counts > 1).sum() / len(counts)))
        else:
            dup.append(_gopher_dup(h, n, span, first) / total)
    return top, dup


def windows_of(text: str, size: int) -> list[str]:
    """Consecutive pieces of `size` characters, the short tail joined to the last piece (0: the whole text).

    Character n-gram repetition grows with length (the same function words and names recur), so
    measured on the whole of a long article it flags clean text; measured per window and averaged
    it is the same at every length, while a page that repeats itself repeats in every window."""
    if size <= 0 or len(text) < 2 * size:
        return [text]
    cuts = list(range(0, len(text) - size + 1, size))
    return [text[a:b] for a, b in zip(cuts, cuts[1:] + [len(text)])]


def window_ngram_fractions(text: str, size: int, definition: str = "gopher") -> tuple[list[float], list[float]]:
    """`ngram_fractions` per window of `size` characters, each measure averaged over windows
    weighted by window length."""
    parts = windows_of(text, size)
    if len(parts) == 1:
        return ngram_fractions(text, definition=definition)
    top, dup = zip(*(ngram_fractions(p, definition=definition) for p in parts))
    w = np.array([len(p) for p in parts], dtype=np.float64) / len(text)
    return (np.average(np.array(top), axis=0, weights=w).tolist(), np.average(np.array(dup), axis=0, weights=w).tolist())


def top_ngram_frac(units: list | str, n: int) -> float:
    return ngram_fractions(units, (n,), (n + 1,))[0][0]


def dup_ngram_frac(units: list | str, n: int, definition: str = "gopher") -> float:
    return ngram_fractions(units, (1,), (n,), definition)[1][0] if n > 1 else 0.0


@lru_cache(maxsize=8)
def ng_words(extra_file: str | None = None) -> tuple[tuple[str, ...], re.Pattern | None]:
    """The shipped NG list (orizuru/corpus/ng_words.txt) plus a user file: (words, one regex)."""
    words = resources.files("orizuru.corpus").joinpath("ng_words.txt").read_text("utf-8").splitlines()
    if extra_file:
        words += Path(extra_file).read_text("utf-8").splitlines()
    words = sorted({w.strip() for w in words if w.strip() and not w.startswith("#")}, key=len, reverse=True)
    return tuple(words), (re.compile("|".join(map(re.escape, words))) if words else None)


def ng_chars(text: str, extra_file: str | None = None) -> int:
    """Characters of non-overlapping NG-expression matches (longest first). Substring checks first:
    most pages hold none, and `in` is far cheaper than a 40-way regex alternation."""
    words, pattern = ng_words(extra_file)
    if pattern is None or not any(w in text for w in words):
        return 0
    return sum(map(len, pattern.findall(text)))


def host_blocked(url: str, blocked: list[str]) -> bool:
    host = (urlsplit(url).hostname or "") if url else ""
    return any(host == b or host.endswith("." + b) for b in blocked)


# ---------------------------------------------------------------- Japanese (Swallow)


def ja_metrics(text: str, cfg: JaQualityConfig) -> dict:
    lines = lines_of(text)
    sents = sentences_of(lines)
    flat = "".join(lines)
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    hiragana, katakana = count_in(cp, HIRAGANA), count_in(cp, KATAKANA)
    ja = hiragana + katakana + count_in(cp, KANJI) + count_in(cp, PUNCT)
    sent_lens = [len(s) for s in sents] or [0]
    m = {
        "chars": len(text),
        "ja_letters": ja,
        "hiragana_frac": hiragana / max(1, ja),
        "katakana_frac": katakana / max(1, ja),
        "ja_frac": ja / max(1, len(text)),
        "mean_sentence_len": sum(sent_lens) / len(sent_lens),
        "max_sentence_len": max(sent_lens),
        "ellipsis_frac": sum(s.endswith(("…", "・", "...")) for s in sents) / max(1, len(sents)),
        "ng_frac": ng_chars(text, cfg.ng_words_file) / max(1, ja),
    }
    m["dup_line_frac"], m["dup_line_char_frac"] = duplicate_fractions(lines)
    m["dup_sentence_frac"], m["dup_sentence_char_frac"] = duplicate_fractions(sents)
    m["top_ngram"], m["dup_ngram"] = window_ngram_fractions(flat, cfg.ngram_window, cfg.dup_ngram_definition)
    return m


def ja_failing_rules(m: dict, cfg: JaQualityConfig) -> list[str]:
    """Every enabled Swallow rule that drops the document, in rule order (the calibration report
    needs each rule's own removals, not just the first)."""
    checks = (
        ("min_chars", m["chars"] < cfg.min_chars),
        ("min_ja_letters", m["ja_letters"] < cfg.min_ja_letters),
        ("dup_line_frac", m["dup_line_frac"] > cfg.dup_line_frac),
        ("dup_line_char_frac", m["dup_line_char_frac"] > cfg.dup_line_char_frac),
        ("dup_sentence_frac", m["dup_sentence_frac"] > cfg.dup_sentence_frac),
        ("dup_sentence_char_frac", m["dup_sentence_char_frac"] > cfg.dup_sentence_char_frac),
        ("top_ngram", any(v > t for v, t in zip(m["top_ngram"], cfg.top_ngram))),
        ("dup_ngram", any(v > t for v, t in zip(m["dup_ngram"], cfg.dup_ngram))),
        ("min_hiragana_frac", m["hiragana_frac"] < cfg.min_hiragana_frac),
        ("max_katakana_frac", m["katakana_frac"] > cfg.max_katakana_frac),
        ("min_ja_frac", m["ja_frac"] < cfg.min_ja_frac),
        ("mean_sentence_len", not cfg.min_mean_sentence_len <= m["mean_sentence_len"] <= cfg.max_mean_sentence_len),
        ("max_sentence_len", m["max_sentence_len"] > cfg.max_sentence_len),
        ("ellipsis_frac", m["ellipsis_frac"] > cfg.ellipsis_frac),
        ("ng_frac", m["ng_frac"] >= cfg.ng_frac),
    )
    return [name for name, fails in checks if fails and name not in cfg.disabled]


def ja_failing_rule(m: dict, cfg: JaQualityConfig) -> str | None:
    """The first Swallow rule that drops the document, or None."""
    return next(iter(ja_failing_rules(m, cfg)), None)


# ---------------------------------------------------------------- English (Gopher + C4)

STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])  # Gopher's list
_WORD = re.compile(r"\S+")
_TERMINAL = (".", "!", "?", '"', "'", "”", "’")


def c4_lines(text: str, min_words: int) -> list[str]:
    """C4's line filter: keep lines ending in terminal punctuation, with enough words, without 'javascript'."""
    return [line for line in lines_of(text)
            if line.endswith(_TERMINAL) and len(line.split()) >= min_words and "javascript" not in line.lower()]


def en_metrics(text: str, cfg: EnQualityConfig) -> dict:
    words = _WORD.findall(text)
    lines = lines_of(text)
    paras = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    n = max(1, len(words))
    m = {
        "words": len(words),
        "mean_word_len": sum(map(len, words)) / n,
        "symbol_word_ratio": (text.count("#") + text.count("...") + text.count("…")) / n,
        "bullet_lines": sum(line.startswith(("•", "-", "*", "‣", "◦")) for line in lines) / max(1, len(lines)),
        "ellipsis_lines": sum(line.endswith(("...", "…")) for line in lines) / max(1, len(lines)),
        "alpha_words": sum(any(c.isalpha() for c in w) for w in words) / n,
        "stop_words": sum(w.lower() in STOP_WORDS for w in words),
        "sentences": sum(len(re.findall(r"[.!?](\s|$)", line)) for line in c4_lines(text, cfg.c4_min_line_words)),
        "lorem_ipsum": "lorem ipsum" in text.lower(),
        "curly_bracket": "{" in text,
    }
    m["dup_line_frac"], m["dup_line_char_frac"] = duplicate_fractions(lines)
    m["dup_para_frac"], m["dup_para_char_frac"] = duplicate_fractions(paras)
    lowered = [w.lower() for w in words]
    m["top_ngram"], m["dup_ngram"] = ngram_fractions(lowered)
    return m


def en_failing_rule(m: dict, cfg: EnQualityConfig) -> str | None:
    checks = (
        ("word_count", not cfg.min_words <= m["words"] <= cfg.max_words),
        ("mean_word_len", not cfg.min_mean_word_len <= m["mean_word_len"] <= cfg.max_mean_word_len),
        ("symbol_word_ratio", m["symbol_word_ratio"] > cfg.max_symbol_word_ratio),
        ("bullet_lines", m["bullet_lines"] > cfg.max_bullet_lines),
        ("ellipsis_lines", m["ellipsis_lines"] > cfg.max_ellipsis_lines),
        ("alpha_words", m["alpha_words"] < cfg.min_alpha_words),
        ("stop_words", m["stop_words"] < cfg.min_stop_words),
        ("dup_line_frac", m["dup_line_frac"] > cfg.dup_line_frac),
        ("dup_para_frac", m["dup_para_frac"] > cfg.dup_para_frac),
        ("dup_line_char_frac", m["dup_line_char_frac"] > cfg.dup_line_char_frac),
        ("dup_para_char_frac", m["dup_para_char_frac"] > cfg.dup_para_char_frac),
        ("top_ngram", any(v > t for v, t in zip(m["top_ngram"], cfg.top_ngram))),
        ("dup_ngram", any(v > t for v, t in zip(m["dup_ngram"], cfg.dup_ngram))),
        ("c4_min_sentences", m["sentences"] < cfg.c4_min_sentences),
        ("c4_lorem_ipsum", m["lorem_ipsum"]),
        ("c4_curly_bracket", m["curly_bracket"]),
    )
    return next((name for name, fails in checks if fails and name not in cfg.disabled), None)
