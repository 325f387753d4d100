"""What a model costs: its parameter count, its training FLOPs per token, and model FLOPs
utilisation (MFU), the share of the accelerator's peak that training actually uses.

Counted from the `ModelConfig` alone (plain arithmetic, no torch), so `orizuru plan` and the
scaling sweep size models without building them; `tests/test_flops.py` checks the count against
the parameters of a real `Llama`. MFU = (model FLOPs per token x tokens per second) / peak FLOP/s,
with the peak of dense bf16 matrix math from the vendor's data sheet. Recomputed activations are
not counted (that is HFU).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from orizuru.model.config import ModelConfig


@dataclass(frozen=True)
class ParamCount:
    """The parameters of `Llama(cfg)`; a tied embedding matrix is one matrix, counted once."""

    total: int
    embedding: int  # the token embedding and the output head (one matrix when tied)

    @property
    def non_embedding(self) -> int:
        """Kaplan et al.'s N: every parameter outside the vocabulary matrices."""
        return self.total - self.embedding


def _filled(cfg: ModelConfig) -> ModelConfig:
    """A validated copy: `validate` fills the derived ffn_dim and head_dim, and the caller's config stays as it was."""
    cfg = dataclasses.replace(cfg)
    cfg.validate()
    return cfg


def count_params(cfg: ModelConfig) -> ParamCount:
    c = _filled(cfg)
    attention = c.dim * c.head_dim * 2 * (c.n_heads + c.n_kv_heads)  # q and o; k and v (GQA: fewer kv heads)
    layer = attention + 3 * c.dim * c.ffn_dim + 2 * c.dim  # + SwiGLU's gate, up, down + two RMSNorms (no biases)
    embedding = c.vocab_size * c.dim * (1 if c.tie_embeddings else 2)
    return ParamCount(total=c.n_layers * layer + c.dim + embedding, embedding=embedding)  # + the final norm


def flops_per_token(cfg: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token: 6 x (parameters in matmuls) + 12 x layers x heads x head_dim x seq_len.

    The input embedding is a lookup, not a matmul, so an untied one is left out (a tied one is the
    output head's matrix); the norms' weights stay in (negligible). The attention term is the score
    and value products (PaLM appendix B / nanoGPT).
    """
    c = _filled(cfg)
    matmul = count_params(c).total - (0 if c.tie_embeddings else c.vocab_size * c.dim)
    return 6 * matmul + 12 * c.n_layers * c.n_heads * c.head_dim * seq_len


# dense (no sparsity) bf16 tensor-core peak, FLOP/s, per GPU
PEAK_BF16_FLOPS = {
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
}


def peak_flops(device_name: str) -> float | None:
    """Peak bf16 FLOP/s for a `torch.cuda.get_device_name()` string, or None when unknown.

    An H100 without "PCIe" or "NVL" in its name is the SXM part (e.g. "NVIDIA H100 80GB HBM3").
    """
    name = device_name.upper()
    if "GH200" in name:
        return PEAK_BF16_FLOPS["GH200"]
    if "H200" in name:
        return PEAK_BF16_FLOPS["H200"]
    if "H100" in name:
        if "PCIE" in name:
            return PEAK_BF16_FLOPS["H100 PCIe"]
        return PEAK_BF16_FLOPS["H100 NVL" if "NVL" in name else "H100 SXM"]
    for key in ("A100", "L40S"):
        if key in name:
            return PEAK_BF16_FLOPS[key]
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float, n_gpus: int = 1) -> float:
    """Fraction of peak (0..1): achieved model FLOP/s over the peak of all `n_gpus` together."""
    if peak <= 0 or n_gpus <= 0:
        raise ValueError("peak FLOP/s and n_gpus must be positive")
    return flops_per_token * tokens_per_s / (peak * n_gpus)
