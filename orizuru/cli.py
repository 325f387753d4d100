"""`orizuru <command> ...`: each command is one module with its own `main(argv) -> int`.

Modules are imported only when their command runs, so `orizuru plan` does not pay for torch
and a part's optional dependencies are needed only by that part.
"""

from __future__ import annotations

import importlib
import sys

from orizuru.errors import UserError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("orizuru.pipeline.run", "run a pipeline file: every stage, hashed, skipped or resumed, and a report card"),
    "demo": ("orizuru.pipeline.demo", "run the whole pipeline on the shipped sample data (CPU, minutes)"),
    "tokenize": ("orizuru.train.tokenize", "turn text/JSONL files into packed token shards"),
    "pretrain": ("orizuru.train.pretrain", "pre-train (or continue pre-training) a LLaMA model"),
    "generate": ("orizuru.model.generate", "sample text from a model directory"),
    "export": ("orizuru.export.cli", "export a model directory: 'orizuru export gguf' for llama.cpp"),
    "serve": ("orizuru.serve.cli", "an OpenAI-compatible server with continuous batching and a chat page"),
    "chat": ("orizuru.serve.chat", "chat in the terminal with a model directory or a server"),
    "corpus": ("orizuru.corpus.cli", "build a clean, deduplicated corpus from WARC/HTML/JSONL/text"),
    "tokenizer": ("orizuru.tokenizer.cli", "train, expand and report on tokenizers"),
    "model": ("orizuru.model.cli", "model surgery: 'orizuru model resize' for an expanded vocabulary"),
    "eval": ("orizuru.eval.cli", "evaluate a model on Japanese benchmarks"),
    "judge": ("orizuru.eval.judge", "LLM-as-a-judge on Rakuda / Japanese MT-Bench"),
    "contamination": ("orizuru.eval.contamination", "n-gram overlap between a corpus and eval sets"),
    "sft": ("orizuru.post.sft", "instruction tuning (full or LoRA)"),
    "slick": ("orizuru.post.slick", "label QA examples by what the base model knows (SliCK)"),
    "self-instruct": ("orizuru.post.self_instruct", "generate instruction data from seed tasks"),
    "dpo": ("orizuru.post.dpo", "preference optimisation: DPO, IPO, hinge, KTO"),
    "reward": ("orizuru.post.reward", "train a Bradley-Terry reward model"),
    "ppo": ("orizuru.post.ppo", "RLHF with PPO against a reward model"),
    "plan": ("orizuru.scaling.plan", "plan a run from a compute budget (Chinchilla)"),
    "scaling": ("orizuru.scaling.cli", "IsoFLOP sweeps, scaling-law fits and predictions"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: orizuru <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'orizuru <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"orizuru: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(rest) or 0)
    except UserError as e:
        print(f"orizuru {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"orizuru {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
