"""The stage kinds a pipeline file can hold: each is a command's own config dataclass and the
public function that command calls, plus which keys name inputs, which key names the output, and
which paths a rerun must clear.

A section `[sft]` (or `[sft_lora]`, `[eval_base]`: kind before the first `_`) holds exactly the keys
of that command; `command = "..."` picks a variant (`tokenizer`: train or expand; the demo's own
stages are the `demo` variants), `config = "FILE"` gives a base file the section's keys override.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from orizuru.config import to_dict
from orizuru.corpus.build import build_corpus
from orizuru.corpus.cli import CorpusBuild
from orizuru.demo.post import demo_dpo, demo_sft
from orizuru.demo.quality import common_char_share, distinct_4grams
from orizuru.demo.run import PROMPTS, stage_corpus, stage_generate
from orizuru.demo.tokenizer import demo_section
from orizuru.errors import UserError
from orizuru.eval.contamination import ContaminationConfig, check
from orizuru.eval.evaluate import EvalConfig, evaluate
from orizuru.files import read_jsonl, write_json
from orizuru.model.cli import ModelResize
from orizuru.model.resize import resize_model_dir
from orizuru.post.dpo import DPOConfig, dpo
from orizuru.post.finetune import sample_answers
from orizuru.post.sft import SFTConfig, sft
from orizuru.tokenizer.cli import TokenizerExpand, TokenizerTrain, cmd_expand, cmd_train
from orizuru.tokenizer.tokenizer import expand_inputs, train_bpe_dir
from orizuru.train.config import PretrainConfig
from orizuru.train.pretrain import pretrain
from orizuru.train.tokenize import TokenizeConfig, tokenize_files

QUESTIONS = ["日本でいちばん高い山は何ですか？", "健康のためにできることを教えてください。"]  # chat samples of generic sft/dpo stages


@dataclass
class Result:
    """What a stage leaves for stage.json and the report: numbers, paths, and data for the report's sections."""

    metrics: dict = field(default_factory=dict)
    artifacts: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)


@dataclass
class Context:
    """What a running stage knows besides its config: the run's output folder and its upstream stages' stage.json."""

    out: Path
    upstream: dict[str, dict]


@dataclass(frozen=True)
class Variant:
    cls: type  # the command's config dataclass
    run: Callable[[Any, Context], Result]
    inputs: tuple[str, ...]  # dotted keys whose values may name an upstream stage
    output: str  # dotted key of the output folder (relative to run.out_dir; default: the stage name)
    owned: Callable[[Any, Path], list[Path]]  # what a rerun with a changed config clears first (config, run.out_dir)
    artifact: str = "dir"  # the artifact an input naming this stage receives
    default_output: str = "{name}"  # the output key's default, relative to run.out_dir


# ---------------------------------------------------------------- the run functions


def _corpus_build(cfg: CorpusBuild, ctx: Context) -> Result:
    out = Path(cfg.output)
    stats = build_corpus(cfg.input, out, cfg.corpus, executor=cfg.executor, workers=cfg.workers)
    parts = [str(p) for p in sorted(out.glob("part-*"))]
    return Result({"documents_in": stats["docs_in"], "documents_out": stats["docs_out"], "characters": stats["chars"]["out"]},
                  {"dir": str(out), "text": parts, "stats": str(out / "stats.json")}, {"corpus": stats})


@dataclass
class DemoCorpus:
    """The demo's corpus: the shipped crawl samples and sample text built together, trained on the licensed part."""


def _corpus_demo(cfg: DemoCorpus, ctx: Context) -> Result:
    stats, train_text = stage_corpus(ctx.out)
    return Result({"documents_in": stats["docs_in"], "documents_out": stats["docs_out"], "characters": stats["chars"]["out"]},
                  {"dir": str(ctx.out / "corpus"), "text": [str(train_text)], "stats": str(ctx.out / "corpus" / "stats.json")},
                  {"corpus": stats})


def _tokenizer_train(cfg: TokenizerTrain, ctx: Context) -> Result:
    cmd_train(cfg)
    info = json.loads((Path(cfg.output) / "training.json").read_text())
    return Result({"vocab_size": info["vocab_size"], "documents": info["docs"]}, {"dir": cfg.output}, {"training": info})


def _tokenizer_expand(cfg: TokenizerExpand, ctx: Context) -> Result:
    cmd_expand(cfg)
    info = json.loads((Path(cfg.output) / "expansion.json").read_text())
    ratio = info["tokens_after"] / max(info["tokens_before"], 1)
    return Result({"vocab_size": info["vocab_size"], "added": len(info["added"]), "corpus_tokens_ratio": round(ratio, 4)},
                  {"dir": cfg.output}, {"expansion": {k: v for k, v in info.items() if k != "added"}})


@dataclass
class DemoTokenizer:
    """The demo's tokenizer: a byte-fallback BPE on the corpus, and its coverage report against an expanded English one."""

    input: list[str]  # text or JSONL files to train on
    vocab_size: int = 4096
    output: str = "tokenizer"  # tokenizer directory
    report: str = "tokenizer_report"  # folder of the coverage report (relative to run.out_dir)


