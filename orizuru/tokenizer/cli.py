"""`orizuru tokenizer train|report|expand|convert`: train, measure, expand a vocabulary, import SentencePiece.

Every output directory is built under a temporary name and swapped into place when complete,
so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from orizuru.files import atomic_dir, write_json
from orizuru.tokenizer.expand import expand_vocab
from orizuru.tokenizer.report import report_files, report_markdown
from orizuru.tokenizer.tokenizer import Tokenizer, expand_inputs, from_sentencepiece, sample_texts, train_bpe, train_unigram


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def _chat_template(directory: Path) -> str | None:
    """Keep a base tokenizer's chat template when writing a derived one."""
    try:
        return json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def cmd_train(args: argparse.Namespace) -> int:
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


def cmd_report(args: argparse.Namespace) -> int:
    report = report_files(_named_dirs(args.tokenizer), expand_inputs(args.text), max_chars=args.max_chars)
    markdown = report_markdown(report)
    if args.output:
        with atomic_dir(args.output) as tmp:
            write_json(tmp / "report.json", report)
            (tmp / "report.md").write_text(markdown, encoding="utf-8")
    print(json.dumps(report, ensure_ascii=False, indent=2) if args.json else markdown, end="\n" if args.json else "")
    return 0


def cmd_expand(args: argparse.Namespace) -> int:
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


def cmd_convert(args: argparse.Namespace) -> int:
    source = Path(args.input)
    tok = from_sentencepiece(source) if source.is_file() else Tokenizer.load(source)
    with atomic_dir(args.output) as tmp:
        tok.save(tmp, chat_template=None if source.is_file() else _chat_template(source))
    print(f"wrote {tok.vocab_size}-token tokenizer.json -> {args.output}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="orizuru tokenizer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a byte-fallback BPE or unigram tokenizer on text/JSONL files")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE_OR_GLOB", help="text, .jsonl or .jsonl.gz files, globs or directories")
    p.add_argument("--vocab-size", type=_positive, required=True)
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--model", choices=["bpe", "unigram"], default="bpe")
    p.add_argument("--nfkc", action="store_true", help="NFKC-normalise text (full-width/half-width unification)")
    p.add_argument("--max-chars", type=_positive, default=None, help="train on a uniform sample of about this many characters")
    p.add_argument("--seed", type=int, default=0, help="seed for the sample")
    p.add_argument("--min-frequency", type=_positive, default=2, help="BPE: least count of a pair to merge")
    p.add_argument("--text-field", default="text", help="JSONL field holding the text")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("report", help="chars/bytes per token, byte fallback, Jōyō coverage (Markdown or JSON)")
    p.add_argument("--tokenizer", nargs="+", required=True, metavar="[NAME=]DIR")
    p.add_argument("--text", nargs="+", required=True, metavar="FILE_OR_GLOB")
    p.add_argument("--max-chars", type=_positive, default=1_000_000, help="characters per language to measure on")
    p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")
    p.add_argument("--output", metavar="DIR", help="also write report.md and report.json here")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("expand", help="add the N most useful Japanese tokens to a base tokenizer (Swallow)")
    p.add_argument("--base", required=True, metavar="DIR", help="tokenizer directory (tokenizer.json or a SentencePiece tokenizer.model)")
    p.add_argument("--corpus", nargs="+", required=True, metavar="FILE_OR_GLOB", help="Japanese text to learn tokens on")
    p.add_argument("--add", type=_positive, required=True, metavar="N")
    p.add_argument("--output", required=True, metavar="DIR")
    p.add_argument("--max-chars", type=_positive, default=2_000_000, help="learn on a uniform sample of about this many characters")
    p.add_argument("--learn-vocab-size", type=_positive, default=None, help="size of the Japanese BPE learned first (default 264 + max(4N, 1000))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--text-field", default="text")
    p.set_defaults(func=cmd_expand)

    p = sub.add_parser("convert", help="write tokenizer.json for a SentencePiece .model (or any tokenizer directory)")
    p.add_argument("--input", required=True, metavar="MODEL_OR_DIR", help="a tokenizer.model file or a tokenizer directory")
    p.add_argument("--output", required=True, metavar="DIR")
    p.set_defaults(func=cmd_convert)

    args = parser.parse_args(argv)
    return args.func(args)
