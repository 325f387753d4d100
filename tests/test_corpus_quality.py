"""Every quality rule on hand-made documents on each side of its published threshold."""

import pytest

from orizuru.corpus.config import EN_RULES, JA_RULES, EnQualityConfig, JaQualityConfig, NormalizeConfig
from orizuru.corpus.normalize import boilerplate_keys, line_keys, normalize_text, strip_boilerplate, trim_footer
from orizuru.corpus.quality import (
    dup_ngram_frac,
    duplicate_fractions,
    en_failing_rule,
    en_metrics,
    host_blocked,
    ja_failing_rule,
    ja_metrics,
    sentences_of,
    top_ngram_frac,
)


def uniq(n, start=0):
    """n distinct kanji: text that repeats nothing."""
    return "".join(chr(0x4E00 + start + i) for i in range(n))


# Swallow's published thresholds, measured over the whole text: the cases below sit at their edges
SWALLOW = dict(min_ja_letters=400, dup_ngram=[0.15, 0.14, 0.13, 0.12, 0.11, 0.10], min_mean_sentence_len=20,
               max_mean_sentence_len=90, max_sentence_len=200, ngram_window=0)


def only(rule, **kw):
    return JaQualityConfig(disabled=[r for r in JA_RULES if r != rule], **{**SWALLOW, **kw})


def fails(text, rule, **kw):
    cfg = only(rule, **kw)
    return ja_failing_rule(ja_metrics(text, cfg), cfg) == rule


def lines(items):
    return "\n".join(items)


def sent(i, length):
    """A distinct sentence of exactly `length` characters ending in 。"""
    return uniq(length - 1, start=i * 300) + "。"


CASES = [  # rule, text that passes (at the threshold), text that fails (just beyond)
    ("min_chars", "あ" * 400, "あ" * 399),
    ("min_ja_letters", "あ" * 400 + "a", "あ" * 399 + "a"),
    ("dup_line_frac", lines([sent(i, 10) for i in range(7)] + [sent(0, 10)] * 3),
     lines([sent(i, 10) for i in range(6)] + [sent(0, 10)] * 4)),
    ("dup_line_char_frac", lines([sent(i, 10) for i in range(8)] + [sent(0, 10)] * 2),
     lines([sent(i, 10) for i in range(7)] + [sent(0, 10)] * 3)),
    ("dup_sentence_frac", "".join([sent(i, 10) for i in range(7)] + [sent(0, 10)] * 3),
     "".join([sent(i, 10) for i in range(6)] + [sent(0, 10)] * 4)),
    ("dup_sentence_char_frac", "".join([sent(i, 10) for i in range(8)] + [sent(0, 10)] * 2),
     "".join([sent(i, 10) for i in range(7)] + [sent(0, 10)] * 3)),
    # the bigram あい 10 (11) times, each followed by a fresh kanji, in 100 characters: 0.20 (0.22)
    ("top_ngram", "".join("あい" + uniq(1, i) for i in range(10)) + uniq(70, 100),
     "".join("あい" + uniq(1, i) for i in range(11)) + uniq(67, 100)),
    # a 5-gram four (five) times in 100 characters: its 3 (4) repeats cover 0.15 (0.20) of them
    ("dup_ngram", "".join("あいうえお" + uniq(1, i) for i in range(4)) + uniq(76, 10),
     "".join("あいうえお" + uniq(1, i) for i in range(5)) + uniq(70, 10)),
    ("min_hiragana_frac", "あ" * 20 + uniq(80), "あ" * 19 + uniq(81)),
    ("max_katakana_frac", "ア" * 50 + uniq(50), "ア" * 51 + uniq(49)),
    ("min_ja_frac", "あ" * 50 + "a" * 50, "あ" * 49 + "a" * 51),
    ("mean_sentence_len", "".join(sent(i, 20) for i in range(5)), "".join(sent(i, 19) for i in range(5))),
    ("mean_sentence_len", "".join(sent(i, 90) for i in range(5)), "".join(sent(i, 91) for i in range(5))),
    ("max_sentence_len", sent(0, 200), sent(0, 201)),
    ("ellipsis_frac", lines([sent(i, 10) for i in range(8)] + ["あいう…", "かきく…"]),
     lines([sent(i, 10) for i in range(7)] + ["あいう…", "かきく…", "さしす・"])),
    ("ng_frac", "アダルト" + uniq(96), "アダルト" + uniq(76)),
]


