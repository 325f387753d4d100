"""Exact and near-duplicate (MinHash LSH) deduplication across shards, in four map steps.

A document is the set X of its character n-grams; MinHash_h(X) = min over x in X of h(x), and
Pr[MinHash_h(X) = MinHash_h(Y)] = Jaccard(X, Y). The b*r MinHash values are cut into b bands of
r rows; two documents become candidates when all r values of any band agree, which happens
with probability P(s) = 1 - (1 - s^r)^b for Jaccard s (the S-curve). Candidates are joined into
clusters and the first document of each cluster in global (shard, position) order is kept.

The four steps each run as a map over the caller's executor (`map_fn`: serial, process pool
or Ray) and write their outputs atomically under `work_dir`, so a rerun reuses finished work:

1. signatures: per shard, the exact-text hash and the b band keys of every document
   -> `keys/<shard>.npy`, uint64 [1 + b, docs] (row 0: exact hash, row 1 + i: band i), and the
   MinHash signatures themselves -> `sigs/<shard>.npy`, uint32 [docs, b * r];
2. buckets: per band, documents whose keys agree -> `pairs/<band>.npy` (first member, other);
3. clusters: per group of bands, the candidate pairs are verified (MinHash Jaccard estimate, the
   share of equal signature values, >= `verify_threshold`; exact-hash pairs need no check), then
   union-find over the verified pairs -> `forest/<group>.npy`, then one merge of those forests
   -> `clusters.npy` (document, cluster root) for removed documents;
4. filter: per shard, a keep mask -> `keep/<shard>.npy`.

Memory per task is bounded by one shard (steps 1, 4) or one band (steps 2, 3), plus the
duplicates found; never by the whole corpus's text. Global document ids are positions in the
fixed shard order, and every union keeps the smaller id as the root, so the result does not
depend on worker count or the order in which tasks finish.

Speed (measured, 2 vCPU, ~1,800-character Japanese documents, 256 hashes): n-gram hashing in
numpy over UTF-32 code points ~22k docs/s, then rensa's Rust MinHash over those precomputed
token hashes ~58k docs/s; a pure numpy MinHash ~840 docs/s, rensa on Python string n-grams
~2,100, datasketch ~300. See ARCHITECTURE.md.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import shutil
import sys
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from rensa import RMinHash
from tqdm import tqdm

from orizuru.config import parse_command, stage_config
from orizuru.corpus.config import DedupConfig
from orizuru.corpus.doc import read_shard, write_shard
from orizuru.corpus.executor import make_map
from orizuru.errors import UserError
from orizuru.files import atomic_write, write_json

HASH_BUDGET = 256  # b * r <= this when bands/rows are chosen from the threshold
BANDS_PER_GROUP = 8  # bands merged by one union-find task in step 3
BATCH = 512  # documents hashed together in step 1
VERSION = 2  # bump when the on-disk step outputs change meaning


@dataclass
class DedupResult:
    keep: list[np.ndarray]  # per shard, bool mask in document order
    stats: dict


# ---------------------------------------------------------------- LSH parameters


def collision_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    """P(two documents with Jaccard s share at least one band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - np.asarray(s, dtype=np.float64) ** rows) ** bands


def bands_rows(cfg: DedupConfig) -> tuple[int, int]:
    """The configured (bands, rows), or the pair chosen from the threshold."""
    if cfg.bands is not None:
        return cfg.bands, cfg.rows
    return choose_bands_rows(cfg.threshold, HASH_BUDGET)


