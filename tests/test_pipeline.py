"""`orizuru run`: a tiny pipeline end to end, its report card, skip / rerun / resume by hash, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import torch
from conftest import ROOT

from orizuru.config import ConfigError
from orizuru.pipeline.plan import decide, load_pipeline
from orizuru.pipeline.report import schema
from orizuru.pipeline.run import main as run_main
from orizuru.resources import DATA

LEAKED = "田んぼが広がる風景を何という？"  # JCommonsenseQA validation example 8940
STAGES = ["corpus", "contamination", "tokenizer", "tokenize", "pretrain", "eval_base", "sft", "dpo", "eval_sft"]
HEAD = """
[run]
name = "tiny pipeline"
out_dir = "{out}"
seed = 0

[corpus]
input = ["{docs}"]

[tokenizer]
input = ["corpus"]
vocab_size = 320

[tokenize]
tokenizer = "tokenizer"
input = ["corpus"]
val_fraction = 0.25

[pretrain]
config = "demo.toml"
data.dirs = ["tokenize"]
model = {{ dim = 32, n_layers = 1, n_heads = 2, n_kv_heads = 1, vocab_size = 320, max_seq_len = 128 }}
train = {{ seq_len = 32, batch_size = 4, max_steps = 40, warmup_steps = 2, log_every = 5, eval_every = 20, eval_batches = 2, ckpt_every = 5 }}
"""
TAIL = """
[eval_base]
model = "pretrain"
tasks = ["jcommonsenseqa"]
limit = 8

[sft]
model = "pretrain"
data.train = ["{instructions}"]
schedule = {{ epochs = 0 }}
train = {{ max_steps = 3, lr = {sft_lr}, seq_len = 64, batch_size = 4, log_every = 1, eval_every = 3, ckpt_every = 3 }}

[dpo]
model = "sft"
data.train = ["{prefs}"]
schedule = {{ epochs = 0, warmup_ratio = 0 }}
train = {{ max_steps = 2, lr = 1e-4, warmup_steps = 0, seq_len = 128, batch_size = 2, log_every = 1, eval_every = 2, ckpt_every = 2 }}

[eval_sft]
model = "sft"
tasks = ["jcommonsenseqa"]
limit = 8
"""


def articles(path: Path) -> Path:
    """The shipped Wikipedia sample as one document per article (single paragraphs are too short for the quality rules)."""
    if not path.exists():
        docs: dict[str, list[str]] = {}
        for line in (DATA / "sample" / "wiki.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            docs.setdefault(row["title"], []).append(row["text"])
        docs["石油"].append(LEAKED)  # one evaluation question inside a kept training document: the report must flag it
        path.write_text("".join(json.dumps({"text": "\n".join(p)}, ensure_ascii=False) + "\n" for p in docs.values()), encoding="utf-8")
    return path


def write_pipeline(path: Path, out: Path, sft_lr: float = 1e-3, tail: bool = True, docs: Path | None = None) -> Path:
    text = HEAD.format(out=out, docs=articles(docs or out.parent / "articles.jsonl"))
    if tail:
        text += TAIL.format(instructions=DATA / "post" / "instruction_ja.jsonl", prefs=DATA / "post" / "rakuda_prefs_ja.jsonl", sft_lr=sft_lr)
    path.write_text(text, encoding="utf-8")
    return path


def stage_json(out: Path, name: str) -> dict:
    return json.loads((out / "stages" / name / "stage.json").read_text())


def single_thread_run(argv: list[str]) -> None:
    """In-process run on one thread: the SIGKILL test's subprocesses use one too, so weights compare bit for bit."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_main(argv) == 0
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("pipeline")
    out = work / "out"
    cfg = write_pipeline(work / "tiny.toml", out)
    single_thread_run(["--config", str(cfg)])
    return cfg, out


