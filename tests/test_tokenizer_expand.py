"""Vocabulary expansion (ids stable, old text unchanged) and model resize (logits unchanged, HF loads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from orizuru.errors import UserError
from orizuru.model.cli import main as model_main
from orizuru.model.config import ModelConfig
from orizuru.model.llama import Llama
from orizuru.model.resize import new_token_sources, resize_vocab
from orizuru.tokenizer.cli import main as tokenizer_main
from orizuru.tokenizer.expand import expand_vocab, is_japanese_char
from orizuru.tokenizer.tokenizer import Tokenizer, iter_texts, train_bpe, train_unigram

ROOT = Path(__file__).resolve().parent.parent
WIKI = ROOT / "orizuru" / "data" / "sample" / "wiki.jsonl"
EN = ROOT / "orizuru" / "data" / "tokenizer_sample" / "en_hh_rlhf.jsonl"
JA = list(iter_texts([WIKI]))
EN_TEXTS = list(iter_texts([EN]))


@pytest.fixture(scope="module")
def en_base() -> Tokenizer:
    """An 'English model' tokenizer: trained on English only, Japanese falls back to bytes."""
    return Tokenizer(train_bpe(EN_TEXTS, 700, show_progress=False))


@pytest.fixture(scope="module")
def spm_base(tmp_path_factory) -> Tokenizer:
    """A Llama-2-style SentencePiece BPE (byte fallback, dummy prefix) trained on English."""
    import sentencepiece as spm

    work = tmp_path_factory.mktemp("spm")
    (work / "en.txt").write_text("\n".join(t.replace("\n", " ") for t in EN_TEXTS), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(work / "en.txt"), model_prefix=str(work / "m"), vocab_size=700, model_type="bpe",
                                   byte_fallback=True, split_digits=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, character_coverage=1.0, minloglevel=2)  # fmt: skip
    (work / "dir").mkdir()
    (work / "dir" / "tokenizer.model").write_bytes((work / "m.model").read_bytes())
    return Tokenizer.load(work / "dir")


def check_expansion(base: Tokenizer, add: int) -> Tokenizer:
    learn, held_out = JA[:150], JA[-150:]
    result = expand_vocab(base, learn, add, show_progress=False)
    new, n = result.tokenizer, base.vocab_size
    assert new.vocab_size == n + add == n + len(result.added)
    assert [a["id"] for a in result.added] == list(range(n, n + add))
    assert all(base.hf.id_to_token(i) == new.hf.id_to_token(i) for i in range(n))  # every old id kept
    assert all(any(map(is_japanese_char, a["token"])) or a["saved"] == 0 for a in result.added)
    assert result.tokens_after < 0.8 * result.tokens_before  # Japanese got cheaper
    used_new = unchanged = 0
    for text in held_out + EN_TEXTS:
        old_ids, new_ids = base.encode(text), new.encode(text)
        assert new.decode(new_ids) == base.decode(old_ids) == base.decode(base.encode(text))
        if all(i < n for i in new_ids):
            assert new_ids == old_ids, text  # no new token applies: identical ids
            unchanged += 1
        else:
            used_new += 1
    assert used_new >= 100 and unchanged >= len(EN_TEXTS)
    assert all(new.encode(t) == base.encode(t) for t in EN_TEXTS)  # English untouched
    return new


def test_expand_our_bpe(en_base, tmp_path):
    new = check_expansion(en_base, 300)
    from transformers import AutoTokenizer

    new.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(str(tmp_path))
    for text in JA[-20:] + EN_TEXTS[:5]:
        assert hf(text)["input_ids"] == new.encode(text, bos=True)


def test_expand_sentencepiece_base(spm_base, tmp_path):
    check_expansion(spm_base, 200)


def test_expand_cli_and_bad_input(en_base, tmp_path, capsys):
    en_base.save(tmp_path / "base", chat_template="{{ messages }}")
    out = tmp_path / "expanded"
    rc = tokenizer_main(["expand", "--base", str(tmp_path / "base"), "--corpus", str(WIKI), "--add", "100",
                         "--max-chars", "80000", "--output", str(out)])  # fmt: skip
    assert rc == 0
    meta = json.loads((out / "expansion.json").read_text())
    assert meta["vocab_size"] == 800 and len(meta["added"]) == 100 and meta["tokens_after"] < meta["tokens_before"]
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == "{{ messages }}"
    assert Tokenizer.load(out).vocab_size == 800
    unigram = Tokenizer(train_unigram(EN_TEXTS[:40], 400, show_progress=False))
    with pytest.raises(UserError, match="needs a BPE base"):
        expand_vocab(unigram, JA[:10], 10)
    with pytest.raises(UserError, match="corpus is empty"):
        expand_vocab(en_base, ["", "  "], 10)
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    byte_level = HFTokenizer(models.BPE())  # GPT-2 / Llama 3 style
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel()
    byte_level.train_from_iterator(EN_TEXTS[:20], trainers.BpeTrainer(vocab_size=300, show_progress=False))
    with pytest.raises(UserError, match="not byte-level BPE"):
        expand_vocab(Tokenizer(byte_level), JA[:10], 10)


def tiny_llama(vocab_size: int, tie: bool) -> Llama:
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=vocab_size, tie_embeddings=tie, max_seq_len=128, init_std=0.1)
    cfg.validate()
    model = Llama(cfg)
    model.init_weights(seed=0)
    return model.eval()


@pytest.mark.parametrize("tie", [False, True])
def test_resize_keeps_old_logits_and_means_new_rows(en_base, tie):
    new = expand_vocab(en_base, JA[:100], 150, show_progress=False).tokenizer
    model = tiny_llama(en_base.vocab_size, tie)
    ids = torch.tensor([en_base.encode(EN_TEXTS[0])[:64], en_base.encode(JA[-1])[:64]])
    with torch.no_grad():
        before = model(ids)
        sources = new_token_sources(en_base, new)
        old_emb, old_head = model.model.embed_tokens.weight.clone(), model.lm_head.weight.clone()
        resize_vocab(model, sources, new.vocab_size)
        after = model(ids)
    assert after.shape[-1] == new.vocab_size == model.cfg.vocab_size
    assert torch.equal(after[..., : en_base.vocab_size], before)  # old columns bit-identical
    for i, src in sources.items():
        assert torch.allclose(model.model.embed_tokens.weight[i], old_emb[src].mean(0))
        assert torch.allclose(model.lm_head.weight[i], old_head[src].mean(0))
        assert [en_base.hf.id_to_token(j) for j in src] == [t.value for t in en_base.hf.model.tokenize(new.hf.id_to_token(i))]
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie
    # a tokenizer that reorders old ids is refused
    other = Tokenizer(train_bpe(JA[:50], 700, show_progress=False))
    with pytest.raises(UserError, match="does not extend"):
        new_token_sources(en_base, other)


def test_resize_cli_directory_loads_in_transformers(en_base, tmp_path):
    from transformers import AutoModelForCausalLM

    from orizuru.model.checkpoint import load_model, save_model

    new = expand_vocab(en_base, JA[:100], 120, show_progress=False).tokenizer
    new.save(tmp_path / "new_tok")
    model = tiny_llama(en_base.vocab_size, tie=False)
    save_model(model, tmp_path / "base", tokenizer=en_base)
    assert model_main(["resize", "--model", str(tmp_path / "base"), "--tokenizer", str(tmp_path / "new_tok"),
                       "--output", str(tmp_path / "resized")]) == 0  # fmt: skip
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "resized")).eval()
    ours = load_model(tmp_path / "resized")
    text_old, text_new = EN_TEXTS[1], JA[-2]
    ids_old = torch.tensor([en_base.encode(text_old, bos=True)[:64]])
    ids_new = torch.tensor([new.encode(text_new, bos=True)[:64]])
    assert ids_new.max() >= en_base.vocab_size  # the Japanese text uses new tokens
    with torch.no_grad():
        assert (hf(ids_new).logits - ours(ids_new)).abs().max() < 1e-4
        assert (hf(ids_old).logits[..., : en_base.vocab_size] - model(ids_old)).abs().max() < 1e-4
    assert hf.config.vocab_size == new.vocab_size
    assert Tokenizer.load(tmp_path / "resized").vocab_size == new.vocab_size
    assert model_main(["resize", "--model", str(tmp_path / "resized"), "--tokenizer", str(tmp_path / "new_tok"),
                       "--init", "random", "--output", str(tmp_path / "again")]) == 0  # fmt: skip
    assert load_model(tmp_path / "again").cfg.vocab_size == new.vocab_size  # already big enough: unchanged
