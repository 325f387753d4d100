"""Deduplication: S-curve, MinHash, union-find, the four steps, quality on planted duplicates."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
from corpus_synth import jaccard, load_sentences, make_corpus, ngrams, write_shards

from orizuru.config import ConfigError, load_config
from orizuru.corpus import cli as corpus_cli
from orizuru.corpus import dedup as dd
from orizuru.corpus.doc import Doc, read_shard, write_shard
from orizuru.errors import UserError


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return load_sentences()


@pytest.fixture(scope="module")
def corpus(sentences):
    return make_corpus(sentences, originals=300, copies=200, seed=3, doc_chars=800)


def keep_all(result) -> np.ndarray:
    return np.concatenate(result.keep)


# ---------------------------------------------------------------- LSH parameters and MinHash


def test_s_curve_formula_and_choice():
    assert dd.collision_probability(0.3, 1, 1) == pytest.approx(0.3)
    assert dd.collision_probability(0.5, 2, 3) == pytest.approx(1 - (1 - 0.125) ** 2)
    b, r = dd.choose_bands_rows(0.65, 256)
    assert b * r <= 256
    assert 0.3 < dd.collision_probability(0.65, b, r) < 0.7  # the steep part sits at the threshold
    assert dd.collision_probability(0.8, b, r) > 0.97 and dd.collision_probability(0.5, b, r) < 0.1
    assert dd.choose_bands_rows(0.9, 256) != (b, r)
    # Swallow's 40 x 20 is expressible; its cut-off (1/b)^(1/r) ~ 0.83 is where P = 1 - 1/e
    cfg = dd.DedupConfig(bands=40, rows=20)
    assert dd.bands_rows(cfg) == (40, 20)
    assert (1 / 40) ** (1 / 20) == pytest.approx(0.82, abs=0.015)
    assert dd.collision_probability((1 / 40) ** (1 / 20), 40, 20) == pytest.approx(1 - (1 - 1 / 40) ** 40)
    curve = dd.s_curve(40, 20)
    assert curve[0] == [0.0, 0.0] and curve[-1] == [1.0, 1.0] and len(curve) == 21


def test_band_collisions_follow_s_curve():
    """Real signatures of sets with exactly known Jaccard collide in a band as often as P(s) says."""
    rng = np.random.default_rng(0)
    bands, rows, size = 8, 4, 600
    for s in (0.5, 0.7):
        shared = round(2 * size * s / (1 + s))  # |X & Y| / |X | Y| = s with |X| = |Y| = size
        hits = 0
        trials = 300
        for t in range(trials):
            common = rng.integers(0, 2**63, shared, dtype=np.uint64)
            x = np.concatenate([common, rng.integers(0, 2**63, size - shared, dtype=np.uint64)])
            y = np.concatenate([common, rng.integers(0, 2**63, size - shared, dtype=np.uint64)])
            offsets = np.array([0, size, 2 * size], dtype=np.uint64)
            m = dd.RMinHash.digest_matrix_from_flat_token_hashes(np.concatenate([x, y]), offsets, bands * rows, t)
            keys = dd.band_keys(np.array(m.to_rows(), dtype=np.uint32), bands, rows)
            hits += bool((keys[:, 0] == keys[:, 1]).any())
        p = dd.collision_probability(shared / (2 * size - shared), bands, rows)
        assert abs(hits / trials - p) < 4 * np.sqrt(p * (1 - p) / trials)


def test_ngram_hashes_match_ngram_sets():
    texts = ["吾輩は猫である。名前はまだ無い。", "ab", "", "吾輩は猫である。名前はまだ無い。", "あいうえおあいうえお"]
    hashes, offsets = dd.ngram_hashes(texts, 5)
    rows = [hashes[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
    for text, row in zip(texts, rows):
        assert len(row) == max(len(text) - 4, 1)
        assert len(set(row.tolist())) == len(ngrams(text, 5))  # distinct n-grams <-> distinct hashes
        alone, _ = dd.ngram_hashes([text], 5)
        assert alone.tolist() == row.tolist()  # no window leaks into the neighbouring text
    assert rows[0].tolist() == rows[3].tolist()


def test_minhash_estimates_jaccard(corpus):
    docs = corpus.docs
    pairs = [(o, c) for o, c, _ in corpus.pairs[:60]] + [(i, i + 1) for i in range(20)]
    sig = dd.minhash([d.text for d in docs], 5, 256, seed=0)
    errors = [abs((sig[a] == sig[b]).mean() - jaccard(docs[a].text, docs[b].text)) for a, b in pairs]
    assert np.mean(errors) < 0.03 and max(errors) < 0.12  # sd of the estimate is <= 0.031 at 256 hashes


# ---------------------------------------------------------------- union-find


def test_union_find_keeps_smallest_root_and_matches_components():
    uf = dd.UnionFind()
    uf.add_pairs(np.array([[5, 9], [9, 2], [7, 8], [3, 3]]))
    assert uf.find(9) == 2 and uf.find(5) == 2 and uf.find(8) == 7 and uf.find(3) == 3
    assert uf.forest().tolist() == [[5, 2], [8, 7], [9, 2]]

    rng = np.random.default_rng(1)
    edges = rng.integers(0, 300, (200, 2))
    uf = dd.UnionFind()
    uf.add_pairs(edges)
    # reference: repeated label propagation to the minimum over the edges
    label = np.arange(300)
    while True:
        new = label.copy()
        np.minimum.at(new, edges[:, 0], label[edges[:, 1]])
        np.minimum.at(new, edges[:, 1], label[edges[:, 0]])
        if (new == label).all():
            break
        label = new
    assert all(uf.find(i) == label[i] for i in range(300))


# ---------------------------------------------------------------- the four steps


def reversed_map(fn, tasks):
    """An executor that completes tasks in reverse order (results returned in task order)."""
    return [fn(t) for t in reversed(tasks)][::-1]


def pool_map(fn, tasks):
    # the platform default (fork on Linux), after this process has used rensa: must not deadlock
    with ProcessPoolExecutor(2) as pool:
        return list(pool.map(fn, tasks))


@pytest.mark.timeout(240)
def test_keep_first_deterministic_across_shards_and_workers(corpus, tmp_path):
    cfg = dd.DedupConfig()
    results = []
    for shards, map_fn in ((1, map), (3, pool_map), (7, reversed_map)):
        paths = write_shards(corpus.docs, tmp_path / f"in{shards}", shards)
        result = dd.dedup_shards(paths, tmp_path / f"work{shards}", cfg, map_fn=map_fn)
        assert [len(k) for k in result.keep] == [sum(1 for _ in read_shard(p)) for p in paths]
        results.append(result)
    masks = [keep_all(r) for r in results]
    assert all((m == masks[0]).all() for m in masks)
    assert all(r.stats == results[0].stats for r in results)
    # only the first document of a cluster is kept: the later of two exact copies always goes
    keep = masks[0]
    assert not any(keep[max(o, c)] for o, c, kind in corpus.pairs if kind == "exact")
    clusters = np.load(tmp_path / "work1" / "clusters.npy")  # (removed doc, its cluster's root)
    assert (clusters[:, 1] < clusters[:, 0]).all() and keep[clusters[:, 1]].all()
    assert not keep[clusters[:, 0]].any()


def test_exact_dedup_on_normalized_text(tmp_path):
    docs = [
        Doc("a", "東京は日本の首都である。\n人口が多い。"),
        Doc("b", "京都は古い都である。"),
        Doc("c", "東京は日本の首都である。  \n\n人口が多い。 "),  # whitespace differs
        Doc("d", "京都は古い都である。"),
        Doc("e", "ＡＢＣは英字。"),
        Doc("f", "ABCは英字。"),  # NFKC equal to e
    ]
    write_shard(tmp_path / "s0.jsonl.gz", docs[:3])
    write_shard(tmp_path / "s1.jsonl.gz", docs[3:])
    cfg = dd.DedupConfig(near=False)
    result = dd.dedup_shards([tmp_path / "s0.jsonl.gz", tmp_path / "s1.jsonl.gz"], tmp_path / "w", cfg)
    assert [m.tolist() for m in result.keep] == [[True, True, False], [False, True, False]]
    assert result.stats["exact_duplicates"] == 3 and result.stats["near_duplicates_removed"] == 0
    assert result.stats["bands"] == 0 and result.stats["clusters"] == 3

    off = dd.dedup_shards([tmp_path / "s0.jsonl.gz"], tmp_path / "w2", dd.DedupConfig(exact=False, near=False))
    assert off.keep[0].all()


def test_resume_after_crash_reuses_finished_steps(corpus, tmp_path):
    paths = write_shards(corpus.docs, tmp_path / "in", 4)
    cfg = dd.DedupConfig()
    reference = keep_all(dd.dedup_shards(paths, tmp_path / "ref", cfg))

    calls = []

    def crashing_map(fn, tasks):
        for i, task in enumerate(tasks):
            if fn is dd.buckets_task and i == 5:
                raise KeyboardInterrupt  # killed in the middle of step 2
            calls.append(fn.__name__)
            yield fn(task)

    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        dd.dedup_shards(paths, work, cfg, map_fn=crashing_map)
    key_times = [f.stat().st_mtime_ns for f in sorted((work / "keys").iterdir())]
    assert len(key_times) == 4 and len(list((work / "pairs").glob("*.npy"))) == 5
    assert not list(work.rglob("*.tmp"))  # nothing half-written

    def counting_map(fn, tasks):
        calls.append((fn.__name__, len(tasks)))
        return map(fn, tasks)

    calls.clear()
    result = dd.dedup_shards(paths, work, cfg, map_fn=counting_map)
    assert (keep_all(result) == reference).all()
    assert "signatures_task" not in dict(calls) and ("buckets_task", 1 + dd.bands_rows(cfg)[0] - 5) in calls
    assert [f.stat().st_mtime_ns for f in sorted((work / "keys").iterdir())] == key_times

    calls.clear()
    again = dd.dedup_shards(paths, work, cfg, map_fn=counting_map)  # all done: nothing recomputed
    assert (keep_all(again) == reference).all() and calls == []

    calls.clear()
    dd.dedup_shards(paths, work, dd.DedupConfig(threshold=0.8), map_fn=counting_map)  # new settings: redo
    assert ("signatures_task", 4) in calls

    docs = list(read_shard(paths[0]))
    docs[0] = Doc(docs[0].id, docs[0].text[::-1])  # same size, new content: noticed
    write_shard(paths[0], docs)
    calls.clear()
    dd.dedup_shards(paths, work, dd.DedupConfig(threshold=0.8), map_fn=counting_map)
    assert ("signatures_task", 4) in calls


def test_config_errors_name_the_key(tmp_path):
    cases = {
        "dedup.bands": {"bands": 40},
        "dedup.rows": {"rows": 20},
        "dedup.ngram": {"ngram": 0},
        "dedup.threshold": {"threshold": 1.5},
    }
    for key, section in cases.items():
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            dd.DedupConfig(**section).validate()
    with pytest.raises(ConfigError, match=r"dedup\.bands"):
        dd.DedupConfig(bands=0, rows=20).validate()
    with pytest.raises(ConfigError, match="unknown config key 'bandz'"):
        load_config(dd.DedupConfig, overrides=["bandz=3"])
    assert dd.bands_rows(load_config(dd.DedupConfig, overrides=["bands=40", "rows=20"])) == (40, 20)
    with pytest.raises(UserError, match="shard not found"):
        dd.dedup_shards([tmp_path / "missing.jsonl.gz"], tmp_path / "w", dd.DedupConfig())


# ---------------------------------------------------------------- quality on planted duplicates


def test_planted_duplicates_recall_and_precision(sentences, tmp_path):
    corpus = make_corpus(sentences, originals=1200, copies=800, seed=7, doc_chars=1200)
    paths = write_shards(corpus.docs, tmp_path / "in", 4)
    result = dd.dedup_shards(paths, tmp_path / "work", dd.DedupConfig())
    keep = keep_all(result)

    clusters = np.load(tmp_path / "work" / "clusters.npy")  # (removed doc, kept root)
    root = np.arange(len(keep))
    root[clusters[:, 0]] = clusters[:, 1]

    similar = [(o, c) for o, c, _ in corpus.pairs if jaccard(corpus.docs[o].text, corpus.docs[c].text) >= 0.8]
    recall = float(np.mean([root[o] == root[c] for o, c in similar]))  # found: in the same cluster
    origin = np.array(corpus.origin)
    precision = float(np.mean(origin[clusters[:, 0]] == origin[clusters[:, 1]]))
    print(f"planted pairs with Jaccard >= 0.8: {len(similar)}, recall {recall:.4f}; removed {len(clusters)}, precision {precision:.4f}")
    assert len(similar) > 300
    assert recall >= 0.95
    assert precision >= 0.99
    assert result.stats["kept"] == int(keep.sum())


def test_command_writes_kept_documents(corpus, tmp_path):
    paths = write_shards(corpus.docs, tmp_path / "in", 2)
    out = tmp_path / "out"
    assert corpus_cli.main(["dedup", "--input", str(tmp_path / "in" / "*.jsonl.gz"), "--output", str(out)]) == 0
    kept = [doc for p in paths for doc in read_shard(out / p.name)]
    result = dd.dedup_shards(paths, out / ".dedup", dd.DedupConfig())  # reuses the finished steps
    expected = [doc for p, keep in zip(paths, result.keep) for doc, k in zip(read_shard(p), keep) if k]
    assert kept == expected and len(kept) < len(corpus.docs)
    assert json.loads((out / "stats.json").read_text())["kept"] == len(kept)
    with pytest.raises(ConfigError, match=r"dedup\.threshold"):
        dd.main(["--input", str(paths[0]), "--output", str(out), "--set", "dedup.threshold=2"])  # python -m form
    with pytest.raises(ConfigError, match=r"dedup\.threshold"):
        corpus_cli.main(["dedup", "--input", str(paths[0]), "--output", str(out), "--set", "dedup.threshold=2"])


def test_verified_near_dup_recall_and_no_unique_removed(sentences, tmp_path):
    """Low LSH threshold for recall at 3-5% edits; the MinHash check keeps pages that only share a footer apart."""
    corpus = make_corpus(sentences, originals=600, copies=600, seed=5, doc_chars=1500, boilerplate_share=1.0,
                         kinds=("exact", "edit3", "edit5", "template"))
    paths = write_shards(corpus.docs, tmp_path / "in", 3)
    origin = np.array(corpus.origin)

    def run(cfg, name):
        result = dd.dedup_shards(paths, tmp_path / name, cfg)
        clusters = np.load(tmp_path / name / "clusters.npy")
        root = np.arange(len(origin))
        root[clusters[:, 0]] = clusters[:, 1]
        recall = {k: float(np.mean([root[o] == root[c] for o, c, kind in corpus.pairs if kind == k]))
                  for k in ("exact", "edit3", "edit5", "template")}
        wrong = int((origin[clusters[:, 0]] != origin[clusters[:, 1]]).sum())  # a unique page removed
        return recall, wrong, result.stats

    recall, wrong, stats = run(dd.DedupConfig(), "verified")
    assert recall["exact"] == 1.0 and recall["edit3"] >= 0.95 and recall["edit5"] >= 0.80, recall
    assert wrong == 0 and stats["rejected_pairs"] > 0 and stats["verify_threshold"] == 0.6
    _, unchecked_wrong, _ = run(dd.DedupConfig(verify_threshold=0), "unchecked")  # same LSH, no check
    assert unchecked_wrong > 0
