"""Corpus benchmark: orizuru's dedup against datatrove's 4-stage MinHash, same corpus, same LSH.

    python bench/bench_corpus.py [--docs 50000] [--workers 2] [--datatrove-python /tmp/venv-datatrove/bin/python]
    python bench/bench_corpus.py --dir D --system orizuru; ... --dir D --system datatrove  # one at a time

A corpus of Japanese documents (~1,800 characters, 20% planted duplicates, `tests/corpus_synth.py`)
is written as gzip-JSONL shards; each system then runs in its own subprocess with `--workers`
worker processes: orizuru's `dedup_shards` over a process pool, and datatrove's
MinhashDedupSignature -> Buckets -> Cluster -> Filter on a LocalPipelineExecutor, both with
character 5-grams and the same bands x rows. Printed as JSON: wall time, documents/s/core
(documents / wall / workers), documents per CPU-second, peak RSS of the largest worker and of
the driver, recall on planted pairs with true Jaccard >= 0.8 and precision of the removals, and
the speed ratio. datatrove needs its own venv (see README): without it only orizuru runs.
With `--dir`, the corpus and each system's result are kept there and reused, so the two systems
can run as separate commands; the report includes every result found in the directory.

The datatrove side is executed by this same file under the other interpreter
(`--run datatrove`), so it imports nothing from orizuru.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # corpus_synth: the planted-duplicate corpus the dedup tests use


def usage() -> dict:
    """CPU seconds and peak RSS (MiB) of this process and of its largest finished child."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    # VmHWM, not ru_maxrss: ru_maxrss keeps the forking parent's peak across exec
    status = Path("/proc/self/status").read_text() if Path("/proc/self/status").exists() else ""
    hwm = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")]
    return {
        "cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
        "peak_rss_worker_mib": kids.ru_maxrss / 1024,
        "peak_rss_driver_mib": (hwm[0] if hwm else me.ru_maxrss) / 1024,
    }


def run_orizuru(shards: list[Path], work: Path, workers: int, bands: int, rows: int) -> dict:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from orizuru.corpus.config import DedupConfig
    from orizuru.corpus.dedup import dedup_shards
    from orizuru.corpus.doc import read_shard

    cfg = DedupConfig(bands=bands, rows=rows)
    start = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = dedup_shards(shards, work, cfg, map_fn=lambda fn, tasks: list(pool.map(fn, tasks)))
    wall = time.perf_counter() - start
    removed = [doc.id for shard, keep in zip(shards, result.keep) for doc, k in zip(read_shard(shard), keep) if not k]
    return {"wall_s": wall, **usage(), "removed": removed}


