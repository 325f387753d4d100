"""Evaluation tasks declared as data: one TOML file per task in `orizuru/eval/tasks/`.

A task names its data file (JSONL under `data/eval/`), the fields it reads, a fixed list of
few-shot exemplar ids (their order is the prompt order), the scoring method and at least three
prompt templates. Adding a data set means adding a TOML file, not Python.

A user's task file (`--tasks path/to/task.toml`, as lm-eval's `--include_path`) has the same
schema; its `data` and `exemplar_data` are relative to the file's folder (or absolute), its name
in results is the file's stem, and its errors name the file and the key.

Template variables are the task's `fields` plus, when the task has choices, `{choices_joined}`
("畑、海、田園"), `{choices_numbered}` (llm-jp-eval's "0.畑,1.海,2.田園") and `{choices_lines}`.
A prompt is `instruction + "\n\n" + (exemplar + answer + "\n\n") * shots + example`.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orizuru.config import ConfigError, from_dict
from orizuru.errors import UserError
from orizuru.eval.safety import METRICS as SAFETY_METRICS
from orizuru.resources import DATA, shipped

TASK_DIR = shipped("eval", "tasks")
DATA_DIR = DATA / "eval"
SEP = "\n\n"


@dataclass
class Template:
    id: str
    example: str  # the example's part of the prompt, e.g. "質問：{question}\n答え："
    answer: str = "{answer}"  # appended after an exemplar
    instruction: str = ""


@dataclass
class Task:
    description: str
    method: Literal["likelihood", "generate", "code", "safety"]  # safety: generations scored by orizuru.eval.safety
    data: str
    fields: dict
    metrics: list[str]
    templates: list[Template]
    gold: str = ""  # the field holding the answer (every method but safety)
    exemplar_data: str | None = None  # None: exemplars come from `data` and are excluded from it
    exemplar_ids: list[Any] = field(default_factory=list)
    exemplar_answer: str | None = None  # exemplar-row field shown after an exemplar (default: gold)
    default_shots: int = 0
    id_field: str = "id"
    choices: list[str] | None = None  # fixed label words (classification); else a `choices` field
    labels: list[Any] | None = None  # gold values in the order of `choices`
    extract: Literal["first_line", "last_number"] = "first_line"
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=lambda: ["\n"])
    name: str = ""  # set by load_task: the built-in name or the file's stem
    root: str = ""  # set by load_task: the folder `data` and `exemplar_data` are relative to

    def validate(self, where: str = "") -> None:
        where = where or f"task '{self.name}'"
        if len(self.templates) < 1:
            raise ConfigError(f"{where}: needs at least one [[templates]] entry")
        if len({t.id for t in self.templates}) != len(self.templates):
            raise ConfigError(f"{where}: template ids must be unique")
        if self.method != "safety" and self.gold not in self.fields:
            raise ConfigError(f"{where}: 'gold' ({self.gold}) must name one of 'fields'")
        if self.method == "likelihood" and self.choices is None and "choices" not in self.fields:
            raise ConfigError(f"{where}: a likelihood task needs 'choices' or a 'choices' field")
        if (self.choices is None) != (self.labels is None) or (self.choices and len(self.choices) != len(self.labels)):
            raise ConfigError(f"{where}: 'choices' and 'labels' go together, with equal lengths")
        if self.method == "safety" and not set(self.metrics) <= set(SAFETY_METRICS):
            raise ConfigError(f"{where}: a safety task's metrics are among {list(SAFETY_METRICS)}")
        if self.default_shots > len(self.exemplar_ids):
            raise ConfigError(f"{where}: default_shots exceeds the {len(self.exemplar_ids)} exemplar_ids")
        for key in ("data", "exemplar_data"):
            value = getattr(self, key)
            if value is not None and self.root and not (Path(self.root) / value).is_file():
                raise ConfigError(f"{where}: '{key}' = {value!r}: no such file {Path(self.root) / value}")

    @property
    def classification(self) -> bool:
        """A fixed label set: calibration applies."""
        return self.choices is not None


@dataclass
class Example:
    id: str
    vars: dict  # template variables
    gold: Any  # likelihood: index into choices; generate: list of strings; code: canonical solution
    choices: list[str] | None = None
    row: dict = field(default_factory=dict, repr=False)


def task_names() -> list[str]:
    return sorted(p.stem for p in TASK_DIR.glob("*.toml"))


def is_task_file(spec: str) -> bool:
    """A `--tasks` item naming a task file rather than a built-in task."""
    return spec.endswith(".toml")


def load_task(spec: str) -> Task:
    """A built-in task by name, or a task file by path (data relative to the file's folder)."""
    if is_task_file(spec):
        path, root, where = Path(spec), Path(spec).resolve().parent, spec
        if not path.is_file():
            raise UserError(f"{spec}: task file not found")
    else:
        path, root = TASK_DIR / f"{spec}.toml", DATA_DIR
        where = path.name
        if not path.is_file():
            raise UserError(f"unknown task '{spec}' (known tasks: {', '.join(task_names())}; or a path to a task .toml file)")
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{where}: not valid TOML ({e})") from None
    for key in ("name", "root"):
        if key in data:
            raise ConfigError(f"{where}: '{key}' comes from the file's path; remove it from the file")
    task = from_dict(Task, {**data, "name": path.stem, "root": str(root)}, prefix=f"{where}: ")
    task.validate(where)
    return task


def _get(record: dict, path: str, where: str) -> Any:
    """Field path 'a.b' or 'answers.*.text' (map over a list)."""
    value: Any = record
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part == "*":
            rest = ".".join(parts[i + 1 :])
            return [_get(v, rest, where) if rest else v for v in value]
        if not isinstance(value, dict) or part not in value:
            raise UserError(f"{where}: missing field '{path}'")
        value = value[part]
    return value


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"{path}: task data file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise UserError(f"{path}:{lineno}: not valid JSON") from None
    return rows


def make_example(task: Task, row: dict, where: str) -> Example:
    values = {var: _get(row, path, where) for var, path in task.fields.items()}
    gold = values.get(task.gold)
    choices = task.choices if task.choices is not None else values.get("choices")
    if task.method == "likelihood":
        if task.labels is not None:
            if gold not in task.labels:
                raise UserError(f"{where}: label {gold!r} is not one of {task.labels}")
            gold = task.labels.index(gold)
        elif not isinstance(gold, int) or not 0 <= gold < len(choices):
            raise UserError(f"{where}: field '{task.fields[task.gold]}' must be a choice index, got {gold!r}")
    elif task.method == "generate":
        gold = [str(g) for g in gold] if isinstance(gold, list) else [str(gold)]
    return Example(id=str(_get(row, task.id_field, where)), vars=values, gold=gold, choices=choices, row=row)


def load_examples(task: Task, data_dir: Path | None = None) -> tuple[list[Example], list[Example]]:
    """(evaluation examples, exemplars in their fixed order); data paths relative to `data_dir`
    (default: the task's own folder, `data/eval/` for the built-in tasks)."""
    data_dir = Path(data_dir or task.root or DATA_DIR)
    path = data_dir / task.data
    rows = read_rows(path)
    examples = [make_example(task, r, f"{path}:{i + 1}") for i, r in enumerate(rows)]
    ex_path = data_dir / (task.exemplar_data or task.data)
    pool = examples if task.exemplar_data is None else [
        make_example(task, r, f"{ex_path}:{i + 1}") for i, r in enumerate(read_rows(ex_path))
    ]
    by_id = {e.id: e for e in pool}
    wanted = [str(i) for i in task.exemplar_ids]
    missing = [i for i in wanted if i not in by_id]
    if missing:
        raise UserError(f"task '{task.name}': exemplar ids {missing} not found in {ex_path}")
    exemplars = [by_id[i] for i in wanted]
    if task.exemplar_data is None:
        examples = [e for e in examples if e.id not in set(wanted)]
    return examples, exemplars


def template_vars(ex: Example, choices: list[str] | None = None) -> dict:
    choices = ex.choices if choices is None else choices
    out = dict(ex.vars)
    if choices is not None:
        out["choices"] = choices
        out["choices_joined"] = "、".join(choices)
        out["choices_numbered"] = ",".join(f"{i}.{c}" for i, c in enumerate(choices))
        out["choices_lines"] = "\n".join(f"{i}. {c}" for i, c in enumerate(choices))
    return out


def answer_text(task: Task, ex: Example) -> str:
    """What follows an exemplar: its gold choice, its first gold answer or a named field."""
    if task.exemplar_answer is not None:
        return str(_get(ex.row, task.exemplar_answer, f"task '{task.name}' exemplar {ex.id}"))
    if task.method == "likelihood":
        return ex.choices[ex.gold]
    if task.method == "generate":
        return ex.gold[0]
    return str(ex.gold)


def render(task: Task, template: Template, ex: Example, exemplars: list[Example], choices: list[str] | None = None) -> str:
    """The exact prompt text (context) for one example."""
    parts = [template.instruction] if template.instruction else []
    for shot in exemplars:
        body = template.example.format(**template_vars(shot))
        parts.append(body + template.answer.format(answer=answer_text(task, shot)))
    parts.append(template.example.format(**template_vars(ex, choices)))
    return SEP.join(parts)