@pytest.mark.parametrize("rule, ok, bad", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_ja_rule_each_side_of_threshold(rule, ok, bad):
    assert not fails(ok, rule), ja_metrics(ok, only(rule))
    assert fails(bad, rule), ja_metrics(bad, only(rule))


def test_every_ja_rule_has_a_case():
    assert {c[0] for c in CASES} | {"blocked_host"} == set(JA_RULES)


def test_defaults_are_swallows_except_the_calibrated():
    c = JaQualityConfig()
    assert (c.min_chars, c.dup_line_frac, c.dup_line_char_frac) == (400, 0.3, 0.2)
    assert c.top_ngram == [0.20, 0.18, 0.16] and (c.min_hiragana_frac, c.max_katakana_frac) == (0.2, 0.5)
    assert (c.min_ja_frac, c.ng_frac, c.ellipsis_frac) == (0.5, 0.05, 0.2)
    # calibrated on orizuru/data/calibration (tests/test_corpus_calibrate.py)
    assert (c.min_ja_letters, c.min_mean_sentence_len, c.max_mean_sentence_len, c.max_sentence_len) == (300, 12, 150, 1000)
    assert c.dup_ngram == [0.30, 0.27, 0.24, 0.21, 0.18, 0.15] and c.ngram_window == 2000


def test_measures_against_hand_counts():
    assert duplicate_fractions(["aa", "b", "aa", "aa"]) == (0.5, 4 / 7)
    assert top_ngram_frac("abab", 2) == 2 * 2 / 4
    # "abcab": bigrams ab bc ca ab; the second ab is a repeat -> 2 of 5 characters
    assert dup_ngram_frac("abcab", 2) == pytest.approx(2 / 5)
    assert dup_ngram_frac("aaaa", 2) == pytest.approx(2 / 4)  # aa, then a repeat at 1 covers 1-2, skip to 3
    assert dup_ngram_frac(["a", "bb", "a", "bb"], 2) == pytest.approx(3 / 6)
    assert dup_ngram_frac("abcab", 2, "swallow_distinct") == pytest.approx(1 / 3)
    assert sentences_of(["今日は晴れ。明日は雨！本当?", "終わり"]) == ["今日は晴れ。", "明日は雨！", "本当?", "終わり"]
    assert top_ngram_frac(["a", "b", "a", "b"], 2) == 2 * 2 / 4  # words


def test_swallow_distinct_is_a_named_option():
    text = "".join("あいうえお" + uniq(1, i) for i in range(4)) + uniq(76, 10)
    gopher, distinct = JaQualityConfig(**SWALLOW), JaQualityConfig(**SWALLOW, dup_ngram_definition="swallow_distinct")
    assert ja_metrics(text, gopher)["dup_ngram"][0] == pytest.approx(0.15)
    assert ja_metrics(text, distinct)["dup_ngram"][0] == pytest.approx(1 / 93)  # 1 repeated of 93 distinct 5-grams


def test_ng_list_is_extendable(tmp_path):
    extra = tmp_path / "ng.txt"
    extra.write_text("独自語\n", encoding="utf-8")
    text = "独自語" + uniq(57)
    assert not fails(text, "ng_frac")
    assert fails(text, "ng_frac", ng_words_file=str(extra))


def test_host_block_list():
    assert host_blocked("https://hayabusa.5ch.net/test/read.cgi/x", ["5ch.net"])
    assert host_blocked("https://ja.wikipedia.org/wiki/X", ["wikipedia.org"])
    assert not host_blocked("https://not5ch.net/", ["5ch.net"])
    assert not host_blocked("", ["5ch.net"])


EN_GOOD = "\n".join([
    "The old bridge was built in 1820 by farmers who needed a faster way to reach the market.",
    "For decades it carried carts, cattle and, later, the first motor cars of the valley.",
    "A flood in 1911 washed away two of its arches, and the town voted to rebuild them in stone.",
    "Today the bridge is closed to traffic and serves as a quiet place for walkers and anglers.",
    "Local historians have collected letters, photographs and maps that tell its long story.",
    "Their small museum opens on weekends during the summer and welcomes school groups.",
])


def test_en_good_passes_all_rules():
    cfg = EnQualityConfig()
    assert en_failing_rule(en_metrics(EN_GOOD, cfg), cfg) is None


def en_fails(text, rule, **kw):
    cfg = EnQualityConfig(disabled=[r for r in EN_RULES if r != rule], **kw)
    return en_failing_rule(en_metrics(text, cfg), cfg) == rule


@pytest.mark.parametrize("rule, bad", [
    ("word_count", "The cat and the dog."),
    ("stop_words", "\n".join(f"Alpha beta gamma delta epsilon zeta eta theta iota kappa {i}." for i in range(8))),
    ("c4_lorem_ipsum", EN_GOOD + "\nLorem ipsum dolor sit amet."),
    ("c4_curly_bracket", EN_GOOD + "\nfunction() { return 1; }."),
    ("c4_min_sentences", "\n".join(EN_GOOD.split("\n")[:4])),
    ("dup_line_frac", "\n".join(EN_GOOD.split("\n")[:4] + [EN_GOOD.split("\n")[0]] * 4)),
    ("symbol_word_ratio", EN_GOOD + "\n" + "# " * 30),
    ("mean_word_len", "\n".join("a b c d e f g h i j k l m n o p q r s t u v w x y z the and of." for _ in range(3))),
])
def test_en_rules(rule, bad):
    assert not en_fails(EN_GOOD, rule, min_words=50)
    assert en_fails(bad, rule)


def test_normalize_punct_nfkc_whitespace_footer():
    cfg = NormalizeConfig()
    text = "ﾃｽﾄです，本当に．\n\n  ＡＢＣ　１２３  \nCopyright © 2024 Example"
    assert normalize_text(text, cfg) == "テストです、本当に。\nABC 123"
    assert trim_footer(["本文です。", "お問い合わせ", "利用規約"], cfg) == ["本文です。"]
    assert trim_footer(["お問い合わせはこちらまで。"] + [f"本文{i}" for i in range(6)], cfg)[0] == "お問い合わせはこちらまで。"


def test_host_boilerplate_found_across_files(tmp_path):
    import numpy as np

    pages = [(f"メニュー\n本文{i}です。\nCookieを使用しています", f"https://a.example/{i}") for i in range(3)]
    other = ("メニュー\n別サイトの本文。", "https://b.example/")
    files = []
    for k, group in enumerate([pages[:2], pages[2:] + [other]]):  # the host's pages span two files
        path = tmp_path / f"{k}.npy"
        np.save(path, np.array([x for text, url in group for x in sorted(line_keys(text, url))], dtype=np.uint64))
        files.append(str(path))
    found = set(np.concatenate([boilerplate_keys((files, b, 4, 3)) for b in range(4)]).tolist())
    assert found == line_keys("メニュー\nCookieを使用しています", "https://a.example/x")
    assert [strip_boilerplate(t, u, found) for t, u in pages] == [(f"本文{i}です。", 2) for i in range(3)]
    assert strip_boilerplate(*other, found) == (other[0], 0)  # same line, other host: kept


def reference_dup(units, n):
    """datatrove's find_all_duplicate, written plainly: the independent reference."""
    seen, dup, i = set(), 0, 0
    while i <= len(units) - n:
        gram = tuple(units[i:i + n])
        if gram in seen:
            dup += sum(len(u) for u in gram)
            i += n
        else:
            seen.add(gram)
            i += 1
    return dup / max(1, sum(len(u) for u in units))


def reference_top(units, n):
    from collections import Counter

    counts = Counter(tuple(units[i:i + n]) for i in range(len(units) - n + 1))
    gram, count = counts.most_common(1)[0]
    return count * sum(len(u) for u in gram) / sum(len(u) for u in units)


def test_vectorized_ngrams_match_reference():
    import json
    import random

    from orizuru.corpus.quality import ngram_fractions

    rng = random.Random(0)
    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    texts = [json.loads(line)["text"] for line in open(root / "orizuru/data/corpus/aozora_sample.jsonl", encoding="utf-8")][:20]
    texts += ["".join(rng.choice("あいうえおか") for _ in range(rng.randint(5, 300))) for _ in range(30)]
    for text in texts:
        top, dup = ngram_fractions(text)
        assert dup == pytest.approx([reference_dup(text, n) for n in range(5, 11)])
        assert top == pytest.approx([reference_top(text, n) for n in (2, 3, 4)])
        words = text.split("の")
        if len(words) > 12:
            top, dup = ngram_fractions(words)
            assert dup == pytest.approx([reference_dup(words, n) for n in range(5, 11)])
            assert top[0] == pytest.approx(reference_top(words, 2))


def test_shipped_config_equals_defaults():
    from orizuru.config import load_config
    from orizuru.corpus.config import CorpusConfig

    root = __import__("pathlib").Path(__file__).resolve().parents[1]
    shipped = load_config(CorpusConfig, root / "orizuru" / "configs" / "corpus.toml", ["dedup_enabled=false"])
    assert shipped == CorpusConfig(dedup_enabled=False)
