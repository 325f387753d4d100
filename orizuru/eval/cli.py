"""`orizuru eval`: the command line of the evaluation engine (`evaluate.py`)."""

from __future__ import annotations

import argparse

from orizuru.eval.evaluate import FAST_SUBSET, Settings, evaluate, summary_markdown
from orizuru.eval.tasks import task_names


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="orizuru eval", description="Evaluate a model directory on Japanese benchmarks.")
    p.add_argument("--model", required=True, help="HF Llama model directory (config.json, weights, tokenizer.json)")
    p.add_argument("--tasks", required=True, help=f"comma-separated task names ({', '.join(task_names())}), 'fast' or 'all'")
    p.add_argument("--output", required=True, help="output directory (a rerun resumes)")
    p.add_argument("--shots", type=int, default=None, help="few-shot exemplars per prompt (default: per task)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N examples of each task")
    p.add_argument("--templates", choices=["first", "all"], default="first", help="'all': every template, with the spread")
    p.add_argument("--permute-choices", type=int, default=0, metavar="N", help="also score N shuffled choice orders")
    p.add_argument("--samples", type=int, default=1, metavar="K", help="samples per prompt (maj@k, pass@k)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature when --samples > 1")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--max-new-tokens", type=int, default=None, help="cap on generated tokens (default: per task)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="token budget per likelihood batch")
    p.add_argument("--truncate", choices=["left", "error"], default="left",
                   help="prompts longer than the model's context: drop the oldest tokens (counted) or fail")
    a = p.parse_args(argv)
    names = {"fast": FAST_SUBSET, "all": task_names()}.get(a.tasks) or [t.strip() for t in a.tasks.split(",") if t.strip()]
    settings = Settings(shots=a.shots, templates=a.templates, permute_choices=a.permute_choices, samples=a.samples,
                        temperature=a.temperature, seed=a.seed, max_new_tokens=a.max_new_tokens, batch_tokens=a.batch_tokens, truncate=a.truncate)
    results = evaluate(a.model, names, a.limit, a.output, settings)
    print(summary_markdown(results))
    return 0
