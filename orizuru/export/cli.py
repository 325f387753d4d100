"""`orizuru export gguf`: a model directory as one GGUF file for llama.cpp and the tools built on it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from orizuru.config import parse_subcommand
from orizuru.export.writer import export_gguf


@dataclass
class ExportGGUF:
    """Write a GGUF file (llama architecture, the tokenizer, the chat template) that llama.cpp runs."""

    model: str  # HF Llama directory (config.json, safetensors, tokenizer.json)
    output: str  # the .gguf file to write
    dtype: Literal["f32", "f16", "q8_0"] = "f16"  # matrices in this type (norms stay f32; q8_0: 8-bit blocks of 32)


SUBCOMMANDS = {"gguf": ExportGGUF}


def main(argv: list[str]) -> int:
    _, args = parse_subcommand(SUBCOMMANDS, argv, "orizuru export", "Export a model to another runtime's format.")
    info = export_gguf(args.model, args.output, args.dtype)
    for w in info["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {info['output']}: {info['tensors']} tensors ({args.dtype}), {info['tokens']} tokens, {info['bytes'] / 2**20:.1f} MiB")
    return 0
