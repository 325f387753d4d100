"""`orizuru demo`: the shipped demo pipeline (configs/pipelines/demo.toml), with its few options as flags.

crawl samples + licensed text -> corpus build -> tokenizer -> token shards -> pre-training ->
samples -> base-model evaluation -> SFT -> DPO -> report card. Each stage is skipped when done with
the same config, and an interrupted demo resumes where it stopped (it is `orizuru run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orizuru.config import parse_command, stage_config, to_dict
from orizuru.demo.run import CRAWL, SAMPLE
from orizuru.errors import UserError
from orizuru.pipeline.plan import load_pipeline
from orizuru.pipeline.run import run_pipeline
from orizuru.resources import CONFIGS
from orizuru.train.config import PretrainConfig

PIPELINE = CONFIGS / "pipelines" / "demo.toml"


@dataclass
class DemoConfig:
    """The demo's own options and its pre-training config (defaults: configs/demo.toml)."""

    out: str = "runs/demo"  # output directory; also the pre-training run.dir, with data.dirs = [OUT/data]
    eval_limit: int = 100  # examples per evaluation task
    post_steps: int = 30  # optimizer steps of the demo SFT and of the demo DPO
    pretrain: PretrainConfig = stage_config(PretrainConfig, default_file="demo.toml")


def run_demo(demo: DemoConfig) -> Path:
    for p in (SAMPLE / "wiki.jsonl", SAMPLE / "aozora.jsonl", CRAWL / "warc", CRAWL / "html"):
        if not p.exists():
            raise UserError(f"{p}: shipped sample data is missing (run from a full checkout of the repository)")
    pre = to_dict(demo.pretrain)
    for key in ("data", "run"):  # the pipeline file places these
        pre.pop(key, None)
    sets = {
        "tokenizer": {"vocab_size": demo.pretrain.model.vocab_size},
        "pretrain": {**{f"{section}.{k}": v for section, table in pre.items() for k, v in table.items()}},
        "eval": {"limit": demo.eval_limit},
        "sft": {"steps": demo.post_steps},
        "dpo": {"steps": demo.post_steps},
    }
    return run_pipeline(load_pipeline(PIPELINE, demo.out, sets))


def main(argv: list[str]) -> int:
    run_demo(parse_command(DemoConfig, argv, "orizuru demo", __doc__.split("\n\n")[0]))
    return 0
