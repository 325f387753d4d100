"""The demo's tokenizer section: coverage of the demo tokenizer against an expanded one."""

from __future__ import annotations

from pathlib import Path

from orizuru.files import write_json
from orizuru.resources import DATA
from orizuru.tokenizer.expand import expand_vocab
from orizuru.tokenizer.report import report_dict, report_markdown
from orizuru.tokenizer.tokenizer import Tokenizer, iter_texts, train_bpe


def demo_section(tokenizer_dir: str | Path, out_dir: str | Path, *, add: int = 1000) -> str:
    """The demo's tokenizer section: its tokenizer, plus a Swallow expansion shown before/after.

    An English-only BPE (data/tokenizer_sample) stands in for an English base model's tokenizer
    and is expanded with `add` tokens learned on the shipped Aozora text; all three are measured
    on the shipped Wikipedia (Japanese) and English text. Writes `<out_dir>/tokenizer_report.json`
    and the two extra tokenizers under `<out_dir>/tokenizers/`; returns Markdown (~5 s of CPU).
    """
    root = DATA
    english, aozora, wiki = root / "tokenizer_sample" / "en_hh_rlhf.jsonl", root / "sample" / "aozora.jsonl", root / "sample" / "wiki.jsonl"
    out_dir = Path(out_dir)
    base = Tokenizer(train_bpe(iter_texts([english]), 2000, show_progress=False))
    learn, chars = [], 0
    for text in iter_texts([aozora]):
        if chars >= 200_000:
            break
        learn.append(text)
        chars += len(text)
    expanded = expand_vocab(base, learn, add, show_progress=False).tokenizer
    base.save(out_dir / "tokenizers" / "english-2k")
    expanded.save(out_dir / "tokenizers" / f"english-2k+ja{add}")
    report = report_dict(
        {"demo": Tokenizer.load(tokenizer_dir), "english-2k": base, f"english-2k+ja{add}": expanded},
        iter_texts([wiki, english]),
        max_chars=300_000,
    )
    write_json(out_dir / "tokenizer_report.json", report)
    return report_markdown(report) + (
        f"\n`english-2k` is a byte-fallback BPE trained on English only; `english-2k+ja{add}` adds the {add} most "
        "useful Japanese tokens learned on Aozora Bunko text (`orizuru tokenizer expand`): its English ids are unchanged.\n"
    )
