"""The corpus build's config: one dataclass per step, every threshold a key with its published default.

Defaults are Swallow corpus v1's rules (Okazaki et al. 2024, the table in issue 3) for Japanese and
Gopher (Rae et al. 2021) / C4 (Raffel et al. 2020) rules for English. `configs/corpus.toml` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orizuru.config import ConfigError

JA_RULES = (
    "min_chars", "min_ja_letters", "dup_line_frac", "dup_line_char_frac", "dup_sentence_frac",
    "dup_sentence_char_frac", "top_ngram", "dup_ngram", "min_hiragana_frac", "max_katakana_frac",
    "min_ja_frac", "mean_sentence_len", "max_sentence_len", "ellipsis_frac", "ng_frac", "blocked_host",
)
EN_RULES = (
    "word_count", "mean_word_len", "symbol_word_ratio", "bullet_lines", "ellipsis_lines", "alpha_words",
    "stop_words", "dup_line_frac", "dup_para_frac", "dup_line_char_frac", "dup_para_char_frac",
    "top_ngram", "dup_ngram", "c4_min_sentences", "c4_lorem_ipsum", "c4_curly_bracket", "blocked_host",
)


def _check(cond: bool, key: str, expected: str, value) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}' must be {expected}, got {value!r}")


def _fraction(section: str, obj, names) -> None:
    for name in names:
        v = getattr(obj, name)
        _check(0.0 <= v <= 1.0, f"{section}.{name}", "in [0, 1]", v)


@dataclass
class ReadConfig:
    max_record_bytes: int = 10_000_000  # larger pages are skipped ("too_large"), never parsed
    text_field: str = "text"  # JSONL inputs: the field that holds the document text
    url_field: str = "url"
    id_field: str = "id"  # JSONL inputs: the document's own id, kept as its id (absent: "<file>/<line>")
    carry_fields: list[str] = field(default_factory=list)  # JSONL fields copied into meta, e.g. ["title"]

    def validate(self) -> None:
        _check(self.max_record_bytes > 0, "read.max_record_bytes", "positive", self.max_record_bytes)


@dataclass
class ExtractConfig:
    # trafilatura: 25/26 body snippets kept, 12/15 navigation snippets dropped on web_html/ja;
    # resiliparse: 22/26 and 1/15 but ~15x faster (bench/bench_extract.py, orizuru/corpus/extract.py)
    method: Literal["trafilatura", "resiliparse"] = "trafilatura"


@dataclass
class LangConfig:
    keep: list[str] = field(default_factory=lambda: ["ja"])  # add "en" for a bilingual corpus
    min_kana_frac: float = 0.05  # Japanese if (hiragana+katakana)/letters >= this (Chinese has no kana)
    min_score: float = 0.5  # py3langid probability needed for non-Japanese languages

    def validate(self) -> None:
        _check(bool(self.keep), "lang.keep", "a non-empty list of language codes", self.keep)
        _fraction("lang", self, ("min_kana_frac", "min_score"))


@dataclass
class JaQualityConfig:
    """Swallow's rules; a document is dropped when any holds. `disabled` names rules to skip.

    Thresholds are Swallow's except where the labelled calibration set (`orizuru corpus calibrate`,
    ARCHITECTURE.md) showed them removing clean text: min_ja_letters, dup_ngram (per 2,000-character
    window), the sentence lengths."""

    min_chars: int = 400
    min_ja_letters: int = 300  # Swallow 400: with min_chars 400 it dropped clean pages holding a few digits or quotes
    dup_line_frac: float = 0.30
    dup_line_char_frac: float = 0.20
    dup_sentence_frac: float = 0.30
    dup_sentence_char_frac: float = 0.20
    top_ngram: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])  # n = 2, 3, 4
    # n = 5..10; Swallow 0.15..0.10 alone removed 16% of clean 1k-3k and 90% of 10k+ pages (whole-text measure)
    dup_ngram: list[float] = field(default_factory=lambda: [0.30, 0.27, 0.24, 0.21, 0.18, 0.15])
    # gopher: characters in repeats of an earlier n-gram / all characters (Gopher, counted as datatrove does);
    # swallow_distinct: distinct repeated n-grams / distinct n-grams (what Swallow's code computes)
    dup_ngram_definition: Literal["gopher", "swallow_distinct"] = "gopher"
    # n-gram measures per window of this many characters, averaged (0: over the whole document, as Swallow)
    ngram_window: int = 2000
    min_hiragana_frac: float = 0.2
    max_katakana_frac: float = 0.5
    min_ja_frac: float = 0.5
    min_mean_sentence_len: float = 12  # Swallow 20; menus and link lists average 8-9
    max_mean_sentence_len: float = 150  # Swallow 90
    max_sentence_len: int = 1000  # Swallow 200: Aozora and Wikipedia hold clean sentences of 200-400 characters
    ellipsis_frac: float = 0.2
    ng_frac: float = 0.05
    ng_words_file: str | None = None  # extra NG expressions, one per line, added to the shipped list
    disabled: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for rule in self.disabled:
            _check(rule in JA_RULES, "quality_ja.disabled", f"rule names from {', '.join(JA_RULES)}", rule)
        _check(self.min_chars >= 0 and self.min_ja_letters >= 0, "quality_ja.min_chars", ">= 0", self.min_chars)
        _fraction("quality_ja", self, ("dup_line_frac", "dup_line_char_frac", "dup_sentence_frac",
                                       "dup_sentence_char_frac", "min_hiragana_frac", "max_katakana_frac",
                                       "min_ja_frac", "ellipsis_frac", "ng_frac"))
        _check(len(self.top_ngram) == 3 and all(0 <= v <= 1 for v in self.top_ngram),
               "quality_ja.top_ngram", "3 fractions (n = 2, 3, 4)", self.top_ngram)
        _check(len(self.dup_ngram) == 6 and all(0 <= v <= 1 for v in self.dup_ngram),
               "quality_ja.dup_ngram", "6 fractions (n = 5..10)", self.dup_ngram)
        _check(0 <= self.min_mean_sentence_len <= self.max_mean_sentence_len,
               "quality_ja.min_mean_sentence_len", "in [0, max_mean_sentence_len]", self.min_mean_sentence_len)
        _check(self.max_sentence_len > 0, "quality_ja.max_sentence_len", "positive", self.max_sentence_len)
        _check(self.ngram_window >= 0, "quality_ja.ngram_window", ">= 0", self.ngram_window)


@dataclass
class EnQualityConfig:
    """Gopher quality + repetition rules (word based) and C4's line and page rules."""

    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_len: float = 3
    max_mean_word_len: float = 10
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_alpha_words: float = 0.8
    min_stop_words: int = 2
    dup_line_frac: float = 0.30
    dup_para_frac: float = 0.30
    dup_line_char_frac: float = 0.20
    dup_para_char_frac: float = 0.20
    top_ngram: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])
    dup_ngram: list[float] = field(default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10])
    c4_min_sentences: int = 5
    c4_min_line_words: int = 3
    disabled: list[str] = field(default_factory=list)

    def validate(self) -> None:
        for rule in self.disabled:
            _check(rule in EN_RULES, "quality_en.disabled", f"rule names from {', '.join(EN_RULES)}", rule)
        _check(0 <= self.min_words <= self.max_words, "quality_en.min_words", "in [0, max_words]", self.min_words)
        _fraction("quality_en", self, ("max_symbol_word_ratio", "max_bullet_lines", "max_ellipsis_lines",
                                       "min_alpha_words", "dup_line_frac", "dup_para_frac",
                                       "dup_line_char_frac", "dup_para_char_frac"))
        _check(len(self.top_ngram) == 3 and all(0 <= v <= 1 for v in self.top_ngram),
               "quality_en.top_ngram", "3 fractions (n = 2, 3, 4)", self.top_ngram)
        _check(len(self.dup_ngram) == 6 and all(0 <= v <= 1 for v in self.dup_ngram),
               "quality_en.dup_ngram", "6 fractions (n = 5..10)", self.dup_ngram)