def _tokenizer_demo(cfg: DemoTokenizer, ctx: Context) -> Result:
    directory = train_bpe_dir([Path(p) for p in expand_inputs(cfg.input)], Path(cfg.output), cfg.vocab_size)
    markdown = demo_section(directory, ctx.out / cfg.report)
    report = json.loads((ctx.out / cfg.report / "tokenizer_report.json").read_text())
    return Result({"vocab_size": cfg.vocab_size}, {"dir": str(directory), "report": str(ctx.out / cfg.report)},
                  {"markdown": markdown, "fertility": report})


def _tokenize(cfg: TokenizeConfig, ctx: Context) -> Result:
    stats = tokenize_files(cfg.input, cfg.tokenizer, cfg.output, val_fraction=cfg.val_fraction, seed=cfg.seed, text_field=cfg.text_field)
    return Result({"tokens": stats["train_tokens"], "val_tokens": stats["val_tokens"],
                   "bytes_per_token": round(stats["val_bytes"] / max(1, stats["val_tokens"]), 4)}, {"dir": cfg.output}, {"tokens": stats})


def _resize(cfg: ModelResize, ctx: Context) -> Result:
    info = resize_model_dir(cfg.model, cfg.tokenizer, cfg.output, init=cfg.init, seed=cfg.seed)
    return Result({"rows_before": info["rows_before"], "rows_after": info["rows_after"], "new_tokens": info["new_tokens"]},
                  {"dir": cfg.output, "model": cfg.output})


def _loss_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return read_jsonl(path) if path.exists() else []


def _pretrain(cfg: PretrainConfig, ctx: Context) -> Result:
    summary = pretrain(cfg)
    run_dir = Path(cfg.run.dir)
    rows = _loss_rows(run_dir)
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    mfus = [r["mfu"] for r in rows if "mfu" in r]
    metrics = {"tokens": summary["tokens"], "params": summary["params"], "flops": summary["flops"],
               "tokens_per_s": round(sum(speeds) / len(speeds), 1) if speeds else None,
               "mfu": round(sum(mfus) / len(mfus), 4) if mfus else None,
               "train_loss": summary.get("train_loss"), "val_loss": summary.get("val_loss"), "val_bpb": summary.get("val_bpb")}
    samples = [{"prompt": p, "greedy": g, "sampled": s} for p, g, s in stage_generate(run_dir / "model", PROMPTS)]
    quality = {"val_bpb": summary.get("val_bpb"), "common_char_share": common_char_share([s["sampled"] for s in samples]),
               "greedy_distinct_4grams": distinct_4grams([s["greedy"] for s in samples])}
    write_json(run_dir / "quality.json", quality)
    return Result(metrics, {"dir": str(run_dir), "model": str(run_dir / "model"), "metrics": str(run_dir / "metrics.jsonl"),
                            "config": str(run_dir / "config.toml"), "quality": str(run_dir / "quality.json")},
                  {"summary": summary, "samples": samples, "quality": quality, "config": to_dict(cfg)})


def _post_result(run_dir: Path, summary: dict, samples: list[dict], note: str | None = None) -> Result:
    rows = _loss_rows(run_dir)
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    final = next((r for r in reversed(rows) if "loss" in r), {})
    val = next((r["val_loss"] for r in reversed(rows) if "val_loss" in r), None)
    metrics = {"steps": summary.get("step"), "tokens_per_s": round(sum(speeds) / len(speeds), 1) if speeds else None,
               "train_loss": final.get("loss"), "val_loss": val}
    details = {"summary": {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}, "samples": samples}
    if note:
        details["note"] = note
    return Result(metrics, {"dir": str(run_dir), "model": str(run_dir / "model"), "metrics": str(run_dir / "metrics.jsonl")}, details)


def _sft(cfg: SFTConfig, ctx: Context) -> Result:
    summary = sft(cfg)
    run_dir = Path(cfg.run.dir)
    answers = sample_answers(run_dir / "model", QUESTIONS)
    return _post_result(run_dir, summary, [{"prompt": q, "after": a} for q, a in zip(QUESTIONS, answers)])


def _dpo(cfg: DPOConfig, ctx: Context) -> Result:
    summary = dpo(cfg)
    run_dir = Path(cfg.run.dir)
    answers = sample_answers(run_dir / "model", QUESTIONS)
    return _post_result(run_dir, summary, [{"prompt": q, "after": a} for q, a in zip(QUESTIONS, answers)])


@dataclass
class DemoPost:
    """The demo's SFT or DPO: a short run on the shipped Japanese data, with answers before and after."""

    model: str  # the model to start from
    steps: int = 30  # optimizer steps
    output: str = "sft"  # run directory (`sft/`, `dpo/`: the stage's name)


def _sft_demo(cfg: DemoPost, ctx: Context) -> Result:
    out = demo_sft(cfg.model, cfg.output, cfg.steps)
    return _post_result(Path(cfg.output), out["summary"], out["samples"], out.get("note"))


