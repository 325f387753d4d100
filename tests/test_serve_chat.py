"""`orizuru chat` in a real terminal session (stdin/stdout): in-process on a model directory and
against `orizuru serve` by URL, both equal to the API's own greedy answers, turn after turn."""

from __future__ import annotations

import os
import subprocess
import sys

import openai
from serve_helpers import save_tiny, serving

TURNS = ["こんにちは", "東京について教えて"]


def chat(*args: str, stdin: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "orizuru.cli", "chat", *args, "--temperature", "0", "--max-tokens", "20"],
                          input=stdin, capture_output=True, text=True, timeout=120, env=env)  # fmt: skip


def test_chat_model_and_url_agree_with_the_api(tmp_path):
    d = save_tiny(tmp_path / "tiny")
    stdin = "\n".join(TURNS + ["/reset", TURNS[1], "/exit"]) + "\n"
    local = chat("--model", str(d), "--system", "丁寧に答えて", stdin=stdin)
    assert local.returncode == 0, local.stderr
    with serving(d) as (url, _):
        remote = chat("--url", f"{url}/v1", "--system", "丁寧に答えて", stdin=stdin)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        messages, expected = [{"role": "system", "content": "丁寧に答えて"}], []
        for turn in TURNS:
            messages.append({"role": "user", "content": turn})
            answer = client.chat.completions.create(model="tiny", messages=messages, temperature=0, max_tokens=20).choices[0].message.content
            messages.append({"role": "assistant", "content": answer})
            expected.append(answer)
        fresh = [{"role": "system", "content": "丁寧に答えて"}, {"role": "user", "content": TURNS[1]}]
        expected.append(client.chat.completions.create(model="tiny", messages=fresh, temperature=0, max_tokens=20).choices[0].message.content)
    assert remote.returncode == 0, remote.stderr
    assert local.stdout.splitlines() == expected
    assert remote.stdout.splitlines() == expected
    assert expected[1] != expected[2]  # /reset dropped the first turn


def test_chat_needs_one_source_and_a_chat_template(tmp_path):
    r = chat(stdin="")
    assert r.returncode == 2 and "exactly one of --model DIR or --url URL" in r.stderr
    d = save_tiny(tmp_path / "plain", chat_template=False)
    r = chat("--model", str(d), stdin="x\n")
    assert r.returncode == 2 and "no chat template" in r.stderr
