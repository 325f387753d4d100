"""`orizuru corpus build ...`: the corpus stage's command line."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from orizuru.config import ConfigError, parse_subcommand, stage_config
from orizuru.corpus.build import build_corpus, dry_run, stats_markdown
from orizuru.corpus.calibrate import DEFAULT_SET, calibrate, report_markdown
from orizuru.corpus.classifier import ClassifierTrainConfig, train_classifier
from orizuru.corpus.config import CorpusConfig
from orizuru.corpus.dedup import DedupCommand, run_dedup_command
from orizuru.corpus.semdedup import SemDedupCommand, run_semdedup_command
from orizuru.files import atomic_write, write_json


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


@dataclass
class CorpusCalibrate:
    """Per-rule keep rates on labelled clean text and removal rates on labelled junk (JSONL of text, label, kind)."""

    input: str = str(DEFAULT_SET)  # labelled JSONL(.gz); default: the shipped orizuru/data/calibration set
    output: str | None = None  # directory for calibration.json and calibration.md (printed either way)
    corpus: CorpusConfig = stage_config(CorpusConfig)


@dataclass
class CorpusTrainClassifier:
    """Train a quality (or harmful-content) classifier: positive vs negative documents -> DIR for [classifier] model."""

    positive: list[str]  # documents to keep (quality) or to drop (harmful): files, directories or globs
    negative: list[str]  # the other class, e.g. a random sample of the crawl
    output: str  # model directory: classifier.json (held-out precision/recall) + model
    train: ClassifierTrainConfig = stage_config(ClassifierTrainConfig)


SUBCOMMANDS = {"build": CorpusBuild, "dedup": DedupCommand, "semdedup": SemDedupCommand, "calibrate": CorpusCalibrate,
               "train-classifier": CorpusTrainClassifier}


def main(argv: list[str]) -> int:
    command, args = parse_subcommand(SUBCOMMANDS, argv, "orizuru corpus", "Build a clean, deduplicated corpus.")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if command == "dedup":
        return run_dedup_command(args)
    if command == "semdedup":
        return run_semdedup_command(args)
    if command == "train-classifier":
        meta = train_classifier(args.positive, args.negative, Path(args.output), args.train)
        h = meta["heldout"]
        print(f"{meta['backend']} {meta['label']} classifier -> {args.output}: held-out precision {h['precision']:.3f}, "
              f"recall {h['recall']:.3f}, accuracy {h['accuracy']:.3f} at threshold {meta['threshold']} "
              f"({h['positives']} positive, {h['negatives']} negative held out)")
        return 0
    if command == "calibrate":
        rep = calibrate(Path(args.input), args.corpus)
        if args.output:
            write_json(Path(args.output) / "calibration.json", rep)
            with atomic_write(Path(args.output) / "calibration.md") as f:
                f.write(report_markdown(rep))
        print(report_markdown(rep))
        return 0
    if args.dry_run:
        for row in dry_run(args.input, args.corpus, args.sample):
            print(json.dumps(row, ensure_ascii=False))
        return 0
    stats = build_corpus(args.input, Path(args.output), args.corpus, executor=args.executor, workers=args.workers)
    print(stats_markdown(stats))
    return 0
