"""`orizuru run --config PIPELINE.toml`: every stage from the crawl to an evaluated model, one file, one command.

Each stage writes `stages/<name>/stage.json` (status, hash, times, metrics, artifacts). A rerun skips
what is done with the same hash, reruns a changed stage and everything downstream of it, and resumes
an interrupted one (the stages themselves resume). The run ends with report.json / report.md / report.html.
"""

from __future__ import annotations

import copy
import os
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from orizuru import __version__
from orizuru.config import ConfigError, parse_command
from orizuru.files import write_json
from orizuru.pipeline.measure import Meter
from orizuru.pipeline.plan import Pipeline, Stage, Step, _get, _set, build, decide, find_path, load_pipeline, read_stage, stage_file
from orizuru.pipeline.report import write_reports
from orizuru.pipeline.stages import Context, clear


@dataclass
class RunCommand:
    """Run a pipeline file: plan, skip what is done, run or resume the rest, write the report card."""

    pipeline: str  # the pipeline TOML ([run] + one section per stage; a shipped one by name: pipelines/demo.toml); also --config
    start: str | None = None  # rerun from this stage on (also --from)
    only: str | None = None  # run this stage only (its inputs must be done)
    force: list[str] | None = None  # rerun these stages and everything downstream even if done
    dry_run: bool = False  # print the plan (what runs, what is skipped, why) and stop
    out_dir: str | None = None  # override [run] out_dir
    override: list[str] | None = None  # STAGE.KEY=VALUE: set a key of the pipeline file (the value parses as TOML, else is text)


def say(msg: str) -> None:
    print(f"\n== {msg}", file=sys.stderr, flush=True)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def format_plan(p: Pipeline, steps: list[Step]) -> str:
    width = max(len(s.stage.name) for s in steps)
    lines = [f"pipeline {p.path} -> {p.out}"]
    lines += [f"  {s.stage.name:<{width}}  {s.action:<6}  {s.reason}" for s in steps]
    return "\n".join(lines)


def resolve(stage: Stage, p: Pipeline):
    """A stage's config with its inputs as the upstream stages' artifacts (from their stage.json)."""
    data = copy.deepcopy(stage.data)
    for key in stage.variant.inputs:
        value = _get(data, key)
        if value in (None, ""):  # unset (a path key's empty default)
            continue
        items = []
        for item in value if isinstance(value, list) else [value]:
            if item in stage.deps:
                up = p.stage(item)
                got = read_stage(p.out, item)["artifacts"][up.variant.artifact]
                items += got if isinstance(got, list) else [got]
            else:
                items.append(str(find_path(item, p.path.parent)))
        _set(data, key, items if isinstance(value, list) else items[0])
    if stage.variant.output:
        _set(data, stage.variant.output, str(p.out / _get(stage.data, stage.variant.output)))
    return build(stage.variant, data)


def run_stage(step: Step, p: Pipeline) -> dict:
    s = step.stage
    if step.action == "rerun":
        clear(s.variant.owned(resolve_paths_only(s, p), p.out), p.out)
    cfg = resolve(s, p)
    record = {
        "name": s.name, "kind": s.kind, "command": s.command, "status": "running", "hash": s.hash,
        "upstream": {d: p.stage(d).hash for d in s.deps}, "orizuru_version": __version__, "config": s.data,
        "start": _now(), "end": None, "wall_s": None, "metrics": {}, "artifacts": {}, "details": {},
    }
    path = stage_file(p.out, s.name)
    write_json(path, record)
    say(f"{s.name}: {step.reason}" if step.action != "run" else s.name)
    meter = Meter()
    try:
        result = s.variant.run(cfg, Context(p.out, {d: read_stage(p.out, d) for d in s.deps}))
    except BaseException as e:
        record.update(status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed", end=_now(),
                      error=f"{type(e).__name__}: {e}", **meter.stop())
        write_json(path, record)
        raise
    measured = meter.stop()
    record.update(status="done", end=_now(), metrics=result.metrics, artifacts=result.artifacts, details=result.details,
                  measured=measured, wall_s=measured["wall_s"])
    write_json(path, record)
    return record


def resolve_paths_only(stage: Stage, p: Pipeline):
    """The config of a stage about to be cleared: inputs need not exist yet, only its own paths matter."""
    data = copy.deepcopy(stage.data)
    if stage.variant.output:
        _set(data, stage.variant.output, str(p.out / _get(stage.data, stage.variant.output)))
    for key in stage.variant.inputs:
        value = _get(data, key)
        if value not in (None, ""):
            _set(data, key, ["-"] * len(value) if isinstance(value, list) else "-")
    return build(stage.variant, data)


def run_pipeline(p: Pipeline, start: str | None = None, only: str | None = None, force: list[str] = (),
                 dry_run: bool = False) -> Path | None:
    steps = decide(p, start, only, list(force))
    print(format_plan(p, steps), file=sys.stderr, flush=True)
    if dry_run:
        return None
    if p.run.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.time()
    p.out.mkdir(parents=True, exist_ok=True)
    ran = 0
    for step in steps:
        if step.action != "skip":
            run_stage(step, p)
            ran += 1
    report = write_reports(p)
    say(f"{ran} stage(s) run, {len(steps) - ran} skipped in {time.time() - t0:.0f} s: report at {report}")
    return report


def overrides(items: list[str]) -> dict[str, dict]:
    """`--override sft.train.lr=1e-4` -> {"sft": {"train.lr": 1e-4}}."""
    sets: dict[str, dict] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        stage, dot, rest = key.strip().partition(".")
        if not eq or not dot or not rest:
            raise ConfigError(f"--override expects STAGE.KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        sets.setdefault(stage, {})[rest] = value
    return sets


def main(argv: list[str]) -> int:
    # `--config PIPELINE.toml` names the pipeline file, not a file of this command's own options
    argv = ["--pipeline" + a[len("--config"):] if a == "--config" or a.startswith("--config=") else a for a in argv]
    a = parse_command(RunCommand, argv, "orizuru run", __doc__.split("\n\n")[0], aliases={"from": "start"})
    run_pipeline(load_pipeline(a.pipeline, a.out_dir, overrides(a.override or [])), a.start, a.only, a.force or [], a.dry_run)
    return 0