@functools.lru_cache(maxsize=64)
def choose_bands_rows(threshold: float, budget: int = HASH_BUDGET) -> tuple[int, int]:
    """(b, r) with b * r <= budget minimising the false-positive area below the threshold plus
    the false-negative area above it, so the S-curve's steep part sits at the threshold."""
    s = np.linspace(0.0, 1.0, 1001)
    below = s < threshold
    best = None
    for b in range(1, budget + 1):
        for r in range(1, budget // b + 1):
            p = collision_probability(s, b, r)
            error = np.trapezoid(np.where(below, p, 0.0), s) + np.trapezoid(np.where(below, 0.0, 1.0 - p), s)
            if best is None or error < best[0] - 1e-12:
                best = (error, b, r)
    return best[1], best[2]


def s_curve(bands: int, rows: int, points: int = 21) -> list[list[float]]:
    """[[s, P(s)], ...] on an even grid of Jaccard values, for reports."""
    s = np.linspace(0.0, 1.0, points)
    return [[round(float(x), 3), round(float(p), 4)] for x, p in zip(s, collision_probability(s, bands, rows))]


# ---------------------------------------------------------------- hashing


def exact_key(text: str) -> int:
    """64-bit hash of the text after NFKC and whitespace collapsing.

    The corpus build has already applied NFKC, and checking that is ~300x cheaper than doing it.
    """
    norm = " ".join(text.split())
    if not unicodedata.is_normalized("NFKC", norm):
        norm = unicodedata.normalize("NFKC", norm)
    return int.from_bytes(hashlib.blake2b(norm.encode("utf-8"), digest_size=8).digest(), "little")


_P = np.uint64(0x100000001B3)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer, in place: spreads the polynomial hash over all 64 bits."""
    h ^= h >> np.uint64(30)
    h *= _M1
    h ^= h >> np.uint64(27)
    h *= _M2
    h ^= h >> np.uint64(31)
    return h


def ngram_hashes(texts: list[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of every character n-gram of every text, flat, with row offsets per text.

    All texts are hashed at once over their UTF-32 code points; each is followed by n zero
    code points so that no window spans two texts and a text shorter than n (even empty)
    still gives one n-gram (itself). Returns (uint64 hashes, uint64 offsets of length len(texts) + 1).
    """
    pad = "\0" * n
    cp = np.frombuffer("".join(t + pad for t in texts).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    windows = len(cp) - n + 1
    h = np.zeros(max(windows, 0), dtype=np.uint64)
    for j in range(n):
        h *= _P
        h += cp[j : j + windows]
    _mix(h)
    counts = np.maximum(lengths - n + 1, 1)
    starts = np.concatenate([[0], np.cumsum(lengths + n)[:-1]])
    offsets = np.zeros(len(texts) + 1, dtype=np.uint64)
    np.cumsum(counts, out=offsets[1:])
    first = np.repeat(starts - offsets[:-1].astype(np.int64), counts)
    return h[first + np.arange(int(offsets[-1]))], offsets


@contextlib.contextmanager
def _one_rust_thread():
    """Run rensa with RAYON_NUM_THREADS=1, so that it starts no thread pool of its own.

    Parallelism comes from the caller's workers; and a process whose multi-threaded pool has run
    deadlocks the children it forks (ProcessPoolExecutor's default on Linux) when they use rensa.
    The variable is restored so that other Rust extensions (tokenizers) keep their threads.
    """
    saved = os.environ.get("RAYON_NUM_THREADS")
    os.environ["RAYON_NUM_THREADS"] = "1"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["RAYON_NUM_THREADS"]
        else:
            os.environ["RAYON_NUM_THREADS"] = saved


def minhash(texts: list[str], n: int, num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures, uint32 [len(texts), num_perm] (rensa's Rust kernel over numpy n-gram hashes)."""
    if not texts:
        return np.zeros((0, num_perm), dtype=np.uint32)
    hashes, offsets = ngram_hashes(texts, n)
    with _one_rust_thread():
        matrix = RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, num_perm, seed)
    return np.array(matrix.to_rows(), dtype=np.uint32).reshape(len(texts), num_perm)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per band: uint64 [bands, docs]; equal keys <=> equal r-tuples (up to 2^-64)."""
    sig = signatures[:, : bands * rows].reshape(len(signatures), bands, rows).astype(np.uint64)
    keys = np.full((len(signatures), bands), 0xCBF29CE484222325, dtype=np.uint64)
    for j in range(rows):
        keys ^= sig[:, :, j]
        keys *= _P
        _mix(keys)
    return np.ascontiguousarray(keys.T)


# ---------------------------------------------------------------- union-find


class UnionFind:
    """Disjoint sets over integer ids; the root of a set is always its smallest id."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra < rb:
            self.parent[rb] = ra
        elif rb < ra:
            self.parent[ra] = rb

    def add_pairs(self, pairs: np.ndarray) -> None:
        for a, b in pairs.tolist():
            self.union(a, b)

    def forest(self) -> np.ndarray:
        """int64 [m, 2] of (id, root) for every id that is not a root, sorted by id."""
        rows = sorted((x, self.find(x)) for x in list(self.parent) if self.find(x) != x)
        return np.array(rows, dtype=np.int64).reshape(-1, 2)


# ---------------------------------------------------------------- the four map steps


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_write(path, "wb", encoding=None) as f:
        np.save(f, array)


def signatures_task(task: tuple) -> int:
    """Step 1, one shard: exact hash + band keys of each document -> keys file, and the
    signatures -> sigs file (when candidates are verified); returns docs."""
    shard, out, sig_out, cfg, bands, rows = task
    blocks, sig_blocks, texts = [], [], []

    def flush() -> None:
        exact = np.fromiter((exact_key(t) for t in texts), dtype=np.uint64, count=len(texts))
        sig = minhash(texts, cfg.ngram, bands * rows, cfg.seed) if bands else np.zeros((len(texts), 0), np.uint32)
        near = band_keys(sig, bands, rows) if bands else np.zeros((0, len(texts)), np.uint64)
        blocks.append(np.vstack([exact[None, :], near]))
        sig_blocks.append(sig)
        texts.clear()

    for doc in read_shard(shard):
        texts.append(doc.text)
        if len(texts) == BATCH:
            flush()
    flush()
    keys = np.concatenate(blocks, axis=1)
    if sig_out is not None:
        _save(sig_out, np.concatenate(sig_blocks))
    _save(out, keys)  # last: its presence marks the task done
    return keys.shape[1]


def buckets_task(task: tuple) -> int:
    """Step 2, one band (row of the keys files): pairs (first doc with this key, later doc)."""
    row, key_files, out = task
    keys = np.concatenate([np.load(f, mmap_mode="r")[row] for f in key_files])
    order = np.argsort(keys, kind="stable")  # ties stay in global id order: the first is the smallest
    sorted_keys = keys[order]
    starts = np.ones(len(keys), dtype=bool)
    starts[1:] = sorted_keys[1:] != sorted_keys[:-1]
    first = order[starts][np.cumsum(starts) - 1]
    pairs = np.stack([first[~starts], order[~starts]], axis=1).astype(np.int64)
    _save(out, pairs)
    return len(pairs)


def gather_signatures(ids: np.ndarray, sig_files: list[str], starts: list[int]) -> np.ndarray:
    """Signature rows of global document ids, read from the per-shard files (memory-mapped)."""
    starts_arr = np.asarray(starts, dtype=np.int64)
    shard_of = np.searchsorted(starts_arr, ids, side="right") - 1
    out = None
    for s in np.unique(shard_of).tolist():
        sig = np.load(sig_files[s], mmap_mode="r")
        if out is None:
            out = np.empty((len(ids), sig.shape[1]), dtype=np.uint32)
        mask = shard_of == s
        out[mask] = sig[ids[mask] - starts_arr[s]]
    return out if out is not None else np.zeros((0, 0), dtype=np.uint32)


def verify_pairs(pairs: np.ndarray, sig_files: list[str], starts: list[int], threshold: float) -> np.ndarray:
    """The candidate pairs whose MinHash Jaccard estimate (share of equal hashes) is >= threshold."""
    if len(pairs) == 0:
        return pairs
    pairs = np.unique(pairs, axis=0)  # a pair found in several bands is checked once
    keep = np.zeros(len(pairs), dtype=bool)
    for lo in range(0, len(pairs), 65536):  # bounded memory: 2 x 64k x hashes x 4 bytes
        chunk = pairs[lo:lo + 65536]
        a = gather_signatures(chunk[:, 0], sig_files, starts)
        b = gather_signatures(chunk[:, 1], sig_files, starts)
        keep[lo:lo + len(chunk)] = (a == b).mean(axis=1) >= threshold
    return pairs[keep]


def forest_task(task: tuple) -> dict:
    """Step 3, one group of bands: verify their candidate pairs, union-find over the verified ones
    -> (doc, root) forest; the counts go next to it (`forest/<group>.json`)."""
    pair_files, out, verify = task  # pair_files: [(file, needs_check)]; verify: (sig files, starts, threshold) | None
    uf = UnionFind()
    candidates = rejected = 0
    for f, check in pair_files:
        pairs = np.load(f)
        if check and verify is not None:
            candidates += len(pairs)
            kept = verify_pairs(pairs, *verify)
            rejected += len(np.unique(pairs, axis=0)) - len(kept) if len(pairs) else 0
            pairs = kept
        uf.add_pairs(pairs)
    forest = uf.forest()
    counts = {"candidate_pairs": candidates, "rejected_pairs": rejected, "forest": len(forest)}
    write_json(Path(out).with_suffix(".json"), counts)
    _save(out, forest)
    return counts


def keep_task(task: tuple) -> np.ndarray:
    """Step 4, one shard: keep mask = not a non-root member of any cluster."""
    clusters_file, start, count, out = task
    clusters = np.load(clusters_file, mmap_mode="r")
    lo, hi = np.searchsorted(clusters[:, 0], [start, start + count]) if len(clusters) else (0, 0)
    keep = np.ones(count, dtype=bool)
    keep[np.asarray(clusters[lo:hi, 0]) - start] = False
    _save(out, keep)
    return keep


# ---------------------------------------------------------------- driver


def _run(map_fn: Callable, fn: Callable, tasks: list, desc: str, sizes: list[int] | None = None, unit: str = "task") -> list:
    """One bar per step, advanced by each task's size (documents of a shard, or bands); a map function
    from `executor.make_map` draws it itself, any other (`map`, a pool's map) is wrapped."""
    if not tasks:
        return []
    if getattr(map_fn, "progress", False):
        return map_fn(fn, tasks, desc=desc, sizes=sizes, unit=unit)
    sizes = sizes or [1] * len(tasks)
    with tqdm(total=sum(sizes), desc=desc, unit=unit, unit_scale=unit == "B", file=sys.stderr, dynamic_ncols=True) as bar:
        results = []
        for size, result in zip(sizes, map_fn(fn, tasks)):
            results.append(result)
            bar.update(size)
    return results


def _file_digest(path: Path) -> str:
    """Content hash of a shard (its compressed bytes: ~1 GB/s), so rewritten shards are noticed."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _prepare(work_dir: Path, shards: list[Path], cfg: DedupConfig, bands: int, rows: int) -> None:
    """Reuse step outputs only if they were made from the same shard contents and settings."""
    manifest = {
        "version": VERSION,
        "config": asdict(cfg),
        "bands": bands,
        "rows": rows,
        "shards": [[str(p), _file_digest(p)] for p in shards],
    }
    path = work_dir / "manifest.json"
    if path.exists() and json.loads(path.read_text(encoding="utf-8")) == manifest:
        return
    for name in ("keys", "sigs", "pairs", "forest", "keep"):
        shutil.rmtree(work_dir / name, ignore_errors=True)
    (work_dir / "clusters.npy").unlink(missing_ok=True)
    (work_dir / "stats.json").unlink(missing_ok=True)
    write_json(path, manifest)


def dedup_shards(shards: list[Path], work_dir: Path, cfg: DedupConfig, map_fn: Callable = map,
                 sizes: list[int] | None = None, desc: str = "dedup") -> DedupResult:
    """Deduplicate gzip-JSONL shards (in this fixed order); see the module docstring. `sizes`: the
    shards' document counts when known (progress in documents), else their bytes are used."""
    shards = [Path(p) for p in shards]
    work_dir = Path(work_dir)
    cfg.validate()
    for p in shards:
        if not p.is_file():
            raise UserError(f"dedup: shard not found: {p}")
    bands, rows = bands_rows(cfg) if cfg.near else (0, 0)
    work_dir.mkdir(parents=True, exist_ok=True)
    _prepare(work_dir, shards, cfg, bands, rows)

    # 1. signatures per shard
    key_files = [work_dir / "keys" / f"{i:05d}.npy" for i in range(len(shards))]
    verify = bands > 0 and cfg.verify_threshold > 0
    sig_files = [work_dir / "sigs" / f"{i:05d}.npy" for i in range(len(shards))]
    todo = [(s, f, g if verify else None, cfg, bands, rows) for s, f, g in zip(shards, key_files, sig_files) if not f.exists()]
    unit = "doc" if sizes is not None else "B"
    shard_sizes = sizes if sizes is not None else [p.stat().st_size for p in shards]
    size_of = dict(zip(map(str, shards), shard_sizes))
    _run(map_fn, signatures_task, todo, f"{desc} 1/4 signatures", [size_of[str(t[0])] for t in todo], unit)
    counts = [np.load(f, mmap_mode="r").shape[1] for f in key_files]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist()

    # 2. band buckets, one task per band (row 0: the exact hash)
    key_rows = ([0] if cfg.exact else []) + list(range(1, bands + 1))
    pair_files = {r: work_dir / "pairs" / f"{r:03d}.npy" for r in key_rows}
    todo = [(r, key_files, f) for r, f in pair_files.items() if not f.exists()]
    _run(map_fn, buckets_task, todo, f"{desc} 2/4 buckets", unit="band")

    # 3. clusters: union-find per group of bands, then one merge of the (small) forests
    clusters_file = work_dir / "clusters.npy"
    groups = [key_rows[i : i + BANDS_PER_GROUP] for i in range(0, len(key_rows), BANDS_PER_GROUP)]
    forest_files = [work_dir / "forest" / f"{g[0]:03d}.npy" for g in groups]
    if not clusters_file.exists():
        check = (list(map(str, sig_files)), starts, cfg.verify_threshold) if verify else None
        todo = [([(pair_files[r], r != 0) for r in g], f, check) for g, f in zip(groups, forest_files) if not f.exists()]
        _run(map_fn, forest_task, todo, f"{desc} 3/4 clusters", [len(t[0]) for t in todo], unit="band")
        uf = UnionFind()
        for f in forest_files:
            uf.add_pairs(np.load(f))
        _save(clusters_file, uf.forest())

    # 4. keep masks per shard
    keep_files = [work_dir / "keep" / f"{i:05d}.npy" for i in range(len(shards))]
    todo = [(clusters_file, st, n, f) for st, n, f in zip(starts, counts, keep_files) if not f.exists()]
    _run(map_fn, keep_task, todo, f"{desc} 4/4 filter", [t[2] for t in todo], unit="doc")
    keep = [np.load(f) for f in keep_files]

    clusters = np.load(clusters_file)
    exact_dups = len(np.load(pair_files[0])) if cfg.exact else 0
    removed = len(clusters)
    checked = [json.loads(f.with_suffix(".json").read_text(encoding="utf-8")) for f in forest_files]
    stats = {
        "documents": int(sum(counts)),
        "kept": int(sum(counts)) - removed,
        "exact_duplicates": exact_dups,
        "near_duplicates_removed": removed - exact_dups,
        "clusters": int(len(np.unique(clusters[:, 1]))),
        "ngram": cfg.ngram,
        "threshold": cfg.threshold,
        "verify_threshold": cfg.verify_threshold if verify else 0.0,
        "candidate_pairs": sum(c["candidate_pairs"] for c in checked),  # band pairs checked (a pair may recur across groups)
        "rejected_pairs": sum(c["rejected_pairs"] for c in checked),  # below verify_threshold: kept apart
        "bands": bands,
        "rows": rows,
        "s_curve": s_curve(bands, rows) if bands else [],
    }
    write_json(work_dir / "stats.json", stats)
    return DedupResult(keep=keep, stats=stats)


# ---------------------------------------------------------------- standalone command


@dataclass
class DedupCommandConfig:
    dedup: DedupConfig = field(default_factory=DedupConfig)


@dataclass
class DedupCommand:
    """Exact + MinHash LSH deduplication of gzip-JSONL shards."""

    input: list[str]  # shards or globs, deduplicated in this order
    output: str  # directory for the kept documents (same shard names) and stats.json
    workers: int = 1  # worker processes
    dedup: DedupCommandConfig = stage_config(DedupCommandConfig)  # a TOML file with a [dedup] section


def run_dedup_command(args: DedupCommand) -> int:
    """`orizuru corpus dedup --input SHARDS... --output DIR`: the kept documents under the same shard
    names, plus stats.json."""
    cfg = args.dedup.dedup
    shards = [Path(x) for pattern in args.input for x in (sorted(glob.glob(pattern)) or [pattern])]
    if len({s.name for s in shards}) != len(shards):
        raise UserError("dedup: input shards must have distinct file names (outputs keep the names)")
    out = Path(args.output)
    result = dedup_shards(shards, out / ".dedup", cfg, map_fn=make_map("local", args.workers))
    for shard, keep in zip(shards, result.keep):
        write_shard(out / shard.name, (doc for doc, k in zip(read_shard(shard), keep) if k))
    write_json(out / "stats.json", result.stats)
    stats = result.stats
    print(f"{stats['documents']} documents: {stats['exact_duplicates']} exact and {stats['near_duplicates_removed']} near duplicates removed "
          f"({stats['clusters']} clusters; {stats['bands']} bands x {stats['rows']} rows), {stats['kept']} kept -> {out}")
    return 0


def main(argv: list[str]) -> int:
    """`python -m orizuru.corpus.dedup ...`, the same as `orizuru corpus dedup ...`."""
    return run_dedup_command(parse_command(DedupCommand, argv, "orizuru-dedup", DedupCommand.__doc__))


if __name__ == "__main__":
    try:
        raise SystemExit(main(sys.argv[1:]))
    except UserError as e:
        raise SystemExit(f"orizuru-dedup: error: {e}")