def test_tiny_pipeline_end_to_end_and_report_schema(tiny_run):
    cfg, out = tiny_run
    for name in STAGES:
        rec = stage_json(out, name)
        assert rec["status"] == "done" and rec["wall_s"] > 0 and len(rec["hash"]) == 16, name
        assert rec["orizuru_version"] and rec["start"] <= rec["end"], name
    assert stage_json(out, "sft")["upstream"] == {"pretrain": stage_json(out, "pretrain")["hash"]}
    for f in ("model/model.safetensors", "sft/model/model.safetensors", "dpo/model/model.safetensors", "tokenize/meta.json",
              "eval_base/results.json", "eval_sft/results.json", "contamination/report.json", "report.md", "report.html"):
        assert (out / f).is_file() or (out / "pretrain" / f).is_file(), f
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, schema())
    assert [s["name"] for s in report["stages"]] == STAGES and {s["status"] for s in report["stages"]} == {"done"}
    assert report["evaluation"]["columns"] == ["base (eval_base)", "SFT (eval_sft)"]
    leak = report["contamination"]["jcommonsenseqa"]
    assert set(report["contamination"]) == {"jcommonsenseqa"} and leak["examples"] == 8 and leak["contaminated"] == 1
    assert leak["hits"][0]["id"] == "8940" and leak["hits"][0]["ngram"][:5] in LEAKED
    assert report["cost"]["energy"].startswith("not measured") and report["cost"]["gpu_hours"] == 0
    pre = next(s for s in report["stages"] if s["name"] == "pretrain")
    assert pre["metrics"]["tokens"] == 40 * 4 * 32 and pre["metrics"]["val_loss"] < pre["metrics"]["train_loss"] + 1
    assert set(report["losses"]) == {"pretrain", "sft", "dpo"} and len(report["losses"]["pretrain"]) == 8
    task = json.loads((out / "eval_base" / "results.json").read_text())["tasks"]["jcommonsenseqa"]
    score = next(s for s in report["stages"] if s["name"] == "eval_base")["metrics"]["score_jcommonsenseqa"]
    assert task["metric"] == "acc" and score == task["metrics"]["acc"]  # the task's primary metric, not None
    md = (out / "report.md").read_text()
    for heading in ("## Environment", "## Stages", "## Corpus", "## Pre-training", "## Scaling-law check", "## Evaluation",
                    "## Contamination", "## Samples", "## Cost and energy"):
        assert heading in md, heading
    assert "**Contaminated** (n-gram overlap with the training corpus): jcommonsenseqa" in md
    # a schema check that can fail: a stage without its status is not a report
    broken = json.loads(json.dumps(report))
    del broken["stages"][0]["status"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema())


def test_rerun_skips_everything_then_a_changed_sft_lr_reruns_sft_and_downstream(tiny_run, tmp_path):
    cfg, out = tiny_run
    before = {n: ((out / "stages" / n / "stage.json").stat().st_mtime_ns, stage_json(out, n)) for n in STAGES}
    t = time.time()
    single_thread_run(["--config", str(cfg)])
    assert time.time() - t < 30  # the report is rewritten, no stage runs
    assert {n: ((out / "stages" / n / "stage.json").stat().st_mtime_ns, stage_json(out, n)) for n in STAGES} == before

    changed = write_pipeline(tmp_path / "tiny-lr.toml", out, sft_lr=3e-3)
    plan = {s.stage.name: s.action for s in decide(load_pipeline(changed))}
    assert plan == {**{n: "skip" for n in STAGES}, "sft": "rerun", "dpo": "rerun", "eval_sft": "rerun"}
    sft_weights = (out / "sft" / "model" / "model.safetensors").read_bytes()
    single_thread_run(["--config", str(changed)])
    for n in STAGES:
        same = stage_json(out, n) == before[n][1]
        assert same == (n not in ("sft", "dpo", "eval_sft")), n
    assert stage_json(out, "sft")["config"]["train"]["lr"] == 3e-3
    assert (out / "sft" / "model" / "model.safetensors").read_bytes() != sft_weights  # retrained, not resumed from the old run
    # --force and --from carry along everything downstream; --dry-run writes nothing
    plan = {s.stage.name: s.action for s in decide(load_pipeline(changed), force=["tokenize"])}
    assert [n for n in STAGES if plan[n] == "rerun"] == ["tokenize", "pretrain", "eval_base", "sft", "dpo", "eval_sft"]
    plan = {s.stage.name: s.action for s in decide(load_pipeline(changed), start="dpo")}
    assert [n for n in STAGES if plan[n] == "rerun"] == ["dpo", "eval_sft"]
    plan = {s.stage.name: s.reason for s in decide(load_pipeline(changed), only="eval_base")}
    assert plan["eval_base"].startswith("done, same hash") and plan["sft"] == "not selected"


