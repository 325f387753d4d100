"""A pipeline file -> its stages, validated whole, hashed, and what a run would do with each.

Every section is turned into its command's config before any stage starts, so an unknown stage, an
input naming a stage that does not exist or comes later, an unknown key or a wrong type is one line
naming the file, the section and the key. A stage's hash covers its resolved section (base file
included, upstream stages by name, outputs relative to `run.out_dir`), its upstream stages' hashes
and the orizuru version: the same hash and `status = "done"` in `stages/<name>/stage.json` means
there is nothing to do.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from orizuru import __version__
from orizuru.config import ConfigError, from_dict, read_toml, to_dict, validate
from orizuru.pipeline.stages import KINDS, ORDER, Variant
from orizuru.resources import shipped, shipped_config


@dataclass
class CostConfig:
    """The cost and energy estimate (LLaMA §6): GPU-hours x board power x PUE -> kWh -> tCO2eq."""

    gpu: str | None = None  # GPU type of the estimate (h100, a100, ...; orizuru plan's table); None: the GPU found, if any
    price_per_gpu_hour: float | None = None  # currency units per GPU-hour; None: no money figure
    pue: float = 1.1  # data-centre power usage effectiveness
    carbon_intensity: float = 0.385  # tCO2eq per MWh (LLaMA §6: the US average)

    def validate(self) -> None:
        if self.pue < 1 or self.carbon_intensity < 0 or (self.price_per_gpu_hour or 0) < 0:
            raise ConfigError("config keys 'cost.pue' >= 1, 'cost.carbon_intensity' >= 0, 'cost.price_per_gpu_hour' >= 0 expected")


@dataclass
class RunSection:
    """The `[run]` section: the whole run's name, output folder, seed and device."""

    name: str = "pipeline"  # the report's title
    out_dir: str = "runs/pipeline"  # every stage's output goes under it (relative to the current folder)
    seed: int | None = None  # fills each stage's seed (`seed`, `train.seed`) where its section and base file leave it unset
    device: Literal["auto", "cpu", "cuda"] = "auto"  # cpu: hide any GPU from every stage
    cost: CostConfig = field(default_factory=CostConfig)


@dataclass
class Stage:
    name: str
    kind: str
    command: str
    variant: Variant
    data: dict  # the resolved section: upstream stages by name, outputs relative to out_dir (what is hashed)
    deps: list[str]
    hash: str
    index: int


@dataclass
class Pipeline:
    path: Path
    run: RunSection
    out: Path
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


PIPELINE_KEYS = ("config", "command")  # keys of a section that belong to the pipeline, not to the command


