"""Does the demo model write Japanese? Two figures computed from its own continuations.

- common-character share: of the sampled characters (whitespace aside), the fraction among the
  3,000 most frequent characters of the shipped Japanese text (Aozora, Wikipedia). Byte-fallback
  salad shows up as rare kanji and drops it.
- distinct 4-grams: distinct character 4-grams / all character 4-grams of a continuation, averaged
  over prompts. A greedy loop ("その頃、その頃、…") scores near 1/period; free text near 1.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import lru_cache

from orizuru.resources import DATA


@lru_cache(maxsize=4)
def common_chars(k: int = 3000) -> frozenset[str]:
    """The k most frequent non-space characters of the shipped Japanese text (ties by code point)."""
    counts: Counter[str] = Counter()
    for name in ("aozora.jsonl", "wiki.jsonl"):
        with open(DATA / "sample" / name, encoding="utf-8") as f:
            for line in f:
                counts.update(json.loads(line)["text"])
    ranked = sorted(((c, n) for c, n in counts.items() if not c.isspace()), key=lambda cn: (-cn[1], ord(cn[0])))
    return frozenset(c for c, _ in ranked[:k])


def common_char_share(texts: list[str], k: int = 3000) -> float:
    common = common_chars(k)
    chars = [c for t in texts for c in t if not c.isspace()]
    return sum(c in common for c in chars) / max(1, len(chars))


def distinct_4grams(texts: list[str]) -> float:
    shares = []
    for t in texts:
        grams = [t[i : i + 4] for i in range(len(t) - 3)]
        if grams:
            shares.append(len(set(grams)) / len(grams))
    return sum(shares) / max(1, len(shares))
