"""`orizuru demo`: the whole pipeline on the shipped sample data, on the CPU, in minutes.

crawl samples + licensed text -> corpus build -> tokenizer -> token shards -> pre-training ->
samples -> base-model evaluation -> SFT -> DPO -> report.md. Each stage leaves its artifact under
--out and is skipped (or resumes) when that artifact is already complete, so an interrupted demo
continues where it stopped.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from orizuru.config import parse_command, stage_config, validate
from orizuru.corpus.build import build_corpus, stats_markdown
from orizuru.demo.post import demo_dpo, demo_sft
from orizuru.demo.quality import common_char_share, distinct_4grams
from orizuru.demo.tokenizer import demo_section
from orizuru.errors import UserError
from orizuru.eval.evaluate import FAST_SUBSET, EvalConfig, evaluate, summary_markdown
from orizuru.files import atomic_write, read_jsonl, write_json
from orizuru.model.checkpoint import load_model
from orizuru.model.generate import generate
from orizuru.report import cell, plot_losses, table, write_report
from orizuru.resources import DATA
from orizuru.scaling.plan import report_section
from orizuru.tokenizer.tokenizer import Tokenizer, train_bpe_dir
from orizuru.train.config import PretrainConfig
from orizuru.train.pretrain import pretrain
from orizuru.train.tokenize import tokenize_files

SAMPLE = DATA / "sample"
CRAWL = DATA / "corpus"
PROMPTS = ["吾輩は", "日本の首都は", "昔々あるところに", "東京都は、", "その日の夕方、", "私は", "山の上に", "この町には"]
CHUNK_CHARS = 2000  # web-page-sized documents: the Swallow rules are calibrated on those


def say(msg: str) -> None:
    print(f"\n== {msg}", file=sys.stderr, flush=True)


def _pieces(text: str) -> list[str]:
    """A long work cut at line breaks into ~CHUNK_CHARS-character documents (the last kept if >= 1/5 of that)."""
    docs, piece, size = [], [], 0
    for line in text.split("\n"):
        piece.append(line)
        size += len(line)
        if size >= CHUNK_CHARS:
            docs.append("\n".join(piece).strip())
            piece, size = [], 0
    if size >= CHUNK_CHARS // 5:
        docs.append("\n".join(piece).strip())
    return docs


def sample_documents(path: Path) -> Path:
    """The licensed training text as web-page-sized documents: the demo's data mixture.

    Every shipped Aozora work (data/sample and the corpus tests' data/ja_text, each work once), cut
    at line breaks into ~2,000-character pieces (a whole novel trips the Gopher repetition rules
    simply by being long); Wikipedia paragraphs joined per article; and, as plain text, the train
    splits of the question sets (JCommonsenseQA train questions with their answers, the Japanese
    instructions with their responses). Evaluation splits are never read here.
    """
    if path.exists():
        return path

    docs: list[str] = []
    seen: set[str] = set()
    for file in (SAMPLE / "aozora.jsonl", DATA / "ja_text" / "aozora.jsonl.gz"):
        for row in read_jsonl_any(file):
            if row["id"] not in seen:
                seen.add(row["id"])
                docs += _pieces(row["text"])
    articles: dict[str, list[str]] = {}
    for row in read_jsonl_any(SAMPLE / "wiki.jsonl"):
        articles.setdefault(row["title"], []).append(row["text"])
    docs += ["\n".join(paragraphs) for paragraphs in articles.values()]
    qa = [f"{row['question']}　答えは「{row['choices'][row['label']]}」。" for row in read_jsonl_any(DATA / "post" / "jcommonsenseqa_train.jsonl")]
    qa += ["\n".join(t for t in (row["instruction"], row["input"], row["output"]) if t.strip())
           for row in read_jsonl_any(DATA / "post" / "instruction_ja.jsonl")]
    docs += _pieces("\n".join(qa))  # one-line items grouped into page-sized documents
    with atomic_write(path) as f:
        for text in docs:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path


def read_jsonl_any(path: Path) -> list[dict]:
    """Rows of a .jsonl or .jsonl.gz file."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stage_corpus(out: Path) -> tuple[dict, Path]:
    """Build the corpus from the crawl samples and the sample text; keep the licensed part for training.

    The WARC/HTML samples are third-party pages shipped as pipeline test inputs only: they go through
    the build (and its statistics), but only documents from the sample text are trained on.
    """
    sample = sample_documents(out / "corpus_input" / "sample.jsonl")
    inputs = sorted(str(p) for p in (CRAWL / "warc").iterdir()) + sorted(str(p) for p in (CRAWL / "html").glob("*.html"))
    stats = build_corpus(inputs + [str(sample)], out / "corpus")
    train_text = out / "train.jsonl"
    if not train_text.exists():
        with atomic_write(train_text) as f:
            for part in sorted((out / "corpus").glob("part-*.jsonl.gz")):
                with gzip.open(part, "rt", encoding="utf-8") as g:
                    for line in g:
                        doc = json.loads(line)
                        if doc["id"].startswith(f"{sample.name}/"):
                            f.write(json.dumps({"text": doc["text"]}, ensure_ascii=False) + "\n")
    return stats, train_text


SAMPLING = {"temperature": 0.8, "top_k": 40, "seed": 0}  # the demo's sampled continuations


def stage_generate(model_dir: Path, prompts: list[str], max_new_tokens: int = 64) -> list[tuple[str, str, str]]:
    """(prompt, greedy continuation, sampled continuation) per prompt. Greedy decoding of a model
    this small falls into loops; a sample at SAMPLING shows what it learned of the language."""
    model = load_model(model_dir).eval()
    tok = Tokenizer.load(model_dir)
    ids = [tok.encode_prompt(p, model.cfg.max_seq_len - max_new_tokens)[0] for p in prompts]
    greedy = generate(model, ids, max_new_tokens, eos_id=tok.eos_id)
    sampled = generate(model, ids, max_new_tokens, eos_id=tok.eos_id, **SAMPLING)
    return [(p, tok.decode(g), tok.decode(s)) for p, g, s in zip(prompts, greedy, sampled)]


@dataclass
class DemoConfig:
    """The demo's own options and its pre-training config (defaults: configs/demo.toml)."""

    out: str = "runs/demo"  # output directory; also the pre-training run.dir, with data.dirs = [OUT/data]
    eval_limit: int = 100  # examples per evaluation task
    post_steps: int = 30  # optimizer steps of the demo SFT and of the demo DPO
    pretrain: PretrainConfig = stage_config(PretrainConfig, default_file="demo.toml")


def run_demo(demo: DemoConfig) -> Path:
    t0 = time.time()
    out, eval_limit, post_steps = Path(demo.out), demo.eval_limit, demo.post_steps
    out.mkdir(parents=True, exist_ok=True)
    for p in (SAMPLE / "wiki.jsonl", SAMPLE / "aozora.jsonl", CRAWL / "warc", CRAWL / "html"):
        if not p.exists():
            raise UserError(f"{p}: shipped sample data is missing (run from a full checkout of the repository)")
    pre = demo.pretrain
    cfg = replace(pre, run=replace(pre.run, dir=str(out)), data=replace(pre.data, dirs=[str(out / "data")]))
    validate(cfg)
    times = {}

    say("corpus build: WARC/HTML crawl samples + sample text -> clean, deduplicated documents")
    t = time.time()
    corpus_stats, train_text = stage_corpus(out)
    times["corpus build"] = time.time() - t

    t = time.time()
    tok_dir = train_bpe_dir([train_text], out / "tokenizer", cfg.model.vocab_size)
    tokenizer_md = demo_section(tok_dir, out / "tokenizer_report")
    times["tokenizer"] = time.time() - t
    say("tokenizing into packed shards")
    t = time.time()
    data_stats = tokenize_files([train_text], tok_dir, out / "data", val_fraction=0.05, seed=cfg.train.seed)
    times["tokenize"] = time.time() - t

    say(f"pre-training ({cfg.train.max_steps} steps)")
    t = time.time()
    summary = pretrain(cfg)
    times["pre-training"] = time.time() - t

    say("sampling from the trained model")
    samples = stage_generate(out / "model", PROMPTS)
    for prompt, greedy, sampled in samples:
        print(f"greedy:  {prompt}{greedy}\nsampled: {prompt}{sampled}")

    quality = {
        "validation bits per byte": summary["val_bpb"],
        "sampled characters among the 3,000 most common": common_char_share([t for _, _, t in samples]),
        "distinct character 4-grams, greedy": distinct_4grams([g for _, g, _ in samples]),
    }
    write_json(out / "quality.json", quality)

    say(f"evaluating the base model ({', '.join(FAST_SUBSET)}, {eval_limit} examples each)")
    t = time.time()
    eval_results = evaluate(EvalConfig(model=out / "model", tasks=FAST_SUBSET, limit=eval_limit, output=out / "eval"))
    times["evaluation"] = time.time() - t

    say(f"instruction tuning ({post_steps} steps) and DPO ({post_steps} steps)")
    t = time.time()
    sft_out = demo_sft(out / "model", out / "sft", post_steps)
    times["SFT"] = time.time() - t
    t = time.time()
    dpo_out = demo_dpo(out / "sft" / "model", out / "dpo", post_steps)
    times["DPO"] = time.time() - t

    plot_losses(out / "metrics.jsonl", out / "loss.png", title="orizuru demo: pre-training")
    rows = read_jsonl(out / "metrics.jsonl")
    val = [r for r in rows if "val_loss" in r]
    figures = [
        ("parameters", f"{summary['params'] / 1e6:.2f} M"),
        ("training tokens", f"{summary['tokens']:,} ({summary['epochs'][0]:.2f} epochs)"),
        ("corpus tokens (train / val)", f"{data_stats['train_tokens']:,} / {data_stats['val_tokens']:,}"),
        ("bytes per token (val)", f"{data_stats['val_bytes'] / max(1, data_stats['val_tokens']):.2f}"),
        ("validation loss, first → last eval", f"{val[0]['val_loss']:.3f} → {val[-1]['val_loss']:.3f} nats/token"),
        ("validation bits per byte", f"{val[-1]['val_bpb']:.3f}"),
        ("training throughput", f"{sum(r['tokens_per_s'] for r in rows) / len(rows):,.0f} tokens/s"),
        ("training compute", f"{summary['flops']:.3g} FLOPs"),
    ]

    def post_section(result: dict) -> str:
        lines = [table([(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in result["summary"].items() if not isinstance(v, (dict, list))])]
        lines += ["", "| prompt | before | after |", "| --- | --- | --- |"]
        lines += [f"| {s['prompt']} | {cell(s['before'][:120])} | {cell(s['after'][:120])} |" for s in result["samples"]]
        if result.get("note"):
            lines += ["", result["note"]]
        return "\n".join(lines)

    targets = {"validation bits per byte": "<= 1.7", "sampled characters among the 3,000 most common": ">= 0.97",
               "distinct character 4-grams, greedy": ">= 0.4"}
    times["total"] = time.time() - t0
    sections = [
        ("Does it write Japanese?", table([(k, f"{v:.3f} (target {targets[k]})") for k, v in quality.items()])
         + f"\n\nComputed by `orizuru/demo/quality.py` from the {len(samples)} prompts' continuations below "
         "(common characters: the 3,000 most frequent in the shipped Aozora and Wikipedia text)."),
        ("Stages", table([(k, f"{v:.0f} s") for k, v in times.items()], ("stage", "wall time"))),
        ("Corpus", stats_markdown(corpus_stats).replace("## Corpus build\n", "")),
        ("Tokenizer", tokenizer_md),
        ("Pre-training", "![loss curve](loss.png)\n\n" + table(figures)),
        ("Samples", f"Greedy, and sampled at temperature {SAMPLING['temperature']}, top-k {SAMPLING['top_k']} "
         f"(seed {SAMPLING['seed']}).\n\n| prompt | greedy | sampled |\n| --- | --- | --- |\n"
         + "\n".join(f"| {p} | {cell(g)} | {cell(t)} |" for p, g, t in samples)),
        ("Validation", table([(str(r["step"]), f"{r['val_loss']:.4f} (bpb {r['val_bpb']:.3f})") for r in val], ("step", "val loss"))),
        report_section(summary, cfg),
        ("Base-model evaluation", summary_markdown(eval_results)),
        ("Instruction tuning (SFT)", post_section(sft_out)),
        ("Preference optimisation (DPO)", post_section(dpo_out)),
        ("Config", "```toml\n" + (out / "config.toml").read_text(encoding="utf-8") + "```"),
        ("Artifacts", "- `corpus/`: clean shards, `stats.json`, `summary.md`\n"
         "- `tokenizer/`, `tokenizer_report/`: the trained tokenizer and its report\n"
         "- `data/`: packed token shards and their manifest\n"
         "- `model/`: the pre-trained Hugging Face Llama directory (`transformers.AutoModelForCausalLM.from_pretrained`)\n"
         "- `eval/`: `results.json`, per-example `<task>.jsonl`\n"
         "- `sft/model/`, `dpo/model/`: the instruction-tuned and preference-tuned models\n"
         "- `metrics.jsonl`, `config.toml`, `summary.json`, `checkpoints/`"),
    ]
    write_report(out / "report.md", "orizuru demo", sections)
    say(f"done in {time.time() - t0:.0f} s: report at {out / 'report.md'}")
    return out / "report.md"


def main(argv: list[str]) -> int:
    run_demo(parse_command(DemoConfig, argv, "orizuru demo", __doc__.split("\n\n")[0]))
    return 0
