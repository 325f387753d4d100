"""Quality per token: orizuru's pre-training recipe vs a plain transformers Llama + AdamW + cosine.

Same model size, data, batches (the same `TokenBatches`, so the same windows in the same order),
token count and seed, on `--threads` CPU threads, in one process. Held-out bits per byte are
measured on whole documents that are never trained on: every `--holdout-every`-th Aozora work
(not windows of works that are trained on) and every `--holdout-every`-th Wikipedia article.

    python bench/bench_recipe.py [--steps 300] [--set train.lr=0.01 ...] [--baseline-lr 4e-3]

The orizuru arm is `orizuru pretrain` itself (`pretrain()`) with the model and [train] section of
configs/demo.toml (the shipped recipe at this size), `--set` overrides on top. The baseline is
transformers' LlamaForCausalLM with its own initialisation and the LLaMA paper's recipe: AdamW
(beta2 0.95, decay 0.1 on matrices), linear warm-up, cosine to 10%, clipping at 1.0. Prints one
JSON object: both final held-out bpb and their ratio (equal tokens), the orizuru bpb at the
baseline's training wall time (equal wall time, interpolated; noisy on a shared machine), and the
fraction of the baseline's tokens orizuru needed to reach the baseline's final figure.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from orizuru.config import load_config, validate
from orizuru.demo.run import _pieces  # the demo's ~2,000-character documents
from orizuru.files import read_jsonl, write_json
from orizuru.model.checkpoint import model_config_to_hf
from orizuru.resources import CONFIGS, DATA
from orizuru.tokenizer.tokenizer import Tokenizer, iter_texts, train_bpe_dir
from orizuru.train.batches import Source, TokenBatches, val_batches
from orizuru.train.config import PretrainConfig
from orizuru.train.pretrain import pretrain
from orizuru.train.tokenize import read_meta, token_bytes, tokenize_files


def prepare(work: Path, vocab: int, every: int, seed: int) -> Path:
    """Token shards whose train split is the training documents and whose val split is the held-out works."""
    data = work / "data"
    if (data / "meta.json").exists():
        if read_meta(data)["vocab_size"] != vocab:
            raise SystemExit(f"{data}: tokenized with another vocabulary size than {vocab}; use another --work")
        return data
    work.mkdir(parents=True, exist_ok=True)
    train, held = [], []
    for i, text in enumerate(iter_texts([DATA / "sample" / "aozora.jsonl"])):
        (held if i % every == 0 else train).extend(_pieces(text))
    articles: dict[str, list[str]] = {}
    for row in read_jsonl(DATA / "sample" / "wiki.jsonl"):
        articles.setdefault(row["title"], []).append(row["text"])
    for i, paragraphs in enumerate(articles.values()):
        (held if i % every == 0 else train).append("\n".join(paragraphs))
    for name, docs in (("train.jsonl", train), ("heldout.jsonl", held)):
        with open(work / name, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps({"text": d}, ensure_ascii=False) + "\n")
    tok_dir = train_bpe_dir([work / "train.jsonl"], work / "tokenizer", vocab)  # learned on training text only
    tokenize_files([work / "train.jsonl", work / "heldout.jsonl"], tok_dir, data, val_fraction=1e-12, seed=seed)
    meta = read_meta(data)
    tr, ho = meta["inputs"]
    assert tr["val_tokens"] == 0 and ho["val_tokens"] == 0
    # the held-out file's documents become the val split, none of them train
    ho.update(val=ho["train"], val_tokens=ho["train_tokens"], val_bytes=ho["train_bytes"], val_documents=ho["train_documents"],
              train_tokens=0, train_bytes=0, train_documents=0)
    write_json(data / "meta.json", meta)
    return data


def baseline(cfg: PretrainConfig, data: Path, lr: float, warmup: int, threads: int) -> list[dict]:
    """transformers' LlamaForCausalLM + AdamW + warm-up/cosine on the same batches; eval rows.

    From `cfg` only the model and the batch shape, step count, seed and eval settings are used."""
    t = cfg.train
    torch.manual_seed(t.seed)
    model = LlamaForCausalLM(LlamaConfig(**model_config_to_hf(cfg.model), attn_implementation="sdpa")).train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed_tokens" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed_tokens" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, t.max_steps - warmup))
        return 0.1 * lr + 0.45 * lr * (1 + math.cos(math.pi * p))

    batches = TokenBatches([Source(data, "train", t.seq_len)], [1.0], t.batch_size, t.grad_accum, 1, t.seed)
    val, tbytes = Source(data, "val", t.seq_len), torch.from_numpy(token_bytes(Tokenizer.load(data)))
    rows, train_s = [], 0.0
    for step in range(t.max_steps):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        for micro in range(t.grad_accum):
            x, y = (torch.from_numpy(a) for a in batches.batch(step, micro, 0))
            logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1)) / t.grad_accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        train_s += time.perf_counter() - t0
        done = step + 1
        if done % t.eval_every == 0 or done == t.max_steps:
            rows.append({"step": done, "tokens": done * t.batch_size * t.seq_len * t.grad_accum, "train_s": train_s,
                         "val_bpb": held_out_bpb(lambda a: model(input_ids=a).logits, val, t, tbytes)})
            print(f"baseline step {done}: bpb {rows[-1]['val_bpb']:.4f}", file=sys.stderr)
    return rows


@torch.no_grad()
def held_out_bpb(logits_fn, val: Source, t, tbytes) -> float:
    nats = nbytes = 0.0
    for x, y in val_batches(val, t.batch_size, t.eval_batches, 1, 0):
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        lg = logits_fn(x).float()
        nats += torch.nn.functional.cross_entropy(lg.view(-1, lg.size(-1)), y.reshape(-1), reduction="sum").item()
        nbytes += tbytes[y].sum().item()
    return nats / (math.log(2) * nbytes)


def orizuru_rows(run: Path) -> list[dict]:
    """Eval rows of a pretrain run with cumulative training seconds (from each logged interval's rate)."""
    rows, train_s, prev = [], 0.0, 0
    for r in read_jsonl(run / "metrics.jsonl"):
        train_s += (r["tokens"] - prev) / r["tokens_per_s"]
        prev = r["tokens"]
        if "val_bpb" in r:
            rows.append({"step": r["step"], "tokens": r["tokens"], "train_s": train_s, "val_bpb": r["val_bpb"]})
    return rows


def interp(rows: list[dict], key: str, at: float, value: str = "val_bpb") -> float | None:
    xs, ys = [r[key] for r in rows], [r[value] for r in rows]
    return None if at < xs[0] else float(np.interp(at, xs, ys))


def tokens_to_reach(rows: list[dict], target: float) -> float | None:
    """Tokens at which the eval curve first reaches `target` (linear between evals; the first eval's
    tokens, an upper bound, when that one is already there)."""
    for a, b in zip([None] + rows[:-1], rows):
        if b["val_bpb"] <= target:
            if a is None:
                return b["tokens"]
            f = (a["val_bpb"] - target) / (a["val_bpb"] - b["val_bpb"])
            return a["tokens"] + f * (b["tokens"] - a["tokens"])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/bench-recipe", help="data, tokenizer and run directories (data is reused)")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of both arms")
    ap.add_argument("--set", action="append", default=[], help="override of the orizuru arm's config (key=value)")
    ap.add_argument("--name", default="orizuru", help="run directory name of the orizuru arm")
    ap.add_argument("--baseline-lr", type=float, default=4e-3, help="the baseline's peak LR (the pre-recipe demo's)")
    ap.add_argument("--baseline-warmup", type=int, default=20)
    ap.add_argument("--no-baseline", action="store_true", help="only the orizuru arm (lever sweeps)")
    ap.add_argument("--baseline-only", action="store_true", help="only the baseline arm (its LR sweep)")
    ap.add_argument("--holdout-every", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=24, help="held-out batches per eval (x batch x seq tokens)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    data = work / "data"
    cfg = load_config(PretrainConfig, CONFIGS / "demo.toml", [
        f"train.max_steps={args.steps}", f"train.eval_every={args.eval_every}", f"train.eval_batches={args.eval_batches}",
        f"train.ckpt_every={args.steps}", f"data.dirs=[{json.dumps(str(data))}]", f"run.dir={json.dumps(str(work / args.name))}",
        *args.set])
    prepare(work, cfg.model.vocab_size, args.holdout_every, cfg.train.seed)
    validate(cfg)
    result = {}
    if not args.baseline_only:
        run = Path(cfg.run.dir)
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.time()
        pretrain(cfg)
        ours = orizuru_rows(run)
        result["orizuru"] = {"overrides": args.set, "held_out_bpb": ours[-1]["val_bpb"], "tokens": ours[-1]["tokens"],
                             "train_s": round(ours[-1]["train_s"], 1), "curve": ours, "wall_s": round(time.time() - t0, 1)}
    if args.baseline_only:
        rows = baseline(cfg, data, args.baseline_lr, args.baseline_warmup, args.threads)
        result["baseline"] = {"lr": args.baseline_lr, "held_out_bpb": rows[-1]["val_bpb"], "tokens": rows[-1]["tokens"],
                              "train_s": round(rows[-1]["train_s"], 1), "curve": rows}
    elif not args.no_baseline:
        rows = baseline(cfg, data, args.baseline_lr, args.baseline_warmup, args.threads)
        b = rows[-1]
        reach = tokens_to_reach(ours, b["val_bpb"])
        result["baseline"] = {"lr": args.baseline_lr, "held_out_bpb": b["val_bpb"], "tokens": b["tokens"],
                              "train_s": round(b["train_s"], 1), "curve": rows}
        result["ratio_bpb_equal_tokens"] = round(ours[-1]["val_bpb"] / b["val_bpb"], 4)
        at_time = interp(ours, "train_s", b["train_s"])
        result["orizuru_bpb_at_baseline_wall_time"] = at_time
        result["ratio_bpb_equal_wall_time"] = None if at_time is None else round(at_time / b["val_bpb"], 4)
        result["token_fraction_to_reach_baseline"] = None if reach is None else round(reach / b["tokens"], 4)
    result["held_out"] = {"tokens": Source(data, "val", cfg.train.seq_len).n_tokens,
                          "eval_tokens": min(Source(data, "val", cfg.train.seq_len).n_windows, cfg.train.batch_size * cfg.train.eval_batches)
                          * cfg.train.seq_len}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
