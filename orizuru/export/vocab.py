"""An orizuru `tokenizer.json` as llama.cpp's SentencePiece-style ("llama") vocabulary.

Orizuru's tokenizers are Llama 2's kind: "▁" for spaces, the 256 byte tokens <0x00>..<0xFF> as
fallback, `<s>`/`</s>` specials. llama.cpp runs exactly that through its "llama" (SPM) tokenizer:
spaces become "▁", the text is split into characters, and adjacent symbols merge, highest score
first, while their join is a token; whatever is left unknown falls back to byte tokens. (Its "gpt2"
BPE mode needs GPT-2's byte-to-unicode alphabet and splits with a fixed regex that would cut
"である。" apart, so it cannot reproduce these tokenizers.)

A BPE token's score is minus the rank of the merge that makes it, so llama.cpp merges in the
order the tokenizer learned (no token spans a pre-tokenizer boundary, so llama.cpp's lack of one
changes nothing: tests compare the ids). Unigram tokenizers are refused: llama.cpp's unigram mode
has no byte fallback and no pre-tokenizer. Added special tokens are CONTROL (llama.cpp matches them in text when asked to
parse specials, as the chat template's role markers need), other added tokens USER_DEFINED.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import gguf

from orizuru.errors import UserError
from orizuru.tokenizer.tokenizer import Tokenizer

BYTE_RE = re.compile(r"<0x[0-9A-Fa-f]{2}>")


@dataclass
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool  # the normalizer prepends "▁" (SentencePiece's dummy prefix)
    warnings: list[str]


def _scores(model: dict, path: Path) -> dict[str, float]:
    """Per-token score: minus the rank of the BPE merge that makes the token (0 for single characters)."""
    kind = model.get("type")
    if kind == "Unigram":
        # measured on 356 held-out Japanese paragraphs: llama.cpp's "llama" mode (merges by piece
        # score) split 330 differently, its unigram mode ("t5": no byte fallback, no pre-tokenizer) 177
        raise UserError(
            f"{path}: a unigram tokenizer cannot be reproduced by llama.cpp (no byte fallback or pre-tokenizer "
            "in its unigram mode); GGUF export needs a BPE tokenizer ('orizuru tokenizer train --model bpe')"
        )
    if kind != "BPE" or not model.get("byte_fallback"):
        raise UserError(f"{path}: GGUF export needs a byte-fallback BPE tokenizer (Llama style), got a {kind} model"
                        + ("" if kind != "BPE" else " without byte fallback"))
    scores = dict.fromkeys(model["vocab"], 0.0)
    for rank, merge in enumerate(model["merges"]):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        joined = left + right
        if joined in scores and scores[joined] == 0.0:
            scores[joined] = -float(rank + 1)
    return scores


def read_vocab(model_dir: Path, tok: Tokenizer, n_vocab: int) -> Vocab:
    """The GGUF vocabulary of a model directory's tokenizer (`tok`, loaded from it), padded to the embedding's `n_vocab` rows."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{path}: GGUF export needs a tokenizer.json (a SentencePiece tokenizer.model alone is not read)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec["model"]
    scores = _scores(model, path)
    vocab = tok.hf.get_vocab(with_added_tokens=True)
    if len(vocab) > n_vocab:
        raise UserError(f"{path}: {len(vocab)} tokens but the model's embedding has {n_vocab} rows")
    added = {t["content"]: t for t in spec.get("added_tokens", [])}
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    tokens, token_scores, types = [], [], []
    for i in range(n_vocab):
        token = by_id.get(i)
        if token is None:  # embedding rows past the tokenizer (padded vocabularies)
            tokens.append(f"[PAD{i}]")
            token_scores.append(-1e9)
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(token)
        token_scores.append(scores.get(token, 0.0))
        if token == tok.unk_token:
            types.append(gguf.TokenType.UNKNOWN)
        elif token in added:
            types.append(gguf.TokenType.CONTROL if added[token].get("special") else gguf.TokenType.USER_DEFINED)
        elif BYTE_RE.fullmatch(token):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    missing = [f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" not in vocab]
    if missing:
        raise UserError(f"{path}: byte fallback tokens missing ({', '.join(missing[:3])}...); llama.cpp needs all 256")
    warnings, prefix = [], False
    for norm in _flatten(spec.get("normalizer")):
        kind = norm.get("type")
        if kind == "Prepend" and norm.get("prepend") == "▁":
            prefix = True
        elif kind == "Replace" and norm.get("content") == "▁":
            continue  # spaces to "▁": llama.cpp does the same
        elif kind in ("NFKC", "NFC", "NFKD", "NFD", "Precompiled", "Strip", "Replace", "Lowercase"):
            warnings.append(f"the tokenizer's {kind} normalizer has no GGUF equivalent: llama.cpp tokenizes text it would change differently")
    return Vocab(tokens, token_scores, [int(t) for t in types], prefix, warnings)


def _flatten(spec: dict | None) -> list[dict]:
    if not spec:
        return []
    if spec.get("type") == "Sequence":
        return [n for s in spec.get("normalizers", []) for n in _flatten(s)]
    return [spec]