def _char_tokenizer():
    """Characters as datatrove's "words", so its n-grams and word rules work on characters."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class CharTokenizer(WordTokenizer):
        def word_tokenize(self, text):
            return list(text)

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            return [(0, len(text))]

    return CharTokenizer()


def run_datatrove(shards: list[Path], work: Path, workers: int, bands: int, rows: int) -> dict:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows)
    folder = str(shards[0].parent)
    reader = lambda: JsonlReader(folder, glob_pattern="*.jsonl.gz", compression="gzip")  # noqa: E731
    stages = [
        ([reader(), MinhashDedupSignature(f"{work}/sigs", config=config, language=_char_tokenizer())], len(shards)),
        ([MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)], bands),
        ([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=config)], 1),
        ([reader(), MinhashDedupFilter(f"{work}/remove", exclusion_writer=JsonlWriter(f"{work}/removed"))], len(shards)),
    ]
    start = time.perf_counter()
    for i, (pipeline, tasks) in enumerate(stages):
        # spawn: the workers are this process's children, so their CPU time and RSS are counted
        LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=f"{work}/logs{i}", start_method="spawn"
        ).run()
    wall = time.perf_counter() - start
    import gzip

    removed = []
    for path in sorted(Path(work, "removed").glob("*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            removed += [json.loads(line)["id"] for line in f if line.strip()]
    return {"wall_s": wall, **usage(), "removed": removed}


def run_orizuru_build(shards: list[Path], work: Path, workers: int, bands: int, rows: int) -> dict:
    from orizuru.corpus.build import build_corpus
    from orizuru.corpus.config import CorpusConfig, DedupConfig
    cfg = CorpusConfig(dedup=DedupConfig(bands=bands, rows=rows))
    start = time.perf_counter()
    stats = build_corpus([str(s) for s in shards], work, cfg, "local", workers)
    wall = time.perf_counter() - start
    return {"wall_s": wall, **usage(), "kept": stats["steps"]["dedup"]["out"]}


def run_datatrove_build(shards: list[Path], work: Path, workers: int, bands: int, rows: int) -> dict:
    """datatrove's Gopher repetition + quality filters on characters (the Swallow rules' shape:
    duplicate lines/paragraphs, top and duplicated character n-grams, length, ellipsis lines),
    then its 4-stage MinHash, writing the kept documents."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    chars = _char_tokenizer()
    config = MinhashConfig(n_grams=5, num_buckets=bands, hashes_per_bucket=rows)
    folder = str(shards[0].parent)
    stages = [
        ([JsonlReader(folder, glob_pattern="*.jsonl.gz", compression="gzip"),
          GopherRepetitionFilter(language=chars),
          GopherQualityFilter(min_doc_words=400, max_doc_words=None, min_avg_word_length=None, max_avg_word_length=None,
                              max_non_alpha_words_ratio=None, min_stop_words=None, language=chars),
          JsonlWriter(f"{work}/filtered"),
          MinhashDedupSignature(f"{work}/sigs", config=config, language=chars)], len(shards)),
        ([MinhashDedupBuckets(f"{work}/sigs", f"{work}/buckets", config=config)], bands),
        ([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove", config=config)], 1),
        ([JsonlReader(f"{work}/filtered"), MinhashDedupFilter(f"{work}/remove"), JsonlWriter(f"{work}/output")], len(shards)),
    ]
    start = time.perf_counter()
    for i, (pipeline, tasks) in enumerate(stages):
        LocalPipelineExecutor(
            pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=f"{work}/logs{i}", start_method="spawn"
        ).run()
    return {"wall_s": time.perf_counter() - start, **usage()}


def quality(corpus, removed: list[str]) -> dict:
    """Recall on planted pairs with true Jaccard >= 0.8 (not both kept) and removal precision
    (a removed document has another document of its origin that was kept or removed earlier)."""
    from corpus_synth import jaccard

    gone = {int(i.split("/")[1]) for i in removed}
    docs = corpus.docs
    similar = [(o, c) for o, c, _ in corpus.pairs if jaccard(docs[o].text, docs[c].text) >= 0.8]
    recall = sum((o in gone) or (c in gone) for o, c in similar) / max(len(similar), 1)
    family: dict[int, list[int]] = {}
    for i, o in enumerate(corpus.origin):
        family.setdefault(o, []).append(i)
    correct = sum(len(family[corpus.origin[i]]) > 1 for i in gone)
    return {"pairs_jaccard_ge_0.8": len(similar), "recall": round(recall, 4), "removed": len(gone), "precision": round(correct / max(len(gone), 1), 4)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, default=50_000)
    p.add_argument("--doc-chars", type=int, default=1800)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--bands", type=int, default=None, help="default: from dedup.threshold")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--datatrove-python", default="/tmp/venv-datatrove/bin/python")
    p.add_argument("--dir", default=None, help="working directory, reused across runs (default: a temporary one)")
    p.add_argument("--system", choices=["both", "orizuru", "datatrove"], default="both")
    p.add_argument("--build", action="store_true", help="whole corpus build (rules + dedup) instead of dedup alone")
    p.add_argument("--run", choices=["orizuru", "datatrove"], help=argparse.SUPPRESS)
    p.add_argument("--shard-list", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.run:  # one system, in this subprocess
        shards = [Path(s) for s in json.loads(Path(args.shard_list).read_text())]
        runners = {("orizuru", False): run_orizuru, ("datatrove", False): run_datatrove,
                   ("orizuru", True): run_orizuru_build, ("datatrove", True): run_datatrove_build}
        fn = runners[args.run, args.build]
        out = fn(shards, Path(args.dir), args.workers, args.bands, args.rows)
        print(json.dumps(out))
        return 0

    from corpus_synth import load_sentences, make_corpus, write_shards

    from orizuru.corpus.config import DedupConfig
    from orizuru.corpus.dedup import bands_rows

    bands, rows = (args.bands, args.rows) if args.bands else bands_rows(DedupConfig())
    base = Path(args.dir or tempfile.mkdtemp(prefix="bench_corpus_"))
    t = time.perf_counter()
    copies = args.docs // 5
    corpus = make_corpus(load_sentences(), args.docs - copies, copies, seed=0, doc_chars=args.doc_chars)
    shard_list = base / "shards.json"
    if not shard_list.exists():  # the corpus is deterministic: an existing one is the same corpus
        shards = write_shards(corpus.docs, base / "shards", args.shards)
        shard_list.write_text(json.dumps([str(s) for s in shards]))
    report = {
        "documents": len(corpus.docs),
        "mean_chars": round(sum(len(d.text) for d in corpus.docs) / len(corpus.docs)),
        "shards": args.shards,
        "workers": args.workers,
        "ngram": 5,
        "bands": bands,
        "rows": rows,
        "generate_s": round(time.perf_counter() - t, 1),
        "measured": "build: rules + dedup" if args.build else "dedup",
    }
    systems = {}
    if args.system in ("both", "orizuru"):
        systems["orizuru"] = sys.executable
    if args.system in ("both", "datatrove"):
        if Path(args.datatrove_python).exists():
            systems["datatrove"] = args.datatrove_python
        else:
            report["datatrove"] = f"skipped: no interpreter at {args.datatrove_python}"
    suffix = "_build" if args.build else ""
    for name, python in systems.items():
        shutil.rmtree(base / (name + suffix), ignore_errors=True)
        cmd = [python, __file__, "--run", name, "--shard-list", str(shard_list), "--dir", str(base / (name + suffix)),
               "--workers", str(args.workers), "--bands", str(bands), "--rows", str(rows)] + ["--build"] * args.build
        env = dict(os.environ, PYTHONPATH=str(ROOT)) if name == "orizuru" else {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode:
            report[name] = {"error": proc.stderr[-2000:]}
            continue
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        report[name] = {
            "wall_s": round(out["wall_s"], 2),
            **({"kept": out["kept"]} if "kept" in out else {}),
            "docs_per_s_per_core": round(len(corpus.docs) / out["wall_s"] / args.workers, 1),
            "docs_per_cpu_s": round(len(corpus.docs) / out["cpu_s"], 1),
            "peak_rss_worker_mib": round(out["peak_rss_worker_mib"], 1),
            "peak_rss_driver_mib": round(out["peak_rss_driver_mib"], 1),
            **(quality(corpus, out["removed"]) if "removed" in out else {}),
        }
        (base / f"result_{name}{suffix}.json").write_text(json.dumps(report[name]))
    for name in ("orizuru", "datatrove"):
        if name not in report and (base / f"result_{name}{suffix}.json").exists():  # from an earlier --system run
            report[name] = json.loads((base / f"result_{name}{suffix}.json").read_text())
    if all(isinstance(report.get(n), dict) and "wall_s" in report[n] for n in ("orizuru", "datatrove")):
        ours, theirs = report["orizuru"], report["datatrove"]
        report["speedup_vs_datatrove_wall"] = round(theirs["wall_s"] / ours["wall_s"], 2)
        report["speedup_vs_datatrove_cpu"] = round(ours["docs_per_cpu_s"] / theirs["docs_per_cpu_s"], 2)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
