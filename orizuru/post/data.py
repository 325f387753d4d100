"""Post-training data in the formats people have, read by one reader into chat `messages` lists.

Rows come from JSONL or a JSON array. A conversation is one of:
- OpenAI: `{"messages": [{"role": "system"|"user"|"assistant", "content"}, ...]}`
- ShareGPT: `{"conversations": [{"from": "system"|"human"|"gpt", "value"}, ...]}`
- Alpaca: `{"instruction", "input"?, "output", "system"?}`
- (prompts only) `{"prompt": "..."}`, an Anthropic HH "\\n\\nHuman: ... \\n\\nAssistant:" dialog split into turns
Instruction rows (sft) are whole conversations; preference rows (dpo, reward) add `chosen`/`rejected`
or `completion`/`label` to a prompt; prompt rows (ppo) are prompts. `to_messages` parses and checks
them all (roles included). A bad row is reported as `file:line: why`: with `strict` the first one
stops the run, otherwise it is skipped and counted (`read_rows`, which every command reads through).

FLAN-style templates turn task data sets (JCommonsenseQA, JNLI, JSQuAD, NIILC) into instruction
data, several phrasings per task picked deterministically by row. Evaluation splits are refused by
file name so they cannot leak into training.
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, TypeVar

from orizuru.config import ConfigError
from orizuru.errors import UserError

T = TypeVar("T")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
HH_TURN = re.compile(r"\n\n(Human|Assistant):")


class BadRow(ValueError):
    pass


@dataclass
class ReadReport:
    rows: int = 0
    skipped: int = 0
    dropped: int = 0  # good rows left out on purpose (e.g. labelled Unknown by SliCK)
    problems: list[str] = field(default_factory=list)  # the first few "file:line: why"

    def note(self, where: str, why: str, strict: bool) -> None:
        if strict:
            raise UserError(f"{where}: {why}")
        self.skipped += 1
        if len(self.problems) < 20:
            self.problems.append(f"{where}: {why}")


def iter_rows(path: str | Path) -> Iterator[tuple[str, object]]:
    """(location, row) for each row of a JSONL file or a JSON array; location is `file:line`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read data file ({e.strerror})") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON array of rows")
        for i, row in enumerate(data):
            yield f"{path}[{i}]", row
        return
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", BadRow(f"not valid JSON ({e.msg})")
                continue
            yield f"{path}:{lineno}", row


def read_rows(paths: list[str | Path], parse: Callable[[dict], T | None], strict: bool) -> tuple[list[T], ReadReport]:
    """`parse(row)` for every row of the files: the reader all post-training data goes through.

    A row that is not a JSON object, or that `parse` refuses with BadRow, is `file:line: why`: a
    UserError with `strict`, else skipped, counted in the report and shown on stderr (the first five).
    `parse` returns None for a good row left out on purpose (counted as dropped).
    """
    report, out = ReadReport(), []
    for path in paths:
        for where, row in iter_rows(path):
            report.rows += 1
            try:
                if isinstance(row, BadRow):
                    raise row
                if not isinstance(row, dict):
                    raise BadRow(f"expected a JSON object, got {type(row).__name__}")
                item = parse(row)
            except BadRow as e:
                report.note(where, str(e), strict)
                continue
            if item is None:
                report.dropped += 1
            else:
                out.append(item)
    for problem in report.problems[:5]:
        print(f"skipped {problem}", file=sys.stderr)
    if report.skipped > 5:
        print(f"skipped {report.skipped - 5} more bad rows", file=sys.stderr)
    return out, report


def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key, "" if not required else None)
    if value is None:
        raise BadRow(f"missing field '{key}'")
    if not isinstance(value, str):
        raise BadRow(f"field '{key}' must be a string, got {type(value).__name__}")
    return value


def _turns(row: dict) -> list[dict]:
    """OpenAI `messages` [{role, content}] or ShareGPT `conversations` [{from, value}] -> checked turns."""
    if "messages" in row:
        key, role_key, content_key, roles = "messages", "role", "content", {r: r for r in ROLES}
    else:
        key, role_key, content_key, roles = "conversations", "from", "value", SHAREGPT_ROLES
    turns = row[key]
    if not isinstance(turns, list) or not turns:
        raise BadRow(f"field '{key}' must be a non-empty list")
    messages = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict):
            raise BadRow(f"{key}[{i}] must be an object")
        role = t.get(role_key)
        if role not in roles:
            raise BadRow(f"{key}[{i}]: unknown role {role!r} (expected {', '.join(roles)})")
        if not isinstance(t.get(content_key), str):
            raise BadRow(f"{key}[{i}]: {content_key} must be a string")
        messages.append({"role": roles[role], "content": t[content_key]})
    return messages


