"""`orizuru serve` under concurrent clients: streams batched together (seen in /metrics), clients
that drop have their slots back within 2 s, and 200 mixed requests from 32 clients leave no slot
held and no memory growth."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2 as httpx  # the HTTP client the openai package is built on
import openai
import pytest
from serve_helpers import CONTEXT, metric, rss_kb, save_tiny, serving

CANCELLED = 'orizuru_requests_finished_total{reason="cancelled"}'


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = save_tiny(tmp_path_factory.mktemp("load") / "tiny")
    with serving(d, "--max-batch", "16", "--served-model-name", "tiny") as (url, proc):
        yield url, proc


def wait_idle(url: str, within: float) -> float:
    """Seconds until no slot is held (fails after `within`)."""
    t0 = time.monotonic()
    while metric(url, "orizuru_running_slots") > 0:
        assert time.monotonic() - t0 < within, "slots still held"
        time.sleep(0.02)
    return time.monotonic() - t0


def test_16_concurrent_streams_share_the_batch(server):
    url, _ = server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    seen, done = [], threading.Event()

    def watch():
        while not done.is_set():
            seen.append(metric(url, "orizuru_running_slots"))
            time.sleep(0.005)

    def stream(i: int) -> tuple[str, str, int]:
        chunks = list(client.completions.create(model="tiny", prompt=f"日本の{i}", max_tokens=48, temperature=0.8, seed=i, stream=True,
                                                stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))  # fmt: skip
        return "".join(c.choices[0].text for c in chunks if c.choices), [c.choices[0].finish_reason for c in chunks if c.choices][-1], chunks[-1].usage.completion_tokens  # noqa: E501

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(stream, range(16)))
    finally:
        done.set()
        watcher.join()
    assert all(reason == "length" and n == 48 and text for text, reason, n in results)
    assert max(seen) > 1, seen
    wait_idle(url, 2.0)


def test_dropped_clients_free_their_slots(server):
    url, _ = server
    long = {"model": "tiny", "prompt": "日本", "max_tokens": CONTEXT - 8, "temperature": 0, "ignore_eos": True}
    before = metric(url, CANCELLED)
    with httpx.stream("POST", f"{url}/v1/completions", json={**long, "stream": True}, timeout=30) as r:
        lines = r.iter_lines()
        assert sum(1 for _, line in zip(range(6), lines) if line.startswith("data: ")) == 3
        assert metric(url, "orizuru_running_slots") == 1
    assert wait_idle(url, 2.0) < 2.0
    assert metric(url, CANCELLED) == before + 1  # freed by the disconnect, not by finishing
    with pytest.raises(httpx.ReadTimeout):  # a non-streaming client that gives up
        httpx.post(f"{url}/v1/completions", json=long, timeout=0.5)
    assert wait_idle(url, 2.0) < 2.0
    assert metric(url, CANCELLED) == before + 2


MALFORMED = [
    {"model": "tiny", "prompt": "x", "temperature": -1},
    {"model": "tiny", "prompt": "x", "n": 99},
    {"model": "nope", "prompt": "x"},
    {"model": "tiny", "prompt": "x", "max_tokens": CONTEXT * 2},
    {"model": "tiny", "messages": [{"role": "user", "content": 5}]},
    {"model": "tiny", "prompt": [-1]},
]


def one(http: httpx.Client, url: str, rng: random.Random) -> str:
    """A random request: 20% malformed, 10% dropped mid-stream, the rest streamed or not; what happened."""
    kind = rng.random()
    if kind < 0.2:
        body = rng.choice(MALFORMED)
        route = "chat/completions" if "messages" in body else "completions"
        r = http.post(f"{url}/v1/{route}", json=body)
        assert 400 <= r.status_code < 500 and "error" in r.json(), r.text
        return "malformed"
    body = {"model": "tiny", "prompt": "日本の" * rng.randint(1, 30), "max_tokens": rng.randint(1, 12), "n": rng.choice([1, 1, 2]),
            "temperature": rng.choice([0, 0.7]), "seed": rng.randint(0, 9)}  # fmt: skip
    if kind < 0.3:
        body["max_tokens"] = 400
        with http.stream("POST", f"{url}/v1/completions", json={**body, "stream": True, "ignore_eos": True}) as r:
            next(line for line in r.iter_lines() if line.startswith("data: "))
        return "dropped"
    if rng.random() < 0.5:
        with http.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}) as r:
            lines = [line for line in r.iter_lines() if line]
            assert r.status_code == 200 and lines[-1] == "data: [DONE]" and '"error"' not in "".join(lines)
        return "streamed"
    r = http.post(f"{url}/v1/completions", json=body)
    assert r.status_code == 200 and len(r.json()["choices"]) == body["n"], r.text
    return "whole"


def test_soak_200_requests_32_clients(server):
    url, proc = server

    def run(n: int, seed: int) -> list[str]:
        rngs = [random.Random(seed + i) for i in range(n)]
        with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=32)) as http, ThreadPoolExecutor(32) as pool:
            return list(pool.map(lambda rng: one(http, url, rng), rngs))

    run(20, 0)  # warm-up: allocator pools, compiled paths
    wait_idle(url, 5.0)
    start = rss_kb(proc.pid)
    kinds = run(200, 1000)
    assert {"malformed", "dropped", "streamed", "whole"} <= set(kinds)
    wait_idle(url, 2.0)
    assert metric(url, "orizuru_queue_length") == 0
    grown = rss_kb(proc.pid) - start
    assert grown < 30_000, f"server RSS grew by {grown} kB over 200 requests"
    assert httpx.get(f"{url}/health").status_code == 200
