"""Token shards for pre-training: `orizuru tokenize` writes them, `TokenBatches` reads them.

A shard directory holds, per input file i, `train-0000i.bin` / `val-0000i.bin` (raw token ids,
uint16 when the vocabulary fits, else uint32; documents as <s> ... </s>), the tokenizer used, and
`meta.json` (the manifest: which inputs are done, token/byte counts). Inputs are streamed and
each finished input is recorded atomically, so a killed run resumes with the next input.

Batches are a pure function of (seed, step, micro-step, rank): every source is cut into
non-overlapping windows of seq_len + 1 tokens, shuffled per epoch with a seeded permutation;
each optimizer step takes round(weight * sequences per step) windows from each source. Ranks
and micro-steps take disjoint slices of the step's sequences, so 2 processes x batch 4 see
exactly what 1 process x batch 8 sees, and resuming needs only the step number.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from orizuru.config import parse_command
from orizuru.errors import UserError
from orizuru.files import atomic_write, write_json
from orizuru.tokenizer.tokenizer import BYTE_TOKENS, Tokenizer, iter_texts

META = "meta.json"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def token_bytes(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for specials), for vocabulary-invariant bits per byte."""
    out = np.zeros(tok.vocab_size, dtype=np.int64)
    specials = {t.content for t in tok.hf.get_added_tokens_decoder().values() if t.special}
    byte_tokens = set(BYTE_TOKENS)
    for piece, i in tok.hf.get_vocab(with_added_tokens=True).items():
        if piece in specials:
            continue
        out[i] = 1 if piece in byte_tokens else len(piece.replace("▁", " ").encode("utf-8"))
    return out


def _is_val(doc_index: int, seed: int, fraction: float) -> bool:
    h = hashlib.blake2b(f"{seed}:{doc_index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction


def tokenize_files(
    inputs: list[str | Path],
    tokenizer_dir: str | Path,
    output: str | Path,
    *,
    val_fraction: float = 0.01,
    seed: int = 0,
    text_field: str = "text",
    batch_docs: int = 256,
) -> dict:
    """Stream `inputs` into token shards under `output`; resumable per input file."""
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise UserError("no input files given")
    for p in inputs:
        if not p.is_file():
            raise UserError(f"{p}: input file not found")
        if p.stat().st_size == 0:
            raise UserError(f"{p}: input file is empty")
    tok = Tokenizer.load(tokenizer_dir)
    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise UserError(
            f"{tokenizer_dir}: no tokenizer.json (a SentencePiece-only directory); "
            f"run 'orizuru tokenizer convert --input {Path(tokenizer_dir) / 'tokenizer.model'} --output DIR' first"
        )
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    tok_hash = file_sha256(Path(tokenizer_dir) / "tokenizer.json")
    meta_path = out / META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    if meta is not None and meta["tokenizer_sha256"] != tok_hash:
        raise UserError(f"{out}: shards were written with a different tokenizer; use a new --output directory")
    if meta is None:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            src = Path(tokenizer_dir) / name
            if src.exists():
                with atomic_write(out / name, "wb", encoding=None) as f:
                    f.write(src.read_bytes())
        meta = {
            "format": "orizuru-tokens-v1",
            "dtype": token_dtype(tok.vocab_size).name,
            "vocab_size": tok.vocab_size,
            "tokenizer_sha256": tok_hash,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "val_fraction": val_fraction,
            "seed": seed,
            "inputs": [],
        }
    dtype = np.dtype(meta["dtype"])
    done = {entry["source"]: entry for entry in meta["inputs"]}
    eos = tok.eos_id
    for path in inputs:
        key = str(path.resolve())
        if key in done:
            continue
        stem = f"{len(meta['inputs']):05d}"
        counts = {"train": [0, 0, 0], "val": [0, 0, 0]}  # tokens, bytes, documents
        files = {s: out / f"{s}-{stem}.bin" for s in counts}
        tmp = {s: files[s].with_suffix(".bin.tmp") for s in counts}
        handles = {s: open(tmp[s], "wb") for s in counts}
        doc_index = sum(e["documents"] for e in meta["inputs"])
        try:
            with tqdm(desc=f"tokenize {path.name}", unit=" docs", total=None, file=sys.stderr) as bar:
                batch: list[str] = []
                docs = iter_texts([path], text_field)
                while True:
                    batch.clear()
                    for text in docs:
                        batch.append(text)
                        if len(batch) == batch_docs:
                            break
                    if not batch:
                        break
                    for text, ids in zip(batch, tok.encode_batch(batch, bos=True)):
                        split = "val" if _is_val(doc_index, seed, val_fraction) else "train"
                        doc_index += 1
                        ids.append(eos)
                        handles[split].write(np.asarray(ids, dtype=dtype).tobytes())
                        c = counts[split]
                        c[0] += len(ids)
                        c[1] += len(text.encode("utf-8"))
                        c[2] += 1
                    bar.update(len(batch))
        except BaseException:
            for s in counts:
                handles[s].close()
                tmp[s].unlink(missing_ok=True)
            raise
        for s in counts:
            handles[s].flush()
            os.fsync(handles[s].fileno())
            handles[s].close()
            os.replace(tmp[s], files[s])
        if counts["train"][2] + counts["val"][2] == 0:
            raise UserError(f"{path}: no documents found (expected text blocks, or JSONL with a '{text_field}' field)")
        meta["inputs"].append(
            {
                "source": key,
                "train": files["train"].name,
                "val": files["val"].name,
                "documents": counts["train"][2] + counts["val"][2],
                **{f"{s}_{k}": counts[s][i] for s in counts for i, k in enumerate(("tokens", "bytes", "documents"))},
            }
        )
        write_json(meta_path, meta)  # the manifest: this input is done
    return summarize(meta)


def summarize(meta: dict) -> dict:
    keys = ("train_tokens", "val_tokens", "train_bytes", "val_bytes", "train_documents", "val_documents")
    return {k: sum(e[k] for e in meta["inputs"]) for k in keys}


def read_meta(directory: str | Path) -> dict:
    path = Path(directory) / META
    if not path.is_file():
        raise UserError(f"{path}: not a token shard directory (run 'orizuru tokenize' to create it)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: corrupt manifest ({e})") from None
    if meta.get("format") != "orizuru-tokens-v1":
        raise UserError(f"{path}: unknown shard format {meta.get('format')!r}")
    return meta


@dataclass
class TokenizeConfig:
    """`orizuru tokenize`: stream text/JSONL files into packed token shards."""

    tokenizer: str  # directory with tokenizer.json
    input: list[str]  # text files (blank-line separated documents) or JSONL
    output: str  # shard directory (resumable: finished inputs are skipped)
    val_fraction: float = 0.01  # share of the documents held out for validation
    text_field: str = "text"  # JSONL field holding the document text
    seed: int = 0  # seed of which documents are held out


def main(argv: list[str]) -> int:
    a = parse_command(TokenizeConfig, argv, "orizuru tokenize", TokenizeConfig.__doc__)
    stats = tokenize_files(a.input, a.tokenizer, a.output, val_fraction=a.val_fraction, seed=a.seed, text_field=a.text_field)
    print(json.dumps(stats, indent=2))
    return 0
