"""`ModelConfig`: the LLaMA architecture's hyper-parameters (names map 1:1 to HF `LlamaConfig`)."""

from __future__ import annotations

from dataclasses import dataclass

from orizuru.config import ConfigError


@dataclass
class ModelConfig:
    """LLaMA architecture hyper-parameters (names map 1:1 to HF LlamaConfig in checkpoint.py)."""

    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    ffn_dim: int | None = None  # None: LLaMA's 2/3 * 4 * dim, rounded up to a multiple of 64
    vocab_size: int = 8192
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    head_dim: int | None = None  # None: dim // n_heads
    rope_scaling: dict | None = None  # HF rope_scaling table, e.g. Llama 3.1's {"rope_type": "llama3", ...}
    init_std: float = 0.02

    def validate(self) -> None:
        for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "max_seq_len"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"config key 'model.{key}' must be positive, got {getattr(self, key)}")
        if self.head_dim is None and self.dim % self.n_heads:
            raise ConfigError(
                f"config key 'model.n_heads' ({self.n_heads}) must divide 'model.dim' ({self.dim})"
            )
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"config key 'model.n_kv_heads' ({self.n_kv_heads}) must divide 'model.n_heads' ({self.n_heads})"
            )
        if self.ffn_dim is None:
            self.ffn_dim = -(-int(8 * self.dim / 3) // 64) * 64
        if self.ffn_dim <= 0:
            raise ConfigError(f"config key 'model.ffn_dim' must be positive, got {self.ffn_dim}")
        if self.head_dim is None:
            self.head_dim = self.dim // self.n_heads
        if self.head_dim % 2:
            raise ConfigError(f"head dimension ({self.head_dim}) must be even for RoPE ('model.head_dim')")
        if self.rope_theta <= 0 or self.norm_eps <= 0 or self.init_std <= 0:
            raise ConfigError("config keys 'model.rope_theta', 'model.norm_eps', 'model.init_std' must be positive")
