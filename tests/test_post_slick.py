import pytest
from post_fixtures import single_thread, tiny_model_dir, write_jsonl  # noqa: F401

from orizuru.files import read_jsonl
from orizuru.post.data import read_instructions
from orizuru.post.slick import correct, label, slick

pytestmark = pytest.mark.usefixtures("single_thread")


def test_labels_follow_the_paper():
    assert label(1.0, 0.0) == "HighlyKnown"
    assert label(0.25, 1.0) == "MaybeKnown"
    assert label(0.0, 0.125) == "WeaklyKnown"
    assert label(0.0, 0.0) == "Unknown"
    assert correct("答えは　４年 です", ["4年"]) and not correct("5年", ["4年"])


def test_slick_labels_rows_resumes_and_sft_can_drop_unknown(tmp_path):
    base = tiny_model_dir(tmp_path / "base")
    capitals = [("日本", "東京"), ("フランス", "パリ"), ("イギリス", "ロンドン"), ("ドイツ", "ベルリン"), ("イタリア", "ローマ")]
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"{c}の首都は？", "answers": [a]} for c, a in capitals])
    out = tmp_path / "labels.jsonl"
    counts = slick(str(base), str(qa), str(out), shots=2, prompts=2, samples=2, max_new_tokens=4)
    rows = read_jsonl(out)
    assert sum(counts.values()) == len(rows) == 5
    assert all(r["slick"] in counts and 0 <= r["p_greedy"] <= 1 and r["output"] == r["answers"][0] for r in rows)
    # kill after 3 rows: the rerun labels only the rest, with the same results
    out.write_text("".join(line + "\n" for line in out.read_text().splitlines()[:3]))
    slick(str(base), str(qa), str(out), shots=2, prompts=2, samples=2, max_new_tokens=4)
    assert read_jsonl(out) == rows
    # SFT's reader leaves Unknown rows out when asked to
    labelled = write_jsonl(tmp_path / "mixed.jsonl", [{**rows[0], "slick": "Unknown"}, {**rows[1], "slick": "HighlyKnown"}])
    chats, report = read_instructions([labelled], drop_labels=("Unknown",))
    assert len(chats) == 1 and report.dropped == 1 and chats[0][1]["content"] == "パリ"
