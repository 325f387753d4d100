"""The demo's post-training stages: a short SFT and DPO of the demo model, with sample answers before and after."""

from __future__ import annotations

import json
from pathlib import Path

from orizuru.config import load_config
from orizuru.post.dpo import DPOConfig, dpo
from orizuru.post.finetune import sample_answers
from orizuru.post.sft import SFTConfig, sft
from orizuru.resources import CONFIGS, DATA

DEMO_QUESTIONS = ["日本でいちばん高い山は何ですか？", "健康のためにできることを教えてください。", "おすすめの本を一冊紹介してください。"]


def demo_sft(model_dir: str | Path, out_dir: str | Path, steps: int) -> dict:
    """A short SFT of the demo model on the shipped Japanese instructions, with before/after answers.

    The learning rate is the from-scratch tiny-model one (1e-3), not the shipped config's 1e-5, so a
    few dozen steps visibly teach the chat format. Returns the summary and the sample answers.
    """
    cfg = load_config(SFTConfig, CONFIGS / "sft.toml", [
        f"model={json.dumps(str(model_dir))}", f"run.dir={json.dumps(str(out_dir))}",
        f'data.train=["{DATA / "post/instruction_ja.jsonl"}", "{DATA / "post/seed_tasks_ja.jsonl"}"]',
        f'data.flan=["jcommonsenseqa={DATA / "post/jcommonsenseqa_train.jsonl"}"]',
        "schedule.epochs=0", f"train.max_steps={steps}", "train.lr=1e-3", "train.seq_len=128",
        f"train.eval_every={steps}", f"train.ckpt_every={steps}", "train.log_every=5",
    ])
    before = sample_answers(model_dir, DEMO_QUESTIONS)
    summary = sft(cfg)
    after = sample_answers(Path(out_dir) / "model", DEMO_QUESTIONS)
    return {"summary": summary, "samples": [{"prompt": q, "before": b, "after": a} for q, b, a in zip(DEMO_QUESTIONS, before, after)]}


def demo_dpo(model_dir: str | Path, out_dir: str | Path, steps: int) -> dict:
    """A short DPO of a (demo SFT) model on the shipped Japanese Rakuda preference pairs, with before/after answers.

    The pairs use the Rakuda benchmark's questions: the returned note says so, and the model must
    not be scored on Rakuda. The samples ask Rakuda-style questions that are not in the pairs.
    """
    cfg = load_config(DPOConfig, CONFIGS / "dpo.toml", [
        f"model={json.dumps(str(model_dir))}", f"run.dir={json.dumps(str(out_dir))}",
        f'data.train=["{DATA / "post/rakuda_prefs_ja.jsonl"}"]', "schedule.epochs=0", f"train.max_steps={steps}",
        "train.lr=1e-4", "train.warmup_steps=0", "schedule.warmup_ratio=0", "train.seq_len=128",
        f"train.eval_every={steps}", f"train.ckpt_every={steps}", "train.log_every=5",
    ])
    before = sample_answers(model_dir, DEMO_QUESTIONS)
    summary = dpo(cfg)
    after = sample_answers(Path(out_dir) / "model", DEMO_QUESTIONS)
    flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    for k in ("val_loss", "val_reward_accuracy", "val_margin"):  # held-out figures, before → after
        if k in summary["before"] and k in summary["after"]:
            flat[f"{k} (before → after)"] = f"{summary['before'][k]:.3f} → {summary['after'][k]:.3f}"
    return {
        "summary": flat,
        "samples": [{"prompt": q, "before": b, "after": a} for q, b, a in zip(DEMO_QUESTIONS, before, after)],
        "note": "DPO pairs are built on the Rakuda benchmark's questions: do not score this model on Rakuda.",
    }
