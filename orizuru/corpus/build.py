"""`orizuru corpus build`: inputs -> read -> extract -> language -> quality -> normalize -> dedup -> shards.

Shape of a build (every stage resumable, every artifact written atomically):
1. one task per input file (local processes or Ray tasks) runs the per-document steps and writes
   `work/filtered/<n>.jsonl.gz`, the pages' (host, line) keys `work/lines/<n>.npy`, then a manifest
   entry `work/manifest/<n>.json` holding its stats; a rerun skips files whose entry matches the
   input (path, size, mtime) and the config;
2. host boilerplate: keys counted per hash bucket over all files, lines on many pages of a host
   removed -> `work/clean/<n>.jsonl.gz`;
3. dedup over the clean shards in input order (orizuru.corpus.dedup), same executor;
4. one output shard per input file (`part-<n>.jsonl.gz` or `.parquet`), `stats.json`, `summary.md`.
Steps 2-4 are deterministic functions of step 1's shards and are redone on every run.
Memory is bounded by one input file's documents per worker, not by the corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from orizuru.config import to_dict
from orizuru.corpus.classifier import load_classifier
from orizuru.corpus.config import CorpusConfig
from orizuru.corpus.dedup import dedup_shards
from orizuru.corpus.doc import Doc, read_shard, write_shard
from orizuru.corpus.executor import make_map
from orizuru.corpus.extract import extract_text
from orizuru.corpus.langid import detect
from orizuru.corpus.normalize import boilerplate_keys, line_keys, normalize_text, strip_boilerplate
from orizuru.corpus.quality import c4_lines, en_failing_rule, en_metrics, host_blocked, ja_failing_rule, ja_metrics
from orizuru.corpus.read import expand_inputs, read_file
from orizuru.corpus.semdedup import semdedup_shards
from orizuru.errors import UserError
from orizuru.files import atomic_write, write_json

log = logging.getLogger("orizuru.corpus")
STEPS = ("read", "extract", "lang", "quality", "normalize", "dedup")
ROUTINE_SKIPS = {"not_response", "non_html", "http_status"}  # normal in any crawl: logged at debug level
MAX_SKIP_EXAMPLES = 20  # per input file, kept in stats.json; every skip is logged


# ---------------------------------------------------------------- per-document steps


def process_doc(doc: Doc, cfg: CorpusConfig) -> tuple[Doc | None, str, str | None]:
    """Extract, identify, judge and normalize one document: (doc or None, last step, drop reason)."""
    if doc.meta.get("format") == "html":
        doc.text = extract_text(doc.text, cfg.extract)
        doc.meta["format"] = "text"
    if not doc.text.strip():
        return None, "extract", "no_text"
    doc.meta["chars_extracted"] = len(doc.text)
    lang, score = detect(doc.text, cfg.lang)
    doc.meta.update(lang=lang, lang_score=score)
    if lang not in cfg.lang.keep:
        return None, "lang", lang
    if host_blocked(doc.url, cfg.blocked_hosts):
        return None, "quality", "blocked_host"
    if lang == "ja":
        metrics = ja_metrics(doc.text, cfg.quality_ja)
        rule = ja_failing_rule(metrics, cfg.quality_ja)
    else:
        doc.text = "\n".join(c4_lines(doc.text, cfg.quality_en.c4_min_line_words))
        metrics = en_metrics(doc.text, cfg.quality_en)
        rule = en_failing_rule(metrics, cfg.quality_en)
    doc.meta["quality"] = {k: _round(v) for k, v in metrics.items()}
    if rule:
        return None, "quality", rule
    if cfg.classifier.model:
        score = float(load_classifier(cfg.classifier.model).score([doc.text])[0])
        doc.meta["quality_score"] = round(score, 4)
        if score < cfg.classifier.threshold:
            return None, "quality", "classifier"
    if cfg.harmful.model:
        score = float(load_classifier(cfg.harmful.model).score([doc.text])[0])
        doc.meta["harmful_score"] = round(score, 4)
        if score >= cfg.harmful.threshold:
            return None, "quality", "harmful"
    doc.text = normalize_text(doc.text, cfg.normalize)
    if not doc.text:
        return None, "normalize", "empty"
    return doc, "normalize", None


def _round(v):
    if isinstance(v, float):
        return round(v, 4)
    if isinstance(v, list):
        return [_round(x) for x in v]
    return v


def config_hash(cfg: CorpusConfig) -> str:
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def process_file(task: tuple[int, str, str, CorpusConfig]) -> dict:
    """One input file -> one filtered shard + its manifest entry (returned). Skipped if already done."""
    index, path, work, cfg = task
    path, work = Path(path), Path(work)
    entry_path = work / "manifest" / f"{index:05d}.json"
    st = path.stat()
    key = {"input": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "config": config_hash(cfg)}
    if entry_path.exists():
        entry = json.loads(entry_path.read_text("utf-8"))
        if all(entry.get(k) == v for k, v in key.items()) and Path(entry["shard"]).exists():
            return entry
    skipped, skip_examples = Counter(), []

    def skip(reason: str, offset: int, detail: str) -> None:
        skipped[reason] += 1
        level = logging.DEBUG if reason in ROUTINE_SKIPS else logging.WARNING
        log.log(level, "skipped %s record at %s offset %d: %s", reason, path, offset, detail)
        if len(skip_examples) < MAX_SKIP_EXAMPLES:
            skip_examples.append({"file": path.name, "offset": offset, "reason": reason, "detail": detail})

    docs_in = Counter()
    dropped = Counter()
    langs = Counter()
    chars = Counter()
    kept: list[Doc] = []
    for doc in read_file(path, cfg.read, skip):
        docs_in["read"] += 1
        try:
            _, step, reason = process_doc(doc, cfg)  # updates doc in place
        except ImportError as e:  # a missing library is no bad page: it would skip every page
            raise UserError(f"corpus build needs {e.name or e}: install it with pip install 'orizuru[corpus]'") from None
        except Exception as e:  # a library choking on one page costs that page, not the file
            skip("step_error", doc.meta.get("offset", -1), f"{doc.id}: {type(e).__name__}: {e}")
            continue
        chars["extracted"] += doc.meta.get("chars_extracted", 0)
        for s in STEPS[1:STEPS.index(step) + 1]:  # the steps it entered
            docs_in[s] += 1
        if reason is not None:
            dropped[f"{step}:{reason}"] += 1
            continue
        langs[doc.meta["lang"]] += 1
        kept.append(doc)
    shard = work / "filtered" / f"{index:05d}.jsonl.gz"
    write_shard(shard, kept)
    keys = work / "lines" / f"{index:05d}.npy"
    with atomic_write(keys, "wb", encoding=None) as f:
        np.save(f, np.array([k for d in kept for k in sorted(line_keys(d.text, d.url))], dtype=np.uint64))
    entry = {**key, "shard": str(shard), "line_keys": str(keys), "docs_out": len(kept), "docs": dict(docs_in),
             "dropped": {k: v for k, v in sorted(dropped.items()) if v}, "skipped": dict(sorted(skipped.items())),
             "skip_examples": skip_examples, "languages": dict(sorted(langs.items())), "chars": dict(chars)}
    write_json(entry_path, entry)
    return entry


def find_boilerplate(key_files: list[str], min_pages: int, map_fn, buckets: int = 16) -> np.ndarray:
    """All (host, line) keys on >= min_pages pages of the corpus, reduced bucket by bucket."""
    parts = map_fn(boilerplate_keys, [(key_files, b, buckets, min_pages) for b in range(buckets)],
                   desc="2 boilerplate", unit="bucket")
    return np.sort(np.concatenate(parts))


def clean_shard(task: tuple[str, str, str]) -> dict:
    """Filtered shard -> shard without host boilerplate lines (pages left empty are dropped)."""
    shard, out, boilerplate_file = task
    boilerplate = set(np.load(boilerplate_file).tolist())
    docs, lines_removed, emptied = [], 0, 0
    for doc in read_shard(shard):
        doc.text, removed = strip_boilerplate(doc.text, doc.url, boilerplate)
        lines_removed += removed
        if doc.text.strip():
            docs.append(doc)
        else:
            emptied += 1
    write_shard(out, docs)
    return {"docs": len(docs), "chars": sum(len(d.text) for d in docs), "lines_removed": lines_removed,
            "emptied": emptied}


# ---------------------------------------------------------------- output


def write_output(task: tuple[str, str, list[bool] | None, str]) -> dict:
    """Filtered shard + keep mask -> final shard; returns docs and characters written."""
    shard, out, keep, fmt = task
    docs = [d for i, d in enumerate(read_shard(shard)) if keep is None or keep[i]]
    for d in docs:
        d.meta.pop("format", None)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({"id": [d.id for d in docs], "url": [d.url for d in docs], "text": [d.text for d in docs],
                          "meta": [json.dumps(d.meta, ensure_ascii=False, sort_keys=True) for d in docs]})
        with atomic_write(out, "wb", encoding=None) as f:
            pq.write_table(table, f, compression="zstd")
    else:
        write_shard(out, docs)
    return {"docs": len(docs), "chars": sum(len(d.text) for d in docs)}


def merge_stats(entries: list[dict], cleaned: list[dict], dedup_stats: dict | None, written: list[dict],
                cfg: CorpusConfig) -> dict:
    docs, dropped, skipped, langs, chars = Counter(), Counter(), Counter(), Counter(), Counter()
    examples = []
    for e in entries:
        docs.update(e["docs"]), dropped.update(e["dropped"]), skipped.update(e["skipped"])
        langs.update(e["languages"]), chars.update(e["chars"])
        examples += e["skip_examples"]
    dropped["normalize:boilerplate_only"] += sum(c["emptied"] for c in cleaned)
    after_normalize = sum(c["docs"] for c in cleaned)
    out_docs = sum(w["docs"] for w in written)
    steps = {s: {"in": docs[s]} for s in STEPS[:-1]}
    outs = [docs["extract"], docs["lang"], docs["quality"], docs["normalize"], after_normalize]
    for s, n in zip(STEPS[:-1], outs):
        steps[s]["out"] = n
    steps["dedup"] = {"in": after_normalize, "out": out_docs, "enabled": dedup_stats is not None}
    by_step: dict[str, dict] = {}
    for k, v in sorted(dropped.items()):
        step, reason = k.split(":", 1)
        if v:
            by_step.setdefault(step, {})[reason] = v
    return {
        "inputs": [e["input"] for e in entries],
        "docs_in": docs["read"], "docs_out": out_docs,
        "chars": {"extracted": chars["extracted"], "normalized": sum(c["chars"] for c in cleaned),
                  "out": sum(w["chars"] for w in written)},
        "steps": steps,
        "dropped": by_step,
        "skipped": dict(sorted(skipped.items())),
        "skip_examples": examples,
        "languages_kept": dict(sorted(langs.items())),
        "boilerplate_lines_removed": sum(c["lines_removed"] for c in cleaned),
        "dedup": dedup_stats or {},
        "classifiers": {
            name: {"model": c.model, "label": load_classifier(c.model).meta["label"], "threshold": c.threshold,
                   "heldout": load_classifier(c.model).meta["heldout"], "removed": by_step.get("quality", {}).get(reason, 0)}
            for name, c, reason in (("quality", cfg.classifier, "classifier"), ("harmful", cfg.harmful, "harmful")) if c.model},
        "config": to_dict(cfg),
    }


def stats_markdown(stats: dict) -> str:
    """Per-step and per-rule statistics as Markdown (for summary.md and the demo report)."""
    lines = ["## Corpus build", "",
             f"{stats['docs_in']:,} documents read, {stats['docs_out']:,} kept; "
             f"{stats['chars']['extracted']:,} characters extracted, {stats['chars']['out']:,} written.", "",
             "| step | docs in | docs out | removed |", "|---|---:|---:|---:|"]
    for step, s in stats["steps"].items():
        lines.append(f"| {step} | {s['in']:,} | {s['out']:,} | {s['in'] - s['out']:,} |")
    lines += ["", "| step | reason (rule) | documents removed |", "|---|---|---:|"]
    for step, reasons in stats["dropped"].items():
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"| {step} | {reason} | {n:,} |")
    if stats["skipped"]:
        lines += ["", "| skipped record | count |", "|---|---:|"]
        lines += [f"| {reason} | {n:,} |" for reason, n in stats["skipped"].items()]
    if stats["dedup"]:
        shown = {k: v for k, v in stats["dedup"].items() if not isinstance(v, (list, dict))}
        lines += ["", "Deduplication: " + ", ".join(f"{k} = {v}" for k, v in shown.items())]
    if stats.get("semdedup"):
        sd = stats["semdedup"]
        lines += ["", f"SemDeDup: {sd['documents']:,} documents in {sd['clusters']:,} clusters, {sd['removed']:,} removed "
                      f"(cosine > {sd['threshold']})."]
    if stats.get("classifiers"):
        lines += ["", "| classifier | model | threshold | held-out precision | held-out recall | documents removed |",
                  "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | `{c['model']}` | {c['threshold']} | {c['heldout']['precision']:.3f} | "
                  f"{c['heldout']['recall']:.3f} | {c['removed']:,} |" for name, c in stats["classifiers"].items()]
    lines += ["", f"Languages kept: {stats['languages_kept']}; boilerplate lines removed: {stats['boilerplate_lines_removed']:,}."]
    return "\n".join(lines) + "\n"


def build_corpus(inputs: list[str], output: Path, config: CorpusConfig | None = None,
                 executor: str = "local", workers: int = 1) -> dict:
    """Build the corpus into `output`; rerunning after a crash continues where it stopped. Returns stats."""
    cfg = config or CorpusConfig()
    output = Path(output)
    files = expand_inputs(inputs)
    work = output / "work"
    for stale in work.rglob(".*.tmp"):  # temp files of a build killed mid-write; one build per output at a time
        stale.unlink()
    map_fn = make_map(executor, workers)
    entries = map_fn(process_file, [(i, str(p), str(work), cfg) for i, p in enumerate(files)],
                     desc="1 read+filter", sizes=[p.stat().st_size for p in files], unit="B",
                     count=lambda e: e["docs"].get("read", 0))
    boilerplate = find_boilerplate([e["line_keys"] for e in entries], cfg.normalize.boilerplate_min_pages, map_fn)
    with atomic_write(work / "boilerplate.npy", "wb", encoding=None) as f:
        np.save(f, boilerplate)
    shards = [work / "clean" / f"{i:05d}.jsonl.gz" for i in range(len(entries))]
    cleaned = map_fn(clean_shard, [(e["shard"], str(s), str(work / "boilerplate.npy")) for e, s in zip(entries, shards)],
                     desc="3 clean", sizes=[e["docs_out"] for e in entries], unit="doc")
    dedup_stats, masks = None, [None] * len(shards)
    if cfg.dedup_enabled:
        result = dedup_shards(shards, work / "dedup", cfg.dedup, map_fn=map_fn, sizes=[c["docs"] for c in cleaned],
                              desc="4 dedup")
        masks = [np.asarray(m, dtype=bool).tolist() for m in result.keep]
        dedup_stats = result.stats
    semdedup_stats = None
    if cfg.semdedup.model:  # on what MinHash kept
        sem_keep, semdedup_stats = semdedup_shards(shards, cfg.semdedup, masks)
        masks = [k.tolist() for k in sem_keep]
    ext = "parquet" if cfg.output.format == "parquet" else "jsonl.gz"
    outs = [output / f"part-{i:05d}.{ext}" for i in range(len(shards))]
    written = map_fn(write_output, [(str(s), str(o), m, cfg.output.format) for s, o, m in zip(shards, outs, masks)],
                     desc="5 write", sizes=[c["docs"] for c in cleaned], unit="doc")
    for stale in output.glob("part-*"):
        if stale not in outs:
            os.unlink(stale)
    stats = merge_stats(entries, cleaned, dedup_stats, written, cfg)
    if semdedup_stats is not None:
        stats["semdedup"] = semdedup_stats
    write_json(output / "stats.json", stats)
    with atomic_write(output / "summary.md") as f:
        f.write(stats_markdown(stats))
    return stats


def dry_run(inputs: list[str], cfg: CorpusConfig, sample: int) -> list[dict]:
    """What the steps do to the first `sample` documents (and skipped records), writing nothing."""
    rows: list[dict] = []
    for path in expand_inputs(inputs):
        def skip(reason: str, offset: int, detail: str) -> None:
            rows.append({"id": f"{path.name}@{offset}", "kept": False, "step": "read", "reason": reason, "detail": detail})

        for doc in read_file(path, cfg.read, skip):
            _, step, reason = process_doc(doc, cfg)  # doc is updated in place, kept or not
            rows.append({"id": doc.id, "url": doc.url, "kept": reason is None, "step": step, "reason": reason,
                         "lang": doc.meta.get("lang"), "lang_score": doc.meta.get("lang_score"),
                         "chars": len(doc.text), "metrics": doc.meta.get("quality"),
                         "preview": doc.text[:80].replace("\n", " / ")})
            if len(rows) >= sample:
                return rows[:sample]
    return rows[:sample]
