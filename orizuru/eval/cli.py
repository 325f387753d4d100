"""`orizuru eval`: the command line of the evaluation engine (`evaluate.py`)."""

from __future__ import annotations

from orizuru.config import parse_command
from orizuru.eval.evaluate import EvalConfig, evaluate, summary_markdown
from orizuru.runtime import process_group


def main(argv: list[str]) -> int:
    """Under `torchrun` every rank scores its share; rank 0 writes and prints."""
    cfg = parse_command(EvalConfig, argv, "orizuru eval", "Evaluate a model directory on Japanese benchmarks.")
    with process_group() as (rank, _):
        results = evaluate(cfg)
        if rank == 0:
            print(summary_markdown(results))
    return 0