def _prompt_turns(prompt: str) -> list[dict]:
    """A prompt string as one user turn, or an HH dialog's turns (empty ones, like the final "Assistant:", left out)."""
    if not prompt.strip():
        raise BadRow("empty 'prompt'")
    parts = HH_TURN.split(prompt)
    if len(parts) < 3:
        return [{"role": "user", "content": prompt}]
    turns = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()} for who, text in zip(parts[1::2], parts[2::2])]
    turns = [t for t in turns if t["content"]]
    if not turns:
        raise BadRow("empty 'prompt'")
    return turns


def to_messages(row: dict, prompt: bool = False) -> list[dict]:
    """One row in any supported format -> checked chat turns: the one parser every reader uses.

    By default the whole conversation, which must end with an assistant answer (instruction rows).
    With `prompt`, the turns an answer is wanted for, which must end with a user turn (preference
    and PPO rows, whose answers live in other fields; an Alpaca `output` is not part of it).
    """
    if "messages" in row or "conversations" in row:
        messages = _turns(row)
    elif prompt and "prompt" in row:
        messages = _prompt_turns(_text(row, "prompt"))
    elif "instruction" in row or "output" in row:
        instruction, extra, system = _text(row, "instruction"), _text(row, "input", required=False), _text(row, "system", required=False)
        if not instruction.strip():
            raise BadRow("empty 'instruction'")
        messages = [{"role": "system", "content": system}] if system.strip() else []
        messages.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction})
        if not prompt:
            messages.append({"role": "assistant", "content": _text(row, "output")})
    elif prompt:
        raise BadRow("expected 'messages', 'conversations', 'prompt' or 'instruction' fields")
    else:
        raise BadRow("expected 'messages', 'conversations' or 'instruction'/'output' fields")
    if messages[-1]["role"] != ("user" if prompt else "assistant"):
        raise BadRow("a prompt must end with a user turn" if prompt else "the conversation must end with an assistant turn")
    if any(m["role"] == "assistant" and not m["content"].strip() for m in messages):
        raise BadRow("empty assistant response")
    return messages


def read_instructions(paths: list[str | Path], strict: bool = False, drop_labels: tuple[str, ...] = ()) -> tuple[list[list[dict]], ReadReport]:
    """All good conversations from the files, and a report of the rows skipped (or fail if strict).

    Rows whose `slick` field (written by `orizuru slick`) is in `drop_labels` are left out and counted.
    """
    return read_rows(paths, lambda row: None if row.get("slick") in drop_labels else to_messages(row), strict)


def read_prompts(paths: list[str | Path], strict: bool, needs: tuple[str, ...] = ()) -> tuple[list[tuple[list[dict], dict]], ReadReport]:
    """(prompt turns, row) for every good prompt row (PPO); `needs`: fields each row must also have."""

    def parse(row: dict) -> tuple[list[dict], dict]:
        for key in needs:
            if key not in row:
                raise BadRow(f"missing field '{key}'")
        return to_messages(row, prompt=True), row

    return read_rows(paths, parse, strict)


# ---------------------------------------------------------------- FLAN-style task templates

JCQA_TEMPLATES = [
    ("次の質問に対して、選択肢の中から最も適切なものを一つ選んでください。\n\n質問：{question}\n選択肢：{options}", "{answer}"),
    ("{question}\n\n選択肢\n{numbered}\n\n番号と答えを書いてください。", "{number}. {answer}"),
    ("常識で考えて答えてください。{question}（{options}）", "答えは「{answer}」です。"),
]
JNLI_LABELS = {"entailment": "含意", "contradiction": "矛盾", "neutral": "中立"}
JNLI_TEMPLATES = [
    ("前提と仮説の関係を「含意」「矛盾」「中立」のいずれかで答えてください。\n\n前提：{premise}\n仮説：{hypothesis}", "{label}"),
    ("「{premise}」が正しいとき、「{hypothesis}」は正しいと言えますか。含意・矛盾・中立から選んでください。", "{label}"),
    ("次の二文の論理関係を判定してください。\n文1：{premise}\n文2：{hypothesis}\n答えは含意、矛盾、中立のどれですか。", "関係は{label}です。"),
]
JSQUAD_TEMPLATES = [
    ("文章を読んで、質問に答えてください。\n\n文章：{context}\n質問：{question}", "{answer}"),
    ("{context}\n\n上の文章によると、{question}", "{answer}"),
    ("質問：{question}\n次の文章から答えを抜き出してください。\n{context}", "「{answer}」です。"),
]
NIILC_TEMPLATES = [
    ("次の質問に簡潔に答えてください。\n質問：{question}", "{answer}"),
    ("{question}", "{answer}です。"),
    ("クイズです。{question}　答えだけを書いてください。", "{answer}"),
]
EVAL_SPLIT_WORDS = ("valid", "validation", "test", "eval")


