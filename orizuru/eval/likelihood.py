"""Log-likelihood of a continuation given a context: log P(choice | context), summed over tokens.

Token boundary: the context is tokenized alone (with BOS, as in training) and so is the
concatenation. Usually the concatenation starts with exactly the context's tokens (the
pre-tokenizer splits at "：", "\n", "。" and spaces, where our prompts end), and the continuation is
the rest of the concatenation: the choice is scored in the tokenization the model saw in training.
When a BPE merge crosses the boundary (the concatenation's tokens do not start with the context's),
we score `context tokens + tokens of the continuation encoded alone` instead: still exactly
log P(continuation | context), for a slightly unnatural split of the continuation. Such requests
are counted (`boundary_merges` in results.json) so the effect is visible.

Shared contexts: the choices of one question share its context, so the context runs through the
model once into a KV cache, the cache is copied once per choice and all choices run as one batch
on top of it. This is the same computation as one forward pass over context+choice (the same
positions, the same causal attention), with the context's cost paid once instead of once per choice
(5x fewer context tokens on JCommonsenseQA).

Batching: distinct contexts are sorted by length and packed under a token budget. Contexts are
left-padded with an attention mask (positions skip the padding, as in HF), choices right-padded
(causal attention never looks right). Batched scores equal unbatched ones up to float rounding;
the tests check 1e-4 against a plain forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from orizuru.model.llama import KVCache


@dataclass
class Encoded:
    context: list[int]
    continuation: list[int]
    boundary_merge: bool = False  # a merge crossed the context/continuation boundary
    truncated: int = 0  # context tokens dropped from the left to fit the model


def encode_pair(tokenizer, context: str, continuation: str, max_len: int | None = None, truncate: str = "left") -> Encoded:
    """Token ids of (context, continuation) with the exact boundary rule described above."""
    ctx = tokenizer.encode(context, bos=True)
    full = tokenizer.encode(context + continuation, bos=True)
    if full[: len(ctx)] == ctx and len(full) > len(ctx):
        enc = Encoded(ctx, full[len(ctx) :])
    else:
        enc = Encoded(ctx, tokenizer.encode(continuation), boundary_merge=True)
    if max_len is not None:  # the continuation is scored whole: the context gives way
        enc.context, enc.truncated = tokenizer.encode_prompt(enc.context, max_len - len(enc.continuation), truncate == "left")
    return enc


def batches(sizes: list[tuple[int, int]], batch_tokens: int, max_batch: int = 64) -> list[list[int]]:
    """Group indices of (context length, choice tokens) longest-context-first so that each batch's
    padded context tokens plus its padded choice tokens stay within `batch_tokens`, and its context
    padding within a quarter of it (one long context must not pad a batch of short ones)."""
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i][0])
    out: list[list[int]] = []
    for i in order:
        if out and len(out[-1]) < max_batch:
            group = out[-1] + [i]
            width = sizes[group[0]][0]
            padding = len(group) * width - sum(sizes[j][0] for j in group)
            if len(group) * width + sum(sizes[j][1] for j in group) <= batch_tokens and padding <= batch_tokens // 4:
                out[-1].append(i)
                continue
        out.append([i])
    return out


def length_buckets(lengths: list[int]) -> list[list[int]]:
    """Positions grouped by length so that a bucket's longest is at most twice its shortest
    (1, 2, 3-4, 5-8, ...): few forward passes, little padding."""
    out: dict[int, list[int]] = {}
    for n, k in enumerate(lengths):
        out.setdefault(max(0, k - 1).bit_length(), []).append(n)
    return [out[b] for b in sorted(out)]


@torch.inference_mode()
def score(model, requests: list[Encoded], *, batch_tokens: int = 4096, pad_id: int = 0) -> list[dict]:
    """Per request: `logprob` (sum over continuation tokens), `tokens`, `greedy` (all argmax)."""
    device = model.lm_head.weight.device
    contexts: dict[tuple, list[int]] = {}  # distinct context -> indices of its requests
    for i, r in enumerate(requests):
        contexts.setdefault(tuple(r.context), []).append(i)
    keys = list(contexts)
    sizes = [(len(k), len(contexts[k]) * max(len(requests[i].continuation) for i in contexts[k])) for k in keys]
    results: list[dict] = [{} for _ in requests]
    for group in batches(sizes, batch_tokens):
        ctx = [keys[g] for g in group]
        rows = [i for g in group for i in contexts[keys[g]]]  # one row per request
        Lc = len(ctx[0])
        Lk = max(len(requests[i].continuation) for i in rows)
        ids = torch.full((len(ctx), Lc), pad_id, dtype=torch.long)
        mask = torch.zeros(len(ctx), Lc + Lk, dtype=torch.long)
        for n, c in enumerate(ctx):  # left padding
            ids[n, Lc - len(c) :] = torch.tensor(c)
            mask[n, Lc - len(c) :] = 1
        mask[:, Lc:] = 1  # choice positions (right padding needs no mask under causal attention)
        mask = mask.to(device)
        cache = KVCache.empty(model.cfg, len(ctx), Lc + Lk, device, model.model.embed_tokens.weight.dtype)
        # final-norm hidden states only: the vocabulary projection (half the FLOPs of a small model)
        # runs just where a log-probability is needed, the context's last position and the choice tokens
        last = model(ids.to(device), attention_mask=mask[:, :Lc], cache=cache, return_hidden=True)[:, -1]  # predicts choice token 0
        # one cache row per choice, then the choices in buckets of similar token length (right-padded
        # to the bucket's longest: choices are short and uneven, so one padded batch wasted most of its rows)
        owners = [n for n, g in enumerate(group) for _ in contexts[keys[g]]]
        for bucket in length_buckets([len(requests[i].continuation) for i in rows]):
            idx = torch.tensor([owners[n] for n in bucket], device=device)
            sub = KVCache(cache.k[:, idx].contiguous(), cache.v[:, idx].contiguous(), cache.length)
            picked = [rows[n] for n in bucket]
            Lb = max(len(requests[i].continuation) for i in picked)
            cont = torch.full((len(picked), Lb), pad_id, dtype=torch.long)
            for n, i in enumerate(picked):
                cont[n, : len(requests[i].continuation)] = torch.tensor(requests[i].continuation)
            hidden = model(cont.to(device), attention_mask=mask[idx], cache=sub, return_hidden=True)
            # token j of a choice is predicted at choice position j-1 (j = 0: the context's last position)
            hidden = torch.cat([last[idx, None], hidden[:, :-1]], dim=1)
            lengths = torch.tensor([len(requests[i].continuation) for i in picked], device=device)
            real = torch.arange(Lb, device=device)[None] < lengths[:, None]  # (rows, Lb): not padding
            targets = cont.to(device)[real]
            lp = F.log_softmax(model.lm_head(hidden[real]).float(), dim=-1)  # only the real choice tokens
            token_lp = lp.gather(1, targets[:, None])[:, 0]
            hit = (lp.argmax(-1) == targets).float()
            starts = torch.cumsum(lengths, 0) - lengths
            sums = torch.zeros(len(picked), dtype=torch.float64, device=device)
            sums.index_add_(0, real.nonzero()[:, 0], token_lp.double())
            for n, i in enumerate(picked):
                k = int(lengths[n])
                results[i] = {"logprob": float(sums[n]), "tokens": k,
                              "greedy": bool(hit[starts[n] : starts[n] + k].all())}
    return results
