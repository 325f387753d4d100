"""The unit every corpus step passes along, and the shard format between steps.

A shard is gzip-compressed JSONL of `{id, url, text, meta}`, one document per line, written
atomically. Intermediate shards (after filtering) and final output shards share the format.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from orizuru.files import atomic_write


@dataclass
class Doc:
    id: str  # a JSONL input's own id (read.id_field), else stable across runs: "<input file name>/<record number>"
    text: str
    url: str = ""
    meta: dict = field(default_factory=dict)  # source file/record, language score, filter scores


def write_shard(path: str | Path, docs: Iterable[Doc]) -> int:
    """Write docs as gzip JSONL, atomically; returns the number written."""
    n = 0
    with atomic_write(path, "wb", encoding=None) as raw:
        # mtime=0 and no file name (the temp name would leak in) keep the bytes identical across runs
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=6) as gz:
            for doc in docs:
                row = {"id": doc.id, "text": doc.text, "url": doc.url, "meta": doc.meta}  # asdict deep-copies
                gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
                n += 1
    return n


def read_shard(path: str | Path) -> Iterator[Doc]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield Doc(**json.loads(line))
