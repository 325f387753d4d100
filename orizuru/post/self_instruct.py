"""`orizuru self-instruct`: grow instruction data from seed tasks with a model behind an OpenAI-compatible API.

The Self-Instruct loop (Wang et al. 2023), in Japanese: show the model 8 instructions (6 seed, 2
already generated) and let it continue the numbered list; keep new instructions that pass simple
filters and whose character-level ROUGE-L against every instruction in the pool is below 0.7; ask
whether each is a classification task; then generate its instance, input first for ordinary tasks
and output (class label) first for classification tasks, so the inputs do not all lean to one label.
Any endpoint works (`--base-url`: a local server, vLLM, OpenAI). Results are appended to the output
JSONL one row at a time; a rerun continues from the rows already there.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from rapidfuzz.distance import LCSseq
from tqdm import tqdm

from orizuru.config import parse_command
from orizuru.errors import UserError
from orizuru.files import append_jsonl, read_jsonl
from orizuru.post.data import BadRow, read_rows
from orizuru.resources import DATA

# tasks a text-only model cannot do (the paper's filter list, in Japanese)
BLOCKLIST = ["画像", "写真", "グラフ", "図を", "絵を", "動画", "音声", "ファイル", "地図"]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over characters (Japanese has no spaces to split words on); whitespace is ignored."""
    c, r = re.sub(r"\s+", "", candidate), re.sub(r"\s+", "", reference)
    lcs = LCSseq.similarity(c, r)  # longest common subsequence length
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def most_similar(text: str, pool: list[str]) -> tuple[float, str | None]:
    best, which = 0.0, None
    for other in pool:
        s = rouge_l(text, other)
        if s > best:
            best, which = s, other
    return best, which


def instruction_prompt(examples: list[str]) -> str:
    lines = [
        "多様なタスクの指示を20個考えてください。これらの指示はAIアシスタントに与えられ、その回答が評価されます。",
        "指示は日本語で、1〜2文で書き、動詞の種類や形式（質問、命令、分類、書き換えなど）を多様にしてください。",
        "画像や音声を扱うタスクは含めないでください。",
        "",
        "指示の一覧:",
    ]
    lines += [f"{i}. {e}" for i, e in enumerate(examples, 1)]
    lines.append(f"{len(examples) + 1}.")
    return "\n".join(lines)


def parse_instructions(text: str, first_number: int) -> list[str]:
    """The numbered items the model wrote ("9. ...", "10. ..."); the first may lack its number."""
    text = f"{first_number}. " + text.lstrip() if not re.match(r"\s*\d+\s*[.．、]", text) else text
    items = re.findall(r"(?m)^\s*\d+\s*[.．、]\s*(.+?)\s*$", text)
    return [i.strip() for i in items if i.strip()]


def keep_instruction(text: str) -> bool:
    return 3 <= len(text) <= 150 and not any(w in text for w in BLOCKLIST) and text[0] not in "、。，．・-*#0123456789０１２３４５６７８９"


def classification_prompt(seeds: list[dict], instruction: str) -> str:
    lines = ["次の指示が、決まった選択肢（クラスラベル）から答えを選ぶ分類タスクかどうかを「はい」か「いいえ」で答えてください。", ""]
    for s in seeds:
        lines += [f"指示: {s['instruction']}", f"分類タスク: {'はい' if s['is_classification'] else 'いいえ'}", ""]
    lines += [f"指示: {instruction}", "分類タスク:"]
    return "\n".join(lines)


def instance_prompt(seeds: list[dict], instruction: str, classification: bool) -> str:
    """Input-first for ordinary tasks; output-first (label, then an input for it) for classification."""
    if classification:
        lines = ["指示に合う分類タスクの例を作ってください。まずクラスラベルを書き、次にそのラベルに当てはまる入力を書いてください。", ""]
        for s in seeds:
            lines += [f"指示: {s['instruction']}", f"クラスラベル: {s['output']}", f"入力: {s['input'] or '（なし）'}", ""]
        lines += [f"指示: {instruction}", "クラスラベル:"]
    else:
        lines = ["指示に合う入力と出力の例を作ってください。入力が不要な場合は「入力: （なし）」と書いてください。", ""]
        for s in seeds:
            lines += [f"指示: {s['instruction']}", f"入力: {s['input'] or '（なし）'}", f"出力: {s['output']}", ""]
        lines += [f"指示: {instruction}", "入力:"]
    return "\n".join(lines)


def parse_instance(text: str, classification: bool) -> tuple[str, str] | None:
    """(input, output) from the model's continuation, or None when it does not have the expected shape."""
    if classification:
        m = re.match(r"\s*(.+?)\s*\n\s*入力[:：]\s*(.*)", text, re.S)
        if not m:
            return None
        output, inp = m.group(1), m.group(2)
    else:
        m = re.match(r"\s*(.*?)\s*\n\s*出力[:：]\s*(.*)", text, re.S)
        if not m:
            return None
        inp, output = m.group(1), m.group(2)
    inp, output = inp.split("\n\n指示")[0].strip(), output.split("\n\n指示")[0].strip()
    inp = "" if inp in ("（なし）", "(なし)", "なし") else inp
    return (inp, output) if output else None


