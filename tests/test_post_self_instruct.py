import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from post_fixtures import DATA

from orizuru.files import read_jsonl
from orizuru.post.self_instruct import lcs_length, parse_instructions, rouge_l, self_instruct

NEW = [
    "好きな季節とその理由を三つ挙げてください。",
    "次の文章を小学生にもわかるように書き換えてください。",
    "与えられたレビューが肯定的か否定的か分類してください。",
    "健康的な朝ごはんの献立を提案してください。",
    "俳句を一つ詠んでください。",
    "次の英文を日本語に翻訳してください。",
    "与えられた数列の次の数を答えてください。",
]


def test_rouge_l_characters_by_hand():
    assert lcs_length("あいうえお", "あうえかお") == 4  # あ う え お
    assert rouge_l("あいうえお", "あうえかお") == pytest.approx(0.8)  # P = R = 4/5
    # LCS("日本首都です", "日本の首都") = 日本首都 = 4; P = 4/6, R = 4/5, F = 2PR/(P+R) = 16/22
    assert rouge_l("日本首都です", "日本の首都") == pytest.approx(16 / 22)
    assert rouge_l("東京 は", "東京は") == 1.0 and rouge_l("abc", "xyz") == 0.0


def test_parse_numbered_continuation():
    assert parse_instructions(" 猫について書いて。\n10. 犬について書いて。\n11．鳥を描写して。", 9) == [
        "猫について書いて。", "犬について書いて。", "鳥を描写して。"]


class FakeLLM(BaseHTTPRequestHandler):
    """An OpenAI-compatible /v1/chat/completions endpoint with scripted, deterministic answers."""

    calls = 0
    prompts: list[str] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        FakeLLM.prompts.append(prompt)
        if "指示の一覧:" in prompt:
            seed_line = prompt.split("\n1. ")[1].split("\n")[0]  # a copy of a shown instruction: near-duplicate
            k = FakeLLM.calls
            FakeLLM.calls += 1
            items = [seed_line, "この画像に写っているものを説明してください。"] + [NEW[(3 * k + i) % len(NEW)] for i in range(3)]
            text = " " + "\n".join(f"{9 + i}. {t}" if i else t for i, t in enumerate(items))
        elif prompt.endswith("分類タスク:"):
            text = " はい" if "分類" in prompt.rsplit("指示: ", 1)[1].split("\n")[0] else " いいえ"
        elif prompt.endswith("クラスラベル:"):
            text = " 肯定的\n入力: この映画は最高だった。"
        else:
            text = " （なし）\n出力: 例としての回答です。"
        reply = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
        data = json.dumps(reply, ensure_ascii=False).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeLLM)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_self_instruct_against_a_local_openai_server(tmp_path, server):
    out = tmp_path / "gen.jsonl"
    seeds = [json.loads(line)["instruction"] for line in (DATA / "seed_tasks_ja.jsonl").read_text().splitlines()]
    counts = self_instruct(str(DATA / "seed_tasks_ja.jsonl"), str(out), 3, base_url=server, model="fake")
    assert counts["kept"] == 3 and counts["similar"] >= 1 and counts["filtered"] >= 1
    # a rerun continues the file: 3 more, none a near-duplicate of the pool
    counts = self_instruct(str(DATA / "seed_tasks_ja.jsonl"), str(out), 6, base_url=server, model="fake")
    rows = read_jsonl(out)
    assert len(rows) == 6 and {r["instruction"] for r in rows} == set(NEW[:6])
    for i, r in enumerate(rows):
        assert max(rouge_l(r["instruction"], s) for s in seeds + [x["instruction"] for x in rows[:i]]) < 0.7
    cls = [r for r in rows if r["is_classification"]]
    assert [r["instruction"] for r in cls] == [NEW[2]] and cls[0]["output"] == "肯定的" and cls[0]["input"] == "この映画は最高だった。"
    assert all(r["input"] == "" and r["output"] == "例としての回答です。" for r in rows if not r["is_classification"])
    assert any(p.endswith("クラスラベル:") for p in FakeLLM.prompts)  # output-first for classification
