"""`orizuru tokenizer train|report|expand|convert`: train, measure, expand a vocabulary, import SentencePiece.

Every output directory is built under a temporary name and swapped into place when complete,
so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orizuru.config import ConfigError, parse_subcommand
from orizuru.files import atomic_dir, write_json
from orizuru.tokenizer.expand import expand_vocab
from orizuru.tokenizer.report import report_files, report_markdown
from orizuru.tokenizer.tokenizer import Tokenizer, expand_inputs, from_sentencepiece, sample_texts, train_bpe, train_unigram


def _positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")


@dataclass
class TokenizerTrain:
    """Train a byte-fallback BPE or unigram tokenizer on text/JSONL files."""

    input: list[str]  # text, .jsonl or .jsonl.gz files, globs or directories
    vocab_size: int
    output: str  # tokenizer directory to write
    model: Literal["bpe", "unigram"] = "bpe"
    nfkc: bool = False  # NFKC-normalise text (full-width/half-width unification)
    max_chars: int | None = None  # train on a uniform sample of about this many characters
    seed: int = 0  # seed for the sample
    min_frequency: int = 2  # BPE: least count of a pair to merge
    text_field: str = "text"  # JSONL field holding the text

    def validate(self) -> None:
        _positive(self, "vocab_size", "max_chars", "min_frequency")


@dataclass
class TokenizerReport:
    """Chars/bytes per token, byte fallback, Jōyō coverage (Markdown or JSON)."""

    tokenizer: list[str]  # tokenizer directories, each DIR or NAME=DIR
    text: list[str]  # text files or globs to measure on
    max_chars: int = 1_000_000  # characters per language to measure on
    json: bool = False  # print JSON instead of Markdown
    output: str | None = None  # also write report.md and report.json to this directory

    def validate(self) -> None:
        _positive(self, "max_chars")


@dataclass
class TokenizerExpand:
    """Add the N most useful Japanese tokens to a base tokenizer (Swallow)."""

    base: str  # tokenizer directory (tokenizer.json or a SentencePiece tokenizer.model)
    corpus: list[str]  # Japanese text to learn tokens on (files or globs)
    add: int  # tokens to add
    output: str  # tokenizer directory to write
    max_chars: int = 2_000_000  # learn on a uniform sample of about this many characters
    learn_vocab_size: int | None = None  # size of the Japanese BPE learned first (None: 264 + max(4 * add, 1000))
    seed: int = 0  # seed for the sample
    text_field: str = "text"  # JSONL field holding the text

    def validate(self) -> None:
        _positive(self, "add", "max_chars", "learn_vocab_size")


@dataclass
class TokenizerConvert:
    """Write tokenizer.json for a SentencePiece .model (or any tokenizer directory)."""

    input: str  # a tokenizer.model file or a tokenizer directory
    output: str  # tokenizer directory to write


def _chat_template(directory: Path) -> str | None:
    """Keep a base tokenizer's chat template when writing a derived one."""
    try:
        return json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def cmd_train(args: TokenizerTrain) -> int:
    files = expand_inputs(args.input)
    stats = {"docs": 0, "chars": 0}

    def texts():
        for text in sample_texts(files, args.max_chars, seed=args.seed, text_field=args.text_field):
            stats["docs"] += 1
            stats["chars"] += len(text)
            yield text

    start = time.perf_counter()
    if args.model == "bpe":
        hf = train_bpe(texts(), args.vocab_size, nfkc=args.nfkc, min_frequency=args.min_frequency)
    else:
        hf = train_unigram(texts(), args.vocab_size, nfkc=args.nfkc)
    seconds = time.perf_counter() - start
    tok = Tokenizer(hf)
    with atomic_dir(args.output) as tmp:
        tok.save(tmp)
        write_json(
            tmp / "training.json",
            {
                "model": args.model,
                "vocab_size": tok.vocab_size,
                "requested_vocab_size": args.vocab_size,
                "nfkc": args.nfkc,
                "inputs": [str(f) for f in files],
                "max_chars": args.max_chars,
                "seed": args.seed,
                "docs": stats["docs"],
                "chars": stats["chars"],
                "seconds": round(seconds, 3),
            },
        )
    print(f"trained {args.model} tokenizer: {tok.vocab_size} tokens from {stats['docs']:,} documents "
          f"({stats['chars']:,} characters) in {seconds:.1f} s -> {args.output}")
    if tok.vocab_size < args.vocab_size:
        print(f"note: the text supports only {tok.vocab_size} of the {args.vocab_size} requested tokens", file=sys.stderr)
    return 0


def _named_dirs(items: list[str]) -> dict[str, Path]:
    """'DIR' or 'NAME=DIR' -> {name: dir}."""
    out = {}
    for item in items:
        name, _, path = item.rpartition("=") if "=" in item else (Path(item).name, "", item)
        out[name or Path(path).name] = Path(path)
    return out


def cmd_report(args: TokenizerReport) -> int:
    report = report_files(_named_dirs(args.tokenizer), expand_inputs(args.text), max_chars=args.max_chars)
    markdown = report_markdown(report)
    if args.output:
        with atomic_dir(args.output) as tmp:
            write_json(tmp / "report.json", report)
            (tmp / "report.md").write_text(markdown, encoding="utf-8")
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else markdown, end="\n" if args.json else "")
    return 0


def cmd_expand(args: TokenizerExpand) -> int:
    base = Tokenizer.load(args.base)
    files = expand_inputs(args.corpus)
    texts = list(sample_texts(files, args.max_chars, seed=args.seed, text_field=args.text_field))
    result = expand_vocab(base, texts, args.add, learn_vocab_size=args.learn_vocab_size)
    with atomic_dir(args.output) as tmp:
        result.tokenizer.save(tmp, chat_template=_chat_template(Path(args.base)))
        write_json(
            tmp / "expansion.json",
            {
                "base": str(args.base),
                "base_vocab_size": base.vocab_size,
                "vocab_size": result.tokenizer.vocab_size,
                "corpus": [str(f) for f in files],
                "corpus_chars": sum(map(len, texts)),
                "tokens_before": result.tokens_before,
                "tokens_after": result.tokens_after,
                "added": result.added,
            },
        )
    print(
        f"added {len(result.added)} tokens ({base.vocab_size} -> {result.tokenizer.vocab_size}); corpus tokens "
        f"{result.tokens_before:,} -> {result.tokens_after:,} ({result.tokens_after / max(result.tokens_before, 1):.3f}x) -> {args.output}"
    )
    return 0


def cmd_convert(args: TokenizerConvert) -> int:
    source = Path(args.input)
    tok = from_sentencepiece(source) if source.is_file() else Tokenizer.load(source)
    with atomic_dir(args.output) as tmp:
        tok.save(tmp, chat_template=None if source.is_file() else _chat_template(source))
    print(f"wrote {tok.vocab_size}-token tokenizer.json -> {args.output}")
    return 0


SUBCOMMANDS = {"train": TokenizerTrain, "report": TokenizerReport, "expand": TokenizerExpand, "convert": TokenizerConvert}


def main(argv: list[str]) -> int:
    name, cfg = parse_subcommand(SUBCOMMANDS, argv, "orizuru tokenizer", __doc__.split("\n")[0])
    return {"train": cmd_train, "report": cmd_report, "expand": cmd_expand, "convert": cmd_convert}[name](cfg)
