"""Trafilatura vs Resiliparse on the Japanese pages shipped in data/corpus/html: expected-snippet
quality (article body kept, navigation dropped) and pages/s. Prints JSON.

    python bench/bench_extract.py
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from orizuru.corpus.config import ExtractConfig
from orizuru.corpus.extract import extract_text

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    snippets = json.loads((ROOT / "tests/data/corpus/extract_snippets.json").read_text("utf-8"))
    pages = {name: (ROOT / "orizuru/data/corpus/html" / name).read_text("utf-8") for name in snippets}
    result = {}
    for method in ("trafilatura", "resiliparse"):
        cfg = ExtractConfig(method=method)
        extract_text(next(iter(pages.values())), cfg)  # import and warm up
        start = time.process_time()
        texts = {name: extract_text(html, cfg) for name, html in pages.items()}
        seconds = time.process_time() - start
        result[method] = {
            "body_snippets_kept": sum(s in texts[n] for n, v in snippets.items() for s in v["in"]),
            "body_snippets": sum(len(v["in"]) for v in snippets.values()),
            "nav_snippets_dropped": sum(s not in texts[n] for n, v in snippets.items() for s in v["out"]),
            "nav_snippets": sum(len(v["out"]) for v in snippets.values()),
            "pages_per_cpu_s": round(len(pages) / seconds, 1),
        }
    result["speed_ratio_resiliparse_over_trafilatura"] = round(
        result["resiliparse"]["pages_per_cpu_s"] / result["trafilatura"]["pages_per_cpu_s"], 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
