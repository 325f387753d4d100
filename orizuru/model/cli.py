"""`orizuru model resize`: model surgery on Hugging Face Llama directories."""

from __future__ import annotations

import argparse

from orizuru.model.resize import resize_model_dir


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="orizuru model", description="model surgery")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("resize", help="grow embeddings and lm_head for an expanded tokenizer")
    p.add_argument("--model", required=True, metavar="DIR", help="HF Llama directory (with its tokenizer)")
    p.add_argument("--tokenizer", required=True, metavar="NEW", help="expanded tokenizer directory ('orizuru tokenizer expand')")
    p.add_argument("--init", choices=["mean", "random"], default="mean", help="new rows: mean of the old pieces' rows, or N(0, init_std)")
    p.add_argument("--seed", type=int, default=0, help="seed for --init random")
    p.add_argument("--output", required=True, metavar="DIR")
    args = parser.parse_args(argv)
    info = resize_model_dir(args.model, args.tokenizer, args.output, init=args.init, seed=args.seed)
    print(f"resized {args.model}: {info['rows_before']} -> {info['rows_after']} rows, {info['new_tokens']} new tokens "
          f"({info['init']} init) -> {args.output}")
    return 0