def _dpo_demo(cfg: DemoPost, ctx: Context) -> Result:
    out = demo_dpo(cfg.model, cfg.output, cfg.steps)
    return _post_result(Path(cfg.output), out["summary"], out["samples"], out.get("note"))


def _eval(cfg: EvalConfig, ctx: Context) -> Result:
    results = evaluate(cfg)
    scores = {name: r["metrics"].get(r["metric"]) for name, r in results["tasks"].items() if name in cfg.task_list()}
    return Result({"tasks": len(scores), **{f"score_{k}": v for k, v in scores.items()}},
                  {"dir": cfg.output, "results": str(Path(cfg.output) / "results.json")}, {"results": results})


def _contamination(cfg: ContaminationConfig, ctx: Context) -> Result:
    tasks = [t.strip() for item in cfg.tasks for t in item.split(",") if t.strip()]
    report = check(expand_inputs(cfg.corpus), tasks, cfg.char_n, cfg.word_n, cfg.limit)
    out = Path(cfg.output)
    write_json(out, report)
    flagged = {name: r["contaminated"] for name, r in report["tasks"].items()}
    brief = {name: {k: r[k] for k in ("examples", "contaminated", "fraction", "mean_overlap")} | {"hits": r["hits"][:5]}
             for name, r in report["tasks"].items()}
    return Result({"documents": report["documents"], "contaminated_tasks": sum(1 for n in flagged.values() if n)},
                  {"dir": str(out.parent), "report": str(out)}, {"tasks": brief, "n_char": cfg.char_n, "n_word": cfg.word_n})


# ---------------------------------------------------------------- what a rerun clears


def _paths(*keys: str) -> Callable[[Any, Path], list[Path]]:
    def owned(cfg: Any, out: Path) -> list[Path]:
        return [Path(_get(cfg, k)) for k in keys]
    return owned


def _run_dir(cfg: Any, out: Path) -> list[Path]:
    """A trainer's own files in its run directory (which may be the pipeline's output folder itself)."""
    d = Path(cfg.run.dir)
    return [d / n for n in ("checkpoints", "model", "adapter", "summary.json", "metrics.jsonl", "config.toml")]


def _demo_corpus_paths(cfg: DemoCorpus, out: Path) -> list[Path]:
    return [out / "corpus_input", out / "corpus", out / "train.jsonl"]


def _demo_tokenizer_paths(cfg: DemoTokenizer, out: Path) -> list[Path]:
    return [Path(cfg.output), out / cfg.report]


def _get(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def clear(paths: list[Path], out: Path) -> None:
    """Remove a stage's own outputs before it reruns; only ever inside the run's output folder."""
    root = out.resolve()
    for p in paths:
        if p.resolve() == root or root not in p.resolve().parents:
            raise UserError(f"{p}: a changed stage's output must be inside run.out_dir ({out}) and not out_dir itself, "
                            "to be cleared before it reruns")
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


KINDS: dict[str, dict[str, Variant]] = {
    "corpus": {
        "build": Variant(CorpusBuild, _corpus_build, ("input",), "output", _paths("output"), "text"),
        "demo": Variant(DemoCorpus, _corpus_demo, (), "", _demo_corpus_paths, "text"),
    },
    "tokenizer": {
        "train": Variant(TokenizerTrain, _tokenizer_train, ("input",), "output", _paths("output")),
        "expand": Variant(TokenizerExpand, _tokenizer_expand, ("base", "corpus"), "output", _paths("output")),
        "demo": Variant(DemoTokenizer, _tokenizer_demo, ("input",), "output", _demo_tokenizer_paths),
    },
    "tokenize": {"tokenize": Variant(TokenizeConfig, _tokenize, ("tokenizer", "input"), "output", _paths("output"))},
    "resize": {"resize": Variant(ModelResize, _resize, ("model", "tokenizer"), "output", _paths("output"))},
    "pretrain": {"pretrain": Variant(PretrainConfig, _pretrain, ("data.dirs", "train.init_from", "train.select_ref"), "run.dir", _run_dir, "model")},
    "sft": {
        "sft": Variant(SFTConfig, _sft, ("model", "data.train", "data.val"), "run.dir", _run_dir, "model"),
        "demo": Variant(DemoPost, _sft_demo, ("model",), "output", _paths("output"), "model"),
    },
    "dpo": {
        "dpo": Variant(DPOConfig, _dpo, ("model", "reference", "data.train", "data.val"), "run.dir", _run_dir, "model"),
        "demo": Variant(DemoPost, _dpo_demo, ("model",), "output", _paths("output"), "model"),
    },
    "eval": {"eval": Variant(EvalConfig, _eval, ("model",), "output", _paths("output"))},
    "contamination": {"contamination": Variant(ContaminationConfig, _contamination, ("corpus",), "output", _paths("output"), "report",
                                                "{name}/report.json")},
}
ORDER = list(KINDS)  # the order stages of each kind come in
