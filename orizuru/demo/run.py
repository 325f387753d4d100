"""The demo's own stages on the shipped sample data: its corpus (crawl samples + licensed text,
trained on the licensed part) and its sampled continuations. `orizuru demo` chains them with the
other stages as the shipped pipeline configs/pipelines/demo.toml (orizuru/pipeline/demo.py).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from orizuru.corpus.build import build_corpus
from orizuru.files import atomic_write
from orizuru.model.checkpoint import load_model
from orizuru.model.generate import generate
from orizuru.resources import DATA
from orizuru.tokenizer.tokenizer import Tokenizer

SAMPLE = DATA / "sample"
CRAWL = DATA / "corpus"
PROMPTS = ["吾輩は", "日本の首都は", "昔々あるところに", "東京都は、", "その日の夕方、", "私は", "山の上に", "この町には"]
CHUNK_CHARS = 2000  # web-page-sized documents: the Swallow rules are calibrated on those


def _pieces(text: str) -> list[str]:
    """A long work cut at line breaks into ~CHUNK_CHARS-character documents (the last kept if >= 1/5 of that)."""
    docs, piece, size = [], [], 0
    for line in text.split("\n"):
        piece.append(line)
        size += len(line)
        if size >= CHUNK_CHARS:
            docs.append("\n".join(piece).strip())
            piece, size = [], 0
    if size >= CHUNK_CHARS // 5:
        docs.append("\n".join(piece).strip())
    return docs


def sample_documents(path: Path) -> Path:
    """The licensed training text as web-page-sized documents: the demo's data mixture.

    Every shipped Aozora work (data/sample, the corpus tests' data/ja_text and the scaling sweep's
    data/scaling: the shared collection's 351 works, each once), cut
    at line breaks into ~2,000-character pieces (a whole novel trips the Gopher repetition rules
    simply by being long); Wikipedia paragraphs joined per article; and, as plain text, the train
    splits of the question sets (JCommonsenseQA train questions with their answers, the Japanese
    instructions with their responses). Evaluation splits are never read here.
    """
    if path.exists():
        return path

    docs: list[str] = []
    seen: set[str] = set()
    for file in (SAMPLE / "aozora.jsonl", DATA / "ja_text" / "aozora.jsonl.gz", DATA / "scaling" / "aozora_more.jsonl.gz"):
        for row in read_jsonl_any(file):
            if row["id"] not in seen:
                seen.add(row["id"])
                docs += _pieces(row["text"])
    articles: dict[str, list[str]] = {}
    for row in read_jsonl_any(SAMPLE / "wiki.jsonl"):
        articles.setdefault(row["title"], []).append(row["text"])
    docs += ["\n".join(paragraphs) for paragraphs in articles.values()]
    qa = [f"{row['question']}　答えは「{row['choices'][row['label']]}」。" for row in read_jsonl_any(DATA / "post" / "jcommonsenseqa_train.jsonl")]
    qa += ["\n".join(t for t in (row["instruction"], row["input"], row["output"]) if t.strip())
           for row in read_jsonl_any(DATA / "post" / "instruction_ja.jsonl")]
    docs += _pieces("\n".join(qa))  # one-line items grouped into page-sized documents
    with atomic_write(path) as f:
        for text in docs:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path


def read_jsonl_any(path: Path) -> list[dict]:
    """Rows of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stage_corpus(out: Path) -> tuple[dict, Path]:
    """Build the corpus from the crawl samples and the sample text; keep the licensed part for training.

    The WARC/HTML samples are third-party pages shipped as pipeline test inputs only: they go through
    the build (and its statistics), but only documents from the sample text are trained on.
    """
    sample = sample_documents(out / "corpus_input" / "sample.jsonl")
    inputs = sorted(str(p) for p in (CRAWL / "warc").iterdir()) + sorted(str(p) for p in (CRAWL / "html").glob("*.html"))
    stats = build_corpus(inputs + [str(sample)], out / "corpus")
    train_text = out / "train.jsonl"
    if not train_text.exists():
        with atomic_write(train_text) as f:
            for part in sorted((out / "corpus").glob("part-*.jsonl.gz")):
                with gzip.open(part, "rt", encoding="utf-8") as g:
                    for line in g:
                        doc = json.loads(line)
                        if doc["id"].startswith(f"{sample.name}/"):
                            f.write(json.dumps({"text": doc["text"]}, ensure_ascii=False) + "\n")
    return stats, train_text


SAMPLING = {"temperature": 0.8, "top_k": 40, "seed": 0}  # the demo's sampled continuations


def stage_generate(model_dir: Path, prompts: list[str], max_new_tokens: int = 64) -> list[tuple[str, str, str]]:
    """(prompt, greedy continuation, sampled continuation) per prompt. Greedy decoding of a model
    this small falls into loops; a sample at SAMPLING shows what it learned of the language."""
    model = load_model(model_dir).eval()
    tok = Tokenizer.load(model_dir)
    ids = [tok.encode_prompt(p, model.cfg.max_seq_len - max_new_tokens)[0] for p in prompts]
    greedy = generate(model, ids, max_new_tokens, eos_id=tok.eos_id)
    sampled = generate(model, ids, max_new_tokens, eos_id=tok.eos_id, **SAMPLING)
    return [(p, tok.decode(g), tok.decode(s)) for p, g, s in zip(prompts, greedy, sampled)]
