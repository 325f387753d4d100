"""The tokenizer report against independent counts (transformers' view of the same files)."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest

from orizuru.tokenizer.cli import main as tokenizer_main
from orizuru.tokenizer.expand import expand_vocab
from orizuru.tokenizer.report import language, load_joyo, report_dict, report_markdown
from orizuru.tokenizer.tokenizer import Tokenizer, iter_texts, train_bpe

ROOT = Path(__file__).resolve().parent.parent
WIKI = ROOT / "orizuru" / "data" / "sample" / "wiki.jsonl"
EN = ROOT / "orizuru" / "data" / "tokenizer_sample" / "en_hh_rlhf.jsonl"


def test_joyo_list_is_the_2136_kanji():
    joyo = load_joyo()
    assert len(joyo) == len(set(joyo)) == 2136
    assert all(unicodedata.name(k).startswith("CJK UNIFIED IDEOGRAPH") for k in joyo)
    for k in "亜愛日本語常用漢字丼串鬱":  # first entry, common ones, 2010 additions
        assert k in joyo
    assert "苺" not in joyo and "龘" not in joyo


def test_language_split():
    assert language("吾輩は猫である。") == "ja"
    assert language("The cat (猫) sat on the mat.") == "en"
    assert language("東京 Tokyo は日本の首都") == "ja"


def test_report_numbers_match_an_independent_count(tmp_path):
    from transformers import AutoTokenizer

    ja = list(iter_texts([WIKI]))[-200:]
    en = list(iter_texts([EN]))
    base = Tokenizer(train_bpe(en, 700, show_progress=False))
    expanded = expand_vocab(base, list(iter_texts([WIKI]))[:200], 300, show_progress=False).tokenizer
    report = report_dict({"base": base, "expanded": expanded}, en + ja)
    assert report["samples"]["ja"]["docs"] == 200 and report["samples"]["en"]["docs"] == len(en)
    joyo = set(load_joyo())
    for row, tok in zip(report["tokenizers"], (base, expanded)):
        tok.save(tmp_path / row["name"])
        hf = AutoTokenizer.from_pretrained(str(tmp_path / row["name"]))
        vocab = hf.get_vocab()
        assert row["vocab_size"] == len(hf)
        assert row["joyo_covered"] == len(joyo & set(vocab))
        singles = {t.lstrip("▁") for t in vocab if len(t.lstrip("▁")) == 1}
        assert row["cjk_ideographs"] == sum(1 for c in singles if "CJK" in unicodedata.name(c, "") and "IDEOGRAPH" in unicodedata.name(c, ""))
        for lang, docs in (("ja", ja), ("en", en)):
            pieces = [p for d in docs for p in hf.convert_ids_to_tokens(hf(d, add_special_tokens=False)["input_ids"])]
            stats = row[lang]
            assert stats["tokens"] == len(pieces)
            assert abs(stats["chars_per_token"] - sum(map(len, docs)) / len(pieces)) < 1e-9
            assert abs(stats["bytes_per_token"] - sum(len(d.encode()) for d in docs) / len(pieces)) < 1e-9
            fallback = sum(1 for p in pieces if len(p) == 6 and p.startswith("<0x") and p.endswith(">"))
            assert abs(stats["byte_fallback_rate"] - fallback / len(pieces)) < 1e-9
    base_row, exp_row = report["tokenizers"]
    assert exp_row["ja"]["tokens"] < base_row["ja"]["tokens"] and exp_row["en"] == base_row["en"]
    assert base_row["ja"]["byte_fallback_rate"] > 0.9  # an English vocabulary spells Japanese in bytes
    md = report_markdown(report)
    assert "### Japanese (200 documents" in md and f"| expanded | {exp_row['ja']['tokens']:,} |" in md


def test_report_cli_json_and_files(tmp_path, capsys):
    tok = Tokenizer(train_bpe(list(iter_texts([WIKI]))[:100], 600, show_progress=False))
    tok.save(tmp_path / "tok")
    rc = tokenizer_main(["report", "--tokenizer", f"mine={tmp_path / 'tok'}", "--text", str(WIKI), str(EN), "--json",
                         "--max-chars", "20000", "--output", str(tmp_path / "rep")])  # fmt: skip
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "rep" / "report.json").read_text())
    assert printed["tokenizers"][0]["name"] == "mine" and 20000 <= printed["samples"]["ja"]["chars"] < 25000
    assert (tmp_path / "rep" / "report.md").read_text().startswith("## Tokenizers")


@pytest.mark.slow  # ~6 s of CPU, over 30 s wall on a busy 2-core machine
def test_demo_section(tmp_path):
    from orizuru.demo.tokenizer import demo_section

    Tokenizer(train_bpe(list(iter_texts([WIKI]))[:100], 600, show_progress=False)).save(tmp_path / "tok")
    md = demo_section(tmp_path / "tok", tmp_path / "out", add=200)
    report = json.loads((tmp_path / "out" / "tokenizer_report.json").read_text())
    demo, base, expanded = report["tokenizers"]
    assert expanded["vocab_size"] == base["vocab_size"] + 200 and expanded["en"] == base["en"]
    assert expanded["ja"]["tokens"] < base["ja"]["tokens"]
    assert "| english-2k+ja200 |" in md
    assert Tokenizer.load(tmp_path / "out" / "tokenizers" / "english-2k+ja200").vocab_size == 2200
