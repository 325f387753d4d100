"""`orizuru export gguf`: the file llama.cpp (through llama-cpp-python) loads gives our tokens and logits.

llama.cpp is the independent reference: its own tokenizer, its own forward pass. Tokenization of
unseen Japanese paragraphs and edge cases must equal orizuru's id for id; greedy generation from
the f32 and f16 files must equal `orizuru generate`'s token for token; logits agree within each
type's rounding (q8_0 loosest); GQA, tied embeddings and Llama 3 rope scaling go through the Q/K
permutation and the `rope_freqs` tensor.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from core_helpers import ja_texts, ja_tokenizer, tiny_model

from orizuru.cli import main as cli
from orizuru.errors import UserError
from orizuru.export.writer import export_gguf, permute_rope
from orizuru.model.checkpoint import save_model
from orizuru.model.generate import generate
from orizuru.tokenizer.chat import CHAT_TEMPLATE, ChatTokenizer, prompt_ids
from orizuru.tokenizer.tokenizer import END, Tokenizer, train_bpe, train_unigram

try:
    import llama_cpp
except ImportError as e:  # the test extra installs it; failing loudly beats skipping what CI must test
    raise ImportError(f"tests/test_export_gguf.py needs llama-cpp-python (pip install llama-cpp-python): {e}") from None

N_NEW = 24
EDGE_TEXTS = [
    "  先頭の空白と  二重の  空白 ",
    "一行目\n二行目\n\n  字下げ",
    "数字 12345 と English words, punctuation!?",
    "絵文字😀と「括弧」（全角）。ｶﾀｶﾅ ＡＢＣ",
    "<|user|>\nこんにちは<|end|>\n<|assistant|>\n",
    "literal <0x41> and <s> here\tand a tab",
    "",
    " ",
]


def _llama(path, **kw) -> llama_cpp.Llama:
    """llama.cpp with a float32 KV cache (its default f16 cache alone moves logits by ~1e-3)."""
    f32 = llama_cpp.GGML_TYPE_F32
    return llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, n_batch=256, type_k=f32, type_v=f32, verbose=False, **kw)


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A tiny model saved with orizuru's tokenizer and chat template, as `orizuru sft` writes it."""
    d = tmp_path_factory.mktemp("gguf") / "model"
    model = tiny_model(n_kv_heads=2, seed=3)
    with torch.no_grad():  # no byte-fallback tokens: greedy text stays on whole characters
        model.lm_head.weight[8:264] = 0.0
    tok = ja_tokenizer()
    save_model(model, d, ChatTokenizer(tok.hf), generation={"eos_token_id": [tok.eos_id, tok.token_id(END)]})
    return model, d


def _prompts() -> list[list[int]]:
    tok = ja_tokenizer()
    chat = prompt_ids(tok, [{"role": "user", "content": "日本の首都はどこですか？"}])
    return [tok.encode_prompt(t[: 12 + 9 * i], 200)[0] for i, t in enumerate(ja_texts(3))] + [chat]


def _our_logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


def _cpp_logits(llm: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def _cpp_greedy(llm: llama_cpp.Llama, ids: list[int], n: int) -> list[int]:
    llm.reset()
    out = []
    for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        out.append(t)
        if len(out) == n:
            return out
    return out


def test_permute_rope_is_interleaving():
    """Per head: HF rows (x1, x2, y1, y2) -> GGML rows (x1, y1, x2, y2)."""
    w = torch.arange(16.0).reshape(8, 2)  # 2 heads of head_dim 4
    got = permute_rope(w, 2)[:, 0].tolist()
    assert got == [0, 4, 2, 6, 8, 12, 10, 14]


def test_tokenization_matches(chat_dir, tmp_path):
    _, d = chat_dir
    path = tmp_path / "m.gguf"
    export_gguf(d, path, "f32", progress=False)
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    tok = Tokenizer.load(d)
    for text in ja_texts(40) + EDGE_TEXTS:
        # special=True: role markers in text are the special tokens, as orizuru's tokenizer reads them
        assert llm.tokenize(text.encode("utf-8"), add_bos=True, special=True) == tok.encode(text, bos=True), text
    assert llm.token_bos() == tok.bos_id and llm.token_eos() == tok.eos_id
    assert llm.detokenize(tok.encode("東京は日本の首都です。 Tokyo")).decode("utf-8") == "東京は日本の首都です。 Tokyo"


def test_sentencepiece_import_tokenization_matches(tmp_path):
    """A Llama 2 style SentencePiece BPE (dummy prefix, byte fallback) imported by orizuru exports
    with llama.cpp's add_space_prefix and tokenizes as orizuru does."""
    import sentencepiece as spm

    from orizuru.tokenizer.tokenizer import from_sentencepiece

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in ja_texts(120)[20:]) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=2000, model_type="bpe",
                                   character_coverage=0.99, minloglevel=2, byte_fallback=True, split_digits=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False)  # fmt: skip
    tok = from_sentencepiece(tmp_path / "m.model")
    save_model(tiny_model(vocab_size=tok.vocab_size), tmp_path / "model", tok)
    info = export_gguf(tmp_path / "model", tmp_path / "m.gguf", "f32", progress=False)
    assert info["warnings"] == []
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), vocab_only=True, verbose=False)
    assert llm.metadata["tokenizer.ggml.add_space_prefix"] == "true"
    for text in ja_texts(20) + EDGE_TEXTS[:4]:
        assert llm.tokenize(text.encode("utf-8"), add_bos=True) == tok.encode(text, bos=True), text


