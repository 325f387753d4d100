"""HF Llama directories both ways, checked against transformers on the same weights."""

from __future__ import annotations

import json
import os

import pytest
import torch
from core_helpers import hf_logits, ja_texts, ja_tokenizer, tiny_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from orizuru.errors import UserError
from orizuru.model.checkpoint import (
    check_tokenizer_matches,
    load_model,
    model_config_from_hf,
    model_config_to_hf,
    save_model,
)
from orizuru.model.config import ModelConfig

TOL = 1e-4


def ja_batch(n: int = 3, length: int = 40) -> torch.Tensor:
    tok = ja_tokenizer()
    return torch.tensor([tok.encode(t, bos=True)[:length] for t in ja_texts(n)])


@pytest.mark.parametrize(
    "n_kv_heads, tie, shard",
    [(4, False, None), (2, False, 40_000), (1, True, None), (2, True, 40_000)],
    ids=["mha", "gqa-sharded", "mqa-tied", "gqa-tied-sharded"],
)
def test_ours_to_transformers(tmp_path, n_kv_heads, tie, shard):
    """transformers loads what we write, with no orizuru code, and computes the same logits."""
    tok = ja_tokenizer()
    model = tiny_model(n_kv_heads=n_kv_heads, tie=tie)
    save_model(model, tmp_path / "m", tok, max_shard_size=shard)
    files = set(os.listdir(tmp_path / "m"))
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= files
    assert ("model.safetensors.index.json" in files) == (shard is not None)
    if shard:
        assert len([f for f in files if f.startswith("model-0")]) > 1

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.num_key_value_heads == n_kv_heads and hf.config.tie_word_embeddings == tie
    hf_tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    for text in ja_texts(4):
        assert hf_tok(text).input_ids == tok.encode(text, bos=True)
    assert hf_tok.eos_token_id == tok.eos_id and hf_tok.pad_token_id == tok.pad_id

    ids = ja_batch()
    with torch.no_grad():
        ours = model(ids)
    diff = (ours - hf_logits(hf, ids)).abs().max().item()
    assert diff <= TOL, diff
    assert ours.std() > 0.5  # the comparison is not between two near-constant outputs


def hf_reference(tmp_path, *, tie: bool, rope: dict | None = None, kv: int = 2, dtype=torch.float32, shard="200MB"):
    """A randomly initialised transformers Llama saved with save_pretrained."""
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv, vocab_size=512, tie_word_embeddings=tie, max_position_embeddings=256,
        rms_norm_eps=1e-5, initializer_range=0.1, **(rope or {}),
    )  # fmt: skip
    hf = LlamaForCausalLM(cfg).eval()
    hf.to(dtype).save_pretrained(tmp_path / "hf", max_shard_size=shard)
    return tmp_path / "hf"


@pytest.mark.parametrize(
    "tie, rope, shard",
    [
        (False, None, "200MB"),
        (True, None, "30KB"),
        (
            False,
            {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
            "200MB",
        ),  # fmt: skip
    ],
    ids=["gqa", "tied-sharded", "llama3-rope"],
)
def test_transformers_to_ours(tmp_path, tie, rope, shard):
    d = hf_reference(tmp_path, tie=tie, rope=rope, shard=shard)
    if shard == "30KB":
        assert (d / "model.safetensors.index.json").is_file()
    model = load_model(d)
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    assert model.cfg.tie_embeddings == tie and model.cfg.n_kv_heads == 2
    if rope:
        assert model.cfg.rope_theta == 500000.0 and model.cfg.rope_scaling["rope_type"] == "llama3"
    # long enough that llama3's rescaled low frequencies matter
    ids = torch.randint(0, 512, (2, 200), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (model(ids) - hf_logits(hf, ids)).abs().max().item()
    assert diff <= TOL, diff


def test_bf16_checkpoint_loads_as_float32(tmp_path):
    d = hf_reference(tmp_path, tie=False, dtype=torch.bfloat16)
    model = load_model(d, dtype=torch.float32)
    assert model.lm_head.weight.dtype == torch.float32
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(ids) - hf_logits(hf, ids)).abs().max().item() <= TOL


def test_round_trip_in_bf16_keeps_ties_and_values(tmp_path):
    model = tiny_model(tie=True)
    save_model(model, tmp_path / "m", dtype=torch.bfloat16, generation={"max_new_tokens": 32})
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16" and cfg["tie_word_embeddings"] is True
    assert json.loads((tmp_path / "m" / "generation_config.json").read_text())["max_new_tokens"] == 32
    back = load_model(tmp_path / "m", dtype=torch.bfloat16)
    assert back.lm_head.weight is back.model.embed_tokens.weight
    for name, t in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], t.to(torch.bfloat16)), name
    assert back.cfg == model.cfg


