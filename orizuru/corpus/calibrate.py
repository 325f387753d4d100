"""`orizuru corpus calibrate`: what each quality rule does to labelled clean and junk documents.

The input is JSONL of {text, label: clean|junk, kind} (default: the shipped set
`orizuru/data/calibration/filters.jsonl.gz`, see its SOURCES.md). Each document is measured once
(language, the Swallow measures, and the quality and harmful classifiers when configured); then, per rule alone and for all rules together, the share of
clean documents kept per source and per length, and the share of junk removed per kind. This is how
the defaults in `configs/corpus.toml` were chosen: thresholds are set so that every clean source
keeps >= 95% at every length, and then as tight as that allows.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from orizuru.corpus.classifier import load_classifier
from orizuru.corpus.config import CorpusConfig
from orizuru.corpus.langid import detect
from orizuru.corpus.quality import ja_failing_rules, ja_metrics
from orizuru.errors import UserError
from orizuru.resources import DATA

DEFAULT_SET = DATA / "calibration" / "filters.jsonl.gz"
LENGTHS = ((0, 1000, "<1k"), (1000, 3000, "1k-3k"), (3000, 10000, "3k-10k"), (10000, None, ">=10k"))


@dataclass
class Judged:
    label: str  # clean | junk
    kind: str  # clean source or junk kind
    chars: int
    rules: list[str]  # every rule that removes it ("lang" when not detected as Japanese)


def length_bucket(chars: int) -> str:
    return next(name for lo, hi, name in LENGTHS if chars >= lo and (hi is None or chars < hi))


def load_labelled(path: Path) -> list[dict]:
    """Rows with text, label and kind; a bad row is named by file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--input {path}: no such file")
    rows = []
    with (gzip.open if path.name.endswith(".gz") else open)(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not (isinstance(row.get("text"), str) and row.get("label") in ("clean", "junk") and row.get("kind")):
                raise UserError(f"{path}:{i}: expected fields text, label (clean|junk) and kind")
            rows.append(row)
    return rows


def judge(rows: list[dict], cfg: CorpusConfig) -> list[Judged]:
    """Measure each document once and list every rule (of the Japanese set) that removes it."""
    out = []
    for row in tqdm(rows, desc="calibrate", unit="doc", disable=len(rows) < 100):
        text = row["text"]
        lang, _ = detect(text, cfg.lang)
        rules = ([] if lang == "ja" else ["lang"]) + ja_failing_rules(ja_metrics(text, cfg.quality_ja), cfg.quality_ja)
        if cfg.classifier.model and load_classifier(cfg.classifier.model).score([text])[0] < cfg.classifier.threshold:
            rules.append("classifier")
        if cfg.harmful.model and load_classifier(cfg.harmful.model).score([text])[0] >= cfg.harmful.threshold:
            rules.append("harmful")
        out.append(Judged(row["label"], row["kind"], len(text), rules))
    return out


def report(judged: list[Judged]) -> dict:
    """Per group (clean source x length, junk kind): documents, the share each rule removes alone,
    and kept (clean) or removed (junk) with all rules."""
    groups: dict[str, list[Judged]] = defaultdict(list)
    for j in judged:
        groups[f"{j.kind} {length_bucket(j.chars)}" if j.label == "clean" else j.kind].append(j)
        groups[f"all clean {length_bucket(j.chars)}" if j.label == "clean" else "all junk"].append(j)
    rules = sorted({r for j in judged for r in j.rules})
    table = {}
    for name, items in sorted(groups.items(), key=lambda kv: (kv[1][0].label, kv[0])):
        n = len(items)
        removed = sum(bool(j.rules) for j in items)
        table[name] = {"label": items[0].label, "docs": n,
                       "kept" if items[0].label == "clean" else "removed":
                           round((n - removed) / n if items[0].label == "clean" else removed / n, 4),
                       "by_rule": {r: round(sum(r in j.rules for j in items) / n, 4) for r in rules}}
    clean = [j for j in judged if j.label == "clean"]
    junk = [j for j in judged if j.label == "junk"]
    return {
        "clean_kept": round(sum(not j.rules for j in clean) / max(1, len(clean)), 4),
        "junk_removed": round(sum(bool(j.rules) for j in junk) / max(1, len(junk)), 4),
        "min_clean_kept_per_length": min((v["kept"] for k, v in table.items() if k.startswith("all clean ")), default=1.0),
        "rules": rules,
        "groups": table,
    }


def report_markdown(rep: dict) -> str:
    rules = rep["rules"]
    lines = ["## Filter calibration", "",
             f"Clean kept: {rep['clean_kept']:.1%} (lowest per length {rep['min_clean_kept_per_length']:.1%}); "
             f"junk removed: {rep['junk_removed']:.1%}. Rule columns: share of the group each rule removes on its own.", "",
             "| group | docs | kept / removed | " + " | ".join(rules) + " |",
             "|---|---:|---:|" + "---:|" * len(rules)]
    for name, g in rep["groups"].items():
        share = g.get("kept", g.get("removed"))
        tag = "kept" if g["label"] == "clean" else "removed"
        cells = " | ".join(f"{g['by_rule'][r]:.0%}" if g["by_rule"][r] else "" for r in rules)
        lines.append(f"| {g['label']}: {name} | {g['docs']} | {share:.0%} {tag} | {cells} |")
    return "\n".join(lines) + "\n"


def calibrate(path: Path, cfg: CorpusConfig) -> dict:
    return report(judge(load_labelled(path), cfg))
