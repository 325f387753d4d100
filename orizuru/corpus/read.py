"""Read inputs into `Doc`s: WARC (FastWARC), raw HTML files, JSONL with a text field, plain text.

HTML documents come out as decoded HTML (meta["format"] = "html") for the extract step; JSONL and
text come out as text. Every record that cannot become a document is reported to `skip(reason,
offset, detail)` and never stops the file: a bad record costs one record, a truncated stream the rest
of that file.

Charset order (as browsers do it): the HTTP Content-Type header, then `<meta charset>` /
`http-equiv`, then byte-statistics detection (Resiliparse's detector, which tells Shift_JIS, EUC-JP
and ISO-2022-JP apart). Shift_JIS is read as cp932, its superset that Japanese Windows pages use.
"""

from __future__ import annotations

import codecs
import glob
import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Callable, Iterator

from fastwarc.warc import ArchiveIterator
from resiliparse.parse.encoding import detect_encoding

from orizuru.corpus.config import ReadConfig
from orizuru.corpus.doc import Doc
from orizuru.errors import UserError

Skip = Callable[[str, int, str], None]

HTML_TYPES = ("text/html", "application/xhtml+xml", "text/plain")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:-]+)""", re.I)
_ALIASES = {"shift_jis": "cp932", "sjis": "cp932", "x-sjis": "cp932", "shift-jis": "cp932", "windows-31j": "cp932",
            "ms_kanji": "cp932", "x-euc-jp": "euc_jp", "iso-8859-1": "cp1252", "latin-1": "cp1252",
            "us-ascii": "cp1252", "ascii": "cp1252"}  # WHATWG: latin-1 / ascii labels mean windows-1252
_NEXT_RECORD = re.compile(rb"\r?\n\r?\nWARC/(?:0\.1[78]|1\.[01])\r?\nWARC-")
MAX_REPLACED = 0.01  # more U+FFFD than this share of characters: "undecodable"


def input_kind(path: Path) -> str | None:
    name = path.name.lower()
    for kind, suffixes in (("warc", (".warc", ".warc.gz", ".arc.gz")), ("html", (".html", ".htm", ".xhtml")),
                           ("jsonl", (".jsonl", ".jsonl.gz", ".ndjson")), ("text", (".txt", ".txt.gz"))):
        if name.endswith(suffixes):
            return kind
    return None


def _codec(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    label = _ALIASES.get(label, label)
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    return "cp932" if name == "shift_jis" else name


def _header_charset(content_type: str | None) -> str | None:
    m = re.search(r"charset\s*=\s*([^\s;]+)", content_type or "", re.I)
    return m.group(1) if m else None


def decode_html(body: bytes, content_type: str | None = None) -> tuple[str, str] | None:
    """Bytes -> (text, codec) by header, then <meta>, then detection; None if nothing decodes cleanly."""
    meta = _META_CHARSET.search(body[:4096])
    candidates = [_codec(_header_charset(content_type)), _codec(meta.group(1).decode("ascii", "replace") if meta else None),
                  _codec(detect_encoding(body[:65536])), "utf-8"]
    seen = []
    for enc in candidates:
        if enc and enc not in seen:
            seen.append(enc)
            text = body.decode(enc, errors="replace")
            if text.count("\ufffd") <= MAX_REPLACED * max(1, len(text)):
                return text, enc
    return None


def _dechunk(body: bytes) -> bytes:
    """Undo Transfer-Encoding: chunked (hex size line, data, CRLF; a 0-size chunk ends it)."""
    out, pos = [], 0
    while True:
        end = body.index(b"\n", pos)
        size = int(body[pos:end].split(b";")[0].strip(), 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 1:end + 1 + size])
        pos = end + 1 + size
        pos = body.index(b"\n", pos) + 1  # the CRLF after the data


def parse_http(block: bytes) -> tuple[int, dict, bytes]:
    """(status, lower-cased headers, payload). Tolerates bare \\n line ends (ClueWeb09)."""
    cuts = [i for i in (block.find(b"\r\n\r\n"), block.find(b"\n\n")) if i >= 0]
    if not cuts or not block.startswith(b"HTTP/"):
        raise ValueError("no HTTP header")
    cut = min(cuts)
    head, body = block[:cut], block[cut + (4 if block[cut:cut + 4] == b"\r\n\r\n" else 2):]
    lines = head.decode("latin-1").splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        try:
            body = _dechunk(body)
        except (ValueError, IndexError):
            pass  # already de-chunked by the crawler
    if headers.get("content-encoding", "").lower() in ("gzip", "deflate", "x-gzip"):
        try:
            body = zlib.decompress(body, 47)  # gzip or zlib header
        except zlib.error:
            pass  # already decoded by the crawler (ClueWeb09 keeps the header)
    return status, headers, body


def _html_doc(body: bytes, content_type: str | None, doc_id: str, url: str, meta: dict,
              offset: int, skip: Skip) -> Doc | None:
    if b"\x00" in body[:4096]:
        skip("binary", offset, f"{doc_id}: NUL bytes in a {content_type or 'text'} payload")
        return None
    decoded = decode_html(body, content_type)
    if decoded is None:
        skip("undecodable", offset, f"{doc_id}: no charset decodes it cleanly")
        return None
    text, enc = decoded
    fmt = "text" if (content_type or "").lower().startswith("text/plain") else "html"
    return Doc(doc_id, text, url, {**meta, "format": fmt, "encoding": enc})


def _ends_cleanly(path: Path, last_pos: int) -> bool:
    """Did the file end after a whole record? FastWARC's lenient mode stops quietly at a torn tail,
    so the tail is checked: every gzip member from the last record on must be complete."""
    with open(path, "rb") as f:
        f.seek(last_pos)
        data = f.read()
    if not path.name.endswith(".gz"):
        return data.endswith((b"\r\n\r\n", b"\n\n"))
    if not data.startswith(b"\x1f\x8b"):  # one gzip stream for the whole file: check all of it
        data = path.read_bytes()
    while data:
        d = zlib.decompressobj(47)
        try:
            while data and not d.eof:
                d.decompress(data[:1 << 20])
                data = data[1 << 20:]
        except zlib.error:
            return False
        if not d.eof:
            return False
        data = d.unused_data + data
    return True


def read_warc(path: Path, cfg: ReadConfig, skip: Skip) -> Iterator[Doc]:
    n, last_pos = 0, 0
    try:
        with open(path, "rb") as f:
            for n, rec in enumerate(ArchiveIterator(f, parse_http=False, quirks_mode=True), 1):
                offset = last_pos = rec.stream_pos
                doc_id = f"{path.name}/{n - 1}"
                kind = rec.headers.get("WARC-Type", "")
                if kind not in ("response", "resource"):
                    skip("not_response", offset, f"{doc_id}: WARC-Type {kind}")
                    continue
                if rec.content_length > cfg.max_record_bytes:
                    skip("too_large", offset, f"{doc_id}: {rec.content_length} bytes > read.max_record_bytes")
                    continue
                if "WARC-Block-Digest" in rec.headers and not rec.verify_block_digest():
                    skip("bad_digest", offset, f"{doc_id}: block does not match WARC-Block-Digest (wrong length?)")
                    continue
                block = rec.reader.read()
                if len(block) < rec.content_length:
                    skip("truncated", offset, f"{doc_id}: {len(block)} of {rec.content_length} bytes")
                    continue
                if _NEXT_RECORD.search(block):  # Content-Length too long: this block swallowed the next record
                    skip("bad_length", offset, f"{doc_id}: Content-Length runs into the next WARC record")
                    continue
                url = rec.headers.get("WARC-Target-URI", "").strip("<>")
                meta = {"source": path.name, "record": n - 1, "offset": offset}
                if kind == "response":
                    try:
                        status, headers, body = parse_http(block)
                    except (ValueError, IndexError):
                        skip("bad_http", offset, f"{doc_id}: unparsable HTTP header")
                        continue
                    if status != 200:
                        skip("http_status", offset, f"{doc_id}: HTTP {status}")
                        continue
                    content_type = headers.get("content-type", "")
                else:  # resource records are crawler logs and files: only HTML pages count as documents
                    body, content_type = block, rec.headers.get("Content-Type", "")
                    if not content_type.lower().startswith(HTML_TYPES[:2]):
                        skip("non_html", offset, f"{doc_id}: resource record of type {content_type or 'unknown'}")
                        continue
                if content_type and not content_type.lower().startswith(HTML_TYPES):
                    skip("non_html", offset, f"{doc_id}: {content_type.split(';')[0]}")
                    continue
                doc = _html_doc(body, content_type, doc_id, url, meta, offset, skip)
                if doc:
                    yield doc
    except (OSError, EOFError, zlib.error) as e:
        skip("truncated", last_pos, f"{path.name}: stream breaks after record {n}: {e}")
        return
    if n == 0:
        skip("not_warc", 0, f"{path.name}: no WARC record found")
    elif not _ends_cleanly(path, last_pos):
        skip("truncated", last_pos, f"{path.name}: the file ends inside a record after record {n - 1}")


def _open_maybe_gz(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def read_jsonl(path: Path, cfg: ReadConfig, skip: Skip) -> Iterator[Doc]:
    offset = 0
    try:
        with _open_maybe_gz(path) as f:
            for lineno, line in enumerate(f):
                start, offset = offset, offset + len(line)
                if not line.strip():
                    continue
                if len(line) > cfg.max_record_bytes:
                    skip("too_large", start, f"{path.name}:{lineno + 1}: {len(line)} bytes")
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    skip("bad_json", start, f"{path.name}:{lineno + 1}: not a JSON object")
                    continue
                text = row.get(cfg.text_field) if isinstance(row, dict) else None
                if not isinstance(text, str):
                    skip("no_text_field", start, f"{path.name}:{lineno + 1}: no string field '{cfg.text_field}'")
                    continue
                url = row.get(cfg.url_field) or ""
                own = row.get(cfg.id_field)
                meta = {"source": path.name, "record": lineno, "offset": start, "format": "text"}
                meta.update({k: row[k] for k in cfg.carry_fields if k in row})
                yield Doc(str(own) if isinstance(own, (str, int)) and str(own) else f"{path.name}/{lineno}",
                          text, url if isinstance(url, str) else "", meta)
    except (OSError, EOFError, zlib.error) as e:
        skip("truncated", offset, f"{path.name}: {e}")


def read_whole(path: Path, kind: str, cfg: ReadConfig, skip: Skip) -> Iterator[Doc]:
    """A raw HTML file or a plain-text file is one document."""
    size = path.stat().st_size
    if size > cfg.max_record_bytes:
        skip("too_large", 0, f"{path.name}: {size} bytes > read.max_record_bytes")
        return
    try:
        with _open_maybe_gz(path) as f:
            data = f.read(cfg.max_record_bytes + 1)
    except (OSError, EOFError, zlib.error) as e:
        skip("truncated", 0, f"{path.name}: {e}")
        return
    meta = {"source": path.name, "record": 0, "offset": 0}
    doc = _html_doc(data, "text/html" if kind == "html" else "text/plain", f"{path.name}/0", "", meta, 0, skip)
    if doc:
        yield doc


def expand_inputs(patterns: list[str], flag: str = "--input") -> list[Path]:
    """Globs, files and directories -> sorted unique supported files; errors name the bad pattern."""
    found: set[Path] = set()
    for pattern in patterns:
        matches = [Path(p) for p in glob.glob(pattern, recursive=True)] or ([Path(pattern)] if Path(pattern).exists() else [])
        if not matches:
            raise UserError(f"{flag} {pattern}: no such file or no file matches")
        for m in matches:
            files = sorted(p for p in m.rglob("*") if p.is_file() and input_kind(p)) if m.is_dir() else [m]
            for f in files:
                if input_kind(f) is None:
                    raise UserError(f"{flag} {f}: unsupported file type (expected .warc[.gz], .html, .jsonl[.gz], .txt)")
                found.add(f.resolve())
    if not found:
        raise UserError(f"{flag} {' '.join(patterns)}: no supported input files")
    return sorted(found)


def read_file(path: str | Path, cfg: ReadConfig, skip: Skip) -> Iterator[Doc]:
    path = Path(path)
    if path.stat().st_size == 0:
        skip("empty_file", 0, f"{path.name}: empty")
        return
    kind = input_kind(path)
    if kind == "warc":
        yield from read_warc(path, cfg, skip)
    elif kind == "jsonl":
        yield from read_jsonl(path, cfg, skip)
    else:
        yield from read_whole(path, kind, cfg, skip)