@pytest.mark.parametrize("dtype,atol", [("f32", 5e-5), ("f16", 1e-2)])  # measured max 2.4e-6 and 3.8e-3
def test_greedy_and_logits_match(chat_dir, tmp_path, dtype, atol):
    model, d = chat_dir
    path = tmp_path / f"m-{dtype}.gguf"
    assert cli(["export", "gguf", "--model", str(d), "--output", str(path), "--dtype", dtype]) == 0
    llm = _llama(path, logits_all=True)
    for ids in _prompts():
        ours = _our_logits(model, ids)
        diff = np.abs(_cpp_logits(llm, ids) - ours).max()
        assert diff < atol, (dtype, diff)
        expected = generate(model, [ids], N_NEW)[0]
        assert len(set(expected)) > 3  # not a degenerate repeat
        assert _cpp_greedy(llm, ids, N_NEW) == expected


def test_generate_command_text_matches_llama_cpp(chat_dir, tmp_path, capsys):
    """`orizuru generate`'s printed text equals llama-cpp-python's greedy completion of the same prompt."""
    _, d = chat_dir
    path = tmp_path / "m.gguf"
    export_gguf(d, path, "f32", progress=False)
    llm = _llama(path)
    for prompt in [t[:20] for t in ja_texts(2)]:
        capsys.readouterr()
        assert cli(["generate", "--model", str(d), "--prompt", prompt, "--max-new-tokens", str(N_NEW)]) == 0
        ours = capsys.readouterr().out.removesuffix("\n")
        theirs = llm.create_completion(prompt, max_tokens=N_NEW, temperature=0.0)["choices"][0]["text"]
        assert len(ours) > 10 and theirs == ours


def test_q8_0_close(chat_dir, tmp_path):
    model, d = chat_dir
    path = tmp_path / "m-q8.gguf"
    export_gguf(d, path, "q8_0", progress=False)
    f16 = tmp_path / "m-f16.gguf"
    export_gguf(d, f16, "f16", progress=False)
    assert path.stat().st_size < 0.75 * f16.stat().st_size
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    llm = _llama(path, logits_all=True)
    agree = total = 0
    for ids in _prompts():
        ours = _our_logits(model, ids)
        theirs = _cpp_logits(llm, ids)
        err = np.abs(theirs - ours) / ours.std()  # measured: mean 0.016-0.018, max 0.13-0.18
        assert err.mean() < 0.03 and err.max() < 0.25, (err.mean(), err.max())
        agree += int((theirs.argmax(-1) == ours.argmax(-1)).sum())
        total += len(ids)
    assert agree / total > 0.85  # measured 0.93 (82 of 88 positions; this model's top two are often close)


VARIANTS = {
    "gqa-tied": dict(n_kv_heads=1, tie=True),
    "llama3-rope": dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 32}),
    "padded-vocab": dict(vocab_size=1100),  # embedding rows past the tokenizer: UNUSED placeholder tokens
}  # fmt: skip


@pytest.mark.parametrize("variant", VARIANTS)
def test_architecture_variants(tmp_path, variant):
    """One KV head with tied embeddings; Llama 3.1 rope scaling through `rope_freqs` (positions past
    32); an embedding larger than the tokenizer."""
    kw = VARIANTS[variant]
    model = tiny_model(seed=5, **kw)
    save_model(model, tmp_path / "model", ja_tokenizer())
    export_gguf(tmp_path / "model", tmp_path / "m.gguf", "f32", progress=False)
    llm = _llama(tmp_path / "m.gguf", logits_all=True)
    ids = ja_tokenizer().encode(ja_texts(1)[0], bos=True)[:120]
    assert np.abs(_cpp_logits(llm, ids) - _our_logits(model, ids)).max() < 5e-5


def test_metadata(chat_dir, tmp_path):
    """Chat template, stop tokens and shapes as llama.cpp reads them."""
    model, d = chat_dir
    path = tmp_path / "m.gguf"
    export_gguf(d, path, "f16", progress=False)
    meta = _llama(path).metadata
    tok = ja_tokenizer()
    assert meta["tokenizer.chat_template"] == CHAT_TEMPLATE
    assert meta["tokenizer.ggml.model"] == "llama"
    assert int(meta["tokenizer.ggml.eos_token_id"]) == tok.eos_id
    assert int(meta["tokenizer.ggml.eot_token_id"]) == tok.token_id(END)
    assert int(meta["llama.attention.head_count_kv"]) == model.cfg.n_kv_heads
    assert int(meta["llama.context_length"]) == model.cfg.max_seq_len


def test_bad_input(tmp_path, chat_dir):
    texts = ja_texts(10)
    uni = Tokenizer(train_unigram(texts, 1200, show_progress=False))
    save_model(tiny_model(vocab_size=uni.vocab_size), tmp_path / "uni", uni)
    with pytest.raises(UserError, match="unigram tokenizer cannot be reproduced by llama.cpp"):
        export_gguf(tmp_path / "uni", tmp_path / "u.gguf")
    assert not (tmp_path / "u.gguf").exists()
    with pytest.raises(UserError, match="model directory not found"):
        export_gguf(tmp_path / "nowhere", tmp_path / "x.gguf")
    assert cli(["export", "gguf", "--model", str(chat_dir[1]), "--output", str(tmp_path / "y.gguf"), "--dtype", "q4"]) == 2


def test_nfkc_tokenizer_warns(tmp_path):
    """llama.cpp has no NFKC step: the file is written, with a warning saying what differs."""
    tok = Tokenizer(train_bpe(ja_texts(20), 600, nfkc=True, show_progress=False))
    save_model(tiny_model(vocab_size=tok.vocab_size), tmp_path / "nfkc", tok)
    info = export_gguf(tmp_path / "nfkc", tmp_path / "n.gguf", "f32", progress=False)
    assert (tmp_path / "n.gguf").is_file() and any("NFKC normalizer" in w for w in info["warnings"])
