"""Benchmark `orizuru serve` against transformers on one model directory; prints JSON.

Concurrency 1, 4 and 16 clients, each request 128 prompt tokens and 64 output tokens (EOS
ignored), streamed: time to first token p50/p95, output tokens/s, the server's peak memory.
Peers in the same run, same directory, same torch threads: transformers `generate` one request
at a time, `generate` on a static batch of all the concurrent requests, and transformers'
continuous batching (`generate_batch`) where the installed version has it.

    PYTHONPATH=. python bench/bench_serve.py [--model DIR] [--threads 2]

Without --model, a random-weight model (dim 256, 4 layers, 4 heads, vocab 8192 from a BPE
trained on the shipped sample) is built in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

PROMPT, OUTPUT = 128, 64


def build_model(directory: Path, dim: int, layers: int) -> Path:
    from orizuru.model.checkpoint import save_model
    from orizuru.model.config import ModelConfig
    from orizuru.model.llama import Llama
    from orizuru.resources import DATA
    from orizuru.tokenizer.chat import ChatTokenizer
    from orizuru.tokenizer.tokenizer import train_bpe

    texts = [json.loads(line)["text"] for line in (DATA / "sample" / "wiki.jsonl").read_text(encoding="utf-8").splitlines()[:2000]]
    tok = ChatTokenizer(train_bpe(texts, 8192, show_progress=False))
    cfg = ModelConfig(dim=dim, n_layers=layers, n_heads=dim // 64, n_kv_heads=dim // 64, vocab_size=tok.vocab_size, max_seq_len=1024)
    cfg.validate()
    model = Llama(cfg)
    model.init_weights(seed=0)
    save_model(model.eval(), directory, tok)
    return directory


def prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[1] + torch.randint(300, vocab, (PROMPT - 1,), generator=g).tolist() for _ in range(n)]


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def serve_run(url: str, batch: list[list[int]]) -> dict:
    import httpx2 as httpx

    ttft, counts = [None] * len(batch), [0] * len(batch)
    start = time.perf_counter()

    def one(i: int) -> None:
        body = {"model": "bench", "prompt": batch[i], "max_tokens": OUTPUT, "temperature": 0, "ignore_eos": True,
                "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
            for line in r.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"] and ttft[i] is None:
                    ttft[i] = time.perf_counter() - start
                if chunk.get("usage"):
                    counts[i] = chunk["usage"]["completion_tokens"]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(batch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    assert counts == [OUTPUT] * len(batch), counts
    return {"ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95), "tokens_per_s": sum(counts) / wall, "wall_s": wall}


class FirstToken:
    """A transformers streamer that records when the first new token arrives."""

    def __init__(self):
        self.calls, self.at = 0, None

    def put(self, value):
        self.calls += 1
        if self.calls == 2 and self.at is None:
            self.at = time.perf_counter()

    def end(self):
        pass


def hf_sequential(hf, batch: list[list[int]]) -> dict:
    start, ttft = time.perf_counter(), []
    for p in batch:
        s = FirstToken()
        hf.generate(torch.tensor([p]), max_new_tokens=OUTPUT, min_new_tokens=OUTPUT, do_sample=False, pad_token_id=3, streamer=s)
        ttft.append(s.at - start)
    wall = time.perf_counter() - start
    return {"ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95), "tokens_per_s": OUTPUT * len(batch) / wall, "wall_s": wall}


def hf_static(hf, batch: list[list[int]]) -> dict:
    start = time.perf_counter()
    out = hf.generate(torch.tensor(batch), max_new_tokens=OUTPUT, min_new_tokens=OUTPUT, do_sample=False, pad_token_id=3)
    wall = time.perf_counter() - start
    assert out.shape[1] == PROMPT + OUTPUT
    return {"tokens_per_s": OUTPUT * len(batch) / wall, "wall_s": wall}


def hf_continuous(hf, batch: list[list[int]]) -> dict | None:
    if not hasattr(hf, "generate_batch"):
        return None
    from transformers import GenerationConfig

    cfg = GenerationConfig(max_new_tokens=OUTPUT, min_new_tokens=OUTPUT, do_sample=False, eos_token_id=-1, pad_token_id=3)
    start = time.perf_counter()
    try:
        out = hf.generate_batch(inputs=batch, generation_config=cfg)
    except Exception as e:  # report, do not hide, a peer that cannot run here
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    wall = time.perf_counter() - start
    tokens = sum(len(o.generated_tokens) for o in out.values())
    return {"tokens_per_s": tokens / wall, "wall_s": wall, "tokens": tokens}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model directory (default: a random-weight model built here)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, for the server and the peers")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    model_dir = Path(args.model) if args.model else build_model(Path(tmp.name) / "bench", args.dim, args.layers)
    from orizuru.model.checkpoint import read_hf_config

    vocab = read_hf_config(model_dir)["vocab_size"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "orizuru.cli", "serve", "--model", str(model_dir), "--port", str(port), "--max-batch", "16",
           "--served-model-name", "bench", "--threads", str(args.threads), "--prefill-chunk", "512"]  # fmt: skip
    server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    result = {"model": str(model_dir), "prompt_tokens": PROMPT, "output_tokens": OUTPUT, "threads": args.threads, "runs": {}}
    try:
        import httpx2 as httpx

        for _ in range(600):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        serve_run(url, prompts(2, vocab, 99))  # warm-up
        for c in args.concurrency:
            result["runs"][str(c)] = {"orizuru_serve": serve_run(url, prompts(c, vocab, c))}
        result["serve_peak_rss_mb"] = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait()
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    hf_sequential(hf, prompts(1, vocab, 98))  # warm-up
    for c in args.concurrency:
        batch = prompts(c, vocab, c)
        run = result["runs"][str(c)]
        run["hf_generate_one_at_a_time"] = hf_sequential(hf, batch)
        run["hf_generate_static_batch"] = hf_static(hf, batch)
        run["hf_generate_batch_continuous"] = hf_continuous(hf, batch)
        ours = run["orizuru_serve"]["tokens_per_s"]
        run["ratio_vs_hf_one_at_a_time"] = ours / run["hf_generate_one_at_a_time"]["tokens_per_s"]
        run["ratio_vs_hf_static_batch"] = ours / run["hf_generate_static_batch"]["tokens_per_s"]
        cont = run["hf_generate_batch_continuous"]
        if cont and "tokens_per_s" in cont:
            run["ratio_vs_hf_generate_batch"] = ours / cont["tokens_per_s"]
    runs = result["runs"]
    if "1" in runs and "16" in runs:
        result["serve_c16_over_c1"] = runs["16"]["orizuru_serve"]["tokens_per_s"] / runs["1"]["orizuru_serve"]["tokens_per_s"]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
