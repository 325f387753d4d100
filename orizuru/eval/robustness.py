"""How much a score depends on the prompt: template spread, choice order, calibration.

- Template spread (Mizrahi et al. 2024, Sclar et al. 2024): one score per template, reported as
  mean, min, max and max - min.
- Choice permutations (Zheng et al. 2024): accuracy under each shuffled order and the position
  bias, i.e. how often each position is chosen (uniform for an unbiased model with uniform gold).
- Calibration (RECIPE §7), for tasks with a fixed label set: q = softmax(W p + b) over the label
  probabilities p (the softmax of the per-label log-likelihoods). Contextual calibration (Zhao et
  al. 2021): W = diag(p_cf)^-1, b = 0, p_cf from the content-free input "N/A". Batch calibration
  (Zhou et al. 2024): W = I, b = -mean_x p(y|x) over the evaluated examples. Both are reported
  beside the uncalibrated accuracy, with the expected calibration error of each.
"""

from __future__ import annotations

import numpy as np

from orizuru.eval.metrics import ece

CONTENT_FREE = "N/A"


def spread(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values)),
            "spread": float(max(values) - min(values))}


def stderr_over(values: list[float]) -> float:
    """Standard error of the mean over prompt variants (templates, choice orders): the sample
    standard deviation over the k variants / sqrt(k)."""
    return float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def template_spread(per_template: dict[str, dict[str, float]]) -> dict[str, dict]:
    """{template: {metric: value}} -> {metric: {mean, min, max, spread}}."""
    metrics = next(iter(per_template.values())).keys()
    return {m: spread([scores[m] for scores in per_template.values()]) for m in metrics}


def permutation(n: int, seed: int) -> list[int]:
    """Order in which the n original choices are shown (identity for seed 0)."""
    if seed == 0:
        return list(range(n))
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def position_bias(positions: list[int], n_choices: int) -> list[float]:
    """Fraction of predictions at each shown position."""
    counts = np.bincount(np.asarray(positions, dtype=int), minlength=n_choices)
    return [float(c) for c in counts / max(1, len(positions))]


def label_probs(logprobs: list[list[float]]) -> np.ndarray:
    x = np.asarray(logprobs, dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    p = np.exp(x)
    return p / p.sum(axis=1, keepdims=True)


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def _report(q: np.ndarray, gold: np.ndarray) -> dict:
    pred = q.argmax(axis=1)
    correct = (pred == gold).astype(float)
    return {"acc": float(correct.mean()), "ece": ece(list(q.max(axis=1)), list(correct))}


def calibration(logprobs: list[list[float]], gold: list[int], content_free_logprobs: list[float]) -> dict:
    """Uncalibrated, contextual and batch calibrated accuracy and ECE."""
    p = label_probs(logprobs)
    g = np.asarray(gold)
    p_cf = label_probs([content_free_logprobs])[0]
    contextual = p / p_cf  # W = diag(p_cf)^-1, then normalise (softmax of log W p)
    contextual = contextual / contextual.sum(axis=1, keepdims=True)
    batch = _softmax(p - p.mean(axis=0, keepdims=True))  # W = I, b = -E_x[p(y|x)]
    return {
        "uncalibrated": _report(p, g),
        "contextual": _report(contextual, g),
        "batch": _report(batch, g),
        "p_content_free": [float(v) for v in p_cf],
    }
