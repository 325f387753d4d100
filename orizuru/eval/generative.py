"""Generative scoring: few-shot prompts, greedy (or sampled) decoding cut at stop strings, then
exact match / character F1 on NFKC-normalised text, numeric match for chains of thought
(self-consistency: the majority answer over k samples, maj1@k) and pass@k for code.
"""

from __future__ import annotations

from orizuru.errors import UserError
from orizuru.eval import metrics as M
from orizuru.model.generate import generate


def cut_at_stop(text: str, stop: list[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
    return text[:cut]


def complete(
    model,
    tokenizer,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    stop: list[str],
    temperature: float = 0.0,
    seed: int | None = None,
    batch_size: int = 8,
) -> list[str]:
    """Decoded continuations of token prompts, each cut at its first stop string."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        group = order[start : start + batch_size]
        new = generate(
            model,
            [prompts[i] for i in group],
            max_new_tokens,
            temperature=temperature,
            eos_id=tokenizer.eos_id,
            stop_strings=stop,
            tokenizer=tokenizer,
            seed=None if seed is None else seed + start,
        )
        for i, ids in zip(group, new):
            out[i] = cut_at_stop(tokenizer.decode(ids), stop)
    return out


def extract_answer(text: str, how: str):
    """first_line: the stripped text; last_number: the chain of thought's final number."""
    if how == "last_number":
        return M.last_number(text)
    return text.strip()


def score_answer(pred, gold: list[str], metric_names: list[str]) -> dict[str, float]:
    out = {}
    for name in metric_names:
        if name == "accuracy":  # numeric match
            out[name] = float(pred is not None and any(abs(pred - float(g)) < 1e-6 for g in gold))
        elif name == "exact_match":
            out[name] = M.exact_match(str(pred), gold)
        elif name == "char_f1":
            out[name] = M.char_f1(str(pred), gold)
        elif name == "fuzzy_char_f1":
            out[name] = M.fuzzy_char_f1(str(pred), gold)
        else:
            raise UserError(f"unknown generative metric '{name}' (known: accuracy, exact_match, char_f1, fuzzy_char_f1)")
    return out


def vote(answers: list):
    """Self-consistency: the most common answer over the samples (ties: the earliest), maj1@k."""
    return M.majority(answers)
