"""The judge against a real OpenAI-format HTTP server on 127.0.0.1: single and pairwise grading,
cache, unparsable replies, a down endpoint."""

from __future__ import annotations

import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from eval_helpers import build_tiny_model

from orizuru.errors import UserError
from orizuru.eval import judge as J


class JudgeServer:
    """A tiny OpenAI-compatible /v1/chat/completions server; `policy(prompt) -> reply text`."""

    def __init__(self, policy):
        self.policy, self.requests = policy, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                text = outer.policy(body["messages"][-1]["content"])
                if text is None:  # malformed: not the OpenAI format at all
                    payload = b"<html>oops</html>"
                else:
                    payload = json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _answer(prompt: str, tag: str) -> str:
    m = re.search(rf"\[{tag}の開始\]\n(.*?)\n\[{tag}の終了\]", prompt, re.S)
    return m.group(1) if m else ""


def longer_answer_wins(prompt: str) -> str:
    """A consistent judge: prefers the longer answer in pairwise mode; rates by answer length."""
    if "アシスタントAの回答" in prompt:
        a, b = _answer(prompt, "アシスタントAの回答"), _answer(prompt, "アシスタントBの回答")
        return "説明。[[A]]" if len(a) > len(b) else "説明。[[B]]" if len(b) > len(a) else "[[C]]"
    return f"良い回答です。評価：[[{min(10, 1 + len(_answer(prompt, 'アシスタントの回答')) // 10)}]]"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge_models")
    return build_tiny_model(root / "a" / "model", seed=1), build_tiny_model(root / "b" / "model", seed=2)


def test_single_and_pairwise_with_cache(models, tmp_path):
    server = JudgeServer(longer_answer_wins)
    try:
        out = tmp_path / "out"
        r = J.run("mt-bench", list(models), out, server.url, "judge-x", limit=4, max_new_tokens=6, backoff=0.01)
        n_calls = len(server.requests)
        assert r["questions"] == 4 and n_calls == r["judge_calls"] > 0
        for s in r["single"].values():
            assert s["n"] == 8 and s["unparsable"] == 0 and 1 <= s["mean"] <= 10
        # reference-guided grading for the math / reasoning / coding questions
        ref_prompts = [q["messages"][-1]["content"] for q in server.requests if "参考回答の開始" in q["messages"][-1]["content"]]
        assert ref_prompts
        # pairwise turn 2 shows each model's own first answer before its second
        assert any("[1番目の質問への回答]" in q["messages"][-1]["content"] for q in server.requests)
        pw = r["pairwise"]
        assert pw["n_comparisons"] == 8 and pw["unparsable"] == 0
        assert sum(v for v in pw["win_rate"].values()) + pw["tie_rate"] == pytest.approx(1.0)
        bt = pw["bradley_terry"]
        (a, wa), (b, wb) = pw["win_rate"].items()
        assert (bt[a] > bt[b]) == (wa > wb) or wa == wb
        saved = json.loads((out / "judge.json").read_text())
        assert saved["pairwise"]["win_rate"] == pw["win_rate"]
        # rerun: answers and judgments come from disk, no request is made
        again = J.run("mt-bench", list(models), out, server.url, "judge-x", limit=4, max_new_tokens=6)
        assert len(server.requests) == n_calls and again["judge_calls"] == 0
        assert again["pairwise"]["win_rate"] == pw["win_rate"]
    finally:
        server.close()


def test_position_biased_judge_yields_only_ties(models, tmp_path):
    server = JudgeServer(lambda p: "[[A]]" if "アシスタントAの回答" in p else "[[5]]")
    try:
        r = J.run("rakuda", list(models), tmp_path / "out", server.url, "judge-x", limit=3, max_new_tokens=4)
        pw = r["pairwise"]
        assert pw["tie_rate"] == 1.0 and all(v == 0 for v in pw["win_rate"].values()) and pw["consistency"] == 0.0
        assert all(abs(v) < 1e-6 for v in pw["bradley_terry"].values())
    finally:
        server.close()


def test_garbage_replies_are_counted_as_unparsable(models, tmp_path):
    server = JudgeServer(lambda p: "I cannot rate this. [[11]] maybe?")
    try:
        r = J.run("rakuda", [models[0]], tmp_path / "out", server.url, "judge-x", limit=3, max_new_tokens=4)
        s = next(iter(r["single"].values()))
        assert s["unparsable"] == 3 and s["mean"] is None
    finally:
        server.close()


def test_malformed_http_reply_and_down_endpoint_fail_clearly(models, tmp_path):
    server = JudgeServer(lambda p: None)
    try:
        with pytest.raises(UserError, match="failed after 2 tries"):
            J.run("rakuda", [models[0]], tmp_path / "a", server.url, "judge-x", limit=2, max_new_tokens=4, retries=1, backoff=0.01)
        assert len(server.requests) >= 2  # the first call and its retry
    finally:
        server.close()
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match=f"127.0.0.1:{port}.*failed after 3 tries"):
        J.run("rakuda", [models[0]], tmp_path / "b", f"http://127.0.0.1:{port}/v1", "judge-x", limit=2,
              max_new_tokens=4, retries=2, backoff=0.01)
    # the answers generated before the failure are kept for the rerun
    assert len((tmp_path / "b" / "answers" / "a.jsonl").read_text().splitlines()) == 2


def test_parsers_and_bradley_terry():
    assert J.parse_rating("評価：[[7]]") == 7.0
    assert J.parse_rating("[[3]] ... 最終的に [[8.5]]") == 8.5
    assert J.parse_rating("[[0]]") is None and J.parse_rating("評価：7") is None
    assert J.parse_verdict("[[B]]") == "B" and J.parse_verdict("AとB") is None
    # 3 wins to 1 for x over y: p_x / (p_x + p_y) = 3/4 -> log strength gap ln 3
    outcomes = [{"a": "x", "b": "y", "winner": w} for w in ["x", "x", "x", "y"]]
    bt = J.bradley_terry(["x", "y"], outcomes)
    assert bt["x"] - bt["y"] == pytest.approx(__import__("math").log(3), abs=1e-6)
