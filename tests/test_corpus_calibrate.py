"""Filter calibration: the shipped labelled set, the per-rule report, and the defaults it chose."""

from __future__ import annotations

import json

import pytest

from orizuru.corpus.calibrate import DEFAULT_SET, calibrate, judge, load_labelled, report
from orizuru.corpus.config import CorpusConfig, JaQualityConfig
from orizuru.corpus.quality import ja_metrics, windows_of
from orizuru.errors import UserError

RULE_KINDS = ("keyword_stuffing", "repeated_lines", "menu_links", "numeric_dump", "spam", "templated")


@pytest.fixture(scope="module")
def default_report():
    return calibrate(DEFAULT_SET, CorpusConfig())


def test_defaults_keep_clean_text_at_every_length(default_report):
    groups = default_report["groups"]
    for name, g in groups.items():
        if g["label"] == "clean":
            assert g["kept"] >= 0.95 or g["docs"] < 10, (name, g)
    assert default_report["min_clean_kept_per_length"] >= 0.95


def test_defaults_remove_the_junk_rules_can_see(default_report):
    for kind in RULE_KINDS:
        assert default_report["groups"][kind]["removed"] >= 0.95, (kind, default_report["groups"][kind])


def test_swallow_thresholds_drop_long_clean_text():
    """The calibration set shows what the issue measured: Swallow's numbers on character n-grams
    remove most long articles, and the per-window measure is what keeps them."""
    swallow = CorpusConfig()
    swallow.quality_ja = JaQualityConfig(min_ja_letters=400, dup_ngram=[0.15, 0.14, 0.13, 0.12, 0.11, 0.10],
                                         min_mean_sentence_len=20, max_mean_sentence_len=90, max_sentence_len=200,
                                         ngram_window=0)
    rep = calibrate(DEFAULT_SET, swallow)
    assert rep["groups"]["all clean >=10k"]["kept"] < 0.5
    assert rep["groups"]["all clean >=10k"]["by_rule"]["dup_ngram"] > 0.5


def test_window_measure_is_length_invariant():
    text = "".join(f"吾輩は猫である{i}。名前はまだ無い。" for i in range(400))  # the same page, repeated
    assert windows_of(text, 2000) != [text] and "".join(windows_of(text, 2000)) == text
    assert all(len(w) >= 2000 for w in windows_of(text, 2000))
    cfg = JaQualityConfig()
    short, long = ja_metrics(text[:2000], cfg)["dup_ngram"][0], ja_metrics(text, cfg)["dup_ngram"][0]
    assert short == pytest.approx(long, abs=0.02) and long > 0.5
    whole = ja_metrics(text, JaQualityConfig(ngram_window=0))["dup_ngram"][0]
    assert whole > long  # over the whole text, repeats of the first window count too


def test_report_counts_each_rule_alone(tmp_path):
    rows = [{"text": "あ" * 500, "label": "clean", "kind": "k"},
            {"text": "短い。", "label": "junk", "kind": "short"},
            {"text": "abc " * 200, "label": "junk", "kind": "english"}]
    path = tmp_path / "set.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    rep = report(judge(load_labelled(path), CorpusConfig()))
    assert rep["groups"]["short"]["removed"] == 1 and rep["groups"]["short"]["by_rule"]["min_chars"] == 1
    assert rep["groups"]["english"]["by_rule"]["lang"] == 1
    assert rep["junk_removed"] == 1.0 and rep["clean_kept"] == 0.0  # 500 times one kana repeats itself


def test_bad_row_is_named(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text('{"text": "x", "label": "good", "kind": "k"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="set.jsonl:1: expected fields"):
        load_labelled(path)
