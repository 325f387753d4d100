"""Tokenizer training, HF round trips, sampling, SentencePiece import and bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from orizuru.errors import UserError
from orizuru.tokenizer.cli import main as tokenizer_main
from orizuru.tokenizer.tokenizer import (
    ASSISTANT,
    BOS,
    BYTE_TOKENS,
    END,
    EOS,
    SYSTEM,
    USER,
    Tokenizer,
    expand_inputs,
    from_sentencepiece,
    iter_texts,
    sample_texts,
    train_bpe,
    train_unigram,
)

ROOT = Path(__file__).resolve().parent.parent
WIKI = ROOT / "orizuru" / "data" / "sample" / "wiki.jsonl"
EN = ROOT / "orizuru" / "data" / "tokenizer_sample" / "en_hh_rlhf.jsonl"

# chat markers, digits, emoji, a kanji outside any small vocabulary (byte fallback), full-width forms, spaces
PROBES = [
    "吾輩は猫である。名前はまだ無い。",
    f"{SYSTEM}あなたは親切です。{END}{USER}東京の人口は？{END}{ASSISTANT}約1400万人です。{END}",
    "2024年12月31日 23:59、価格は¥1,980でした。",
    "寿司🍣とビール🍺 👨‍👩‍👧",
    "𠮷野家の鰻と鱧、そして龘。",
    "ＡＢＣ１２３ ｶﾀｶﾅ",
    "  Leading and  double  spaces, tabs\tand\nnewlines.  ",
    "",
]


def wiki_texts(n: int) -> list[str]:
    return list(iter_texts([WIKI]))[:n]


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    return Tokenizer(train_bpe(wiki_texts(300) + list(iter_texts([EN])), 2000, show_progress=False))


def check_hf_identical(tok: Tokenizer, directory: Path, texts: list[str]) -> None:
    from transformers import AutoTokenizer

    tok.save(directory)
    hf = AutoTokenizer.from_pretrained(str(directory))
    assert len(hf) == tok.vocab_size
    assert (hf.bos_token_id, hf.eos_token_id) == (tok.bos_id, tok.eos_id)
    for text in texts:
        ids = tok.encode(text)
        assert hf(text, add_special_tokens=False)["input_ids"] == ids, text
        assert hf(text)["input_ids"] == tok.encode(text, bos=True) == [tok.bos_id] + ids
        assert hf.decode(ids) == tok.decode(ids, skip_special=False)
        assert hf.decode(ids, skip_special_tokens=True) == tok.decode(ids)


def test_bpe_round_trips_through_autotokenizer(bpe, tmp_path):
    texts = PROBES + wiki_texts(1000)[-20:]
    check_hf_identical(bpe, tmp_path, texts)
    for text in texts:
        assert bpe.decode(bpe.encode(text), skip_special=False) == text  # lossless, byte fallback included
    chat = bpe.encode(PROBES[1])
    for marker in (SYSTEM, USER, ASSISTANT, END):
        assert bpe.token_id(marker) in chat
    pieces = [bpe.hf.id_to_token(i) for i in bpe.encode("1234567890")]
    assert pieces == list("1234567890")  # digits split one by one
    rare = [bpe.hf.id_to_token(i) for i in bpe.encode("龘")]
    assert rare == ["<0xE9>", "<0xBE>", "<0x98>"]  # UTF-8 bytes of U+9F98
    assert bpe.encode("龘", bos=True)[0] == bpe.bos_id == bpe.token_id(BOS) and bpe.eos_id == bpe.token_id(EOS)


def test_unigram_and_nfkc_options(tmp_path):
    texts = wiki_texts(60)
    uni = Tokenizer(train_unigram(texts, 1200, show_progress=False))
    assert uni.vocab_size <= 1200 and json.loads(uni.hf.to_str())["model"]["type"] == "Unigram"
    check_hf_identical(uni, tmp_path / "uni", PROBES + texts[:5])
    assert all(uni.decode(uni.encode(t), skip_special=False) == t for t in PROBES)

    nfkc = Tokenizer(train_bpe(texts, 600, nfkc=True, show_progress=False))
    check_hf_identical(nfkc, tmp_path / "nfkc", PROBES)
    assert nfkc.encode("ＡＢＣ１２３") == nfkc.encode("ABC123")
    assert nfkc.decode(nfkc.encode("ｶﾀｶﾅ")) == "カタカナ"


def test_bpe_vocab_is_exact_and_ids_fixed(bpe):
    assert bpe.vocab_size == 2000
    assert [bpe.hf.id_to_token(i) for i in range(8, 8 + 256)] == BYTE_TOKENS


def test_sampling_is_uniform_across_files_and_reproducible(tmp_path):
    # three files of very different sizes; every document is 10 characters long
    sizes = {"a.jsonl": 100, "b.jsonl.gz": 400, "c.txt": 1500}
    for name, n in sizes.items():
        rows = [f"{name[0]}{i:09d}" for i in range(n)]
        if name.endswith(".txt"):
            (tmp_path / name).write_text("\n\n".join(rows), encoding="utf-8")
        else:
            lines = "".join(json.dumps({"text": r}) + "\n" for r in rows)
            opener = gzip.open if name.endswith(".gz") else open
            with opener(tmp_path / name, "wt", encoding="utf-8") as f:
                f.write(lines)
    files = expand_inputs([str(tmp_path / "*")])
    assert [f.name for f in files] == ["a.jsonl", "b.jsonl.gz", "c.txt"]
    picked = list(sample_texts(files, 5000, seed=1, progress=False))  # a quarter of 20,000 characters
    assert 4000 <= sum(map(len, picked)) <= 5000
    for name, n in sizes.items():
        share = sum(t[0] == name[0] for t in picked) / n
        assert 0.15 < share < 0.35, (name, share)  # each file sampled at ~25%, not first-come
    assert picked == list(sample_texts(files, 5000, seed=1, progress=False))
    assert picked != list(sample_texts(files, 5000, seed=2, progress=False))
    assert len(list(sample_texts(files, None, progress=False))) == 2000


def test_cli_train_writes_a_loadable_directory(tmp_path, capsys):
    out = tmp_path / "tok"
    rc = tokenizer_main(["train", "--input", str(WIKI), str(EN), "--vocab-size", "800", "--output", str(out),
                         "--max-chars", "60000", "--seed", "3"])  # fmt: skip
    assert rc == 0
    meta = json.loads((out / "training.json").read_text())
    assert meta["vocab_size"] == 800 and meta["model"] == "bpe" and 30000 < meta["chars"] <= 62000
    tok = Tokenizer.load(out)
    assert tok.vocab_size == 800 and tok.decode(tok.encode(PROBES[0])) == PROBES[0]


def write_spm(tmp_path: Path, model_type: str, **options) -> Path:
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(t.replace("\n", " ") for t in wiki_texts(400)) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "m"), vocab_size=2000,
                                   model_type=model_type, character_coverage=0.99, minloglevel=2, **options)  # fmt: skip
    return tmp_path / "m.model"


@pytest.mark.parametrize(
    "model_type, options",
    [
        # Llama 2 / Swallow: BPE, byte fallback, digits split, no normalization, spaces kept
        ("bpe", dict(byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False)),
        # SentencePiece defaults: unigram, NFKC charsmap, whitespace collapsing
        ("unigram", dict(byte_fallback=True)),
    ],
)
def test_sentencepiece_import_matches_sentencepiece(tmp_path, model_type, options):
    import sentencepiece as spm

    path = write_spm(tmp_path, model_type, **options)
    sp = spm.SentencePieceProcessor(model_file=str(path))
    tok = from_sentencepiece(path)
    texts = wiki_texts(1145)[-100:] + PROBES[:-1]  # held-out paragraphs + probes
    for text in texts:
        assert tok.encode(text) == sp.encode(text), text
        assert tok.encode(text, bos=True) == sp.encode(text, add_bos=True)
        assert tok.decode(tok.encode(text)) == sp.decode(sp.encode(text))
    assert (tok.bos_id, tok.eos_id, tok.vocab_size) == (sp.bos_id(), sp.eos_id(), sp.get_piece_size())

    # a directory holding only tokenizer.model loads, and what we save loads in transformers
    only = tmp_path / "spm_only"
    only.mkdir()
    (only / "tokenizer.model").write_bytes(path.read_bytes())
    loaded = Tokenizer.load(only)
    assert loaded.encode(texts[0]) == sp.encode(texts[0])
    check_hf_identical(loaded, tmp_path / "converted", texts[:20])
    from transformers import AutoTokenizer  # a directory transformers itself wrote loads back

    AutoTokenizer.from_pretrained(str(tmp_path / "converted")).save_pretrained(str(tmp_path / "resaved"))
    resaved = Tokenizer.load(tmp_path / "resaved")
    assert resaved.encode(texts[2], bos=True) == sp.encode(texts[2], add_bos=True)
    assert (resaved.bos_id, resaved.eos_id, resaved.pad_id) == (sp.bos_id(), sp.eos_id(), sp.eos_id())  # no pad: EOS
    assert tokenizer_main(["convert", "--input", str(path), "--output", str(tmp_path / "cli")]) == 0
    assert Tokenizer.load(tmp_path / "cli").encode(texts[1]) == sp.encode(texts[1])


def test_bad_input_fails_clearly(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(UserError, match="no training text"):
        train_bpe(iter_texts([empty]), 1000, show_progress=False)
    with pytest.raises(UserError, match="vocab_size must exceed"):
        train_bpe(["abc"], 100)
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin1.txt: cannot read corpus file as UTF-8"):
        list(iter_texts([binary]))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"txt": 1}\n')
    with pytest.raises(UserError, match="bad.jsonl:2: expected an object with a string field 'text'"):
        list(iter_texts([bad_json]))
    with pytest.raises(UserError, match="tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "junk.model").write_bytes(b"\x00\x01garbage")
    with pytest.raises(UserError, match="junk.model"):
        from_sentencepiece(tmp_path / "junk.model")

    # through the CLI: exit status 2, one line naming the problem, no output directory left behind
    from orizuru.cli import main as cli_main

    out = tmp_path / "never"
    assert cli_main(["tokenizer", "train", "--input", str(tmp_path / "missing*.jsonl"), "--vocab-size", "900", "--output", str(out)]) == 2
    assert "missing*.jsonl: no such file" in capsys.readouterr().err
    assert cli_main(["tokenizer", "train", "--input", str(empty), "--vocab-size", "900", "--output", str(out)]) == 2
    assert "no training text" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".never*"))


def test_training_is_deterministic_across_processes(tmp_path):
    """Retraining on the same text must give the same ids (Rust hash maps are seeded per process)."""
    import subprocess
    import sys

    from conftest import ROOT

    code = (
        "import sys; from orizuru.tokenizer.tokenizer import Tokenizer, train_bpe, iter_texts; "
        "Tokenizer(train_bpe(iter_texts([sys.argv[1]]), 600, show_progress=False)).save(sys.argv[2])"
    )
    for name in ("a", "b"):
        subprocess.run([sys.executable, "-c", code, str(ROOT / "orizuru/data/sample/wiki.jsonl"), str(tmp_path / name)],
                       check=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
