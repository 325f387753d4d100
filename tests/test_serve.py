"""`orizuru serve` through the `openai` client and raw HTTP: greedy equals `orizuru generate`,
streaming, usage, n, stop strings, seeds, logprobs against transformers, and a table of
malformed requests that must all be 4xx in OpenAI's error shape."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx  # the HTTP client the openai package is built on
import openai
import pytest
import torch
from core_helpers import ja_texts
from serve_helpers import CONTEXT, save_tiny, serving, serving_in_process
from transformers import AutoModelForCausalLM

from orizuru.model.checkpoint import load_model
from orizuru.model.generate import generate
from orizuru.serve.app import create_app
from orizuru.serve.engine import Delta, Engine, Finish, Request, SamplingParams
from orizuru.serve.prompts import completion_prompt
from orizuru.tokenizer.tokenizer import Tokenizer

N = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def server(model_dir):
    with serving(model_dir, "--max-batch", "16") as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="none", max_retries=0, timeout=60)


def collect(events: queue.Queue, n: int) -> list[list[int]]:
    """Token ids per request from (index, event) pairs until all n requests finished."""
    got, done = [[] for _ in range(n)], 0
    while done < n:
        k, e = events.get(timeout=60)
        if isinstance(e, Delta):
            got[k] += [t.id for t in e.tokens]
        elif isinstance(e, Finish):
            done += 1
    return got


def texts(n: int = 4) -> list[str]:
    return [t[: 8 + 5 * i] for i, t in enumerate(ja_texts(n))]


def complete(client, prompt: str, **kw) -> openai.types.Completion:
    kw.setdefault("max_tokens", N)
    kw.setdefault("temperature", 0)
    return client.completions.create(model="tiny", prompt=prompt, **kw)


def test_models_and_health(server, client):
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    [m] = client.models.list().data
    assert m.id == "tiny"


def test_completions_greedy_equal_orizuru_generate(server, client, model_dir):
    prompts = texts(4)
    cmd = [sys.executable, "-m", "orizuru.cli", "generate", "--model", str(model_dir), "--max-new-tokens", str(N), "--jsonl"]
    for p in prompts:
        cmd += ["--prompt", p]
    ref = [json.loads(line)["text"] for line in subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()]
    with ThreadPoolExecutor(4) as pool:  # concurrent: decoded in one batch
        batched = list(pool.map(lambda p: complete(client, p), prompts))
    sequential = [complete(client, p) for p in prompts]
    assert [r.choices[0].text for r in batched] == ref
    assert [r.choices[0].text for r in sequential] == ref
    assert len(set(ref)) == len(ref) and all(len(t) > 5 for t in ref)
    tok = Tokenizer.load(model_dir)
    for p, r in zip(prompts, sequential):
        assert r.usage.prompt_tokens == len(tok.encode_prompt(p, CONTEXT)[0])
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == N


@pytest.mark.parametrize("chunk", [7, 128])
def test_engine_batched_greedy_token_for_token(model_dir, chunk):
    """Six requests in one engine batch (different lengths, two arriving mid-decode into freed,
    non-adjacent slots) give `generate`'s tokens for each prompt alone: with 7-token prompt chunks
    (a prompt over several steps), and with 128, longest first, so that shorter prompts are packed
    beside it in one forward, right-padded."""
    engine = Engine.from_dir(str(model_dir), device="cpu", max_batch=4, prefill_chunk=chunk).start()
    try:
        prompts = [completion_prompt(engine.tokenizer, t) for t in texts(6)]
        if chunk == 128:
            prompts = sorted(prompts, key=len, reverse=True)
            assert len(prompts[0]) > len(prompts[-1]) and 3 * len(prompts[0]) <= chunk, [len(p) for p in prompts]
        events: queue.Queue = queue.Queue()
        reqs = [Request(p, SamplingParams(max_tokens=N, temperature=0.0, logprobs=True), lambda e, k=k: events.put((k, e)),
                        eos=engine.eos) for k, p in enumerate(prompts)]  # fmt: skip
        for r in reqs:
            engine.submit(r)
        got = collect(events, len(prompts))
    finally:
        engine.stop()
    model = load_model(model_dir)
    assert got == [generate(model, [p], N, eos_id=engine.tokenizer.eos_id)[0] for p in prompts]


def test_engine_decodes_across_a_prefilling_gap(model_dir):
    """A request that finishes early frees slot 1 to a long prompt that prefills over several steps
    while slots 0, 2, 3, 4 decode; the decode forward then covers slot 1 with a throwaway token
    (one slice instead of a gather). Every request still gets `generate`'s tokens."""
    engine = Engine.from_dir(str(model_dir), device="cpu", max_batch=5, prefill_chunk=7)
    covered = []
    decode = engine._decode
    engine._decode = lambda batch: covered.append(batch[-1].slot + 1 - batch[0].slot > len(batch)) or decode(batch)
    engine.start()
    try:
        prompts = sorted((completion_prompt(engine.tokenizer, t) for t in texts(6)), key=len)
        budgets = [N, 3, N, N, N, N]  # the second ends early; the last (longest) prompt takes its slot
        events: queue.Queue = queue.Queue()
        for k, (p, n) in enumerate(zip(prompts, budgets)):
            engine.submit(Request(p, SamplingParams(max_tokens=n, temperature=0.0, logprobs=True), lambda e, k=k: events.put((k, e)), eos=engine.eos))
        got = collect(events, len(prompts))
    finally:
        engine.stop()
    assert any(covered)
    model = load_model(model_dir)
    assert got == [generate(model, [p], n, eos_id=engine.tokenizer.eos_id)[0] for p, n in zip(prompts, budgets)]


