"""Likelihood scoring: batched == unbatched, exact token boundary, and an independent re-scoring of
the dumped prompts with transformers on the saved HF checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
from eval_helpers import build_tiny_model

from orizuru.eval import likelihood as L
from orizuru.eval.evaluate import EvalConfig, evaluate
from orizuru.files import read_jsonl
from orizuru.model.checkpoint import load_model
from orizuru.model.llama import KVCache, Llama
from orizuru.tokenizer.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("eval_model") / "model")


@pytest.fixture(scope="module")
def loaded(model_dir):
    return load_model(model_dir).eval(), Tokenizer.load(model_dir)


def test_batched_equals_unbatched(loaded):
    model, tok = loaded
    pairs = [("質問：日本の首都は？\n答え：", c) for c in ["東京", "大阪", "京都府の北部"]]
    pairs += [("前提：犬が走っている。\n仮説：動物が動いている。\n関係：", c) for c in ["含意", "矛盾", "中立"]]
    pairs += [("短い", "文"), ("とても長い文脈" * 20, "です。")]
    reqs = [L.encode_pair(tok, c, x) for c, x in pairs]
    one = [L.score(model, [r])[0] for r in reqs]  # each request alone
    many = L.score(model, reqs, batch_tokens=100_000)  # all in one batch: shared contexts, padding
    assert len(L.batches([(len(r.context), len(r.continuation)) for r in reqs], 100_000)) == 1
    for a, b in zip(one, many):
        assert abs(a["logprob"] - b["logprob"]) <= 1e-4
        assert a["tokens"] == b["tokens"]


def test_logprob_matches_a_plain_forward_pass(loaded):
    model, tok = loaded
    enc = L.encode_pair(tok, "質問：空の色は？\n答え：", "青")
    ids = torch.tensor([enc.context + enc.continuation])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids)[0].double(), -1)
    n = len(enc.context)
    expected = sum(float(logp[n - 1 + i, t]) for i, t in enumerate(enc.continuation))
    assert L.score(model, [enc])[0]["logprob"] == pytest.approx(expected, abs=1e-4)


def lm_head_swap(model, ids, **kwargs):
    """The way hidden states were read before `return_hidden`: the model's forward with `lm_head` bypassed."""
    head = model.lm_head
    model.lm_head = torch.nn.Identity()
    try:
        return model(ids, **kwargs)
    finally:
        model.lm_head = head


def test_return_hidden_equals_the_lm_head_swap(loaded):
    model, tok = loaded
    ids = torch.tensor([tok.encode("質問：日本の首都は？\n答え：東京", bos=True)])
    with torch.no_grad():
        assert torch.equal(model(ids, return_hidden=True), lm_head_swap(model, ids))
        assert torch.equal(model(ids, return_hidden=True, last_only=True), lm_head_swap(model, ids, last_only=True))
        # left padding and a KV cache, as likelihood scoring runs them
        mask = torch.tensor([[0, 0] + [1] * (ids.size(1) - 2)])
        caches = [KVCache.empty(model.cfg, 1, ids.size(1), "cpu", torch.float32) for _ in range(2)]
        new = model(ids, attention_mask=mask, cache=caches[0], return_hidden=True)
        assert torch.equal(new, lm_head_swap(model, ids, attention_mask=mask, cache=caches[1]))


def test_scores_unchanged_from_the_lm_head_swap(loaded, monkeypatch):
    model, tok = loaded
    pairs = [("質問：日本の首都は？\n答え：", c) for c in ["東京", "大阪", "京都府の北部"]] + [("短い", "文")]
    reqs = [L.encode_pair(tok, c, x) for c, x in pairs]
    ours = L.score(model, reqs, batch_tokens=100_000)
    forward = Llama.forward

    def swapped(self, ids, *args, return_hidden=False, **kwargs):
        return lm_head_swap(self, ids, *args, **kwargs) if return_hidden else forward(self, ids, *args, **kwargs)

    monkeypatch.setattr(Llama, "forward", swapped)
    assert L.score(model, reqs, batch_tokens=100_000) == ours


def test_boundary_uses_concatenation_and_falls_back_on_a_crossing_merge(loaded):
    _, tok = loaded
    ctx, cont = "答え：", "東京"
    enc = L.encode_pair(tok, ctx, cont)
    full = tok.encode(ctx + cont, bos=True)
    assert enc.context == tok.encode(ctx, bos=True) and enc.context + enc.continuation == full
    assert not enc.boundary_merge
    # a context ending inside a word: the concatenation merges across the boundary
    crossing = [(c, x) for c, x in [("日", "本"), ("東", "京"), ("大", "学"), ("の", "です")]
                if tok.encode(c + x, bos=True)[: len(tok.encode(c, bos=True))] != tok.encode(c, bos=True)]
    assert crossing, "expected at least one merge across the boundary with this tokenizer"
    c, x = crossing[0]
    enc = L.encode_pair(tok, c, x)
    assert enc.boundary_merge
    assert enc.context == tok.encode(c, bos=True) and enc.continuation == tok.encode(x)