@dataclass
class ClassifierConfig:
    """A model from `orizuru corpus train-classifier`, applied after the rules (empty model: off)."""

    model: str = ""  # classifier directory (classifier.json + model)
    threshold: float = 0.5  # quality: dropped below this P(positive); harmful: dropped at or above it

    def validate(self) -> None:
        _check(0.0 < self.threshold < 1.0, "classifier.threshold", "in (0, 1)", self.threshold)
        _check(not self.model or (Path(self.model) / "classifier.json").is_file(), "classifier.model",
               "a directory written by orizuru corpus train-classifier (with classifier.json)", self.model)


@dataclass
class NormalizeConfig:
    nfkc: bool = True
    unify_punct: bool = True  # ，． -> 、。 (after NFKC they are ,. next to Japanese letters)
    footer_keywords: list[str] = field(default_factory=lambda: [
        "Copyright", "All Rights Reserved", "無断転載", "無断複写", "著作権", "プライバシーポリシー",
        "利用規約", "お問い合わせ", "ページの先頭", "ページトップ",
    ])
    footer_lines: int = 5  # trim matching lines among the last this many lines
    boilerplate_min_pages: int = 3  # a line on >= this many pages of one host (in one input file) is removed

    def validate(self) -> None:
        _check(self.footer_lines >= 0, "normalize.footer_lines", ">= 0", self.footer_lines)
        _check(self.boilerplate_min_pages >= 2, "normalize.boilerplate_min_pages", ">= 2", self.boilerplate_min_pages)