def test_streaming_usage_and_done(server, client):
    prompt = texts(1)[0]
    whole = complete(client, prompt).choices[0].text
    chunks = list(complete(client, prompt, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == N
    chat = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=8,
                                               temperature=0, stream=True, stream_options={"include_usage": True}))  # fmt: skip
    assert chat[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chat if c.choices][-1] in ("length", "stop")
    assert chat[-1].usage.prompt_tokens > 0
    lines = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 3, "stream": True}).text.split("\n\n")
    assert lines[-2] == "data: [DONE]" and lines[-1] == ""


def test_chat_n2_seed_and_max_completion_tokens(client):
    msgs = [{"role": "system", "content": "短く答えてください。"}, {"role": "user", "content": "日本の首都はどこですか"}]

    def ask(**kw):
        return client.chat.completions.create(model="tiny", messages=msgs, temperature=1.0, seed=7, **kw)

    a, b = ask(n=2, max_completion_tokens=12), ask(n=2, max_completion_tokens=12)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.choices[0].message.content != a.choices[1].message.content
    assert a.usage.completion_tokens == sum(12 if c.finish_reason == "length" else 0 for c in a.choices) or any(c.finish_reason == "stop" for c in a.choices)
    assert ask(max_tokens=5).usage.completion_tokens <= 5 and ask(max_completion_tokens=3, max_tokens=50).usage.completion_tokens <= 3
    assert ask(max_tokens=5).choices[0].message.content == ask(max_tokens=5).choices[0].message.content


def test_stop_strings_across_token_boundaries(client, model_dir):
    prompt = texts(2)[1]
    tok = Tokenizer.load(model_dir)
    ids = generate(load_model(model_dir), [completion_prompt(tok, prompt)], N)[0]
    pieces = [tok.decode(ids[:k]) for k in range(len(ids) + 1)]
    k = next(k for k in range(3, N) if len(pieces[k]) - len(pieces[k - 1]) >= 2 and len(pieces[k + 1]) > len(pieces[k]))
    stop = pieces[k][-1] + pieces[k + 1][len(pieces[k])]  # last char of token k, first char of token k+1
    at = pieces[-1].find(stop)
    r = complete(client, prompt, stop=[stop, "never-there"])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == pieces[-1][:at]
    streamed = "".join(c.choices[0].text for c in complete(client, prompt, stop=stop, stream=True))
    assert streamed == pieces[-1][:at] and stop not in streamed


