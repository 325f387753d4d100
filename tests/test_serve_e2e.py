"""`orizuru judge` and `orizuru self-instruct` end to end against `orizuru serve`, with a real tiny
model trained to give one parsable reply to every prompt (so both commands finish and the
numbers they report can be checked exactly)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from serve_helpers import metric, serving, train_fixed_reply

REPLY = "富士山の高さを説明してください。\n入力: （なし）\n出力: 評価：[[7]]"


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "orizuru.cli", *args], capture_output=True, text=True, timeout=300, env=env)


def test_judge_and_self_instruct_against_serve(tmp_path):
    d = train_fixed_reply(tmp_path / "judge", REPLY)
    with serving(d) as (url, _):
        out = tmp_path / "judged"
        r = run("judge", "--bench", "rakuda", "--model", str(d), "--output", str(out), "--judge-url", f"{url}/v1",
                "--judge-model", "judge", "--limit", "2", "--max-new-tokens", "8")  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        result = json.loads((out / "judge.json").read_text())
        single = result["single"]["judge"]
        assert single == {**single, "n": 2, "unparsable": 0, "mean": 7.0}  # 2 questions, each judged "[[7]]"
        assert result["judge_calls"] == 2
        gen = tmp_path / "gen.jsonl"
        r = run("self-instruct", "--output", str(gen), "--base-url", f"{url}/v1", "--model", "judge", "--num", "1", "--max-tokens", "64",
                "--temperature", "0")  # greedy: the fixture's one reply (sampled, a tiny model strays)
        assert r.returncode == 0, r.stderr[-2000:]
        [row] = [json.loads(line) for line in gen.read_text().splitlines()]
        assert row["instruction"] == "富士山の高さを説明してください。" and row["output"] and not row["is_classification"]
        assert json.loads(r.stdout.splitlines()[-1])["requests"] == 3  # instructions, classification, instance
        finished = sum(metric(url, f'orizuru_requests_finished_total{{reason="{k}"}}') for k in ("stop", "length"))
        assert finished == 2 + 3
