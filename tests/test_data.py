import json

import numpy as np
import pytest
from conftest import sample_texts

from orizuru.errors import UserError
from orizuru.tokenizer.tokenizer import Tokenizer
from orizuru.train.batches import Source, TokenBatches, val_batches
from orizuru.train.tokenize import read_meta, token_bytes, tokenize_files


def test_shards_round_trip_documents(tiny_tokenizer_dir, tiny_shards_dir):
    tok = Tokenizer.load(tiny_tokenizer_dir)
    meta = read_meta(tiny_shards_dir)
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == 512
    ids = np.concatenate([np.fromfile(tiny_shards_dir / e[s], dtype=np.uint16) for e in meta["inputs"] for s in ("train", "val")])
    # documents are <s> text </s>; splitting on </s> and decoding gives back every document
    eos = np.flatnonzero(ids == tok.eos_id)
    starts = np.concatenate([[0], eos[:-1] + 1])
    docs = {tok.decode(ids[s + 1 : e].tolist()) for s, e in zip(starts, eos)}
    assert all(ids[s] == tok.bos_id for s in starts)
    assert docs == set(sample_texts(600))
    e = meta["inputs"][0]
    assert e["val_documents"] > 0 and e["train_documents"] > 5 * e["val_documents"]


def test_token_bytes_sum_to_text_bytes(tiny_tokenizer_dir):
    tok = Tokenizer.load(tiny_tokenizer_dir)
    tb = token_bytes(tok)
    for text in sample_texts(20) + ["数字 12345 と English text, 𠮷野家"]:
        ids = tok.encode(text, bos=True)
        assert tb[ids].sum() == len(text.encode("utf-8"))


def test_batches_deterministic_and_disjoint_across_ranks(tiny_shards_dir):
    src = Source(tiny_shards_dir, "train", 32)
    one = TokenBatches([src], [1.0], batch_size=8, grad_accum=1, world=1, seed=3)
    two = TokenBatches([src], [1.0], batch_size=4, grad_accum=1, world=2, seed=3)
    for step in (0, 1, 7):
        x1, y1 = one.batch(step, 0, 0)
        xa, _ = two.batch(step, 0, 0)
        xb, _ = two.batch(step, 0, 1)
        assert np.array_equal(np.concatenate([xa, xb]), x1)  # same sequences, split across ranks
        assert not {r.tobytes() for r in xa} & {r.tobytes() for r in xb}
        assert np.array_equal(x1[:, 1:], y1[:, :-1])
        assert np.array_equal(one.batch(step, 0, 0)[0], x1)  # a pure function of the position
    seen = np.concatenate([one.batch(s, 0, 0)[0] for s in range(src.n_windows // 8)])
    assert len({r.tobytes() for r in seen}) == len(seen)  # within an epoch no window repeats


def test_mixture_weights(tiny_shards_dir):
    a, b = Source(tiny_shards_dir, "train", 32), Source(tiny_shards_dir, "train", 16)
    batches = TokenBatches([a, b], [0.9, 0.1], batch_size=10, grad_accum=2, world=1, seed=0)
    assert batches.counts.tolist() == [18, 2]


def test_val_batches_disjoint(tiny_shards_dir):
    src = Source(tiny_shards_dir, "val", 32)
    r0 = [x for x, _ in val_batches(src, 2, 2, world=2, rank=0)]
    r1 = [x for x, _ in val_batches(src, 2, 2, world=2, rank=1)]
    assert r0 and r1
    assert not {row.tobytes() for x in r0 for row in x} & {row.tobytes() for x in r1 for row in x}


def test_val_batches_spread_over_the_split(tiny_shards_dir):
    """Fewer windows than the split holds: they come from its start, middle and end, not its first documents."""
    src = Source(tiny_shards_dir, "val", 8)
    assert src.n_windows >= 12
    rows = {row.tobytes() for x, _ in val_batches(src, 2, 2, world=1, rank=0) for row in x}
    first, last = src.window_at(0)[:-1].tobytes(), src.window_at(src.n_windows - 1)[:-1].tobytes()
    assert len(rows) == 4 and first in rows and last in rows
    every = {row.tobytes() for x, _ in val_batches(src, src.n_windows, 1, world=1, rank=0) for row in x}
    assert len(every) == len({src.window_at(k)[:-1].tobytes() for k in range(src.n_windows)})  # all of it when asked for all


def test_tokenize_resumes_and_skips_finished_inputs(tmp_path, tiny_tokenizer_dir):
    a, b = tmp_path / "a.txt", tmp_path / "b.jsonl"
    a.write_text("最初の文書です。\n\n二つ目の文書。\n", encoding="utf-8")
    b.write_text(json.dumps({"text": "三つ目"}, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "shards"
    tokenize_files([a], tiny_tokenizer_dir, out, val_fraction=0.5)
    first = (out / "meta.json").read_text()
    stats = tokenize_files([a, b], tiny_tokenizer_dir, out, val_fraction=0.5)
    meta = read_meta(out)
    assert [e["documents"] for e in meta["inputs"]] == [2, 1]
    assert json.loads(first)["inputs"][0] == meta["inputs"][0]
    assert stats["train_documents"] + stats["val_documents"] == 3
    assert not list(out.glob("*.tmp"))


def test_bad_inputs(tmp_path, tiny_tokenizer_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="empty.txt"):
        tokenize_files([empty], tiny_tokenizer_dir, tmp_path / "o1")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2"):
        tokenize_files([bad], tiny_tokenizer_dir, tmp_path / "o2")
    with pytest.raises(UserError, match="missing.txt"):
        tokenize_files([tmp_path / "missing.txt"], tiny_tokenizer_dir, tmp_path / "o3")
    with pytest.raises(UserError, match="not a token shard directory"):
        Source(tmp_path, "train", 8)


def test_truncated_shard_is_detected(tmp_path, tiny_tokenizer_dir, tiny_shards_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_shards_dir, copy)
    f = copy / read_meta(copy)["inputs"][0]["train"]
    f.write_bytes(f.read_bytes()[:-6])
    with pytest.raises(UserError, match="truncated"):
        Source(copy, "train", 32)