def test_logprobs_match_transformers(client, model_dir):
    prompt = texts(1)[0]
    tok = Tokenizer.load(model_dir)
    ids = completion_prompt(tok, prompt)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = hf.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, min_new_tokens=8, pad_token_id=3)[0].tolist()
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([out])).logits[0].float(), -1)[len(ids) - 1 : -1]
    r = complete(client, prompt, max_tokens=8, logprobs=5)
    lp = r.choices[0].logprobs
    for pos, (chosen, top) in enumerate(zip(lp.token_logprobs, lp.top_logprobs)):
        t = out[len(ids) + pos]
        assert abs(chosen - ref[pos, t].item()) < 1e-4
        assert sorted(top.values(), reverse=True) == pytest.approx(ref[pos].topk(5).values.tolist(), abs=1e-4)
    assert "".join(lp.tokens) == r.choices[0].text
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}], max_tokens=4, temperature=0,
                                          logprobs=True, top_logprobs=3)  # fmt: skip
    entries = chat.choices[0].logprobs.content
    assert len(entries) == chat.usage.completion_tokens and all(len(e.top_logprobs) == 3 for e in entries)
    assert all(e.logprob == pytest.approx(e.top_logprobs[0].logprob) for e in entries)  # greedy: the chosen is the top


def test_seed_same_alone_or_beside_15(client):
    def seeded():
        return complete(client, "日本の", temperature=0.9, top_p=0.95, extra_body={"top_k": 50}, seed=1234, max_tokens=16).choices[0].text

    alone = seeded()
    with ThreadPoolExecutor(16) as pool:
        others = [pool.submit(complete, client, t, temperature=1.0, max_tokens=16) for t in texts(4) * 4 if len(t)]
        mine = pool.submit(seeded)
        [f.result() for f in others]
    assert mine.result() == alone
    assert complete(client, "日本の", temperature=0.9, seed=99, max_tokens=16).choices[0].text != alone


