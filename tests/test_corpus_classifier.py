"""Quality / harmful classifiers: training with held-out figures, both backends, the build step."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from orizuru.config import ConfigError, load_config
from orizuru.corpus import cli
from orizuru.corpus.build import build_corpus
from orizuru.corpus.calibrate import DEFAULT_SET
from orizuru.corpus.classifier import ClassifierTrainConfig, features, load_classifier, train_classifier
from orizuru.corpus.config import CorpusConfig
from orizuru.corpus.doc import read_shard
from orizuru.errors import UserError


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """The calibration set's clean pages (positive) and junk pages (negative) as two JSONL files."""
    d = tmp_path_factory.mktemp("labelled")
    rows = [json.loads(line) for line in gzip.open(DEFAULT_SET, "rt", encoding="utf-8")]
    for label in ("clean", "junk"):
        with open(d / f"{label}.jsonl", "w", encoding="utf-8") as f:
            for r in rows:
                if r["label"] == label:
                    f.write(json.dumps({"text": r["text"][:3000], "kind": r["kind"]}, ensure_ascii=False) + "\n")
    return d


@pytest.fixture(scope="module")
def hashed_model(labelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "hashed"
    meta = train_classifier([str(labelled / "clean.jsonl")], [str(labelled / "junk.jsonl")], out, ClassifierTrainConfig())
    return out, meta


def test_hashed_classifier_separates_held_out_pages(hashed_model):
    out, meta = hashed_model
    h = meta["heldout"]
    assert h["positives"] > 20 and h["negatives"] > 20  # held out by text hash, both classes
    assert h["accuracy"] >= 0.85 and h["recall"] >= 0.9, h
    assert json.loads((out / "classifier.json").read_text("utf-8"))["heldout"] == h
    clf = load_classifier(str(out))
    s = clf.score(["東京は日本の首都であり、政治と経済の中心地である。多くの人々が暮らしている。" * 5,
                   "格安 ホテル 東京 予約 格安 ホテル 最安値 " * 30])
    assert 0 <= s.min() and s.max() <= 1 and s[0] > s[1]


def test_features_are_normalised_hashed_ngrams():
    idx, val = features("ああい", 10)
    # 1-grams あ (x2), い; 2-grams ああ, あい; 3-gram ああい: five distinct, one counted twice
    assert len(idx) == 5 and (idx < 1024).all() and np.linalg.norm(val) == pytest.approx(1.0)
    assert np.sort(val / val.min()) == pytest.approx([1, 1, 1, 1, np.log1p(2) / np.log1p(1)], rel=1e-5)


def test_fasttext_backend_trains_and_scores(labelled, tmp_path):
    meta = train_classifier([str(labelled / "clean.jsonl")], [str(labelled / "junk.jsonl")], tmp_path / "ft",
                            ClassifierTrainConfig(backend="fasttext", epochs=4))
    assert (tmp_path / "ft" / "model.bin").is_file() and meta["heldout"]["accuracy"] > 0.6
    s = load_classifier(str(tmp_path / "ft")).score(["これは文章です。" * 20])
    assert 0.0 <= s[0] <= 1.0


def test_build_step_scores_and_drops(hashed_model, labelled, tmp_path):
    out, meta = hashed_model
    mixed = tmp_path / "mixed.jsonl"
    rows = [json.loads(line) for f in ("clean.jsonl", "junk.jsonl") for line in open(labelled / f, encoding="utf-8")]
    with open(mixed, "w", encoding="utf-8") as f:
        for r in rows[::6]:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    base = ["dedup_enabled=false", "read.carry_fields=['kind']"]
    plain = build_corpus([str(mixed)], tmp_path / "plain", load_config(CorpusConfig, overrides=base))
    stats = build_corpus([str(mixed)], tmp_path / "clf", load_config(CorpusConfig, overrides=base + [f"classifier.model='{out}'"]))
    docs = [d for p in sorted((tmp_path / "clf").glob("part-*")) for d in read_shard(p)]
    assert docs and all(d.meta["quality_score"] >= 0.5 for d in docs)
    removed = stats["dropped"]["quality"].get("classifier", 0)
    assert removed > 0 and stats["docs_out"] == plain["docs_out"] - removed
    assert stats["classifiers"]["quality"]["heldout"] == meta["heldout"]
    assert "| quality |" in (tmp_path / "clf" / "summary.md").read_text("utf-8")
    # the junk the rules cannot see (character salad, spun text) is what the classifier removes
    assert sum(d.meta["kind"] in ("char_salad", "spun_text") for d in docs) < sum(
        d.meta["kind"] in ("char_salad", "spun_text") for p in sorted((tmp_path / "plain").glob("part-*")) for d in read_shard(p))


def test_harmful_step_drops_above_threshold(hashed_model, labelled, tmp_path):
    out, _ = hashed_model  # as a "harmful" model its positives are dropped: here, the clean pages
    cfg = load_config(CorpusConfig, overrides=["dedup_enabled=false", f"harmful.model='{out}'"])
    stats = build_corpus([str(labelled / "clean.jsonl")], tmp_path / "o", cfg)
    assert stats["dropped"]["quality"]["harmful"] > 0
    assert all(d.meta["harmful_score"] < 0.5 for p in (tmp_path / "o").glob("part-*") for d in read_shard(p))


def test_bad_inputs(tmp_path, labelled):
    with pytest.raises(ConfigError, match="classifier.model"):
        load_config(CorpusConfig, overrides=[f"classifier.model='{tmp_path}'"])
    with pytest.raises(UserError, match="--negative"):
        train_classifier([str(labelled / "clean.jsonl")], [str(tmp_path / "nothing*.jsonl")], tmp_path / "m", ClassifierTrainConfig())


def test_command(labelled, tmp_path, capsys):
    assert cli.main(["train-classifier", "--positive", str(labelled / "clean.jsonl"), "--negative",
                     str(labelled / "junk.jsonl"), "--output", str(tmp_path / "m"), "--set", "epochs=2"]) == 0
    assert "held-out precision" in capsys.readouterr().out
    assert json.loads((tmp_path / "m" / "classifier.json").read_text("utf-8"))["config"]["epochs"] == 2
