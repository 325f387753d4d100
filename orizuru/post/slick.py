"""`orizuru slick`: label (question, answer) pairs by how well the base model knows them (SliCK).

Gekhman et al. 2024: fine-tuning on facts the model does not know teaches it to hallucinate. For
each pair, the model answers with several different few-shot exemplar sets, greedily and with
temperature sampling; with P_greedy and P_sample the fractions of correct answers:
  HighlyKnown  P_greedy = 1          MaybeKnown  0 < P_greedy < 1
  WeaklyKnown  P_greedy = 0, P_sample > 0      Unknown  both 0
An answer is correct when it contains a gold answer (after NFKC and removing spaces). The output
JSONL repeats each row with `slick`, `p_greedy`, `p_sample` (and `instruction`/`output` fields, so
it feeds `orizuru sft` directly, where `data.drop_unknown = true` leaves the Unknown rows out).
Rows are appended as they are labelled; a rerun continues after the last one written.
"""

from __future__ import annotations

import json
import random
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm import tqdm

from orizuru.config import parse_command
from orizuru.errors import UserError
from orizuru.files import append_jsonl, read_jsonl
from orizuru.model.checkpoint import load_model
from orizuru.model.generate import generate
from orizuru.post.data import BadRow, read_rows
from orizuru.runtime import inference_device
from orizuru.tokenizer.tokenizer import Tokenizer

LABELS = ("HighlyKnown", "MaybeKnown", "WeaklyKnown", "Unknown")


def label(p_greedy: float, p_sample: float) -> str:
    if p_greedy == 1:
        return "HighlyKnown"
    if p_greedy > 0:
        return "MaybeKnown"
    return "WeaklyKnown" if p_sample > 0 else "Unknown"


def normalize(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).split())


def correct(prediction: str, answers: list[str]) -> bool:
    p = normalize(prediction)
    return any(a and a in p for a in map(normalize, answers))


def qa_row(row: dict) -> tuple[str, list[str], dict]:
    """(question, gold answers, row) from a {question, answer|answers} or {instruction, output} row."""
    question = row.get("question", row.get("instruction"))
    answers = row.get("answers", row.get("answer", row.get("output")))
    answers = [answers] if isinstance(answers, (str, int, float)) else answers
    if not isinstance(question, str) or not question.strip() or not isinstance(answers, list) or not answers:
        raise BadRow("expected 'question' (or 'instruction') and 'answer'/'answers' (or 'output')")
    return question.strip(), [str(a) for a in answers], row


def read_qa(path: str, strict: bool = False) -> list[tuple[str, list[str], dict]]:
    out, _ = read_rows([path], qa_row, strict)
    if len(out) < 2:
        raise UserError(f"{path}: need at least 2 rows (the others serve as few-shot exemplars)")
    return out


def few_shot(exemplars: list[tuple[str, list[str], dict]], question: str) -> str:
    shots = "".join(f"質問: {q}\n答え: {a[0]}\n\n" for q, a, _ in exemplars)
    return f"{shots}質問: {question}\n答え:"


def slick(
    model_dir: str,
    data: str,
    out: str,
    *,
    shots: int = 4,
    prompts: int = 4,
    samples: int = 8,
    temperature: float = 0.5,
    max_new_tokens: int = 32,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    strict: bool = False,
) -> dict:
    """Label every row of `data` into `out` (continuing a partial `out`); returns the label counts.

    A bad row of `data` is skipped and shown with its file:line, or with `strict` stops the run.
    """
    rows = read_qa(data, strict)
    done = read_jsonl(out) if Path(out).exists() else []
    dev, dt = inference_device(device, dtype)
    model = load_model(model_dir, device=dev, dtype=dt).eval()
    tok = Tokenizer.load(model_dir)
    counts = Counter(r["slick"] for r in done)
    for i in tqdm(range(len(done), len(rows)), initial=len(done), total=len(rows), desc="slick", unit="row", file=sys.stderr):
        question, answers, row = rows[i]
        rng = random.Random(seed * 1_000_003 + i)
        others = [r for j, r in enumerate(rows) if j != i]
        texts = [few_shot(rng.sample(others, min(shots, len(others))), question) for _ in range(prompts)]
        ids = [tok.encode_prompt(t, model.cfg.max_seq_len - max_new_tokens)[0] for t in texts]
        with torch.no_grad():
            stop = dict(eos_id=tok.eos_id, stop_strings=["\n"], tokenizer=tok)
            greedy = generate(model, ids, max_new_tokens, **stop)
            sampled = generate(model, [ids[k % len(ids)] for k in range(samples)], max_new_tokens, temperature=temperature, seed=seed + i, **stop)
        p_greedy = sum(correct(tok.decode(g), answers) for g in greedy) / len(greedy)
        p_sample = sum(correct(tok.decode(s), answers) for s in sampled) / max(1, len(sampled))
        name = label(p_greedy, p_sample)
        counts[name] += 1
        append_jsonl(out, {
            **row, "instruction": row.get("instruction", question), "output": row.get("output", answers[0]),
            "slick": name, "p_greedy": p_greedy, "p_sample": p_sample, "greedy_answer": tok.decode(greedy[0]).strip(),
        })
    return {k: counts.get(k, 0) for k in LABELS}


@dataclass
class SlickConfig:
    """`orizuru slick`: label QA examples by what the base model knows (SliCK)."""

    model: str  # HF Llama directory (the base model to be fine-tuned)
    data: str  # QA JSONL: {question, answer|answers} or {instruction, output}
    output: str  # labelled JSONL (a rerun continues it)
    shots: int = 4  # few-shot exemplars per prompt
    prompts: int = 4  # different exemplar sets, each answered greedily
    samples: int = 8  # temperature samples per row
    temperature: float = 0.5
    max_new_tokens: int = 32
    seed: int = 0
    device: str = "auto"  # auto|cpu|cuda|cuda:N (auto: CUDA when present)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # weights' dtype (auto: bf16 on CUDA, float32 on CPU)
    strict: bool = False  # stop at the first bad row (default: skip it, reported with file:line)


def main(argv: list[str]) -> int:
    a = parse_command(SlickConfig, argv, "orizuru slick", __doc__.split("\n\n")[0])
    counts = slick(a.model, a.data, a.output, shots=a.shots, prompts=a.prompts, samples=a.samples, temperature=a.temperature,
                   max_new_tokens=a.max_new_tokens, seed=a.seed, device=a.device, dtype=a.dtype, strict=a.strict)
    print(json.dumps(counts))
    return 0
