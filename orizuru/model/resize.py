"""`orizuru model resize`: grow a model's embedding and output matrices for an expanded vocabulary.

Each new token's row is the mean of the rows of the pieces its text splits into under the old
tokenizer (Swallow; RECIPE.md §2), for the input embedding and, when untied, for the output
head too, so the new token starts out meaning roughly what its pieces meant together. With
`--init random` new rows are drawn from N(0, model.init_std) instead. Old rows are copied
bit for bit, so logits over the old vocabulary for text without new tokens do not change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from orizuru.errors import UserError
from orizuru.model.checkpoint import load_model, read_hf_config, save_model
from orizuru.model.llama import Llama
from orizuru.tokenizer.tokenizer import Tokenizer


def new_token_sources(old: Tokenizer, new: Tokenizer) -> dict[int, list[int]]:
    """Each id `new` adds -> the old ids its text encodes to. `new` must extend `old` id for id."""
    if new.vocab_size < old.vocab_size:
        raise UserError(f"the new tokenizer has {new.vocab_size} tokens, fewer than the model's tokenizer ({old.vocab_size})")
    for i in range(old.vocab_size):
        if old.hf.id_to_token(i) != new.hf.id_to_token(i):
            raise UserError(
                f"the new tokenizer does not extend the model's: id {i} is {old.hf.id_to_token(i)!r} in the model's "
                f"tokenizer and {new.hf.id_to_token(i)!r} in the new one (expand with 'orizuru tokenizer expand')"
            )
    sources = {}
    for i in range(old.vocab_size, new.vocab_size):
        piece = new.hf.id_to_token(i)
        # the model, without normalizer or pre-tokenizer: the piece as it appears inside a word
        ids = [t.id for t in old.hf.model.tokenize(piece)]
        if not ids:
            raise UserError(f"new token {piece!r} (id {i}) has no encoding under the model's tokenizer")
        sources[i] = ids
    return sources


@torch.no_grad()
def resize_vocab(
    model: Llama,
    sources: dict[int, list[int]],
    vocab_size: int,
    *,
    init: Literal["mean", "random"] = "mean",
    seed: int = 0,
) -> Llama:
    """Grow `model` in place to max(its rows, vocab_size) rows; rows in `sources` get their init."""
    old_emb = model.model.embed_tokens.weight
    old_rows, dim = old_emb.shape
    rows = max(old_rows, vocab_size)
    gen = torch.Generator().manual_seed(seed)

    def grow(old: torch.Tensor) -> torch.Tensor:
        out = torch.empty(rows, dim, dtype=old.dtype, device=old.device)
        out[:old_rows] = old
        for i, ids in sources.items():
            if init == "mean":
                out[i] = old[ids].float().mean(0).to(old.dtype)
            else:
                out[i] = (torch.randn(dim, generator=gen) * model.cfg.init_std).to(old.dtype)
        return out

    model.model.embed_tokens.weight = nn.Parameter(grow(old_emb))
    model.model.embed_tokens.num_embeddings = rows
    if model.cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    else:
        model.lm_head.weight = nn.Parameter(grow(model.lm_head.weight))
    model.lm_head.out_features = rows
    model.cfg.vocab_size = rows
    return model


def resize_model_dir(model_dir: str | Path, tokenizer_dir: str | Path, output: str | Path, *, init: str = "mean", seed: int = 0) -> dict:
    """Load an HF Llama directory, grow it for the tokenizer in `tokenizer_dir`, write it to `output`."""
    old, new = Tokenizer.load(model_dir), Tokenizer.load(tokenizer_dir)
    hf_cfg = read_hf_config(model_dir)
    saved_as = hf_cfg.get("torch_dtype") or hf_cfg.get("dtype")  # keep the checkpoint's precision on disk
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(saved_as, torch.float32)
    model = load_model(model_dir)
    if model.cfg.vocab_size < old.vocab_size:
        raise UserError(f"{model_dir}: the model has {model.cfg.vocab_size} embedding rows but its tokenizer {old.vocab_size} tokens")
    sources = new_token_sources(old, new)
    rows_before = model.cfg.vocab_size
    resize_vocab(model, sources, new.vocab_size, init=init, seed=seed)
    save_model(model, output, tokenizer=new, dtype=dtype)
    return {"rows_before": rows_before, "rows_after": model.cfg.vocab_size, "new_tokens": len(sources), "init": init}


