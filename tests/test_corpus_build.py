"""The whole build: outputs and stats, bad input, config errors, dry run, resume after SIGKILL,
local vs Ray byte-identical."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orizuru.config import ConfigError, load_config
from orizuru.corpus import cli
from orizuru.corpus.build import build_corpus, stats_markdown
from orizuru.corpus.config import CorpusConfig
from orizuru.corpus.doc import read_shard

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "orizuru" / "data" / "corpus"
# Resiliparse keeps the build tests fast (trafilatura is tested in test_corpus_read); dedup is tested in
# test_corpus_dedup and here in the whole-build tests that use FULL
NO_DEDUP = ["dedup_enabled=false", "extract.method='resiliparse'"]
FULL = ["extract.method='resiliparse'"]


def cfg(*overrides):
    return load_config(CorpusConfig, overrides=list(overrides))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A small mixed input directory: Japanese text, Japanese pages, WARCs, and bad files."""
    d = tmp_path_factory.mktemp("inputs")
    shutil.copy(DATA / "aozora_sample.jsonl", d)
    for name in ["resiliparse__clueweb09-ja-quirk.warc.gz", "resiliparse__warcfile.warc.gz", "warcio__example.warc.gz"]:
        shutil.copy(DATA / "warc" / name, d)
    for p in sorted((DATA / "html").glob("postlight__*.html"))[:4]:
        shutil.copy(p, d)
    (d / "empty.jsonl").write_bytes(b"")
    (d / "broken.jsonl").write_text('{"text": "あいう"}\n{oops\n', "utf-8")
    src = (DATA / "warc" / "resiliparse__clueweb09-ja-quirk.warc.gz").read_bytes()
    (d / "cut.warc.gz").write_bytes(src[: len(src) // 3])
    return d


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


def test_build_outputs_and_stats(inputs, tmp_path, caplog):
    out = tmp_path / "out"
    stats = build_corpus([str(inputs)], out, cfg(*FULL))
    assert json.loads((out / "stats.json").read_text("utf-8")) == stats
    assert stats["dedup"]["bands"] > 0 and "Deduplication" in stats_markdown(stats)
    assert (out / "summary.md").read_text("utf-8") == stats_markdown(stats)
    docs = [d for p in sorted(out.glob("part-*.jsonl.gz")) for d in read_shard(p)]
    assert len(docs) == stats["docs_out"] > 30
    assert all(d.meta["lang"] == "ja" and "quality" in d.meta and d.meta["source"] for d in docs)
    assert all("，" not in d.text and "．" not in d.text and "\u3000" not in d.text for d in docs)  # normalized
    steps = stats["steps"]
    assert steps["read"]["in"] == stats["docs_in"] and steps["dedup"]["out"] == stats["docs_out"]
    for a, b in zip(list(steps)[:-1], list(steps)[1:]):
        assert steps[a]["out"] == steps[b]["in"]
    removed_by_rules = sum(stats["dropped"]["quality"].values())
    assert steps["quality"]["in"] - steps["quality"]["out"] == removed_by_rules > 0
    assert stats["skipped"]["empty_file"] == 1 and stats["skipped"]["bad_json"] == 1
    assert stats["skipped"]["truncated"] == 1 and stats["skipped"]["not_response"] > 0
    bad = {e["reason"]: e for e in stats["skip_examples"]}
    assert bad["bad_json"]["file"] == "broken.jsonl" and bad["bad_json"]["offset"] == len('{"text": "あいう"}\n'.encode())
    assert any("broken.jsonl" in r.message and "offset" in r.message for r in caplog.records)
    assert stats["chars"]["out"] == sum(len(d.text) for d in docs)


def test_rerun_skips_finished_files(inputs, tmp_path):
    out = tmp_path / "out"
    build_corpus([str(inputs / "aozora_sample.jsonl")], out, cfg(*NO_DEDUP))
    first = files_of(out)
    manifest = out / "work" / "manifest" / "00000.json"
    mtime = manifest.stat().st_mtime_ns
    build_corpus([str(inputs / "aozora_sample.jsonl")], out, cfg(*NO_DEDUP))
    assert manifest.stat().st_mtime_ns == mtime and files_of(out) == first
    build_corpus([str(inputs / "aozora_sample.jsonl")], out, cfg(*NO_DEDUP, "quality_ja.min_chars=1000"))
    assert manifest.stat().st_mtime_ns != mtime  # a changed config redoes the work


def test_parquet_output(inputs, tmp_path):
    import pyarrow.parquet as pq

    stats = build_corpus([str(inputs / "aozora_sample.jsonl")], tmp_path, cfg(*NO_DEDUP, "output.format='parquet'"))
    table = pq.read_table(tmp_path / "part-00000.parquet")
    assert table.num_rows == stats["docs_out"] and table.column_names == ["id", "url", "text", "meta"]
    assert json.loads(table.column("meta")[0].as_py())["lang"] == "ja"


@pytest.mark.parametrize("override, key", [
    ("quality_ja.disabled=['no_such_rule']", "quality_ja.disabled"),
    ("quality_ja.dup_line_frac=1.5", "quality_ja.dup_line_frac"),
    ("quality_ja.top_ngram=[0.2]", "quality_ja.top_ngram"),
    ("quality_ja.no_such_threshold=1", "quality_ja.no_such_threshold"),
    ("quality_en.disabled=['min_chars']", "quality_en.disabled"),
    ("lang.min_score=2", "lang.min_score"),
    ("extract.method='lxml'", "extract.method"),
    ("dedup.threshold=2", "dedup.threshold"),
])
def test_bad_config_fails_before_work(override, key, inputs, tmp_path):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cli.main(["build", "--input", str(inputs), "--output", str(tmp_path / "out"), "--set", override])
    assert not (tmp_path / "out").exists()


def test_bad_input_path_fails_before_work(tmp_path):
    from orizuru.errors import UserError

    (tmp_path / "x.pdf").write_bytes(b"%PDF")
    for pattern in [str(tmp_path / "missing*.warc"), str(tmp_path / "x.pdf")]:
        with pytest.raises(UserError, match="--input"):
            build_corpus([pattern], tmp_path / "out", cfg(*NO_DEDUP))
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_failing_rule(inputs, tmp_path, capsys):
    assert cli.main(["build", "--input", str(inputs / "aozora_sample.jsonl"), "--dry-run", "--sample", "60",
                     "--set", "dedup_enabled=false"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 60 and not any(p.name == "out" for p in tmp_path.iterdir())
    dropped = [r for r in rows if not r["kept"]]
    assert dropped and all(r["reason"] in CorpusConfig().quality_ja.__dataclass_fields__ or r["reason"] in
                           ("dup_ngram", "top_ngram", "mean_sentence_len", "max_sentence_len") for r in dropped)
    assert all(r["metrics"]["chars"] > 0 for r in rows)


def run_build(inputs, out, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "orizuru.cli", "corpus", "build", "--input", *inputs,
                             "--output", str(out), *[a for o in FULL for a in ("--set", o)], *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
def test_sigkill_then_rerun_equals_clean_build(tmp_path):
    html = sorted(str(p) for p in (DATA / "html").glob("*.html"))
    inputs = [str(DATA / "aozora_sample.jsonl"), *html]
    clean = tmp_path / "clean"
    assert run_build(inputs, clean).wait() == 0
    out = tmp_path / "killed"
    proc = run_build(inputs, out)
    manifest = out / "work" / "manifest"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(manifest.glob("*.json"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(manifest.glob("*.json")))
    assert 3 <= done < len(inputs) and not (out / "stats.json").exists()
    assert run_build(inputs, out).wait() == 0
    assert files_of(out) == files_of(clean)
    assert not list((out / "work").rglob("*.tmp"))


@pytest.mark.slow
def test_local_and_ray_builds_are_byte_identical(inputs, tmp_path):
    local, ray_out = tmp_path / "local", tmp_path / "ray"
    stats = build_corpus([str(inputs)], local, cfg(*FULL), executor="local", workers=2)
    import ray

    try:
        build_corpus([str(inputs)], ray_out, cfg(*FULL), executor="ray", workers=2)
    finally:
        ray.shutdown()
    assert files_of(local) == files_of(ray_out)
    assert len(files_of(local)) > 5 and stats["dedup"]["bands"] > 0


def test_build_with_dedup_drops_cross_file_copies(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(DATA / "aozora_sample.jsonl", src / "a.jsonl")
    shutil.copy(DATA / "aozora_sample.jsonl", src / "b.jsonl")  # every document again, in a later file
    fast = "extract.method='resiliparse'"
    single = build_corpus([str(src / "a.jsonl")], tmp_path / "single", cfg("dedup_enabled=false", fast))
    both = build_corpus([str(src)], tmp_path / "both", cfg(fast))
    assert both["docs_out"] == single["docs_out"] > 0 and both["dedup"]
    kept = [d.id for p in sorted((tmp_path / "both").glob("part-*")) for d in read_shard(p)]
    assert all(i.startswith("a.jsonl/") for i in kept)  # the first copy in input order survives


def test_english_kept_only_when_asked(tmp_path):
    from orizuru.corpus.build import dry_run

    lines = ["The old bridge was built in 1820 by farmers who needed a faster way to reach the market.",
             "For decades it carried carts, cattle and, later, the first motor cars of the valley.",
             "A flood in 1911 washed away two of its arches, and the town voted to rebuild them in stone.",
             "Today the bridge is closed to traffic and serves as a quiet place for walkers and anglers.",
             "Local historians have collected letters, photographs and maps that tell its long story.",
             "Their small museum opens on weekends during the summer and welcomes school groups.",
             "Visitors often stay for lunch at the inn beside the river, which dates from the same year."]
    page = "<html><body><nav>Home | About</nav>" + "".join(f"<p>{x}</p>" for x in lines) + "</body></html>"
    (tmp_path / "en.jsonl").write_text(json.dumps({"text": "\n".join(lines)}) + "\n", "utf-8")
    (tmp_path / "en.html").write_text(page, "utf-8")
    ja_only = dry_run([str(tmp_path)], cfg(*NO_DEDUP), 10)
    assert [(r["kept"], r["step"], r["reason"]) for r in ja_only] == [(False, "lang", "en")] * 2
    both = dry_run([str(tmp_path)], cfg(*NO_DEDUP, "lang.keep=['ja','en']"), 10)
    assert [r["kept"] for r in both] == [True, True] and both[0]["metrics"]["words"] > 50


def test_host_boilerplate_removed_across_input_files(tmp_path):
    rows = [json.loads(line) for line in open(DATA / "aozora_sample.jsonl", encoding="utf-8")]
    rows = [r for r in rows if "〔" not in r["text"]][:4]
    for i, r in enumerate(rows):
        r["text"] = f"サイト共通のメニューです\n{r['text']}\nこのサイトについての案内"
        r["url"] = f"https://same.example/{i}"
    for k in range(2):
        with open(tmp_path / f"{k}.jsonl", "w", encoding="utf-8") as f:
            for r in rows[2 * k:2 * k + 2]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    stats = build_corpus([str(tmp_path / "*.jsonl")], tmp_path / "out", cfg(*NO_DEDUP))
    texts = [d.text for p in sorted((tmp_path / "out").glob("part-*")) for d in read_shard(p)]
    assert stats["boilerplate_lines_removed"] == 2 * len(texts) and texts
    assert not any("サイト共通のメニュー" in t or "このサイトについての案内" in t for t in texts)


def test_missing_extractor_library_is_an_error_not_skipped_pages(inputs, tmp_path, monkeypatch):
    """A missing dependency must stop the build, not quietly drop every HTML page as a bad page."""
    import orizuru.corpus.build as build
    from orizuru.errors import UserError

    def extract_without_library(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'trafilatura'", name="trafilatura")

    monkeypatch.setattr(build, "extract_text", extract_without_library)
    with pytest.raises(UserError, match="trafilatura"):
        build_corpus([str(inputs / "postlight__buzzap.jp.html")], tmp_path / "out", cfg(*NO_DEDUP))


def test_build_keeps_own_ids_and_carried_fields(tmp_path):
    src = tmp_path / "mine.jsonl"
    rows = [json.loads(line) for line in (DATA / "aozora_sample.jsonl").read_text("utf-8").splitlines()[:5]]
    src.write_text("".join(json.dumps({**r, "id": f"work-{i}"}, ensure_ascii=False) + "\n" for i, r in enumerate(rows)), "utf-8")
    stats = build_corpus([str(src)], tmp_path / "out", cfg(*NO_DEDUP, "read.carry_fields=['title', 'author']"))
    docs = [d for p in sorted((tmp_path / "out").glob("part-*")) for d in read_shard(p)]
    assert len(docs) == stats["docs_out"] > 0
    for d in docs:
        i = int(d.id.removeprefix("work-"))
        assert (d.meta["title"], d.meta["author"]) == (rows[i]["title"], rows[i]["author"])


def test_calibrate_command(tmp_path, capsys):
    page = json.loads((DATA / "aozora_sample.jsonl").read_text("utf-8").splitlines()[0])["text"]
    rows = [{"text": page, "label": "clean", "kind": "k"}, {"text": "短い。", "label": "junk", "kind": "short"}]
    src = tmp_path / "set.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    assert cli.main(["calibrate", "--input", str(src), "--output", str(tmp_path / "cal")]) == 0
    rep = json.loads((tmp_path / "cal" / "calibration.json").read_text("utf-8"))
    assert rep["clean_kept"] == 1.0 and rep["junk_removed"] == 1.0
    assert "| junk: short | 1 | 100% removed |" in capsys.readouterr().out


def test_one_bar_per_step_in_documents(inputs, tmp_path, capsys):
    build_corpus([str(inputs / "aozora_sample.jsonl"), str(inputs / "broken.jsonl")], tmp_path / "out", cfg(*FULL))
    err = capsys.readouterr().err
    for step in ("1 read+filter", "2 boilerplate", "3 clean", "4 dedup 1/4 signatures", "4 dedup 4/4 filter", "5 write"):
        assert step in err, step
    assert "docs/s" in err and "doc/s" in err and "task/s" not in err  # rates in documents, never tasks
