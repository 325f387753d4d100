"""`orizuru model resize`: model surgery on Hugging Face Llama directories."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from orizuru.config import parse_subcommand
from orizuru.model.resize import resize_model_dir


@dataclass
class ModelResize:
    """Grow embeddings and lm_head for an expanded tokenizer."""

    model: str  # HF Llama directory (with its tokenizer)
    tokenizer: str  # expanded tokenizer directory ('orizuru tokenizer expand')
    output: str  # model directory to write
    init: Literal["mean", "random"] = "mean"  # new rows: mean of the old pieces' rows, or N(0, init_std)
    seed: int = 0  # seed for --init random


SUBCOMMANDS = {"resize": ModelResize}


def main(argv: list[str]) -> int:
    _, args = parse_subcommand(SUBCOMMANDS, argv, "orizuru model", "Model surgery.")
    info = resize_model_dir(args.model, args.tokenizer, args.output, init=args.init, seed=args.seed)
    print(f"resized {args.model}: {info['rows_before']} -> {info['rows_after']} rows, {info['new_tokens']} new tokens "
          f"({info['init']} init) -> {args.output}")
    return 0
