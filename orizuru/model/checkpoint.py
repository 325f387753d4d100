"""Hugging Face Llama directories, both ways: the checkpoint format of every orizuru stage.

A model directory is what `LlamaForCausalLM.save_pretrained` writes: `config.json`,
`model.safetensors` (or shards + `model.safetensors.index.json`), `generation_config.json`,
and the tokenizer files. Our `Llama.state_dict()` already uses HF's names and layout, so
saving is writing it as safetensors and loading is reading it back, with shape checks.
Weights are only ever read through safetensors: pickle (`pytorch_model.bin`) is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from orizuru.config import ConfigError
from orizuru.errors import UserError
from orizuru.files import atomic_dir, write_json
from orizuru.model.config import ModelConfig
from orizuru.model.llama import Llama, rope_inv_freq
from orizuru.tokenizer.tokenizer import BOS, EOS, PAD, SPECIALS, Tokenizer

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
ROPE_TYPES = ("default", "linear", "llama3")
# tensors some exporters add that carry no weights (old HF versions saved RoPE's inv_freq)
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


# ---------------------------------------------------------------- config.json <-> ModelConfig


def _rope(d: dict) -> tuple[float, dict | None]:
    """rope_theta and rope_scaling from either layout: transformers 4 (`rope_theta` +
    `rope_scaling`) or transformers 5 (`rope_parameters` holding both)."""
    params = d.get("rope_parameters")
    if isinstance(params, dict):
        theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = d.get("rope_theta", 10000.0)
        scaling = d.get("rope_scaling")
    if scaling is not None and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return float(theta), scaling


def model_config_from_hf(d: dict, source: str = "config.json") -> ModelConfig:
    """HF LlamaConfig dict -> ModelConfig; anything our Llama cannot reproduce exactly is refused."""
    arch = (d.get("architectures") or ["LlamaForCausalLM"])[0]
    if d.get("model_type") not in ("llama", "mistral") or arch not in ARCHITECTURES:
        raise UserError(
            f"{source}: unsupported architecture {arch!r} (model_type {d.get('model_type')!r}); "
            f"orizuru loads Llama-architecture models ({', '.join(ARCHITECTURES)})"
        )
    for key in ("attention_bias", "mlp_bias"):
        if d.get(key):
            raise UserError(f"{source}: '{key}' is true; orizuru's Llama has no biases")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise UserError(f"{source}: 'hidden_act' is {act!r}; orizuru's Llama uses SwiGLU ('silu')")
    theta, scaling = _rope(d)
    if scaling is not None:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ROPE_TYPES:
            raise UserError(f"{source}: unsupported rope scaling type {kind!r} (supported: {', '.join(ROPE_TYPES)})")
    try:
        n_heads = int(d["num_attention_heads"])
        max_len = int(d.get("max_position_embeddings", 2048))
        # Mistral's sliding window only matters past its width: cap the context there instead
        if d.get("sliding_window"):
            max_len = min(max_len, int(d["sliding_window"]))
        cfg = ModelConfig(
            dim=int(d["hidden_size"]),
            n_layers=int(d["num_hidden_layers"]),
            n_heads=n_heads,
            n_kv_heads=int(d.get("num_key_value_heads") or n_heads),
            ffn_dim=int(d["intermediate_size"]),
            vocab_size=int(d["vocab_size"]),
            rope_theta=theta,
            norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_seq_len=max_len,
            head_dim=int(d["head_dim"]) if d.get("head_dim") else None,
            rope_scaling=scaling,
            init_std=float(d.get("initializer_range", 0.02)),
        )
        cfg.validate()
    except KeyError as e:
        raise UserError(f"{source}: missing key {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{source}: bad value ({e})") from None
    except ConfigError as e:
        raise UserError(f"{source}: {e}") from None
    return cfg


def model_config_to_hf(cfg: ModelConfig, dtype: torch.dtype = torch.float32, token_ids: dict | None = None) -> dict:
    """ModelConfig -> the `config.json` transformers (4.45+ and 5.x) reads as a LlamaConfig."""
    if cfg.ffn_dim is None or cfg.head_dim is None:
        cfg.validate()
    ids = token_ids or _default_token_ids()
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.ffn_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": cfg.rope_scaling,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "bos_token_id": ids["bos_token_id"],
        "eos_token_id": ids["eos_token_id"],
        "pad_token_id": ids["pad_token_id"],
        "torch_dtype": str(dtype).removeprefix("torch."),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "hidden_act": "silu",
        "pretraining_tp": 1,
        "use_cache": True,
    }


def _default_token_ids() -> dict:
    """Without a tokenizer, the ids orizuru's tokenizer always gives its specials."""
    return {f"{name}_token_id": SPECIALS.index(tok) for name, tok in (("bos", BOS), ("eos", EOS), ("pad", PAD))}


def check_tokenizer_matches(cfg: ModelConfig, tokenizer: Tokenizer, where: str = "model") -> None:
    """Token ids beyond the embedding would crash (or silently wrap on GPU) mid-run: fail now."""
    if tokenizer.vocab_size > cfg.vocab_size:
        raise UserError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the model's embedding has only "
            f"{cfg.vocab_size} rows (model.vocab_size); use the tokenizer the model was trained with, "
            f"or grow the model first ('orizuru model resize')"
        )