def test_config_mapping_round_trip():
    cfg = ModelConfig(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, vocab_size=1000, tie_embeddings=True,
                      rope_theta=5e5, max_seq_len=512, head_dim=32,
                      rope_scaling={"rope_type": "linear", "factor": 2.0})  # fmt: skip
    cfg.validate()
    assert model_config_from_hf(model_config_to_hf(cfg)) == cfg
    # transformers 5 moves rope_theta and the scaling into rope_parameters
    d = model_config_to_hf(cfg)
    d["rope_parameters"] = {"rope_theta": d.pop("rope_theta"), **d.pop("rope_scaling")}
    assert model_config_from_hf(d) == cfg


def test_save_is_atomic(tmp_path):
    """A failed save leaves the previous directory untouched and no temporary files."""
    tok = ja_tokenizer()
    save_model(tiny_model(), tmp_path / "m", tok)
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    with pytest.raises(UserError, match=r"tokenizer has \d+ tokens"):
        save_model(tiny_model(vocab_size=300), tmp_path / "m", tok)
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ["m"]


# ---------------------------------------------------------------- bad input


@pytest.fixture
def saved(tmp_path):
    save_model(tiny_model(), tmp_path / "m")
    return tmp_path / "m"


def edit_config(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def test_missing_directory_and_config(tmp_path, saved):
    with pytest.raises(UserError, match="model directory not found"):
        load_model(tmp_path / "nope")
    (saved / "config.json").unlink()
    with pytest.raises(UserError, match=r"config\.json: not found"):
        load_model(saved)


def test_missing_weights(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no weights found"):
        load_model(saved)


def test_pickle_only_checkpoint_is_refused(saved):
    (saved / "model.safetensors").unlink()
    (saved / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UserError, match=r"pytorch_model\.bin.*safetensors only"):
        load_model(saved)


def test_truncated_safetensors(saved):
    path = saved / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"model\.safetensors: corrupt or truncated"):
        load_model(saved)


def test_garbage_safetensors(saved):
    (saved / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(UserError, match=r"model\.safetensors: corrupt or truncated"):
        load_model(saved)


def test_missing_shard(tmp_path):
    save_model(tiny_model(), tmp_path / "m", max_shard_size=40_000)
    [shard] = (tmp_path / "m").glob("model-00002-of-*.safetensors")
    shard.unlink()
    with pytest.raises(UserError, match=f"{shard.name}: shard listed"):
        load_model(tmp_path / "m")


def test_missing_and_misshapen_tensors(saved):
    model = tiny_model()
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "model.layers.1.mlp.up_proj.weight"}
    save_file(state, saved / "model.safetensors")
    with pytest.raises(UserError, match=r"missing tensors model\.layers\.1\.mlp\.up_proj\.weight"):
        load_model(saved)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(7, 64)
    save_file(state, saved / "model.safetensors")
    with pytest.raises(UserError, match=r"up_proj\.weight has shape \(7, 64\), config\.json implies \(192, 64\)"):
        load_model(saved)
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(192, 64)
    state["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    save_file(state, saved / "model.safetensors")
    with pytest.raises(UserError, match=r"unexpected tensors model\.layers\.0\.self_attn\.q_proj\.bias"):
        load_model(saved)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, "unsupported architecture 'GPT2LMHeadModel'"),
        ({"attention_bias": True}, "'attention_bias' is true"),
        ({"mlp_bias": True}, "'mlp_bias' is true"),
        ({"hidden_act": "gelu"}, "'hidden_act' is 'gelu'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope scaling type 'yarn'"),
        ({"num_key_value_heads": 3}, "n_kv_heads"),
    ],
)
def test_unsupported_config(saved, changes, message):
    edit_config(saved, **changes)
    with pytest.raises(UserError, match=message) as e:
        load_model(saved)
    assert "config.json" in str(e.value)


def test_config_not_json(saved):
    (saved / "config.json").write_text("{oops")
    with pytest.raises(UserError, match=r"config\.json: not valid JSON"):
        load_model(saved)


def test_tokenizer_larger_than_embedding():
    cfg = ModelConfig(vocab_size=300)
    with pytest.raises(UserError, match=r"tokenizer has \d+ tokens but the model's embedding has only 300 rows"):
        check_tokenizer_matches(cfg, ja_tokenizer())
    check_tokenizer_matches(ModelConfig(vocab_size=4096), ja_tokenizer())  # padded embeddings are fine


def test_mistral_directory_within_its_window(tmp_path):
    """Mistral is Llama + GQA + a sliding window: exact up to the window, so max_seq_len stops there."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    cfg = MistralConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, sliding_window=128,
                        initializer_range=0.1)  # fmt: skip
    MistralForCausalLM(cfg).eval().save_pretrained(tmp_path / "mistral")
    model = load_model(tmp_path / "mistral")
    assert model.cfg.max_seq_len == 128 and model.cfg.n_kv_heads == 2
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "mistral", dtype=torch.float32).eval()
    ids = torch.randint(0, 512, (2, 100), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (model(ids) - hf_logits(hf, ids)).abs().max().item() <= TOL
