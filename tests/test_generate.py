"""KV-cache generation: token-for-token against transformers, against full recompute, sampling maths."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
from core_helpers import ja_texts, ja_tokenizer, tiny_model
from transformers import AutoModelForCausalLM
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from orizuru.cli import main as cli
from orizuru.errors import UserError
from orizuru.model import generate as gen_cli
from orizuru.model.checkpoint import save_model
from orizuru.model.generate import StreamPrinter, generate, sample_next
from orizuru.model.llama import KVCache

N_NEW = 24


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Our GQA model, its saved directory, and transformers' LlamaForCausalLM loaded from it."""
    d = tmp_path_factory.mktemp("gen") / "model"
    model = tiny_model(n_kv_heads=2, seed=3)
    with torch.no_grad():  # no byte-fallback tokens: generations are readable, token texts additive
        model.lm_head.weight[8:264] = 0.0
    save_model(model, d, ja_tokenizer())
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    return model, d, hf


def prompts(n: int = 3) -> list[list[int]]:
    tok = ja_tokenizer()
    return [tok.encode(t[: 10 + 7 * i], bos=True) for i, t in enumerate(ja_texts(n))]


def hf_greedy(hf, batch: list[list[int]], n: int, eos: int | None = None) -> list[list[int]]:
    """transformers' generate on a left-padded batch; EOS and what follows it removed."""
    L = max(map(len, batch))
    ids = torch.tensor([[0] * (L - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in batch])
    out = hf.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False,
        eos_token_id=eos, pad_token_id=3, min_new_tokens=0 if eos is not None else n,
    )[:, L:].tolist()  # fmt: skip
    return [row[: row.index(eos)] if eos in row else row for row in out]


def test_greedy_matches_transformers_single(pair):
    model, _, hf = pair
    p = prompts(1)
    ours = generate(model, p, N_NEW)
    assert ours == hf_greedy(hf, p, N_NEW)
    assert len(set(ours[0])) > 3  # not a degenerate repeat of one token


def test_greedy_matches_transformers_left_padded_batch(pair):
    model, _, hf = pair
    p = prompts(3)
    assert len({len(x) for x in p}) == 3  # really padded
    ours = generate(model, p, N_NEW)
    assert ours == hf_greedy(hf, p, N_NEW)
    assert ours == [generate(model, [x], N_NEW)[0] for x in p]  # batching changes nothing


def test_eos_stops_rows_like_transformers(pair):
    model, _, hf = pair
    p = prompts(3)
    full = generate(model, p, N_NEW)
    eos = full[0][5]  # a token row 0 emits: use it as EOS
    ours = generate(model, p, N_NEW, eos_id=eos)
    assert ours[0] == full[0][: full[0].index(eos)]
    assert ours == hf_greedy(hf, p, N_NEW, eos=eos)
    for row, f in zip(ours, full):
        assert row == (f[: f.index(eos)] if eos in f else f)


def test_kv_cache_equals_full_recompute(pair):
    model = pair[0]
    p = prompts(1)[0]
    ours = generate(model, [p], N_NEW)[0]
    seq = list(p)
    with torch.no_grad():
        for _ in range(N_NEW):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    assert ours == seq[len(p) :]
    # and the cached logits themselves, step by step
    cache = KVCache.empty(model.cfg, 1, len(seq), "cpu", torch.float32)
    with torch.no_grad():
        full = model(torch.tensor([seq]))
        step = [model(torch.tensor([seq[: len(p)]]), cache=cache)[0, -1]]
        for t in seq[len(p) : -1]:
            step.append(model(torch.tensor([[t]]), cache=cache)[0, -1])
    assert (torch.stack(step) - full[0, len(p) - 1 : -1]).abs().max() < 1e-5


def test_top_k_top_p_match_transformers_warpers():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    for k, p in [(5, None), (None, 0.8), (10, 0.5), (None, 0.999)]:
        ref = logits.clone()
        if k is not None:
            ref = TopKLogitsWarper(k)(None, ref)
        if p is not None:
            ref = TopPLogitsWarper(p)(None, ref)
        allowed = torch.isfinite(ref)
        draws = torch.stack([sample_next(logits, 1.0, k, p, torch.Generator().manual_seed(s)) for s in range(200)])
        assert allowed.gather(1, draws.T).all()  # never outside the reference's allowed set
        for row in range(4):  # and every allowed token that is likely enough shows up
            likely = (ref[row].softmax(-1) > 0.05).nonzero().flatten().tolist()
            assert set(likely) <= set(draws[:, row].tolist())


def test_top_p_hand_computed():
    """p = (0.5, 0.3, 0.15, 0.05): top_p 0.7 keeps {0, 1} (0.5 < 0.7 needs the 0.3), renormalised to 5/8, 3/8."""
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    g = torch.Generator().manual_seed(0)
    draws = torch.tensor([int(sample_next(logits, 1.0, None, 0.7, g)) for _ in range(4000)])
    assert set(draws.tolist()) == {0, 1}
    assert abs((draws == 0).float().mean().item() - 5 / 8) < 0.03
    assert sample_next(logits, 1.0, None, 0.5, g).item() == 0  # 0.5 alone reaches 0.5
    assert set(int(sample_next(logits, 1.0, None, 0.95, g)) for _ in range(2000)) == {0, 1, 2}


