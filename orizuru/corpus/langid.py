"""Language identification: Japanese from script statistics, everything else with py3langid.

Kana (hiragana/katakana) appears in virtually every Japanese sentence and in no other language,
so a kana share of the letters decides Japanese in one pass over the text, with no model.
Other languages go to py3langid, whose model ships inside the package (no download).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from orizuru.corpus.config import LangConfig
from orizuru.japanese import HIRAGANA, KATAKANA, count_in

# not letters: ASCII other than a-z/A-Z, Latin-1 symbols, general punctuation, CJK symbols and
# punctuation (、。「」 ...), full-width ASCII punctuation and digits
_NON_LETTER = [(0x80, 0xBF), (0x2000, 0x206F), (0x3000, 0x3004), (0x3008, 0x303F), (0xFF00, 0xFF20)]


def kana_fraction(text: str) -> float:
    """(hiragana + katakana) / letters, counted on code points with numpy (one pass, no regex)."""
    cp = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    folded = cp | 0x20
    non_letters = np.count_nonzero((cp < 0x80) & ~((folded >= 0x61) & (folded <= 0x7A)))
    non_letters += count_in(cp, _NON_LETTER)
    kana = count_in(cp, HIRAGANA + KATAKANA)
    letters = len(cp) - non_letters
    return float(kana / letters) if letters > 0 else 0.0


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier  # model ships in the package

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect(text: str, cfg: LangConfig) -> tuple[str, float]:
    """(language code, score). Japanese: score = kana fraction; others: py3langid probability."""
    frac = kana_fraction(text)
    if frac >= cfg.min_kana_frac:
        return "ja", round(frac, 4)
    lang, prob = _identifier().classify(text[:5000])
    if lang == "ja":  # kanji-only text without kana is not Japanese prose
        lang = "zh"
    return lang, round(float(prob), 4)