def test_sigkill_during_pretraining_then_rerun_resumes_bit_identical(tiny_run, tmp_path):
    cfg, ref = tiny_run
    out = tmp_path / "out"
    for name in ("corpus", "tokenizer", "tokenize"):  # the finished earlier stages, as a killed run would have left them
        shutil.copytree(ref / name, out / name)
        shutil.copytree(ref / "stages" / name, out / "stages" / name)
    kill_cfg = write_pipeline(tmp_path / "kill.toml", out, tail=False, docs=ref.parent / "articles.jsonl")
    args = [sys.executable, "-m", "orizuru.cli", "run", "--config", str(kill_cfg)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "pretrain" / "checkpoints" / "latest.txt"
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None and not latest.exists():
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert stage_json(out, "pretrain")["status"] == "running"
    assert not (out / "pretrain" / "model").exists()
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    plan = [line.split() for line in again.stderr.splitlines() if line.startswith("  ")]
    assert [row[:2] for row in plan[:4]] == [["corpus", "skip"], ["tokenizer", "skip"], ["tokenize", "skip"], ["pretrain", "resume"]]
    assert "resumed at step" in again.stderr
    assert stage_json(out, "pretrain")["status"] == "done"
    a = (ref / "pretrain" / "model" / "model.safetensors").read_bytes()
    assert (out / "pretrain" / "model" / "model.safetensors").read_bytes() == a


def test_report_html_is_self_contained_in_chromium(tiny_run):
    _, out = tiny_run
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.fail("Debian's chromium is not installed at /usr/bin/chromium (apt-get install -y chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(120_000)  # a cold browser on 2 busy cores
        page.on("request", lambda r: requests.append(r.url))
        page.goto((out / "report.html").as_uri(), wait_until="load")
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        headings = page.eval_on_selector_all("h2", "hs => hs.map(h => h.textContent)")
        page.screenshot(path=str(out / "report.png"), full_page=True)
        browser.close()
    assert len(widths) >= 5 and all(w > 0 for w in widths), widths
    assert "Evaluation" in headings and "Cost and energy" in headings
    external = [u for u in requests if not u.startswith(("file://", "data:"))]
    assert external == []
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t + "\n[pretrian]\nx = 1\n", "[pretrian]: unknown stage"),
    (lambda t: t.replace('tokenizer = "tokenizer"', 'tokenizer = "tokeniser"'), "[tokenize] key 'tokenizer': 'tokeniser' is neither a stage"),
    (lambda t: t.replace('model = "pretrain"\ntasks', 'model = "sft"\ntasks', 1), "[eval_base] key 'model': names stage 'sft', which comes later"),
    (lambda t: t.replace("val_fraction = 0.25", "val_fraction = 0.1\nshards = 3"), "[tokenize] unknown config key 'shards'"),
    (lambda t: t.replace("vocab_size = 320\n", 'vocab_size = "big"\n', 1), "[tokenizer] config key 'vocab_size': expected an integer"),
    (lambda t: t.replace("max_steps = 40", "max_steps = 40, lr = 2.0"), "[pretrain] config key 'train.lr' must be in (0, 1)"),
    (lambda t: t.replace("vocab_size = 320, max", "vocab_size = 256, max"), "[pretrain] key 'model.vocab_size' (256) is smaller than [tokenizer]"),
])
def test_bad_input_is_one_line_naming_file_section_key_before_any_stage(tmp_path, edit, expected):
    out = tmp_path / "out"
    path = write_pipeline(tmp_path / "bad.toml", out)
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as e:
        run_main(["--config", str(path)])
    assert str(path) in str(e.value) and expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert not out.exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    run_main(["--config", str(write_pipeline(tmp_path / "p.toml", out)), "--dry-run"])
    err = capsys.readouterr().err
    assert all(f"  {n}" in err for n in STAGES) and "not run yet" in err
    assert not out.exists()


def test_shipped_swallow_pipeline_on_a_tiny_base_model(tmp_path):
    from post_fixtures import tiny_model_dir

    base = tiny_model_dir(tmp_path / "base", dim=32, n_layers=1)
    out = tmp_path / "swallow"
    tiny = {"tokenizer.add": 48, "tokenizer.max_chars": 60000,
            "pretrain.train": "{ max_steps = 4, seq_len = 64, batch_size = 4, warmup_steps = 1, log_every = 2, eval_every = 4, ckpt_every = 4, "
                              "eval_batches = 2 }",
            "sft.train": "{ max_steps = 2, seq_len = 64, batch_size = 4, log_every = 1, eval_every = 2, ckpt_every = 2 }",
            "sft.schedule.epochs": 0, "eval_base.limit": 6, "eval_cpt.limit": 6, "eval_sft.limit": 6,
            "eval_base.tasks": '["jcommonsenseqa"]', "eval_cpt.tasks": '["jcommonsenseqa"]', "eval_sft.tasks": '["jcommonsenseqa"]'}
    argv = ["--config", "pipelines/swallow.toml", "--out-dir", str(out), "--override", f"tokenizer.base={base}",
            "--override", f"resize.model={base}", *sum((["--override", f"{k}={v}"] for k, v in tiny.items()), [])]
    single_thread_run(argv)
    names = ["tokenizer", "resize", "tokenize_ja", "tokenize_en", "pretrain", "eval_base", "eval_cpt", "sft", "eval_sft"]
    assert all(stage_json(out, n)["status"] == "done" for n in names)
    expanded = stage_json(out, "tokenizer")["metrics"]
    assert expanded["vocab_size"] == 512 + expanded["added"] and 0 < expanded["added"] <= 48
    assert expanded["corpus_tokens_ratio"] < 1  # the Japanese text takes fewer tokens after the expansion
    config = json.loads((out / "pretrain" / "model" / "config.json").read_text())
    assert config["vocab_size"] >= expanded["vocab_size"] and config["hidden_size"] == 32  # the base's shape, grown
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, schema())
    assert report["evaluation"]["columns"] == ["base (eval_base)", "continued pre-training (eval_cpt)", "SFT (eval_sft)"]
    weights = stage_json(out, "pretrain")["config"]["data"]["weights"]
    assert weights == [0.9, 0.1] and stage_json(out, "pretrain")["upstream"].keys() == {"tokenize_ja", "tokenize_en", "resize"}
