"""Benchmark the serving engine alone (no HTTP, no client threads), stepped in this thread; prints JSON.

`uniform`: 1, 4 and 16 requests of 128 prompt and 64 output tokens at once (bench_serve.py's load,
without the server), so what the engine itself costs per step can be told from what HTTP adds.
`staggered`: 64 requests of 128 prompt tokens and 8-96 output tokens through 16 slots, so slots
free up at different times and the decode batch has gaps. Greedy, EOS ignored.

    PYTHONPATH=. python bench/bench_engine.py [--model DIR] [--threads 1] [--profile]

--profile prints cProfile's top functions for the 16-request run to stderr.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_serve import OUTPUT, build_model, prompts

from orizuru.serve.engine import Engine, Request, SamplingParams


def drain(engine: Engine, profile: cProfile.Profile | None = None) -> tuple[float, int]:
    """Step the engine until it is idle: (seconds, forwards' steps)."""
    steps, start = 0, time.perf_counter()
    if profile:
        profile.enable()
    while engine._waiting or engine._prefilling or engine._running:
        engine._drop_cancelled()
        engine._admit()
        engine._step()
        steps += 1
    if profile:
        profile.disable()
    return time.perf_counter() - start, steps


def submit(engine: Engine, batch: list[list[int]], budgets: list[int]) -> None:
    for p, n in zip(batch, budgets):
        engine.submit(Request(p, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True), lambda e: None))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model directory (default: bench_serve.py's random-weight model, built here)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    model_dir = Path(args.model) if args.model else build_model(Path(tmp.name) / "bench", 256, 4)
    engine = Engine.from_dir(str(model_dir), max_batch=16, prefill_chunk=512)
    vocab = engine.model.cfg.vocab_size
    submit(engine, prompts(2, vocab, 99), [OUTPUT] * 2)  # warm-up
    drain(engine)
    result: dict = {"model": str(model_dir), "threads": args.threads, "uniform": {}}
    for c in (1, 4, 16):
        submit(engine, prompts(c, vocab, c), [OUTPUT] * c)
        prof = cProfile.Profile() if args.profile and c == 16 else None
        wall, steps = drain(engine, prof)
        result["uniform"][str(c)] = {"tokens_per_s": OUTPUT * c / wall, "steps": steps, "wall_s": wall}
        if prof:
            pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    u = result["uniform"]
    result["uniform_c16_over_c1"] = u["16"]["tokens_per_s"] / u["1"]["tokens_per_s"]
    rng = random.Random(0)
    budgets = [rng.randint(8, 96) for _ in range(64)]
    submit(engine, prompts(64, vocab, 5), budgets)
    wall, steps = drain(engine)
    result["staggered"] = {"requests": 64, "tokens_per_s": sum(budgets) / wall, "steps": steps, "wall_s": wall}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
