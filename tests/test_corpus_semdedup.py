"""SemDeDup: k-means + within-cluster cosine on planted paraphrases vs unrelated texts."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from core_helpers import SAMPLE, ja_tokenizer, tiny_model

from orizuru.config import ConfigError, load_config
from orizuru.corpus import cli
from orizuru.corpus.build import build_corpus
from orizuru.corpus.config import CorpusConfig, SemDedupConfig
from orizuru.corpus.doc import Doc, read_shard, write_shard
from orizuru.corpus.semdedup import embed, kmeans, normalize, semdedup_keep
from orizuru.errors import UserError
from orizuru.model.checkpoint import save_model


def planted_vectors(n=300, copies=60, dim=64, seed=0):
    """Unrelated random directions, then noisy copies of some (cosine ~0.98 to their original)."""
    rng = np.random.default_rng(seed)
    base = normalize(rng.normal(size=(n, dim)))
    src = rng.choice(n, copies, replace=False)
    return np.concatenate([base, normalize(base[src] + 0.02 * rng.normal(size=(copies, dim)))]), src


def test_removes_exactly_the_planted_copies():
    emb, _ = planted_vectors()
    keep, stats = semdedup_keep(emb, SemDedupConfig(threshold=0.95))
    assert keep[:300].all() and not keep[300:].any()  # every copy after its original; nothing unrelated
    assert stats["removed"] == 60 and stats["clusters"] == round(np.sqrt(360))


def test_first_of_a_group_is_kept_and_threshold_matters():
    emb, src = planted_vectors(n=50, copies=10)
    order = np.r_[50 + np.arange(10), np.arange(50)]  # copies first: now the originals are the later ones
    keep, _ = semdedup_keep(emb[order], SemDedupConfig(threshold=0.95, clusters=3))
    assert keep[:10].all() and (~keep[10:]).sum() == 10 and not keep[10:][src].any()
    keep_strict, _ = semdedup_keep(emb, SemDedupConfig(threshold=0.999))
    assert keep_strict.all()


def test_kmeans_finds_separated_groups():
    rng = np.random.default_rng(1)
    centers = normalize(rng.normal(size=(4, 16)))
    x = normalize(np.repeat(centers, 25, axis=0) + 0.05 * rng.normal(size=(100, 16)))
    labels = kmeans(x, 4, 20, seed=0)
    assert len(set(labels)) == 4 and all(len(set(labels[i * 25:(i + 1) * 25])) == 1 for i in range(4))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    save_model(tiny_model(), d, ja_tokenizer())
    return d


def paraphrases():
    """30 unrelated Wikipedia paragraphs, then 10 paraphrases: last sentence dropped, 1 in 30 characters replaced."""
    tok, rng = ja_tokenizer(), random.Random(0)
    rows = [json.loads(line)["text"] for line in SAMPLE.read_text(encoding="utf-8").splitlines()[200:400]]
    origs = [r for r in rows if len(re.findall(r"[^。]+。", r)) >= 3 and len(tok.encode(r)) < 250][:30]
    out = []
    for t in origs[:10]:
        sents = re.findall(r"[^。]+。", t)
        chars = list("".join(sents[:-1]) if len(sents) > 3 else "".join(sents))
        for p in rng.sample(range(len(chars)), max(1, len(chars) // 30)):
            chars[p] = rng.choice("のはがをにでと")
        out.append("".join(chars))
    return origs, out


def test_model_embeddings_separate_paraphrases_from_unrelated(model_dir):
    origs, paras = paraphrases()
    emb = embed(origs + paras, str(model_dir))
    assert emb.shape == (40, 64) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    sim = emb @ emb.T
    pairs = [sim[i, 30 + i] for i in range(10)]
    unrelated = [sim[i, j] for i in range(30) for j in range(i + 1, 30)]
    assert min(pairs) > max(unrelated)
    keep, stats = semdedup_keep(emb, SemDedupConfig(threshold=(min(pairs) + max(unrelated)) / 2, clusters=1))
    assert keep[:30].all() and not keep[30:].any()


def test_command_and_build_step(model_dir, tmp_path):
    origs, paras = paraphrases()
    shard = tmp_path / "in" / "docs.jsonl.gz"
    write_shard(shard, [Doc(f"d{i}", t) for i, t in enumerate(origs + paras)])
    np.save(tmp_path / "emb.npy", planted_vectors(n=30, copies=10)[0])  # a given embedding file: copies last
    assert cli.main(["semdedup", "--input", str(shard), "--output", str(tmp_path / "out"),
                     "--set", f"semdedup.embeddings='{tmp_path / 'emb.npy'}'"]) == 0
    kept = [d.id for d in read_shard(tmp_path / "out" / "docs.jsonl.gz")]
    assert kept == [f"d{i}" for i in range(30)]
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["removed"] == 10
    np.save(tmp_path / "short.npy", np.zeros((3, 4)))
    with pytest.raises(UserError, match="expected 40 rows"):
        cli.main(["semdedup", "--input", str(shard), "--output", str(tmp_path / "o2"), "--set", f"semdedup.embeddings='{tmp_path / 'short.npy'}'"])

    src = tmp_path / "pages.jsonl"  # the build embeds with the model, after MinHash
    src.write_text("".join(json.dumps({"id": f"p{i}", "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(origs + paras)), "utf-8")
    overrides = ["quality_ja.min_chars=0", "quality_ja.min_ja_letters=0", "quality_ja.disabled=['mean_sentence_len']"]
    plain = build_corpus([str(src)], tmp_path / "b0", load_config(CorpusConfig, overrides=overrides))
    stats = build_corpus([str(src)], tmp_path / "b1", load_config(CorpusConfig, overrides=overrides + [
        f"semdedup.model='{model_dir}'", "semdedup.threshold=0.8", "semdedup.clusters=1"]))
    assert stats["semdedup"]["removed"] > 0 and stats["docs_out"] == plain["docs_out"] - stats["semdedup"]["removed"]
    assert "SemDeDup:" in (tmp_path / "b1" / "summary.md").read_text("utf-8")


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="semdedup.model"):
        load_config(CorpusConfig, overrides=[f"semdedup.model='{tmp_path}'"])
    with pytest.raises(ConfigError, match="semdedup.embeddings"):
        load_config(CorpusConfig, overrides=["semdedup.embeddings='x.npy'"])
