"""Shared pieces of the serving tests: a tiny random-weight chat model saved as a model directory,
and `orizuru serve` started as a real process on a free port of 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx  # the HTTP client the openai package is built on
import torch
from core_helpers import ja_tokenizer

from orizuru.model.checkpoint import save_model
from orizuru.model.config import ModelConfig
from orizuru.model.llama import Llama
from orizuru.tokenizer.chat import ChatTokenizer
from orizuru.tokenizer.tokenizer import Tokenizer

CONTEXT = 2048  # long enough for a stream that outlives the disconnect test's 2 s and the judge's prompts


def save_tiny(directory: Path, *, chat_template: bool = True, seed: int = 3) -> Path:
    """dim 64, 2 layers, GQA; byte-fallback rows of the LM head zeroed so texts are readable and
    token texts add up (as in test_generate)."""
    tok = ja_tokenizer()
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size, max_seq_len=CONTEXT, init_std=0.1)
    cfg.validate()
    model = Llama(cfg)
    model.init_weights(seed=seed)
    with torch.no_grad():
        model.lm_head.weight[8:264] = 0.0
    save_model(model.eval(), directory, ChatTokenizer(tok.hf) if chat_template else Tokenizer(tok.hf))
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"orizuru serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f} s")


@contextmanager
def serving(model_dir: Path, *extra: str):
    """`orizuru serve` in a subprocess (one torch thread: the tiny model's ops are too small to share,
    and the test process competes for the cores); yields (base URL without /v1, the process)."""
    port = free_port()
    cmd = [sys.executable, "-m", "orizuru.cli", "serve", "--model", str(model_dir), "--port", str(port), "--threads", "1", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def serving_in_process(app):
    """A FastAPI app on a real uvicorn server in a thread of this process (for engines the test controls)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise TimeoutError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def metric(url: str, name: str) -> float:
    """One sample of /metrics by its full name (with labels)."""
    for line in httpx.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise KeyError(name)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise KeyError("VmRSS")


def train_fixed_reply(directory: Path, reply: str, steps: int = 100, seed: int = 0) -> Path:
    """A tiny chat model trained (seconds) to answer every prompt, short or long, with `reply`
    (context 4096: the judge asks for 1024 tokens after a ~1200-token prompt):
    a real model behind `orizuru serve` whose output the judge and self-instruct can parse."""
    from core_helpers import ja_texts

    from orizuru.tokenizer.chat import render

    tok = ja_tokenizer()
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=tok.vocab_size, max_seq_len=4096, init_std=0.02)
    cfg.validate()
    torch.manual_seed(seed)
    model = Llama(cfg)
    model.init_weights(seed=seed)
    texts = ja_texts(16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: several threads only contend (10x slower on a busy machine)
    for _ in range(steps):
        batch = []
        for _ in range(4):
            i, n = (int(x) for x in torch.randint(0, 16, (2,), generator=rng))
            prompt = ("".join(texts[i:] + texts[:i]))[: 10 + 40 * n]  # 10 to ~600 characters
            r = render(tok, [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}])
            batch.append((r.ids, [t if m else -100 for t, m in zip(r.ids[1:] + [-100], r.mask[1:] + [0])]))
        L = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([ids + [tok.pad_id] * (L - len(ids)) for ids, _ in batch])
        targets = torch.tensor([t + [-100] * (L - len(t)) for _, t in batch])
        loss = model(ids, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    save_model(model.eval(), directory, ChatTokenizer(tok.hf))
    return directory