# ---------------------------------------------------------------- save


def save_model(
    model: Llama,
    directory: str | Path,
    tokenizer: Tokenizer | None = None,
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: int | None = None,
    generation: dict | None = None,
) -> None:
    """Write `model` (and `tokenizer`) as an HF Llama directory, atomically (whole or not at all).

    dtype: cast the weights on disk (default: the model's own). max_shard_size: bytes per
    safetensors shard; when given, shards + `model.safetensors.index.json` as HF writes them.
    generation: extra `generation_config.json` entries (e.g. {"temperature": 0.7, "do_sample": True}).
    """
    cfg = model.cfg
    if tokenizer is not None:
        check_tokenizer_matches(cfg, tokenizer)
        ids = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "pad_token_id": tokenizer.pad_id}
    else:
        ids = _default_token_ids()
    state = {k: v for k, v in model.state_dict().items() if not (cfg.tie_embeddings and k == "lm_head.weight")}
    dtype = dtype or next(iter(state.values())).dtype
    state = {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in state.items()}
    with atomic_dir(directory) as tmp:
        write_json(tmp / "config.json", model_config_to_hf(cfg, dtype, ids))
        write_json(tmp / "generation_config.json", {**ids, **(generation or {})})
        _write_weights(state, tmp, max_shard_size)
        if tokenizer is not None:
            tokenizer.save(tmp, model_max_length=cfg.max_seq_len)


def _write_weights(state: dict[str, torch.Tensor], directory: Path, max_shard_size: int | None) -> None:
    meta = {"format": "pt"}  # transformers expects this safetensors metadata
    if max_shard_size is None:
        save_file(state, directory / WEIGHTS, metadata=meta)
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / fname, metadata=meta)
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in state.values())
    write_json(directory / INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})


# ---------------------------------------------------------------- load


def read_hf_config(directory: str | Path) -> dict:
    path = Path(directory) / "config.json"
    if not Path(directory).is_dir():
        raise UserError(f"{directory}: model directory not found")
    if not path.is_file():
        raise UserError(f"{path}: not found (a Hugging Face model directory needs config.json)")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise UserError(f"{path}: expected a JSON object")
    return d


def weight_files(directory: str | Path) -> list[Path]:
    """The safetensors files of a model directory (one file, or the shards its index names)."""
    directory = Path(directory)
    if (directory / WEIGHTS).is_file():
        return [directory / WEIGHTS]
    index = directory / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(f"{index}: not a valid safetensors index ({e})") from None
        files = [directory / f for f in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.is_file():
                raise UserError(f"{f}: shard listed in {INDEX} is missing")
        return files
    pickles = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pt*"))
    if pickles:
        raise UserError(
            f"{directory}: only pickle weights found ({', '.join(pickles)}); orizuru reads safetensors only, "
            "since unpickling can run arbitrary code. Convert once with transformers: "
            "AutoModelForCausalLM.from_pretrained(dir).save_pretrained(new_dir)"
        )
    raise UserError(f"{directory}: no weights found (expected {WEIGHTS} or {INDEX})")


def load_state(directory: str | Path, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a model directory, each named file opened through safetensors only."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    if name.endswith(IGNORED_SUFFIXES):
                        continue
                    t = f.get_tensor(name)
                    state[name] = t if dtype is None else t.to(dtype)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise UserError(f"{path}: corrupt or truncated safetensors file ({e})") from None
    return state


def load_model(directory: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Llama:
    """Any HF Llama-architecture directory -> our `Llama` on `device` in `dtype`, in eval mode.

    The model is built on the meta device and the checkpoint's tensors are assigned to it, so a
    large model never exists twice in memory.
    """
    directory = Path(directory)
    cfg = model_config_from_hf(read_hf_config(directory), str(directory / "config.json"))
    state = load_state(directory, dtype)
    with torch.device("meta"):
        model = Llama(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # some exporters write the tied copy too
        expected.pop("lm_head.weight")
    where = f"{directory} ({', '.join(p.name for p in weight_files(directory))})"
    missing = sorted(set(expected) - set(state))
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"{where}: missing tensors {', '.join(missing[:3])}{more}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise UserError(f"{where}: unexpected tensors {', '.join(unexpected[:3])} (not a plain Llama checkpoint?)")
    for name, shape in expected.items():
        if state[name].shape != shape:
            raise UserError(
                f"{where}: tensor {name} has shape {tuple(state[name].shape)}, config.json implies {tuple(shape)}"
            )
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict({k: v.to(device) for k, v in state.items()}, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.inv_freq = rope_inv_freq(cfg).to(device)
    return model.eval()


def generation_ids(directory: str | Path) -> dict:
    """bos/eos/pad ids the way transformers resolves them: generation_config.json, then config.json.

    eos_token_id may be a list (Llama 3 stops at several tokens).
    """
    directory = Path(directory)
    ids = {k: v for k, v in read_hf_config(directory).items() if k.endswith("_token_id")}
    path = directory / "generation_config.json"
    if path.is_file():
        try:
            gen = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        ids.update({k: v for k, v in gen.items() if k.endswith("_token_id") and v is not None})
    return ids