def test_sampling_is_seeded(pair):
    model = pair[0]
    p = prompts(2)
    a = generate(model, p, N_NEW, temperature=1.0, top_k=50, seed=7)
    assert a == generate(model, p, N_NEW, temperature=1.0, top_k=50, seed=7)
    assert a != generate(model, p, N_NEW, temperature=1.0, top_k=50, seed=8)
    assert a != generate(model, p, N_NEW)


def test_stop_string_across_token_boundary():
    tok = ja_tokenizer()
    model = tiny_model(seed=5)
    with torch.no_grad():  # only multi-character tokens, so a stop string can start inside one
        short = [i for i in range(tok.vocab_size) if len(tok.decode([i])) < 2]
        model.lm_head.weight[short] = 0.0
    p = prompts(1)
    full = generate(model, p, N_NEW)[0]
    off = [len(tok.decode(full[:k])) for k in range(len(full) + 1)]  # where each token's text starts
    text = tok.decode(full)
    # a 2-character stop string: the last character of token k and the first of token k+1
    k = next(
        k for k in range(1, len(full) - 1)
        if off[k + 1] - off[k] >= 2 and off[k + 2] > off[k + 1] and text.find(text[off[k + 1] - 1 : off[k + 1] + 1]) == off[k + 1] - 1
    )  # fmt: skip
    stop = text[off[k + 1] - 1 : off[k + 1] + 1]
    out = generate(model, p, N_NEW, stop_strings=[stop], tokenizer=tok)[0]
    assert out == full[:k]  # token k straddles the stop string, so it goes too
    assert stop not in tok.decode(out)
    assert generate(model, p, N_NEW, stop_strings=["\uffff"], tokenizer=tok)[0] == full  # absent: no effect


def test_on_token_streams_every_kept_token(pair):
    model = pair[0]
    p = prompts(2)
    seen = [[], []]
    out = generate(model, p, N_NEW, on_token=lambda row, t: seen[row].append(t))
    assert seen == out


def test_stream_printer_holds_back_stop_prefixes_and_partial_characters():
    tok = ja_tokenizer()
    buf = io.StringIO()
    sp = StreamPrinter(tok, ["。日本"], out=buf)
    assert sp.safe_prefix("梅雨は。日") == "梅雨は"
    text = "梅雨は😀東アジア)"  # the emoji is four byte-fallback tokens
    ids = tok.encode(text)
    assert sum(tok.hf.id_to_token(i).startswith("<0x") for i in ids) >= 4
    for t in ids:
        sp(0, t)
        assert text.startswith(buf.getvalue())
    sp.finish(tok.decode(ids))
    assert buf.getvalue() == text + "\n"


def test_bad_arguments(pair):
    model = pair[0]
    for kwargs, msg in [
        (dict(prompts=[[]]), "at least one token"),
        (dict(prompts=[[10 ** 6]]), "must be in"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(temperature=-1.0), "temperature"),
        (dict(stop_strings=["x"]), "need the tokenizer"),
    ]:
        with pytest.raises(UserError, match=msg):
            generate(model, kwargs.pop("prompts", [[1, 5]]), 4, **kwargs)


# ---------------------------------------------------------------- command line


def test_cli_streams_single_prompt(pair):
    model, d, _ = pair
    tok = ja_tokenizer()
    text = ja_texts(1)[0][:12]
    r = subprocess.run(
        [sys.executable, "-m", "orizuru.cli", "generate", "--model", str(d), "--prompt", text, "--max-new-tokens", "20"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    expect = tok.decode(generate(model, [tok.encode(text, bos=True)], 20, eos_id=tok.eos_id)[0])
    assert r.stdout == expect + "\n"


def test_cli_batch_prompts_file_and_jsonl(pair, tmp_path, capsys):
    model, d, _ = pair
    tok = ja_tokenizer()
    texts = [t[:8 + 3 * i] for i, t in enumerate(ja_texts(3))]
    (tmp_path / "p.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    assert gen_cli.main(["--model", str(d), "--prompts-file", str(tmp_path / "p.txt"), "--max-new-tokens", "10", "--jsonl", "--batch-size", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expect = generate(model, [tok.encode(t, bos=True) for t in texts], 10, eos_id=tok.eos_id)
    assert rows == [{"prompt": t, "text": tok.decode(e)} for t, e in zip(texts, expect)]


def test_cli_bad_model_dir(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "orizuru.cli", "generate", "--model", str(tmp_path / "none"), "--prompt", "x", "--max-new-tokens", "2"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "none" in r.stderr and "Traceback" not in r.stderr


def test_cli_sampling_flags_need_temperature(pair, capsys):
    assert cli(["generate", "--model", str(pair[1]), "--prompt", "x", "--max-new-tokens", "2", "--top-p", "0.9"]) == 2
    assert "--temperature" in capsys.readouterr().err


def test_cli_max_new_tokens_has_a_default(pair, capsys):
    assert gen_cli.main(["--model", str(pair[1]), "--prompt", "x", "--prompt", "y", "--jsonl"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in rows] == ["x", "y"]
