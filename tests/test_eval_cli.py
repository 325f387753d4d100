"""`orizuru eval` end to end on a tiny random model: outputs, resume, robustness reports, bad input."""

from __future__ import annotations

import json

import pytest
from eval_helpers import build_tiny_model

from orizuru import cli
from orizuru.errors import UserError
from orizuru.eval.evaluate import EvalConfig, evaluate
from orizuru.eval.tasks import load_examples, load_task
from orizuru.files import read_jsonl


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("eval_cli") / "model")


def test_generative_tasks_write_every_artifact(model_dir, tmp_path):
    out = tmp_path / "out"
    res = evaluate(EvalConfig(model=model_dir, tasks=["niilc", "mgsm", "jhumaneval"], limit=3, output=out, samples=2, max_new_tokens=12))
    for name in ("niilc", "mgsm", "jhumaneval"):
        r = res["tasks"][name]
        assert r["n"] == 3 and r["samples"] == 2 and r["template"] and r["seed"] == 1234
        assert set(r["metrics"]) == set(r["stderr"])
        rows = read_jsonl(out / f"{name}.jsonl")
        assert len(rows) == 3 and all(len(x["generations"]) == 2 for x in rows)
    assert res["tasks"]["niilc"]["shots"] == 4
    assert "accuracy@first" in res["tasks"]["mgsm"]["metrics"]  # maj@2 beside the first sample
    assert "pass@1" in res["tasks"]["jhumaneval"]["metrics"] and "pass@10" not in res["tasks"]["jhumaneval"]["metrics"]
    row = read_jsonl(out / "niilc.jsonl")[0]
    assert row["prompt"].startswith("以下は、質問に対する答えの例です。") and row["prompt"].endswith("回答：")
    saved = json.loads((out / "results.json").read_text())
    assert saved["model"]["config_hash"] == res["model"]["config_hash"]
    assert "| niilc |" in (out / "summary.md").read_text()


def test_rerun_resumes_and_keeps_partial_results(model_dir, tmp_path):
    out = tmp_path / "out"
    first = evaluate(EvalConfig(model=model_dir, tasks=["jcommonsenseqa"], limit=6, output=out))
    path = out / "jcommonsenseqa.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:4]) + lines[4][:20])  # killed while writing the 5th record
    second = evaluate(EvalConfig(model=model_dir, tasks=["jcommonsenseqa"], limit=6, output=out))
    assert second["tasks"]["jcommonsenseqa"]["metrics"] == first["tasks"]["jcommonsenseqa"]["metrics"]
    rows = read_jsonl(path)
    assert sorted({r["id"] for r in rows}) == sorted({json.loads(x)["id"] for x in lines})
    # nothing left to do: a third run appends nothing
    size = path.stat().st_size
    evaluate(EvalConfig(model=model_dir, tasks=["jcommonsenseqa"], limit=6, output=out))
    assert path.stat().st_size == size
    with pytest.raises(UserError, match="other settings"):
        evaluate(EvalConfig(model=model_dir, tasks=["jcommonsenseqa"], limit=6, output=out, shots=2))


def test_templates_permutations_and_calibration(model_dir, tmp_path):
    res = evaluate(EvalConfig(model=model_dir, tasks=["jnli", "jcommonsenseqa"], limit=3, output=tmp_path / "out", templates="all", permute_choices=2))
    jnli = res["tasks"]["jnli"]
    assert len(jnli["templates"]) == 3
    s = jnli["template_spread"]["acc"]
    assert s["min"] <= s["mean"] <= s["max"] and s["spread"] == pytest.approx(s["max"] - s["min"])
    perm = res["tasks"]["jcommonsenseqa"]["permutations"]
    assert perm["n_orders"] == 3 and len(perm["position_bias"]) == 5
    assert sum(perm["position_bias"]) == pytest.approx(1.0)
    cal = jnli["calibration"]
    assert set(cal) == {"uncalibrated", "contextual", "batch", "p_content_free"}
    assert cal["uncalibrated"]["acc"] == pytest.approx(jnli["metrics"]["acc"])
    assert "calibration" not in res["tasks"]["jcommonsenseqa"]  # no fixed label set
    rows = read_jsonl(tmp_path / "out" / "jcommonsenseqa.jsonl")
    shuffled = [r for r in rows if r["permutation"] == 1 and r["template"] == "qa"]
    original = {r["id"]: r for r in rows if r["permutation"] == 0 and r["template"] == "qa"}
    for r in shuffled:  # same choices, shown in another order, gold follows its choice
        o = original[r["id"]]
        assert sorted(r["choices"]) == sorted(o["choices"])
        assert r["choices"][r["gold"]] == o["choices"][o["gold"]]


def test_long_prompts_truncate_from_the_left_or_fail(tmp_path):
    small = build_tiny_model(tmp_path / "small", max_seq_len=64)
    res = evaluate(EvalConfig(model=small, tasks=["jsquad"], limit=2, output=tmp_path / "a"))
    assert res["tasks"]["jsquad"]["truncated_examples"] == 2
    with pytest.raises(UserError, match="exceeds"):
        evaluate(EvalConfig(model=small, tasks=["jsquad"], limit=2, output=tmp_path / "b", truncate="error"))


def test_unknown_task_and_missing_field(model_dir, tmp_path, capsys):
    with pytest.raises(UserError, match="unknown task 'nope'.*jcommonsenseqa"):
        evaluate(EvalConfig(model=model_dir, tasks=["nope"], limit=2, output=tmp_path / "out"))
    assert cli.main(["eval", "--model", str(model_dir), "--tasks", "nope", "--output", str(tmp_path / "o")]) == 2
    assert "unknown task" in capsys.readouterr().err
    task = load_task("jnli")
    (tmp_path / "jnli").mkdir()
    (tmp_path / "jnli" / "valid.jsonl").write_text(
        '{"id": "0", "premise": "犬が走る。", "hypothesis": "動物が動く。", "label": "entailment"}\n'
        '{"id": "1", "premise": "猫が寝る。", "label": "neutral"}\n'
    )
    with pytest.raises(UserError, match=r"valid.jsonl:2: missing field 'hypothesis'"):
        load_examples(task, tmp_path)


def test_cli_help(capsys):
    from orizuru.eval.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--permute-choices" in capsys.readouterr().out


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_gives_the_clean_result(model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "killed"
    args = [sys.executable, "-m", "orizuru.cli", "eval", "--model", str(model_dir), "--tasks", "jcommonsenseqa",
            "--limit", "96", "--output", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    path = out / "jcommonsenseqa.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= 32:  # the first chunk is on disk
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(read_jsonl(path))
    assert 32 <= kept
    resumed = evaluate(EvalConfig(model=model_dir, tasks=["jcommonsenseqa"], limit=96, output=out))
    clean = evaluate(EvalConfig(model=model_dir, tasks=["jcommonsenseqa"], limit=96, output=tmp_path / "clean"))
    assert resumed["tasks"]["jcommonsenseqa"]["metrics"] == clean["tasks"]["jcommonsenseqa"]["metrics"]
    assert len(read_jsonl(path)) == 96