def seed_task(row: dict) -> dict:
    instruction, inp, output = row.get("instruction"), row.get("input") or "", row.get("output")
    if not all(isinstance(v, str) for v in (instruction, inp, output)):
        raise BadRow("seed tasks need string fields 'instruction' and 'output' (and 'input', if any)")
    return {"instruction": instruction, "input": inp, "output": output, "is_classification": bool(row.get("is_classification"))}


def read_seeds(path: str, strict: bool = False) -> list[dict]:
    seeds, _ = read_rows([path], seed_task, strict)
    if len(seeds) < 8:
        raise UserError(f"{path}: need at least 8 seed tasks, got {len(seeds)}")
    return seeds


def self_instruct(
    seed_path: str,
    out_path: str,
    num: int,
    *,
    base_url: str,
    model: str,
    api_key: str = "none",
    threshold: float = 0.7,
    temperature: float = 0.7,
    max_tokens: int = 1024,
    seed: int = 0,
    max_requests: int | None = None,
    strict: bool = False,
) -> dict:
    """Generate until `out_path` holds `num` instructions; returns counts of kept and filtered ones."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=2)
    seeds = read_seeds(seed_path, strict)
    done = read_jsonl(out_path) if Path(out_path).exists() else []
    pool = [s["instruction"] for s in seeds] + [d["instruction"] for d in done]
    rng = random.Random(seed + len(done))
    counts = {"kept": len(done), "similar": 0, "filtered": 0, "bad_instance": 0, "requests": 0}
    max_requests = max_requests or 20 * num

    def ask(prompt: str, temp: float) -> str:
        counts["requests"] += 1
        # a per-request seed from the run's seed: the same command against the same server gives the same rows
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], temperature=temp, max_tokens=max_tokens,
                                               seed=seed * 1_000_003 + counts["requests"])
        return reply.choices[0].message.content or ""

    bar = tqdm(total=num, initial=len(done), desc="self-instruct", unit="inst", file=sys.stderr)
    while len(done) < num:
        if counts["requests"] >= max_requests:
            raise UserError(f"self-instruct: stopped after {counts['requests']} requests with {len(done)} of {num} instructions ({counts})")
        machine = [d["instruction"] for d in done]
        shown = rng.sample([s["instruction"] for s in seeds], 6) + rng.sample(machine, min(2, len(machine)))
        shown += rng.sample([s["instruction"] for s in seeds], 8 - len(shown)) if len(shown) < 8 else []
        rng.shuffle(shown)
        for inst in parse_instructions(ask(instruction_prompt(shown), temperature), len(shown) + 1):
            if len(done) >= num:
                break
            if not keep_instruction(inst):
                counts["filtered"] += 1
                continue
            score, similar = most_similar(inst, pool)
            if score >= threshold:
                counts["similar"] += 1
                continue
            classification = ask(classification_prompt(rng.sample(seeds, 6), inst), 0.0).strip().startswith("はい")
            alike = [s for s in seeds if s["is_classification"] == classification] or seeds
            instance = parse_instance(ask(instance_prompt(rng.sample(alike, 3), inst, classification), 0.0), classification)
            if instance is None:
                counts["bad_instance"] += 1
                continue
            row = {
                "instruction": inst, "input": instance[0], "output": instance[1], "is_classification": classification,
                "most_similar": similar, "rouge_l": round(score, 4),
            }
            append_jsonl(out_path, row)
            done.append(row)
            pool.append(inst)
            counts["kept"] += 1
            bar.update(1)
    bar.close()
    return counts


@dataclass
class SelfInstructConfig:
    """`orizuru self-instruct`: generate instruction data from seed tasks through an OpenAI-compatible endpoint."""

    output: str  # JSONL to append generated instructions to (a rerun continues it)
    base_url: str  # OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1
    model: str  # model name the endpoint serves
    seed_tasks: str = str(DATA / "post" / "seed_tasks_ja.jsonl")  # seed tasks JSONL {instruction, input, output, is_classification}
    num: int = 100  # instructions wanted in total
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the API key
    threshold: float = 0.7  # drop instructions with ROUGE-L >= this against the pool (paper: 0.7)
    temperature: float = 0.7
    max_tokens: int = 1024  # completion length cap per request
    seed: int = 0
    max_requests: int | None = None  # stop after this many requests; None: 20 * num
    strict: bool = False  # stop at the first bad seed task (default: skip it, reported with file:line)


def main(argv: list[str]) -> int:
    a = parse_command(SelfInstructConfig, argv, "orizuru self-instruct", __doc__.split("\n\n")[0])
    counts = self_instruct(
        a.seed_tasks, a.output, a.num, base_url=a.base_url, model=a.model, api_key=os.environ.get(a.api_key_env, "none"),
        threshold=a.threshold, temperature=a.temperature, max_tokens=a.max_tokens, seed=a.seed, max_requests=a.max_requests,
        strict=a.strict,
    )
    print(json.dumps(counts, ensure_ascii=False))
    return 0
