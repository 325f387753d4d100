"""`orizuru corpus build ...`: the corpus stage's command line."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orizuru.config import ConfigError, parse_subcommand, stage_config
from orizuru.corpus.build import build_corpus, dry_run, stats_markdown
from orizuru.corpus.config import CorpusConfig


@dataclass
class CorpusBuild:
    """WARC/HTML/JSONL/text -> filtered, normalized, deduplicated shards (config defaults: configs/corpus.toml)."""

    input: list[str]  # input files, directories or globs
    output: str | None = None  # output directory (shards, stats.json, summary.md, work/); not needed with --dry-run
    executor: Literal["local", "ray"] = "local"  # ray: joins the cluster at RAY_ADDRESS if set
    workers: int = 1  # worker processes (local) or Ray tasks at once
    dry_run: bool = False  # print what the filters do per document; write nothing
    sample: int = 20  # documents to show with --dry-run
    corpus: CorpusConfig = stage_config(CorpusConfig)

    def validate(self) -> None:
        if not self.dry_run and self.output is None:
            raise ConfigError("--output is required (unless --dry-run)")
        if not self.dry_run and self.workers < 1:
            raise ConfigError("--workers must be >= 1")


SUBCOMMANDS = {"build": CorpusBuild}


def main(argv: list[str]) -> int:
    _, args = parse_subcommand(SUBCOMMANDS, argv, "orizuru corpus", "Build a clean, deduplicated corpus.")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.dry_run:
        for row in dry_run(args.input, args.corpus, args.sample):
            print(json.dumps(row, ensure_ascii=False))
        return 0
    stats = build_corpus(args.input, Path(args.output), args.corpus, executor=args.executor, workers=args.workers)
    print(stats_markdown(stats))
    return 0