def test_left_truncation_keeps_bos_and_counts(loaded):
    _, tok = loaded
    enc = L.encode_pair(tok, "あ" * 200, "い", max_len=50)
    assert len(enc.context) + len(enc.continuation) == 50
    assert enc.context[0] == tok.bos_id and enc.truncated > 0
    from orizuru.errors import UserError

    with pytest.raises(UserError, match="exceeds the model's context"):
        L.encode_pair(tok, "あ" * 200, "い", max_len=50, truncate="error")


def test_short_prompts_are_untouched_by_the_context_limit(loaded):
    model, tok = loaded
    pairs = [("質問：日本の首都は？\n答え：", "東京"), ("日", "本"), ("短い", "文")]
    for c, x in pairs:
        enc = L.encode_pair(tok, c, x, max_len=model.cfg.max_seq_len, truncate="error")
        assert enc == L.encode_pair(tok, c, x) and enc.context == tok.encode(c, bos=True) and enc.truncated == 0


def test_dumped_prompts_rescored_with_transformers(model_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "out"
    results = evaluate(EvalConfig(model=model_dir, tasks=["jcommonsenseqa"], limit=12, output=out))
    records = read_jsonl(out / "jcommonsenseqa.jsonl")
    hf_tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    correct = 0
    for rec in records:
        lps = []
        for choice in rec["choices"]:
            ctx = hf_tok(rec["prompt"])["input_ids"]
            full = hf_tok(rec["prompt"] + choice)["input_ids"]
            assert full[: len(ctx)] == ctx  # no merge across the boundary in these prompts
            with torch.no_grad():
                logits = hf(torch.tensor([full])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            lps.append(sum(float(logp[i - 1, full[i]]) for i in range(len(ctx), len(full))))
        for ours, theirs in zip(rec["logprobs"], lps):
            assert math.isclose(ours, theirs, abs_tol=1e-4)
        correct += max(range(len(lps)), key=lps.__getitem__) == rec["gold"]
    assert results["tasks"]["jcommonsenseqa"]["metrics"]["acc"] == pytest.approx(correct / len(records))


def test_each_shared_context_runs_through_the_model_once(loaded, monkeypatch):
    """Shared-prefix scoring: the choices of one question pay for their context once (KV cache),
    and give the log-likelihoods of scoring every context+choice on its own (1e-4)."""
    model, tok = loaded
    contexts = ["質問：日本の首都は？\n答え：", "前提：犬が走っている。\n仮説：動物が動いている。\n関係："]
    choices = [["東京", "大阪", "京都府の北部", "札幌", "那覇"], ["含意", "矛盾", "中立"]]
    reqs = [L.encode_pair(tok, c, x) for c, xs in zip(contexts, choices) for x in xs]
    seen = []
    forward = Llama.forward

    def counting(self, ids, *args, **kwargs):
        seen.append(ids.shape)
        return forward(self, ids, *args, **kwargs)

    monkeypatch.setattr(Llama, "forward", counting)
    shared = L.score(model, reqs, batch_tokens=100_000)
    monkeypatch.setattr(Llama, "forward", forward)
    ctx_lens = [len(tok.encode(c, bos=True)) for c in contexts]
    assert seen[0] == (2, max(ctx_lens))  # one row per distinct context, not per choice
    # then every choice once, on the cache of its context, in buckets of similar length
    assert sum(rows for rows, _ in seen[1:]) == len(reqs)
    lengths = sorted(len(r.continuation) for r in reqs)
    assert sum(rows * width for rows, width in seen[1:]) <= len(reqs) * lengths[-1]
    assert [b for b in L.length_buckets([1, 2, 3, 4, 5, 8, 9, 1])] == [[0, 7], [1], [2, 3], [4, 5], [6]]
    for r, s in zip(reqs, shared):
        ids = torch.tensor([r.context + r.continuation])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids)[0].double(), -1)
        n = len(r.context)
        expected = sum(float(logp[n - 1 + i, t]) for i, t in enumerate(r.continuation))
        assert s["logprob"] == pytest.approx(expected, abs=1e-4)


def test_one_long_context_does_not_pad_a_batch_of_short_ones():
    sizes = [(48, 10)] + [(17, 10)] * 60
    groups = L.batches(sizes, 4096)  # 61 x 48 + 610 fits the budget, but 60 x 31 would be padding
    assert len(groups) == 2 and sorted(i for g in groups for i in g) == list(range(61))
    for g in groups:  # padding within a quarter of the budget, every batch within it
        width = max(sizes[i][0] for i in g)
        assert len(g) * width - sum(sizes[i][0] for i in g) <= 1024
        assert len(g) * width + sum(sizes[i][1] for i in g) <= 4096
    assert len(L.batches(sizes, 100_000)) == 1