def _fields(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _stage_field(cls: type) -> str | None:
    return next((f.name for f in dataclasses.fields(cls) if f.metadata.get("stage_config")), None)


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _get(data: dict, key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def find_path(text: str, root: Path) -> Path | None:
    """An input path as written: relative to the current folder, else to the pipeline file's folder, else a
    shipped file (`data/sample/wiki.jsonl`); globs count when they match."""
    for base in (Path("."), root, shipped()):
        p = base / text if not Path(text).is_absolute() else Path(text)
        if p.exists() or (any(c in text for c in "*?[") and glob.glob(str(p), recursive=True)):
            return p
    return None


def _base_file(name: str, pipeline: Path) -> Path:
    """A section's `config`: a file here, else beside the pipeline file, else a shipped config (`demo.toml`)."""
    for p in (Path(name), pipeline.parent / name):
        if p.is_file() and p.resolve() != pipeline.resolve():
            return p
    return shipped_config(name) or Path(name)


def _kind(name: str) -> str:
    return name if name in KINDS else name.split("_")[0]


def load_pipeline(path: str | Path, out_dir: str | None = None, sets: dict[str, dict] | None = None) -> Pipeline:
    """Read, check and hash a pipeline file; `out_dir` and `sets` ({stage: {dotted key: value}}, tables merged) override it."""
    path = Path(path)
    if not path.is_file() and shipped_config(path) is not None:
        path = shipped_config(path)
    raw = read_toml(path)
    where = f"{path}"
    for name, section in (sets or {}).items():
        if name != "run" and name not in raw:
            raise ConfigError(f"{where}: no stage [{name}] to set keys of (stages: {', '.join(k for k in raw if k != 'run')})")
        for key, value in section.items():  # a table merges into the file's table of that key
            old = _get(raw.setdefault(name, {}), key)
            _set(raw[name], key, _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value)
    try:
        run = from_dict(RunSection, raw.get("run", {}), prefix="run.")
        validate(run)
    except ConfigError as e:
        raise ConfigError(f"{where}: [run] {e}") from None
    if out_dir is not None:
        run.out_dir = out_dir
    out = Path(run.out_dir)
    root = path.parent
    stages: list[Stage] = []
    names = [n for n in raw if n != "run"]
    for index, name in enumerate(names):
        section = raw[name]
        at = f"{where}: [{name}]"
        kind = _kind(name)
        if kind not in KINDS:
            raise ConfigError(f"{at}: unknown stage (a section is one of: run, {', '.join(ORDER)}; or KIND_LABEL such as eval_sft)")
        if not isinstance(section, dict):
            raise ConfigError(f"{at}: expected a table of the stage's keys")
        section = dict(section)
        variants = KINDS[kind]
        command = section.pop("command", next(iter(variants)))
        if command not in variants:
            raise ConfigError(f"{at} key 'command': unknown {kind} command {command!r} (one of: {', '.join(variants)})")
        variant = variants[command]
        base_file = section.pop("config", None)
        data: dict = {}
        stage_key = _stage_field(variant.cls)
        if base_file is not None:
            if not isinstance(base_file, str):
                raise ConfigError(f"{at} key 'config': expected a file name, got {base_file!r}")
            try:
                base = read_toml(_base_file(base_file, path))
            except ConfigError as e:
                raise ConfigError(f"{at} key 'config': {e}") from None
            data = {stage_key: base} if stage_key else base
        if variant.output:  # the pipeline places outputs: a base file's own output path never counts
            if _get(data, variant.output) is not None:
                _set(data, variant.output, None)
        data = _merge(data, section)
        if variant.output and _get(data, variant.output) is None:
            _set(data, variant.output, variant.default_output.format(name=name))
        if run.seed is not None:
            hints = _fields(variant.cls)
            if "seed" in hints and "seed" not in data:
                data["seed"] = run.seed
            if "train" in hints and dataclasses.is_dataclass(hints["train"]) and _get(data, "train.seed") is None:
                _set(data, "train.seed", run.seed)
        deps: list[str] = []
        resolved = copy.deepcopy(data)
        for key in variant.inputs:
            value = _get(data, key)
            if value in (None, ""):  # unset (a path key's empty default)
                continue
            items = value if isinstance(value, list) else [value]
            new = []
            for item in items:
                if not isinstance(item, str):
                    raise ConfigError(f"{at} key '{key}': expected a stage name or a path, got {item!r}")
                if item in names:
                    j = names.index(item)
                    if j >= index:
                        raise ConfigError(f"{at} key '{key}': names stage '{item}', which comes {'later' if j > index else 'here'}; "
                                          "a stage's inputs are stages before it")
                    deps.append(item)
                    new.append(str(expected_artifact(stages[j], out)))
                else:
                    found = find_path(item, root)
                    if found is None:
                        raise ConfigError(f"{at} key '{key}': {item!r} is neither a stage before this one "
                                          f"({', '.join(names[:index]) or 'none'}) nor an existing file or folder")
                    new.append(str(found))
            _set(resolved, key, new if isinstance(value, list) else new[0])
        if variant.output:
            _set(resolved, variant.output, str(out / _get(data, variant.output)))
        try:
            build(variant, resolved)
            data = to_dict(build(variant, data))  # defaults filled in: the same config hashes the same however written
        except ConfigError as e:
            raise ConfigError(f"{at} {e}") from None
        deps = list(dict.fromkeys(deps))
        digest = stage_hash(kind, command, data, {d: next(s.hash for s in stages if s.name == d) for d in deps})
        stages.append(Stage(name, kind, command, variant, data, deps, digest, index))
    _check_vocab(stages, at=where)
    pipeline = Pipeline(path, run, out, stages)
    _add_contamination(pipeline)
    return pipeline


def build(variant: Variant, resolved: dict) -> Any:
    """A stage's section (paths resolved) -> its command's validated config."""
    stage_key = _stage_field(variant.cls)
    data = dict(resolved)
    if stage_key:
        stage_cls = _fields(variant.cls)[stage_key]
        data[stage_key] = from_dict(stage_cls, data.get(stage_key, {}), prefix=f"{stage_key}.")
    missing = [f.name for f in dataclasses.fields(variant.cls)
               if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"key '{missing[0]}' is required")
    cfg = from_dict(variant.cls, data)
    validate(cfg)
    return cfg


def stage_hash(kind: str, command: str, data: dict, upstream: dict[str, str]) -> str:
    blob = json.dumps({"kind": kind, "command": command, "config": data, "upstream": upstream, "orizuru": __version__},
                      sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def output_dir(stage: Stage, out: Path) -> Path:
    return out / _get(stage.data, stage.variant.output) if stage.variant.output else out


def expected_artifact(stage: Stage, out: Path) -> Path:
    """Where an upstream stage's artifact will be, for checking a downstream config before anything runs."""
    return output_dir(stage, out) / ("model" if stage.variant.artifact == "model" else "")


def _check_vocab(stages: list[Stage], at: str) -> None:
    """A model trained from scratch must have room for its tokenizer's vocabulary (known before training)."""
    by_name = {s.name: s for s in stages}
    for s in stages:
        if s.kind != "pretrain" or _get(s.data, "train.init_from"):
            continue
        for d in s.deps:
            tok_stage = by_name[d]
            for t in tok_stage.deps if tok_stage.kind == "tokenize" else []:
                size = _get(by_name[t].data, "vocab_size")
                model_size = _get(s.data, "model.vocab_size")
                if by_name[t].kind == "tokenizer" and size and model_size and size > model_size:
                    raise ConfigError(f"{at}: [{s.name}] key 'model.vocab_size' ({model_size}) is smaller than "
                                      f"[{t}] key 'vocab_size' ({size})")


def _add_contamination(p: Pipeline) -> None:
    """The contamination check between the corpus and every evaluated task, unless the file has its own."""
    corpus = next((s for s in p.stages if s.kind == "corpus"), None)
    evals = [s for s in p.stages if s.kind == "eval"]
    if corpus is None or not evals or any(s.kind == "contamination" for s in p.stages):
        return
    tasks: list[str] = []
    limits = []
    for s in evals:
        cfg = build(s.variant, {**s.data, "model": "-", "output": "-"})
        tasks += cfg.task_list()
        limits.append(cfg.limit)
    variant = KINDS["contamination"]["contamination"]
    data = {"corpus": [corpus.name], "tasks": list(dict.fromkeys(tasks)), "output": "contamination/report.json",
            "limit": None if None in limits else max(limits)}
    if data["limit"] is None:
        del data["limit"]
    stage = Stage("contamination", "contamination", "contamination", variant, data, [corpus.name],
                  stage_hash("contamination", "contamination", data, {corpus.name: corpus.hash}), corpus.index)
    p.stages.insert(p.stages.index(corpus) + 1, stage)


# ---------------------------------------------------------------- what a run does with each stage


def stage_file(out: Path, name: str) -> Path:
    return out / "stages" / name / "stage.json"


def read_stage(out: Path, name: str) -> dict | None:
    path = stage_file(out, name)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # a torn file cannot say the stage finished


@dataclass
class Step:
    stage: Stage
    action: Literal["run", "rerun", "resume", "skip"]
    reason: str


def decide(p: Pipeline, start: str | None = None, only: str | None = None, force: list[str] = ()) -> list[Step]:
    """What a run does with each stage and why; forced stages carry along everything downstream of them."""
    names = [s.name for s in p.stages]
    for flag, value in (("--from", start), ("--only", only), *(("--force", f) for f in force)):
        if value is not None and value not in names:
            raise ConfigError(f"{flag}: no stage '{value}' in {p.path} (stages: {', '.join(names)})")
    forced: set[str] = set(force)
    if start is not None:
        forced |= set(names[names.index(start):])
    for s in p.stages:
        if any(d in forced for d in s.deps):
            forced.add(s.name)
    steps: list[Step] = []
    for s in p.stages:
        record = read_stage(p.out, s.name)
        selected = (only is None or s.name == only) and (start is None or names.index(s.name) >= names.index(start))
        if not selected:
            if (record is None or record.get("status") != "done") and _needed(p, s.name, only or start):
                raise ConfigError(f"stage '{s.name}' is not done, and {'--only ' + only if only else '--from ' + start} "
                                  "leaves it out: run it first")
            steps.append(Step(s, "skip", "not selected"))
            continue
        if s.name in forced:
            steps.append(Step(s, "rerun", "forced" if s.name in force or s.name == start else "an upstream stage is forced"))
        elif record is None:
            steps.append(Step(s, "run", "not run yet"))
        elif record.get("hash") != s.hash:
            steps.append(Step(s, "rerun", f"changed (hash {record.get('hash')} -> {s.hash})"))
        elif record.get("status") == "done":
            steps.append(Step(s, "skip", f"done, same hash {s.hash}"))
        else:
            steps.append(Step(s, "resume", f"{record.get('status')} with the same hash: continues where it stopped"))
    return steps


def _needed(p: Pipeline, name: str, target: str) -> bool:
    """Whether stage `name` is upstream of `target` (directly or through other stages)."""
    todo, seen = [target], set()
    while todo:
        s = p.stage(todo.pop())
        for d in s.deps:
            if d == name:
                return True
            if d not in seen:
                seen.add(d)
                todo.append(d)
    return False
