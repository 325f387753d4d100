"""Swallow-style vocabulary expansion: add the Japanese tokens a base (English) tokenizer lacks.

1. Learn a byte-fallback BPE on Japanese text (the base tokenizer's normalizer applied first, so
   the learned pieces are spelled the way the base model sees text).
2. Score every learned piece the base lacks by the tokens it would save on that text:
   frequency under the learned tokenizer x (pieces the base needs for it - 1).
3. Take the best pieces until `add` tokens are used; a piece whose merge parents are missing
   brings them along (they count toward `add`), so every new token is reachable.
4. Append them to the base BPE: new ids after every old id, new merges after every old merge.

Because BPE applies merges in rank order, the expanded tokenizer first does exactly what the
base did and only then applies the new merges: every old id keeps its meaning, and text whose
base encoding contains no new merge pair and no new character encodes to identical ids.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass

from tokenizers import Tokenizer as HFTokenizer

from orizuru.errors import UserError
from orizuru.japanese import is_japanese_char
from orizuru.tokenizer.tokenizer import BYTE_TOKENS, SPECIALS, Tokenizer, train_bpe


@dataclass
class Expansion:
    tokenizer: Tokenizer
    added: list[dict]  # {"token", "id", "freq", "saved"} in id order
    tokens_before: int  # the learning text under the base tokenizer
    tokens_after: int  # ... and under the expanded one


def _learned_parents(learned: HFTokenizer) -> dict[str, tuple[str, str] | None]:
    """Each learned piece -> the merge that makes it (None for single characters)."""
    model = json.loads(learned.to_str())["model"]
    parents: dict[str, tuple[str, str] | None] = dict.fromkeys(model["vocab"])
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        parents[left + right] = (left, right)
    return parents


def expand_vocab(
    base: Tokenizer, texts: list[str], add: int, *, learn_vocab_size: int | None = None, show_progress: bool = True
) -> Expansion:
    """Return `base` plus (at most) `add` Japanese tokens learned on `texts`."""
    if add <= 0:
        raise UserError(f"--add must be positive, got {add}")
    spec = json.loads(base.hf.to_str())
    if spec["model"]["type"] != "BPE":
        raise UserError(f"vocabulary expansion needs a BPE base tokenizer, got {spec['model']['type']}")
    if "ByteLevel" in json.dumps(spec["pre_tokenizer"]):
        # GPT-2 / Llama 3 vocabularies spell text as byte symbols; learned Unicode pieces would never fire
        raise UserError("vocabulary expansion supports SentencePiece-style (byte-fallback) BPE, not byte-level BPE")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError("no Japanese text to learn tokens from: the corpus is empty")
    normalizer = base.hf.normalizer
    normalized = [normalizer.normalize_str(t) for t in texts] if normalizer else texts

    n_fixed = len(SPECIALS) + len(BYTE_TOKENS)
    learn_vocab_size = learn_vocab_size or n_fixed + max(4 * add, 1000)
    learned = train_bpe(normalized, learn_vocab_size, show_progress=show_progress)
    parents = _learned_parents(learned)
    freq = Counter(t for enc in learned.encode_batch(normalized, add_special_tokens=False) for t in enc.tokens)

    old_vocab = base.hf.get_vocab(with_added_tokens=True)
    saved = {}
    for token, parent in parents.items():
        if token in old_vocab or token in SPECIALS or token in BYTE_TOKENS or not any(map(is_japanese_char, token)):
            continue
        saved[token] = freq[token] * (len(base.hf.model.tokenize(token)) - 1)

    chosen: list[str] = []  # parents before children
    present = set(old_vocab)

    def closure(token: str, out: list[str]) -> None:
        if token in present or token in out:
            return
        parent = parents.get(token)
        if parent is not None:
            closure(parent[0], out)
            closure(parent[1], out)
        out.append(token)

    for token in sorted(saved, key=lambda t: (-saved[t], t)):
        if len(chosen) >= add or saved[token] <= 0:
            break
        needed: list[str] = []
        closure(token, needed)
        if needed and len(chosen) + len(needed) <= add:
            chosen += needed
            present.update(needed)

    vocab, merges = spec["model"]["vocab"], spec["model"]["merges"]
    added = []
    for token in chosen:
        new_id = base.vocab_size + len(added)
        vocab[token] = new_id
        parent = parents.get(token)
        if parent is not None:
            merges.append(list(parent) if merges and isinstance(merges[0], list) else " ".join(parent))
        added.append({"token": token, "id": new_id, "freq": freq[token], "saved": saved.get(token, 0)})
    expanded = Tokenizer(
        HFTokenizer.from_str(json.dumps(spec)),
        bos_token=base.bos_token,
        eos_token=base.eos_token,
        pad_token=base.pad_token,
        unk_token=base.unk_token,
    )
    before = sum(len(ids) for ids in base.encode_batch(texts))
    after = sum(len(ids) for ids in expanded.encode_batch(texts))
    return Expansion(expanded, added, before, after)
