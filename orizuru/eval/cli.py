"""`orizuru eval`: the command line of the evaluation engine (`evaluate.py`)."""

from __future__ import annotations

from orizuru.config import parse_command
from orizuru.eval.evaluate import EvalConfig, evaluate, summary_markdown


def main(argv: list[str]) -> int:
    results = evaluate(parse_command(EvalConfig, argv, "orizuru eval", "Evaluate a model directory on Japanese benchmarks."))
    print(summary_markdown(results))
    return 0
