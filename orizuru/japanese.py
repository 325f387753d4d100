"""What counts as a Japanese character: one definition for the corpus rules, language detection,
tokenizer reports, vocabulary expansion and the contamination check.

Code-point ranges, inclusive. Hiragana, katakana and kanji are Swallow's classes (its quality
rules count them); `JAPANESE` adds the marks that occur only in Japanese text.
"""

from __future__ import annotations

import re

import numpy as np

Ranges = list[tuple[int, int]]

HIRAGANA: Ranges = [(0x3041, 0x3096)]
KATAKANA: Ranges = [(0x30A1, 0x30FA)]
KANJI: Ranges = [(ord(c), ord(c)) for c in "々〇〻"] + [(0x3400, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x3FFFF)]
# voicing and iteration marks, ー・ヽヾヿ, katakana phonetic extensions, half-width katakana
KANA_MARKS: Ranges = [(0x3099, 0x309F), (0x30FB, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F)]
JAPANESE: Ranges = HIRAGANA + KATAKANA + KANA_MARKS + KANJI

JAPANESE_RE = re.compile("[" + "".join(f"{chr(lo)}-{chr(hi)}" for lo, hi in JAPANESE) + "]")


def count_in(cp: np.ndarray, ranges: Ranges) -> int:
    """How many of the code points `cp` fall in `ranges` (vectorised: the corpus rules run it per document)."""
    return int(sum(np.count_nonzero((cp >= lo) & (cp <= hi)) for lo, hi in ranges))


def _in(ch: str, ranges: Ranges) -> bool:
    o = ord(ch)
    return any(lo <= o <= hi for lo, hi in ranges)


def is_japanese_char(ch: str) -> bool:
    """Kana, kana marks or kanji."""
    return _in(ch, JAPANESE)


def is_kanji(ch: str) -> bool:
    return _in(ch, KANJI)
