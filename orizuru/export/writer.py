"""A Hugging Face Llama directory as one GGUF file (llama.cpp's format), as convert_hf_to_gguf.py writes it.

Tensors get llama.cpp's names (`gguf`'s own HF-to-GGUF name map); the query and key projections
are permuted from HF's half-split rotary layout to GGML's interleaved pairs, per head (per KV head
for keys under GQA). Norm gains stay float32; matrices are written in the asked type (q8_0 only
where a row splits into 32-value blocks, else f16, as the converter does). Llama 3 / linear rope
scaling travels as the `rope_freqs` tensor: the factor dividing each base frequency.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import torch

from orizuru.errors import UserError
from orizuru.export.vocab import Vocab, read_vocab
from orizuru.files import atomic_write
from orizuru.model.checkpoint import generation_ids, load_model, model_config_from_hf, read_hf_config
from orizuru.model.config import ModelConfig
from orizuru.model.llama import rope_inv_freq
from orizuru.tokenizer.tokenizer import Tokenizer

FILE_TYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, gguf.GGMLQuantizationType.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, gguf.GGMLQuantizationType.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, gguf.GGMLQuantizationType.Q8_0),
}


def permute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF's rotate-half rows (x1..x_{d/2}, y1..y_{d/2}) per head -> GGML's pairs (x1, y1, x2, y2, ...)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our (HF-named) state dict -> GGUF tensor names, Q/K permuted, the tied head dropped."""
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.n_layers)
    out = {}
    for name, t in state.items():
        if cfg.tie_embeddings and name == "lm_head.weight":
            continue  # llama.cpp reuses token_embd when `output` is absent
        if name.endswith("self_attn.q_proj.weight"):
            t = permute_rope(t, cfg.n_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            t = permute_rope(t, cfg.n_kv_heads)
        new = names.get_name(name, try_suffixes=(".weight",))
        if new is None:
            raise UserError(f"tensor {name}: no GGUF name for it in the llama architecture")
        out[new] = t
    if cfg.rope_scaling:
        base = ModelConfig(**{**cfg.__dict__, "rope_scaling": None})
        out[gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"] = rope_inv_freq(base) / rope_inv_freq(cfg)
    return out


def _encode(t: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    data = t.detach().to(torch.float32).cpu().numpy()
    if data.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        return data, gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
        return gguf.quants.quantize(data, qtype), qtype
    return data.astype(np.float16), gguf.GGMLQuantizationType.F16


def _chat_template(model_dir: Path) -> str | None:
    path = model_dir / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (json.JSONDecodeError, AttributeError) as e:
        raise UserError(f"{path}: not a valid tokenizer_config.json ({e})") from None
    return template if isinstance(template, str) else None


def _add_vocab(w: gguf.GGUFWriter, vocab: Vocab, model_dir: Path, tokens: dict[str, int]) -> None:
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(vocab.tokens)
    w.add_token_scores(vocab.scores)
    w.add_token_types(vocab.types)
    ids = generation_ids(model_dir)
    eos = ids.get("eos_token_id", tokens["eos"])
    eos = [eos] if isinstance(eos, int) else list(eos)
    w.add_bos_token_id(ids.get("bos_token_id", tokens["bos"]))
    w.add_eos_token_id(eos[0])
    if len(eos) > 1:  # a chat model stops at its end-of-turn marker too
        w.add_eot_token_id(eos[1])
    if tokens.get("unk") is not None:
        w.add_unk_token_id(tokens["unk"])
    if tokens.get("pad") is not None:
        w.add_pad_token_id(tokens["pad"])
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_add_space_prefix(vocab.add_space_prefix)
    template = _chat_template(model_dir)
    if template is not None:
        w.add_chat_template(template)


def export_gguf(model_dir: str | Path, output: str | Path, dtype: str = "f16", progress: bool = True) -> dict:
    """Write `model_dir` (HF Llama directory with its tokenizer) as the GGUF file `output`, atomically."""
    if dtype not in FILE_TYPES:
        raise UserError(f"--dtype must be one of {', '.join(FILE_TYPES)}, got {dtype!r}")
    model_dir = Path(model_dir)
    # the tokenizer first: a refused one is reported before the weights are read
    n_vocab = model_config_from_hf(read_hf_config(model_dir), str(model_dir / "config.json")).vocab_size
    tok = Tokenizer.load(model_dir)
    vocab = read_vocab(model_dir, tok, n_vocab)
    model = load_model(model_dir, dtype=torch.float32)
    cfg = model.cfg
    file_type, qtype = FILE_TYPES[dtype]
    tensors = gguf_tensors(model.state_dict(), cfg)
    output = Path(output)
    with atomic_write(output, "wb") as f:
        # the writer opens the temporary file by name; atomic_write renames it into place when done
        w = gguf.GGUFWriter(path=f.name, arch=gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        where = model_dir.resolve()
        w.add_name(where.parent.name if where.name == "model" else where.name)  # runs/NAME/model -> NAME
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.dim)
        w.add_block_count(cfg.n_layers)
        w.add_feed_forward_length(cfg.ffn_dim)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(cfg.rope_theta)
        w.add_layer_norm_rms_eps(cfg.norm_eps)
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(file_type)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        special = {"bos": tok.bos_id, "eos": tok.eos_id, "unk": tok.hf.token_to_id(tok.unk_token) if tok.unk_token else None,
                   "pad": tok.hf.token_to_id(tok.pad_token) if tok.pad_token else None}  # fmt: skip
        _add_vocab(w, vocab, model_dir, special)
        for name, t in tensors.items():
            data, kind = _encode(t, qtype)
            w.add_tensor(name, data, raw_dtype=kind)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file(progress=progress)
        w.close()
    size = output.stat().st_size
    return {"output": str(output), "dtype": dtype, "tensors": len(tensors), "tokens": len(vocab.tokens), "bytes": size,
            "warnings": vocab.warnings}  # fmt: skip
