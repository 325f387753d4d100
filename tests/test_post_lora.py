import pytest
import torch
from peft import PeftModel
from post_fixtures import single_thread, tiny_model  # noqa: F401
from transformers import LlamaConfig, LlamaForCausalLM

from orizuru.errors import UserError
from orizuru.model.lora import apply_lora, load_adapter, merge_lora, save_adapter

pytestmark = pytest.mark.usefixtures("single_thread")


def hf_twin(model, directory):
    """The same weights as a transformers LlamaForCausalLM saved to `directory`."""
    c = model.cfg
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim, num_hidden_layers=c.n_layers,
        num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, rms_norm_eps=c.norm_eps,
        rope_theta=c.rope_theta, max_position_embeddings=c.max_seq_len, tie_word_embeddings=False,
    ))
    hf.load_state_dict(model.state_dict(), strict=True)
    hf.save_pretrained(directory)
    return hf


def test_adapter_loads_in_peft_and_merge_matches(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(300)
    hf_twin(model, tmp_path / "base")
    names = apply_lora(model, rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"])
    assert len(names) == 3 * model.cfg.n_layers
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.05)  # a trained adapter is not zero
    x = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        adapted = model(x)
    save_adapter(model, tmp_path / "adapter", rank=4, alpha=8, targets=["q_proj", "v_proj", "down_proj"], dropout=0.0, base_model=str(tmp_path / "base"))

    peft_model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "base"), tmp_path / "adapter")
    with torch.no_grad():
        theirs = peft_model(x).logits
    torch.testing.assert_close(theirs, adapted, atol=1e-5, rtol=1e-5)

    merge_lora(model)
    assert not any("lora" in n for n in model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=1e-5)

    fresh = tiny_model(300)
    load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), adapted, atol=1e-5, rtol=1e-5)


def test_unknown_target_module_is_a_clear_error():
    model = tiny_model(300)
    before = {n for n, _ in model.named_modules()}
    with pytest.raises(UserError, match=r"\['qkv_proj'\] not found.*q_proj"):
        apply_lora(model, rank=4, alpha=8, targets=["q_proj", "qkv_proj"])
    assert {n for n, _ in model.named_modules()} == before  # nothing was wrapped