def _jcqa(row: dict, t: int) -> tuple[str, str]:
    choices = row["choices"]
    fields = {
        "question": row["question"],
        "options": "、".join(choices),
        "numbered": "\n".join(f"{i}. {c}" for i, c in enumerate(choices)),
        "answer": choices[row["label"]],
        "number": row["label"],
    }
    q, a = JCQA_TEMPLATES[t % len(JCQA_TEMPLATES)]
    return q.format(**fields), a.format(**fields)


def _jnli(row: dict, t: int) -> tuple[str, str]:
    q, a = JNLI_TEMPLATES[t % len(JNLI_TEMPLATES)]
    fields = dict(premise=row["premise"], hypothesis=row["hypothesis"], label=JNLI_LABELS[row["label"]])
    return q.format(**fields), a.format(**fields)


def _jsquad(row: dict, t: int) -> tuple[str, str]:
    q, a = JSQUAD_TEMPLATES[t % len(JSQUAD_TEMPLATES)]
    context = row["context"].split(" [SEP] ", 1)[-1]
    fields = dict(context=context, question=row["question"], answer=row["answers"][0]["text"])
    return q.format(**fields), a.format(**fields)


def _niilc(row: dict, t: int) -> tuple[str, str]:
    q, a = NIILC_TEMPLATES[t % len(NIILC_TEMPLATES)]
    return q.format(question=row["question"]), a.format(answer=row["answers"][0])


TASKS = {"jcommonsenseqa": _jcqa, "jnli": _jnli, "jsquad": _jsquad, "niilc": _niilc}


def flan_messages(task: str, path: str | Path, seed: int = 0, strict: bool = False) -> tuple[list[list[dict]], ReadReport]:
    """A task's *train* file -> chats, each row phrased with one of the task's templates."""
    if task not in TASKS:
        raise UserError(f"unknown FLAN task {task!r} (known: {', '.join(TASKS)})")
    stem = Path(path).stem.lower()
    if any(w in stem for w in EVAL_SPLIT_WORDS):
        raise UserError(f"{path}: looks like an evaluation split; FLAN data must come from train splits only")
    rng = random.Random(seed)

    def parse(row: dict) -> list[dict]:
        try:
            question, answer = TASKS[task](row, rng.randrange(1 << 30))
        except (KeyError, IndexError, TypeError) as e:
            raise BadRow(f"not a {task} row ({e.__class__.__name__}: {e})") from None
        return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    return read_rows([path], parse, strict)


# ---------------------------------------------------------------- preference rows


def _answer(row: dict, key: str) -> str:
    value = row.get(key)
    if isinstance(value, list) and value and isinstance(value[-1], dict):  # [{"role": "assistant", "content": ...}]
        value = value[-1].get("content")
    if not isinstance(value, str) or not value.strip():
        raise BadRow(f"missing or empty '{key}'")
    return value.strip()


@dataclass
class Pair:
    prompt: list[dict]
    chosen: str
    rejected: str


@dataclass
class Unpaired:
    prompt: list[dict]
    completion: str
    desirable: bool


def preference(row: dict) -> Pair | Unpaired:
    """A prompt row plus {chosen, rejected} (paired) or {completion, label} (unpaired, for KTO)."""
    prompt = to_messages(row, prompt=True)
    if "completion" in row:
        if not isinstance(row.get("label"), bool):
            raise BadRow("unpaired rows need a true/false 'label'")
        return Unpaired(prompt, _answer(row, "completion"), row["label"])
    chosen, rejected = _answer(row, "chosen"), _answer(row, "rejected")
    if chosen == rejected:
        raise BadRow("'chosen' and 'rejected' are identical (no preference to learn)")
    return Pair(prompt, chosen, rejected)


def read_preferences(paths: list[str], strict: bool) -> tuple[list[Pair], list[Unpaired], ReadReport]:
    """The paired and the unpaired rows of the files (dpo, reward), and the read report."""
    rows, report = read_rows(paths, preference, strict)
    return [r for r in rows if isinstance(r, Pair)], [r for r in rows if isinstance(r, Unpaired)], report


@dataclass
class PrefData:
    train: list[str] = field(default_factory=list)  # JSONL/JSON preference files
    val: list[str] = field(default_factory=list)  # empty: val_fraction of train
    val_fraction: float = 0.1
    strict: bool = False
    overlong: Literal["truncate", "error"] = "truncate"

    def validate(self) -> None:
        if not self.train:
            raise ConfigError("config key 'data.train' is empty: give at least one preference file")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"config key 'data.val_fraction' must be in [0, 1), got {self.val_fraction}")
