"""User task files (`--tasks path/to/task.toml`): same schema as the built-ins, data relative to the
file's folder, name = the file's stem, errors naming the file and the key."""

from __future__ import annotations

import shutil

import pytest
from eval_helpers import build_tiny_model

from orizuru import cli
from orizuru.errors import UserError
from orizuru.eval.evaluate import EvalConfig, evaluate
from orizuru.eval.tasks import DATA_DIR, TASK_DIR, load_examples, load_task
from orizuru.files import read_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("eval_task_files") / "model")


def user_task(folder, name="my_jcqa", extra=""):
    """The shipped JCommonsenseQA task as a user's file: its data copied next to it (relative path),
    its exemplars read from the shipped file (absolute path)."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(DATA_DIR / "jcommonsenseqa" / "valid.jsonl", folder / "data" / "valid.jsonl")
    text = (TASK_DIR / "jcommonsenseqa.toml").read_text(encoding="utf-8")
    text = text.replace('data = "jcommonsenseqa/valid.jsonl"', 'data = "data/valid.jsonl"')
    text = text.replace('exemplar_data = "jcommonsenseqa/train.jsonl"',
                        f'exemplar_data = "{DATA_DIR / "jcommonsenseqa" / "train.jsonl"}"')
    path = folder / f"{name}.toml"
    path.write_text(extra + text, encoding="utf-8")
    return path


def test_a_task_file_scores_like_the_builtin_it_copies(model_dir, tmp_path):
    path = user_task(tmp_path / "tasks")
    out = tmp_path / "out"
    res = evaluate(EvalConfig(model=model_dir, tasks=[f"{path},jcommonsenseqa"], limit=4, output=out, shots=2))
    assert set(res["tasks"]) == {"my_jcqa", "jcommonsenseqa"}
    assert res["tasks"]["my_jcqa"]["metrics"] == res["tasks"]["jcommonsenseqa"]["metrics"]
    mine, builtin = read_jsonl(out / "my_jcqa.jsonl"), read_jsonl(out / "jcommonsenseqa.jsonl")
    assert [r["logprobs"] for r in mine] == [r["logprobs"] for r in builtin]
    assert mine[0]["prompt"] == builtin[0]["prompt"] and mine[0]["prompt"].count("答え：") == 3  # 2 shots + the question
    # relative to the file's folder, not the working directory
    assert load_examples(load_task(str(path)))[0][0].id == load_examples(load_task("jcommonsenseqa"))[0][0].id


def test_the_cli_takes_a_task_file(model_dir, tmp_path, capsys):
    path = user_task(tmp_path)
    assert cli.main(["eval", "--model", str(model_dir), "--tasks", str(path), "--limit", "2",
                     "--output", str(tmp_path / "o")]) == 0
    assert "my_jcqa" in capsys.readouterr().out


@pytest.mark.parametrize("extra, body, message", [
    ("", None, "task file not found"),
    ("colour = 'red'\n", "", r"my_jcqa.toml: colour"),
    ("", 'data = "data/missing.jsonl"', r"my_jcqa.toml: 'data' = 'data/missing.jsonl': no such file .*data/missing.jsonl"),
    ("", 'default_shots = 9', r"my_jcqa.toml: default_shots exceeds the 5 exemplar_ids"),
    ("", 'gold = "answer"', r"my_jcqa.toml: 'gold' \(answer\) must name one of 'fields'"),
    ("name = 'other'\n", "", r"my_jcqa.toml: 'name' comes from the file's path"),
    ("", "[[templates]\n", r"my_jcqa.toml: not valid TOML"),
])
def test_a_bad_task_file_names_the_file_and_the_key(tmp_path, extra, body, message):
    path = user_task(tmp_path, extra=extra)
    if body is None:
        path.unlink()
    elif body:
        key = body.split(" = ")[0] if " = " in body else None
        lines = path.read_text(encoding="utf-8").splitlines()
        lines = [line for line in lines if key is None or not line.startswith(f"{key} = ")]
        path.write_text("\n".join([body, *lines]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_task(str(path))


def test_a_bad_row_names_the_users_data_file(tmp_path):
    path = user_task(tmp_path)
    rows = (tmp_path / "data" / "valid.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "data" / "valid.jsonl").write_text(rows[0] + '\n{"q_id": 1, "choices": ["a"], "label": 0}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"data/valid.jsonl:2: missing field 'question'"):
        load_examples(load_task(str(path)))


def test_two_tasks_with_one_name_are_refused_before_any_work(model_dir, tmp_path):
    path = user_task(tmp_path, name="jnli")
    with pytest.raises(UserError, match=r"two tasks named \['jnli'\]"):
        evaluate(EvalConfig(model=model_dir, tasks=[str(path), "jnli"], output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()
