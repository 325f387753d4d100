import json

import pytest
from post_fixtures import DATA

from orizuru.errors import UserError
from orizuru.post.data import JCQA_TEMPLATES, flan_messages, read_instructions


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return path


def test_formats_alpaca_openai_sharegpt(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "要約して", "input": "長い文", "output": "短い文"}])
    b = tmp_path / "b.json"
    b.write_text(json.dumps([
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]},
        {"conversations": [{"from": "human", "value": "やあ"}, {"from": "gpt", "value": "こんにちは"}]},
    ], ensure_ascii=False))
    chats, report = read_instructions([a, b])
    assert report.rows == 3 and report.skipped == 0
    assert chats[0] == [{"role": "user", "content": "要約して\n\n長い文"}, {"role": "assistant", "content": "短い文"}]
    assert [m["role"] for m in chats[1]] == ["system", "user", "assistant"]
    assert chats[2][1] == {"role": "assistant", "content": "こんにちは"}


def test_bad_rows_are_counted_with_file_and_line_or_fatal_when_strict(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [
        {"instruction": "ok", "output": "fine"},
        {"instruction": "no output"},
        "{not json",
        {"instruction": "x", "output": ""},
        {"instruction": 3, "output": "y"},
        {"messages": [{"role": "user", "content": "only a question"}]},
    ])
    chats, report = read_instructions([p])
    assert len(chats) == 1 and report.skipped == 5
    assert report.problems[0] == f"{p}:2: missing field 'output'"
    assert report.problems[1].startswith(f"{p}:3: not valid JSON")
    assert report.problems[2] == f"{p}:4: empty assistant response"
    assert "must be a string" in report.problems[3]
    assert "end with an assistant turn" in report.problems[4]
    with pytest.raises(UserError, match=f"{p}:2: missing field 'output'"):
        read_instructions([p], strict=True)


def test_shipped_instruction_sample_reads_cleanly():
    chats, report = read_instructions([DATA / "instruction_ja.jsonl", DATA / "seed_tasks_ja.jsonl"])
    assert report.skipped == 0 and len(chats) == 575


def test_flan_templates_use_several_phrasings_and_refuse_eval_splits(tmp_path):
    chats, report = flan_messages("jcommonsenseqa", DATA / "jcommonsenseqa_train.jsonl")
    assert report.skipped == 0 and len(chats) == 500
    row = json.loads((DATA / "jcommonsenseqa_train.jsonl").read_text().split("\n")[0])
    answer = row["choices"][row["label"]]
    assert answer in chats[0][1]["content"] and row["question"] in chats[0][0]["content"]
    used = {sum(c[1]["content"].startswith("答えは「") for c in chats), sum("番号と答え" in c[0]["content"] for c in chats)}
    assert min(used) > 100 and len(JCQA_TEMPLATES) == 3  # every phrasing is used
    nli = write_jsonl(tmp_path / "jnli_train.jsonl", [{"premise": "猫が寝ている。", "hypothesis": "猫がいる。", "label": "entailment"}])
    (chat,), _ = flan_messages("jnli", nli)
    assert "含意" in chat[1]["content"] and "猫が寝ている。" in chat[0]["content"]
    sq = write_jsonl(tmp_path / "jsquad_train.jsonl", [{"context": "富士山 [SEP] 富士山は日本一高い山である。", "question": "日本一高い山は？",
                                                       "answers": [{"text": "富士山", "answer_start": 0}]}])
    (chat,), _ = flan_messages("jsquad", sq)
    assert "[SEP]" not in chat[0]["content"] and "富士山" in chat[1]["content"]
    with pytest.raises(UserError, match="evaluation split"):
        flan_messages("jnli", tmp_path / "valid.jsonl")
    with pytest.raises(UserError, match="unknown FLAN task"):
        flan_messages("mmlu", nli)
