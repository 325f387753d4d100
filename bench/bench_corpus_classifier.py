"""Quality classifier backends on the calibration set, alone and after the rules (held-out part only).

    python bench/bench_corpus_classifier.py [--backends hashed fasttext]

Trains `orizuru corpus train-classifier`'s model on the shipped calibration set
(`orizuru/data/calibration/filters.jsonl.gz`: clean pages positive, junk negative; 20% of each held
out by text hash), then runs `orizuru corpus calibrate` on the held-out rows with the rules alone and
with the rules + each classifier. Prints JSON: held-out precision/recall/accuracy, training seconds,
scoring documents/s, model size, and clean kept per length / junk removed per kind.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from pathlib import Path

from orizuru.corpus.calibrate import DEFAULT_SET, calibrate
from orizuru.corpus.classifier import ClassifierTrainConfig, _heldout, load_classifier, train_classifier
from orizuru.corpus.config import CorpusConfig


def summary(rep: dict) -> dict:
    g = rep["groups"]
    return {"clean_kept": rep["clean_kept"], "junk_removed": rep["junk_removed"],
            "clean_kept_per_length": {k.removeprefix("all clean "): v["kept"] for k, v in g.items() if k.startswith("all clean")},
            "junk_removed_per_kind": {k: v["removed"] for k, v in g.items() if v["label"] == "junk" and k != "all junk"}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", nargs="+", default=["hashed", "fasttext"])
    args = p.parse_args()
    rows = [json.loads(line) for line in gzip.open(DEFAULT_SET, "rt", encoding="utf-8")]
    d = Path(tempfile.mkdtemp(prefix="bench_classifier_"))
    for label in ("clean", "junk"):
        with open(d / f"{label}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": r["text"]}, ensure_ascii=False) + "\n" for r in rows if r["label"] == label)
    with open(d / "heldout.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if _heldout(r["text"], 0.2))
    report = {"rules_only": summary(calibrate(d / "heldout.jsonl", CorpusConfig()))}
    texts = [r["text"] for r in rows]
    for backend in args.backends:
        t = time.perf_counter()
        meta = train_classifier([str(d / "clean.jsonl")], [str(d / "junk.jsonl")], d / backend, ClassifierTrainConfig(backend=backend))
        train_s = time.perf_counter() - t
        clf = load_classifier(str(d / backend))
        t = time.perf_counter()
        clf.score(texts)
        cfg = CorpusConfig()
        cfg.classifier.model = str(d / backend)
        report[backend] = {"heldout": meta["heldout"], "train_s": round(train_s, 2),
                           "score_docs_per_s": round(len(texts) / (time.perf_counter() - t)),
                           "model_mb": round(sum(f.stat().st_size for f in (d / backend).iterdir()) / 1e6, 1),
                           "with_rules": summary(calibrate(d / "heldout.jsonl", cfg))}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
