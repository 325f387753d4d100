"""Contamination: n-gram hits between eval examples and a corpus of real shards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orizuru.corpus.doc import Doc, write_shard
from orizuru.errors import UserError
from orizuru.eval import contamination as C
from orizuru.eval.tasks import load_examples, load_task

ROOT = Path(__file__).resolve().parent.parent


def test_character_ngrams_for_japanese_and_words_otherwise():
    assert C.ngrams("あいうえお", n_char=3) == {"あいう", "いうえ", "うえお"}
    assert C.ngrams("ＡＢ　あい", n_char=4) == {"ABあい"}  # NFKC, whitespace removed
    assert C.ngrams("the quick brown fox", n_word=3) == {"the quick brown", "quick brown fox"}
    assert C.ngrams("短い", n_char=13) == set()


def test_leaked_question_is_flagged_and_a_near_miss_is_not(tmp_path):
    examples, _ = load_examples(load_task("jcommonsenseqa"))
    leaked, near = examples[3], examples[5]
    assert len(leaked.vars["question"]) >= 13
    docs = [
        Doc("web/0", f"今日の話題。{leaked.vars['question']}という問題が出ました。"),
        Doc("web/1", near.vars["question"][:12] + "……とは関係のない文章です。"),  # 12 characters: below n
        Doc("web/2", "まったく無関係な文書です。" * 5),
    ]
    write_shard(tmp_path / "shard-00000.jsonl.gz", docs)
    report = C.check([tmp_path], ["jcommonsenseqa"], limit=20)
    r = report["tasks"]["jcommonsenseqa"]
    assert report["documents"] == 3 and r["examples"] == 20
    assert r["contaminated_ids"] == [leaked.id] and r["fraction"] == pytest.approx(1 / 20)
    assert {h["doc"] for h in r["hits"]} == {"web/0"}
    assert {h["ngram"] for h in r["hits"]} <= C.ngrams(leaked.vars["question"])


def test_demo_wiki_sample_contaminates_jsquad(tmp_path, capsys):
    # the shipped demo text is the JSQuAD contexts: the check must find it (and nothing in JNLI)
    out = tmp_path / "report.json"
    assert C.main(["--corpus", str(ROOT / "orizuru" / "data" / "sample" / "wiki.jsonl"), "--tasks", "jsquad,jnli",
                   "--limit", "20", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["tasks"]["jsquad"]["fraction"] == 1.0 and report["tasks"]["jnli"]["contaminated"] == 0
    assert "| jsquad | 20 | 20 |" in capsys.readouterr().out


def test_bad_corpus_path(tmp_path):
    with pytest.raises(UserError, match="corpus path not found"):
        C.check([tmp_path / "missing"], ["jnli"])
    with pytest.raises(UserError, match="no corpus files"):
        C.check([tmp_path], ["jnli"])