@dataclass
class OutputConfig:
    format: Literal["jsonl", "parquet"] = "jsonl"


@dataclass
class DedupConfig:
    """Config section [dedup]."""

    exact: bool = True  # drop documents whose normalized text is identical to an earlier one
    near: bool = True  # drop near duplicates found by MinHash LSH
    ngram: int = 5  # character n-gram length
    # LSH candidate threshold (the S-curve midpoint): 0.45 -> 47 x 5, P(0.55) = 0.91, P(0.6) = 0.98.
    # Candidates are then checked (verify_threshold), so the curve can sit low without removing unique pages.
    threshold: float = 0.45
    # a candidate pair is a duplicate when its MinHash Jaccard estimate (share of equal hashes) is >= this;
    # 0: every LSH candidate is a duplicate (no check, as datatrove and Swallow do)
    verify_threshold: float = 0.6
    bands: int | None = None  # None: chosen with rows from `threshold` (b * r <= 256)
    rows: int | None = None  # Swallow: bands = 40, rows = 20
    seed: int = 0

    def validate(self) -> None:
        if self.ngram < 1:
            raise ConfigError(f"config key 'dedup.ngram' must be >= 1, got {self.ngram}")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"config key 'dedup.threshold' must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.verify_threshold <= 1.0:
            raise ConfigError(f"config key 'dedup.verify_threshold' must be in [0, 1], got {self.verify_threshold}")
        if (self.bands is None) != (self.rows is None):
            key = "dedup.rows" if self.rows is None else "dedup.bands"
            raise ConfigError(f"config key '{key}' must be set together with 'dedup.bands' and 'dedup.rows' (or neither)")
        for key in ("bands", "rows"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"config key 'dedup.{key}' must be >= 1, got {value}")
        if self.bands is not None and self.bands * self.rows > 4096:
            raise ConfigError(f"config keys 'dedup.bands' x 'dedup.rows' must be <= 4096 hashes, got {self.bands * self.rows}")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"config key 'dedup.seed' must be in [0, 2^63), got {self.seed}")


@dataclass
class SemDedupConfig:
    """Config section [semdedup]; off unless `model` (build) or `model`/`embeddings` (command) is set."""

    model: str = ""  # HF Llama directory (with its tokenizer): embeddings = mean-pooled final hidden states
    embeddings: str = ""  # `orizuru corpus semdedup` only: a .npy [documents, dim], rows in input order
    clusters: int = 0  # k-means clusters; 0: about sqrt(documents)
    threshold: float = 0.95  # cosine similarity above which a later document of a cluster is removed
    iterations: int = 20  # k-means iterations
    max_tokens: int = 512  # tokens of each document embedded (the start of the page)
    batch_size: int = 16
    seed: int = 0

    def validate(self) -> None:
        if self.model and self.embeddings:
            raise ConfigError("config keys 'semdedup.model' and 'semdedup.embeddings' exclude each other")
        if not -1.0 < self.threshold < 1.0:
            raise ConfigError(f"config key 'semdedup.threshold' must be in (-1, 1), got {self.threshold}")
        for key in ("iterations", "max_tokens", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"config key 'semdedup.{key}' must be >= 1, got {getattr(self, key)}")
        if self.clusters < 0:
            raise ConfigError(f"config key 'semdedup.clusters' must be >= 0, got {self.clusters}")
        if self.model and not (Path(self.model) / "config.json").is_file():
            raise ConfigError(f"config key 'semdedup.model' must be a Hugging Face model directory (config.json), got {self.model!r}")


@dataclass
class CorpusConfig:
    read: ReadConfig = field(default_factory=ReadConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    lang: LangConfig = field(default_factory=LangConfig)
    quality_ja: JaQualityConfig = field(default_factory=JaQualityConfig)
    quality_en: EnQualityConfig = field(default_factory=EnQualityConfig)
    blocked_hosts: list[str] = field(default_factory=lambda: ["5ch.net", "wikipedia.org"])  # host or its subdomains
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)  # quality classifier: keeps pages like its positives
    harmful: ClassifierConfig = field(default_factory=ClassifierConfig)  # harmful-content classifier: drops pages like its positives
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    dedup_enabled: bool = True
    dedup: DedupConfig = field(default_factory=DedupConfig)
    semdedup: SemDedupConfig = field(default_factory=SemDedupConfig)  # after MinHash; off unless semdedup.model is set

    def validate(self) -> None:
        if self.semdedup.embeddings:
            raise ConfigError("config key 'semdedup.embeddings' is for orizuru corpus semdedup; the build embeds with semdedup.model")