BAD = [  # (body, status, param): every one a 4xx in OpenAI's error shape
    ({"model": "tiny", "prompt": "x", "temperature": -1}, 400, "temperature"),
    ({"model": "tiny", "prompt": "x", "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny", "prompt": "x", "top_p": 0}, 400, "top_p"),
    ({"model": "tiny", "prompt": "x", "top_k": 0}, 400, "top_k"),
    ({"model": "tiny", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "x", "n": 0}, 400, "n"),
    ({"model": "tiny", "prompt": "x", "n": 17}, 400, "n"),
    ({"model": "tiny", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"model": "tiny", "prompt": "x", "stop": [""]}, 400, "stop"),
    ({"model": "tiny", "prompt": "x", "logprobs": 21}, 400, "logprobs"),
    ({"model": "tiny", "prompt": "x", "seed": -1}, 400, "seed"),
    ({"model": "tiny", "prompt": "x", "best_of": 2}, 400, "best_of"),
    ({"model": "tiny", "prompt": "x", "stream_options": {"include_usage": True}}, 400, None),
    ({"model": "tiny", "prompt": "x", "presence_penalty": 0.5}, 400, "presence_penalty"),
    ({"model": "tiny", "prompt": []}, 400, "prompt"),
    ({"model": "tiny", "prompt": [1, 2, 99999]}, 400, "prompt"),
    ({"model": "tiny"}, 400, "prompt"),
    ({"prompt": "x"}, 400, "model"),
    ({"model": "other", "prompt": "x"}, 404, "model"),
    ({"model": "tiny", "prompt": "x", "max_tokens": CONTEXT}, 400, "prompt"),
    ({"model": "tiny", "prompt": "あ" * (CONTEXT + 10)}, 400, "prompt"),
    ("chat", {"model": "tiny", "messages": []}, 400, "messages"),
    ("chat", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role"),
    ("chat", {"model": "tiny", "messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, 400, None),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, 400, None),
    ("chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -5}, 400, "max_completion_tokens"),
    ("chat", {"model": "tiny", "messages": "hello"}, 400, "messages"),
    ("raw", b"{not json", 400, None),
    ("raw", b"[1, 2]", 400, None),
]


def test_malformed_requests_are_4xx(server):
    cases = 0
    for case in BAD:
        route, body, status, param = ("completions", *case) if len(case) == 3 else case
        if route == "raw":
            r = httpx.post(f"{server}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        else:
            r = httpx.post(f"{server}/v1/{'chat/completions' if route == 'chat' else 'completions'}", json=body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], (body, err)
        if param is not None:
            assert err["param"] == param, (body, err)
        cases += 1
    assert cases >= 15
    r = httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "あ" * (CONTEXT + 10)})
    assert r.json()["error"]["code"] == "context_length_exceeded" and str(CONTEXT) in r.json()["error"]["message"]
    assert httpx.post(f"{server}/v1/completions", json={"model": "tiny", "prompt": "", "max_tokens": 2}).status_code == 200  # BOS alone, as generate
    assert httpx.get(f"{server}/v1/nothing").status_code == 404
    assert httpx.get(f"{server}/v1/completions").status_code == 405


def test_api_key_and_missing_chat_template(tmp_path):
    d = save_tiny(tmp_path / "plain", chat_template=False)
    with serving(d, "--api-key", "sekret") as (url, _):
        assert httpx.get(f"{url}/v1/models").status_code == 401
        assert httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}).json()["error"]["type"] == "authentication_error"
        c = openai.OpenAI(base_url=f"{url}/v1", api_key="sekret", max_retries=0)
        assert c.completions.create(model="plain", prompt="日本", max_tokens=2).usage.completion_tokens <= 2
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            c.chat.completions.create(model="plain", messages=[{"role": "user", "content": "x"}])


def test_health_503_while_loading_and_error_after_stream_start(model_dir):
    release = threading.Event()
    real = Engine.from_dir(str(model_dir), device="cpu", max_batch=2)
    calls = {"n": 0}
    forward = real.model.forward

    def failing(*a, **kw):  # the fourth forward fails: the stream has started by then
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("simulated device failure")
        return forward(*a, **kw)

    real.model.forward = failing

    def load():
        release.wait(30)
        return real

    with serving_in_process(create_app(load, name="tiny")) as url:
        r = httpx.get(f"{url}/health")
        assert r.status_code == 503 and r.json() == {"status": "loading"}
        assert httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x"}).status_code == 503
        release.set()
        for _ in range(100):
            if httpx.get(f"{url}/health").status_code == 200:
                break
            threading.Event().wait(0.05)
        events = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "日本", "max_tokens": 20, "stream": True}).text.split("\n\n")
        assert json.loads(events[-3].removeprefix("data: "))["error"]["message"].endswith("simulated device failure")
        assert events[-2] == "data: [DONE]"
        assert any('"text"' in e for e in events[:-3])  # tokens came before the failure
        ok = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "日本", "max_tokens": 3}).json()
        assert ok["usage"]["completion_tokens"] == 3  # the engine survived


def test_held_back_bytes_are_sent_at_eos_and_never_split(model_dir):
    """A character split over byte-fallback tokens is held back until whole, and what is still
    held back when EOS comes is sent (a stream must not lose a trailing "]" or half a kanji)."""
    engine = Engine.from_dir(str(model_dir), device="cpu", max_batch=1)
    tok = engine.tokenizer
    forced = [tok.token_id(f"<0x{b:02X}>") for b in "あ]".encode()] + [tok.eos_id]
    events: list = []
    r = Request([tok.bos_id], SamplingParams(max_tokens=10, temperature=0.0), events.append, eos=engine.eos)
    engine.submit(r)
    engine._admit()
    [c] = r.choices
    for t in forced:
        logits = torch.full((engine.model.cfg.vocab_size,), -1e4)
        logits[t] = 0.0
        engine._advance([c], logits[None])
    texts = [e.text for e in events if isinstance(e, Delta)]
    assert "".join(texts) == "あ]" and all("\ufffd" not in t for t in texts)
    assert isinstance(events[-1], Finish) and events[-1].reason == "stop" and events[-1].completion_tokens == 4
