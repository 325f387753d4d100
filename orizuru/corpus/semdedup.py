"""SemDeDup (Abbas et al. 2023): remove documents that say the same thing in other words.

Embed every document (mean-pooled final hidden states of any Hugging Face Llama directory, or rows of
a given `.npy` file), cluster the unit vectors with spherical k-means (k-means++ start), and inside
each cluster remove every document whose cosine similarity to an earlier document (input order) is
above the threshold, so the first of each group is kept. Comparing only within clusters makes it
O(k·n + n²/k) instead of O(n²); pairs split across clusters are missed, as in the paper.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from orizuru.config import stage_config
from orizuru.corpus.config import SemDedupConfig
from orizuru.corpus.doc import read_shard, write_shard
from orizuru.errors import UserError
from orizuru.files import write_json


def embed(texts: list[str], model_dir: str, max_tokens: int = 512, batch_size: int = 16) -> np.ndarray:
    """Unit-length mean-pooled final hidden states, float32 [len(texts), dim]."""
    # torch and the model only when embedding: the build imports this module on every run (as pyarrow for parquet)
    import torch

    from orizuru.model.checkpoint import load_model
    from orizuru.runtime import setup_device
    from orizuru.tokenizer.tokenizer import Tokenizer

    device, autocast = setup_device()
    model = load_model(model_dir, device=device)
    tok = Tokenizer.load(model_dir)
    out = np.zeros((len(texts), model.cfg.dim), dtype=np.float32)
    limit = min(max_tokens, model.cfg.max_seq_len)
    for lo in tqdm(range(0, len(texts), batch_size), desc="semdedup embed", unit="batch", disable=len(texts) <= batch_size):
        ids = [(tok.encode(t)[:limit] or [tok.pad_id]) for t in texts[lo:lo + batch_size]]
        width = max(map(len, ids))
        batch = torch.tensor([x + [tok.pad_id] * (width - len(x)) for x in ids], device=device)
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids], device=device)
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
            hidden = model(batch, attention_mask=mask, return_hidden=True).float()  # right padding: causal, so real tokens never see it
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        out[lo:lo + len(ids)] = pooled.cpu().numpy()
    return normalize(out)


def normalize(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def kmeans(x: np.ndarray, k: int, iterations: int, seed: int) -> np.ndarray:
    """Spherical k-means on unit rows: k-means++ start (D^2 sampling on cosine distance), then Lloyd steps. Labels."""
    rng = np.random.default_rng(seed)
    k = max(1, min(k, len(x)))
    centers = [x[rng.integers(len(x))]]
    dist = 1.0 - x @ centers[0]
    for _ in range(1, k):
        p = np.maximum(dist, 0) ** 2  # D^2 sampling
        centers.append(x[rng.choice(len(x), p=p / p.sum())] if p.sum() > 0 else x[rng.integers(len(x))])
        dist = np.minimum(dist, 1.0 - x @ centers[-1])
    c = np.stack(centers)
    labels = np.zeros(len(x), dtype=np.int64)
    for _ in range(iterations):
        new = np.argmax(x @ c.T, axis=1)
        if (new == labels).all() and _ > 0:
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                c[j] = normalize(members.sum(0, keepdims=True))[0]
    return labels


def semdedup_keep(emb: np.ndarray, cfg: SemDedupConfig) -> tuple[np.ndarray, dict]:
    """Keep mask over the rows (in input order) and stats."""
    n = len(emb)
    if n == 0:
        return np.ones(0, dtype=bool), {"documents": 0, "removed": 0, "clusters": 0, "threshold": cfg.threshold}
    emb = normalize(np.asarray(emb, dtype=np.float32))
    k = cfg.clusters or max(1, int(round(np.sqrt(n))))
    labels = kmeans(emb, k, cfg.iterations, cfg.seed)
    keep = np.ones(n, dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)  # ascending: input order
        if len(idx) < 2:
            continue
        sim = np.triu(emb[idx] @ emb[idx].T, k=1)  # sim[i, j] for earlier i < j
        keep[idx[sim.max(axis=0) > cfg.threshold]] = False
    stats = {"documents": n, "removed": int((~keep).sum()), "clusters": int(len(np.unique(labels))),
             "threshold": cfg.threshold}
    return keep, stats


def semdedup_shards(shards: list[Path], cfg: SemDedupConfig, masks: list[list[bool] | None] | None = None) -> tuple[list[np.ndarray], dict]:
    """Per-shard keep masks; documents already removed by `masks` (the MinHash step) are not embedded."""
    masks = masks or [None] * len(shards)
    texts, where = [], []
    for s, (shard, mask) in enumerate(zip(shards, masks)):
        for i, doc in enumerate(read_shard(shard)):
            if mask is None or mask[i]:
                texts.append(doc.text)
                where.append((s, i))
    counts = [sum(1 for _ in read_shard(p)) for p in shards]
    if cfg.embeddings:
        emb = np.load(cfg.embeddings, mmap_mode="r")
        if emb.ndim != 2 or len(emb) != len(texts):
            raise UserError(f"semdedup.embeddings {cfg.embeddings}: expected {len(texts)} rows (one per input document), got shape {emb.shape}")
        emb = np.asarray(emb)
    elif cfg.model:
        emb = embed(texts, cfg.model, cfg.max_tokens, cfg.batch_size)
    else:
        raise UserError("semdedup: set semdedup.model (a Hugging Face Llama directory) or semdedup.embeddings (.npy)")
    keep_rows, stats = semdedup_keep(emb, cfg)
    keep = [np.array(m if m is not None else [True] * n, dtype=bool) for m, n in zip(masks, counts)]
    for (s, i), k in zip(where, keep_rows):
        keep[s][i] = k
    return keep, stats


@dataclass
class SemDedupCommandConfig:
    semdedup: SemDedupConfig = field(default_factory=SemDedupConfig)


@dataclass
class SemDedupCommand:
    """Semantic deduplication (SemDeDup) of gzip-JSONL shards."""

    input: list[str]  # shards or globs, in this order (the first of each group is kept)
    output: str  # directory for the kept documents (same shard names) and stats.json
    semdedup: SemDedupCommandConfig = stage_config(SemDedupCommandConfig)  # a TOML file with a [semdedup] section


def run_semdedup_command(args: SemDedupCommand) -> int:
    cfg = args.semdedup.semdedup
    shards = [Path(x) for pattern in args.input for x in (sorted(glob.glob(pattern)) or [pattern])]
    for p in shards:
        if not p.is_file():
            raise UserError(f"semdedup: shard not found: {p}")
    if len({s.name for s in shards}) != len(shards):
        raise UserError("semdedup: input shards must have distinct file names (outputs keep the names)")
    keep, stats = semdedup_shards(shards, cfg)
    out = Path(args.output)
    for shard, k in zip(shards, keep):
        write_shard(out / shard.name, (doc for doc, kk in zip(read_shard(shard), k) if kk))
    write_json(out / "stats.json", stats)
    print(f"{stats['documents']} documents, {stats['clusters']} clusters: {stats['removed']} removed "
          f"(cosine > {cfg.threshold}) -> {out}")
    return 0
