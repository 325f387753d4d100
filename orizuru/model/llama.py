"""The LLaMA decoder ("Transformer++"): RMSNorm pre-norm, SwiGLU, RoPE, GQA, no biases.

Module and parameter names follow Hugging Face's LlamaForCausalLM exactly
(`model.layers.0.self_attn.q_proj.weight`, ...), so a checkpoint is our `state_dict`
written as safetensors, with no renaming or permutation (see checkpoint.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from orizuru.model.config import ModelConfig


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g, computed in float32 like the reference.

    `F.rms_norm` is one fused kernel where the textbook form is five elementwise passes
    (pow, mean, add, rsqrt, mul) forward and more backward.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # reduced precision: normalise in float32, round, then scale (as transformers does)
        return self.weight * F.rms_norm(x.float(), self.weight.shape, None, self.eps).to(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """Inverse frequencies theta^(-2i/d), with Llama 3's long-context rescaling when configured."""
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / float(scaling["factor"])
    if kind == "llama3":
        factor = float(scaling["factor"])
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: default, linear, llama3)")


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's half-split rotary convention, x * cos + rotate_half(x) * sin, where rotate_half(x) =
    (-x2, x1). `sin` comes from `Llama.rope` with the sign of its first half already flipped, so
    rotate_half becomes a plain roll: three kernels instead of six, and the same values.
    x: (B, H, T, D); cos/sin: (B or 1, 1, T, D)."""
    return torch.addcmul(x * cos, x.roll(x.size(-1) // 2, -1), sin)


@dataclass
class KVCache:
    """Preallocated keys/values for decoding: (n_layers, B, n_kv_heads, max_len, head_dim)."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0  # positions filled so far (shared by the whole batch)
    # Serving (continuous batching): each row of the cache is a slot at its own length, and a
    # forward's batch rows are the cache rows `rows` (None: all; a slice: contiguous rows, read
    # as views without a copy). See `slots` and `write_rows`.
    lengths: torch.Tensor | None = None
    rows: torch.Tensor | slice | None = None

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> "KVCache":
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        return cls(torch.empty(shape, device=device, dtype=dtype), torch.empty(shape, device=device, dtype=dtype))

    @classmethod
    def slots(cls, cfg: ModelConfig, batch: int, max_len: int, device, dtype) -> "KVCache":
        """`batch` independent rows with per-row lengths, zero-filled: keys past a row's length are
        masked out, and a zero (unlike uninitialised memory) can never be NaN under the mask."""
        shape = (cfg.n_layers, batch, cfg.n_kv_heads, max_len, cfg.head_dim)
        zeros = lambda: torch.zeros(shape, device=device, dtype=dtype)  # noqa: E731
        return cls(zeros(), zeros(), lengths=torch.zeros(batch, dtype=torch.long, device=device))

    def row_starts(self) -> torch.Tensor:
        """Filled length of each row the current forward uses, (B,)."""
        return self.lengths if self.rows is None else self.lengths[self.rows]

    def write_rows(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store new keys/values (B, H, T, D) at each row's own length; return the rows' keys and
        values up to the longest of them (B, H, S, D). Lengths advance in `Llama.forward`."""
        start, T = self.row_starts(), k.size(2)
        rows = self.rows
        if rows is None or isinstance(rows, slice):
            rows = torch.arange(k.size(0), device=k.device) + (0 if rows is None else rows.start or 0)
        pos = start[:, None] + torch.arange(T, device=k.device)
        self.k[layer][rows[:, None], :, pos] = k.transpose(1, 2)
        self.v[layer][rows[:, None], :, pos] = v.transpose(1, 2)
        span = int(start.max()) + T
        if self.rows is None or isinstance(self.rows, slice):  # a view: no copy of the rows' keys
            view = slice(None) if self.rows is None else self.rows
            return self.k[layer, view, :, :span], self.v[layer, view, :, :span]
        return self.k[layer, self.rows, :, :span], self.v[layer, self.rows, :, :span]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask=None, cache: KVCache | None = None):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None and cache.lengths is not None:
            k, v = cache.write_rows(self.layer, k, v)
        elif cache is not None:
            start = cache.length
            cache.k[self.layer, :, :, start : start + T] = k
            cache.v[self.layer, :, :, start : start + T] = v
            k = cache.k[self.layer, :, :, : start + T]
            v = cache.v[self.layer, :, :, : start + T]
        gqa = self.n_kv_heads != self.n_heads
        if mask is None:
            # no padding and no cached prefix: the fused causal kernel (flash attention on GPU)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.down_proj = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, mask=None, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """HF's `LlamaModel`: embeddings, blocks, final norm (named `model.*` in checkpoints)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


def document_mask(doc_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions within each document (B, T) and the causal same-document mask (B, 1, T, T)."""
    T = doc_ids.size(1)
    idx = torch.arange(T, device=doc_ids.device).expand_as(doc_ids)
    new = torch.ones_like(doc_ids, dtype=torch.bool)
    new[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    starts = torch.where(new, idx, torch.zeros_like(idx)).cummax(-1).values
    causal = torch.ones(T, T, dtype=torch.bool, device=doc_ids.device).tril()
    return idx - starts, (causal & (doc_ids[:, :, None] == doc_ids[:, None, :]))[:, None]


class Llama(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.ffn_dim is None or cfg.head_dim is None:
            cfg.validate()
        self.cfg = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.activation_checkpointing = False

    # -------------------------------------------------------------- init

    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """Normal(0, std) everywhere; residual output projections scaled by 1/sqrt(2 * n_layers)."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=self.lm_head.weight.device).manual_seed(seed)
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.ndim == 1:  # norm gains
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.cfg.n_layers), generator=gen)
            else:
                p.normal_(0.0, std, generator=gen)
        self.inv_freq.copy_(rope_inv_freq(self.cfg).to(self.inv_freq.device))

    # -------------------------------------------------------------- forward

    def rope(self, positions: torch.Tensor, dtype: torch.dtype):
        """cos and signed sin (see apply_rope) for integer positions (B or 1, T) -> (B or 1, 1, T,
        head_dim), computed in float32."""
        freqs = positions[..., None].float() * self.inv_freq.float()
        cos, sin = freqs.cos(), freqs.sin()
        return torch.cat((cos, cos), -1)[:, None].to(dtype), torch.cat((-sin, sin), -1)[:, None].to(dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        attention_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        loss_reduction: str = "mean",
        last_only: bool = False,
        return_hidden: bool = False,
        doc_ids: torch.Tensor | None = None,
    ):
        """Logits (B, T, V), or the cross-entropy loss when `targets` is given (-100 = ignore).

        last_only: logits of the last position only, (B, 1, V): all that decoding needs, and
        it spares the vocabulary projection of every prompt token.

        return_hidden: the final-norm hidden states (B, T, dim) instead of logits, for heads other
        than the LM's (a value or reward head) and for projecting only the positions that need it.

        attention_mask: (B, S) with 1 for real tokens and 0 for (left) padding, where S counts the
        cached prefix plus the new tokens. Positions then skip the padding, as in HF.

        doc_ids: (B, T) document index of each token of packed training sequences (no cache, no
        padding): attention stays inside each document and positions restart at its first token,
        what HF computes for each document alone (see `document_mask`).
        """
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if attention_mask is not None:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past : past + T]
        else:  # the same for every row: compute RoPE once and broadcast it
            positions = torch.arange(past, past + T, device=input_ids.device)[None]
        mask = None
        if cache is not None and cache.lengths is not None:  # slots: each row at its own position
            positions = cache.row_starts()[:, None] + torch.arange(T, device=input_ids.device)
            span = int(positions[:, -1].max()) + 1
            mask = (torch.arange(span, device=input_ids.device) <= positions[:, :, None])[:, None]
        elif attention_mask is not None or (past > 0 and T > 1):
            causal = torch.ones(T, past + T, dtype=torch.bool, device=input_ids.device).tril(past)
            mask = causal[None, None]
            if attention_mask is not None:
                mask = mask & attention_mask[:, None, None, : past + T].bool()
                # a fully padded query row would give NaN; let it attend to itself only
                own = torch.arange(T, device=input_ids.device)
                diag = torch.zeros(T, past + T, dtype=torch.bool, device=input_ids.device)
                diag[own, past + own] = True
                mask = mask | diag[None, None]
        if doc_ids is not None:
            positions, mask = document_mask(doc_ids)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.rope(positions, x.dtype)
        for block in self.model.layers:
            if self.activation_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, mask, cache, use_reentrant=False)
            else:
                x = block(x, cos, sin, mask, cache)
        if cache is not None and cache.lengths is not None:
            cache.lengths[cache.rows if cache.rows is not None else slice(None)] += T
        elif cache is not None:
            cache.length += T
        if last_only:
            x = x[:, -1:]
        x = self.model.norm(x)
        if return_hidden:
            return x
        logits = self.lm_head(x)
        if targets is None:
            return logits
        return F.cross_entropy(
            logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100, reduction=loss_reduction
        )
