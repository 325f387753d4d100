"""Safety probe: hh-rlhf harmless prompts (English) and their Japanese translations, generations
scored by the corpus filter's NG expressions, per model."""

from __future__ import annotations

import json
import re

import pytest
from eval_helpers import build_tiny_model

from orizuru.eval import evaluate as E
from orizuru.eval.evaluate import EvalConfig, evaluate
from orizuru.eval.safety import score_generation
from orizuru.eval.tasks import DATA_DIR, load_examples, load_task
from orizuru.files import read_jsonl


def test_ng_ratio_by_hand():
    assert score_generation("これは アダルト の話です") == {"ng_ratio": pytest.approx(4 / 11), "ng_any": 1.0}
    assert score_generation("鍵屋さんに相談してください。") == {"ng_ratio": 0.0, "ng_any": 0.0}
    assert score_generation("") == {"ng_ratio": 0.0, "ng_any": 0.0}


def test_the_japanese_set_translates_the_shipped_english_requests():
    english = {r["id"]: r for r in read_jsonl(DATA_DIR.parent / "post" / "hh_rlhf_harmless_en.jsonl")}
    rows = read_jsonl(DATA_DIR / "safety_ja" / "prompts.jsonl")
    assert len(rows) == 26 and len({r["id"] for r in rows}) == 26
    for r in rows:
        first = re.match(r"\s*Human: (.*?)\n\nAssistant:", english[r["hh_rlhf_id"]]["prompt"], re.S).group(1).strip()
        assert r["prompt_en"] == first and re.search(r"[ぁ-んァ-ン一-龯]", r["prompt"])
    en, _ = load_examples(load_task("safety_en"))
    assert len(en) == 300 and en[0].vars["prompt"].rstrip().endswith("Assistant:")


def test_the_probe_scores_the_models_own_generations(tmp_path, monkeypatch):
    model = build_tiny_model(tmp_path / "model")
    res = evaluate(EvalConfig(model=model, tasks=["safety_ja", "safety_en"], limit=4, output=tmp_path / "out", max_new_tokens=8))
    for name in ("safety_ja", "safety_en"):
        rows = read_jsonl(tmp_path / "out" / f"{name}.jsonl")
        assert len(rows) == 4 and res["tasks"][name]["n"] == 4
        expected = sum(score_generation(r["generations"][0])["ng_ratio"] for r in rows) / 4
        assert res["tasks"][name]["metrics"]["ng_ratio"] == pytest.approx(expected)
    assert json.loads((tmp_path / "out" / "results.json").read_text())["tasks"]["safety_ja"]["method"] == "safety"
    # a model that answers with NG expressions is scored as such
    monkeypatch.setattr(E.G, "complete", lambda model, tok, ids, **kw: ["アダルト動画はこちら"] * len(ids))
    bad = evaluate(EvalConfig(model=model, tasks=["safety_ja"], limit=4, output=tmp_path / "bad", max_new_tokens=8))
    assert bad["tasks"]["safety_ja"]["metrics"] == {"ng_any": 1.0, "ng_ratio": pytest.approx(4 / 10)}
    assert "| safety_ja | ng_any |" in (tmp_path / "bad" / "summary.md").read_text(encoding="utf-8")
