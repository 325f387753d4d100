"""Documents per CPU-second of each corpus step, and of the whole build with 2 local workers,
on a generated corpus of Japanese documents (default 50,000); peak memory per worker. Prints JSON.

    python bench/bench_corpus_steps.py [--docs 50000] [--step-docs 10000] [--pages 1000]

Documents are ~1,800-character windows of Aozora Bunko works (data/corpus/aozora_sample.jsonl, or
the full set in ../shared/data when present), a quarter of them damaged so that rules fire
(duplicated lines, katakana runs, short pieces). Single steps are timed (CPU time, one process) on the
first `--step-docs` documents; HTML steps (read WARC + extract) on `--pages` generated pages (article +
navigation + footer), extraction being ~100x slower per document; the whole build runs on all of them.
The datatrove comparison of the same rules and of dedup is bench/ of the dedup part.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from orizuru.corpus.config import CorpusConfig
from orizuru.corpus.doc import Doc
from orizuru.corpus.extract import extract_text
from orizuru.corpus.langid import detect
from orizuru.corpus.normalize import normalize_text
from orizuru.corpus.quality import ja_failing_rule, ja_metrics
from orizuru.corpus.read import read_file

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "aozora_bunko_pd" / "works.jsonl"


def generate(n: int, seed: int = 0) -> list[str]:
    source = SHARED if SHARED.exists() else ROOT / "orizuru" / "data" / "corpus" / "aozora_sample.jsonl"
    works = [json.loads(line)["text"] for line in open(source, encoding="utf-8")]
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        work = rng.choice(works)
        start = rng.randrange(max(1, len(work) - 1800))
        text = work[start:start + rng.randint(1200, 2400)]
        damage = rng.random()
        if damage < 0.08:
            text = "\n".join(text.split("\n")[:3] * 4)  # duplicated lines
        elif damage < 0.16:
            text = text[:rng.randint(50, 390)]  # too short
        elif damage < 0.25:
            text += "\n" + "".join(rng.choice("アイウエオカキクケコサシスセソ") for _ in range(1500))
        docs.append(text)
    return docs


def page(i: int, text: str) -> str:
    nav = "".join(f"<li><a href='/c/{k}'>カテゴリー{k}</a></li>" for k in range(12))
    body = "".join(f"<p>{p}</p>" for p in text.split("\n") if p)
    return (f"<html><head><meta charset='utf-8'><title>記事{i}</title></head><body><nav><ul>{nav}</ul></nav>"
            f"<article><h1>記事{i}</h1>{body}</article><footer>Copyright 2024 example.jp</footer></body></html>")


def write_warc(path: Path, pages: list[str]) -> None:
    with open(path, "wb") as f:
        for i, html in enumerate(pages):
            payload = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html.encode()
            head = (f"WARC/1.1\r\nWARC-Type: response\r\nWARC-Target-URI: https://example.jp/{i}\r\n"
                    f"WARC-Record-ID: <urn:uuid:{i:032x}>\r\nContent-Type: application/http; msgtype=response\r\n"
                    f"Content-Length: {len(payload)}\r\n\r\n").encode()
            f.write(gzip.compress(head + payload + b"\r\n\r\n", 1))


def per_cpu_second(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=50_000)
    ap.add_argument("--step-docs", type=int, default=10_000)
    ap.add_argument("--pages", type=int, default=1_000)
    args = ap.parse_args()
    cfg = CorpusConfig(dedup_enabled=False)
    texts = generate(args.docs)
    tmp = Path(tempfile.mkdtemp(prefix="bench_corpus_"))
    shards = 20
    for k in range(shards):
        with open(tmp / f"in-{k:02d}.jsonl", "w", encoding="utf-8") as f:
            for i in range(k, len(texts), shards):
                f.write(json.dumps({"text": texts[i], "url": f"https://example{i % 97}.jp/{i}"}, ensure_ascii=False) + "\n")
    result: dict = {"docs": len(texts), "mean_chars": round(sum(map(len, texts)) / len(texts))}

    # per step, one process, CPU time
    cpu = dict.fromkeys(["read_jsonl", "lang", "quality", "normalize"], 0.0)
    kept = measured = 0
    for k in range(shards):
        if measured >= args.step_docs:
            break
        t = time.process_time()
        docs = list(read_file(tmp / f"in-{k:02d}.jsonl", cfg.read, lambda *a: None))
        cpu["read_jsonl"] += time.process_time() - t
        measured += len(docs)
        for d in docs:
            t = time.process_time()
            lang, _ = detect(d.text, cfg.lang)
            t2 = time.process_time()
            rule = ja_failing_rule(ja_metrics(d.text, cfg.quality_ja), cfg.quality_ja) if lang == "ja" else "lang"
            t3 = time.process_time()
            cpu["lang"] += t2 - t
            cpu["quality"] += t3 - t2
            if rule is None:
                normalize_text(d.text, cfg.normalize)
                cpu["normalize"] += time.process_time() - t3
                kept += 1
    result["steps_docs_per_cpu_s"] = {
        "read_jsonl": per_cpu_second(measured, cpu["read_jsonl"]),
        "lang": per_cpu_second(measured, cpu["lang"]),
        "quality": per_cpu_second(measured, cpu["quality"]),
        "normalize": per_cpu_second(kept, cpu["normalize"]),
    }
    result["step_docs"] = measured
    result["kept_fraction"] = round(kept / measured, 3)

    pages = [page(i, texts[i]) for i in range(min(args.pages, len(texts)))]
    write_warc(tmp / "pages.warc.gz", pages)
    t = time.process_time()
    html_docs: list[Doc] = list(read_file(tmp / "pages.warc.gz", cfg.read, lambda *a: None))
    result["steps_docs_per_cpu_s"]["read_warc"] = per_cpu_second(len(html_docs), time.process_time() - t)
    for method in ("trafilatura", "resiliparse"):
        cfg.extract.method = method
        t = time.process_time()
        for d in html_docs:
            extract_text(d.text, cfg.extract)
        result["steps_docs_per_cpu_s"][f"extract_{method}"] = per_cpu_second(len(html_docs), time.process_time() - t)

    # whole build (JSONL in, no dedup), 2 local worker processes, as the CLI runs it (a fresh process,
    # so the workers' peak RSS is not inflated by this script's memory)
    del texts, docs, html_docs, pages
    wall = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen([sys.executable, "-m", "orizuru.cli", "corpus", "build", "--input", str(tmp / "in-*.jsonl"),
                             "--output", str(tmp / "out"), "--workers", "2", "--set", "dedup_enabled=false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    driver, peak = psutil.Process(proc.pid), {}
    while proc.poll() is None:  # sample RSS (ru_maxrss would carry this script's size over the fork)
        try:
            for p in [driver, *driver.children(recursive=True)]:
                peak[p.pid] = max(peak.get(p.pid, 0), p.memory_info().rss)
        except psutil.Error:
            pass
        time.sleep(0.2)
    assert proc.returncode == 0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter() - wall
    stats = json.loads((tmp / "out" / "stats.json").read_text("utf-8"))
    child_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["build_2_workers"] = {
        "docs_in": stats["docs_in"], "docs_out": stats["docs_out"], "wall_s": round(wall, 1),
        "docs_per_s": per_cpu_second(stats["docs_in"], wall),
        "docs_per_worker_cpu_s": per_cpu_second(stats["docs_in"], child_cpu),
        "peak_rss_driver_mb": round(peak.pop(proc.pid, 0) / 2**20, 1),
        "peak_rss_per_worker_mb": round(max(peak.values(), default=0) / 2**20, 1),
        "shard_docs": stats["docs_in"] // shards,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
