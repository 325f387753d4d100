"""Rho-1 (train.select_ref) vs plain pre-training on a corpus with planted noise, clean validation.

    python bench/bench_rho1.py [--steps 600] [--ref-steps 400] [--noise-frac 0.5] [--ratio 0.6] [--set key=value ...]

Text: the shipped Wikipedia sample (per paragraph) and the Aozora works cut into the demo's
~2,000-character documents; every 10th document is clean validation, never trained on. The noisy
corpus is every other document with random-token spans planted between its sentences until
`--noise-frac` of its characters are noise (tests/noise_synth.py). The reference is a model of the
same size trained on a clean subset (the first `--ref-frac` of the training documents, without the
noise), as Rho-1 trains its reference on a small high-quality set. Then, with the same model,
batches, seed and token count: plain pre-training on the noisy corpus, Rho-1 on it with that
reference, and a control with a random-init reference (selection by the model's own loss, nearly:
the untrained reference's loss is about ln V on every token), which says whether the clean
reference is what helps. Every arm is `orizuru pretrain` itself (`pretrain()`).

Prints one JSON object: each arm's clean-validation curve (tokens, loss, bits/byte), tokens/s and
training seconds; the tokens Rho-1 needs to reach the plain run's final clean loss and its ratio
to the plain run's; the same in time (Rho-1's reference forward costs time): as measured in the
runs (noisy on a shared machine: the arms run at different times) and from a forward+backward
cost measured interleaved in one process; the reference's one-off training cost; and the forward
FLOPs the reference adds per token.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from bench_recipe import interp, orizuru_rows, tokens_to_reach

from orizuru.config import load_config
from orizuru.demo.run import _pieces  # the demo's ~2,000-character documents
from orizuru.files import read_jsonl
from orizuru.model.checkpoint import load_model, save_model
from orizuru.model.flops import count_params, flops_per_token
from orizuru.model.llama import Llama
from orizuru.resources import DATA
from orizuru.tokenizer.tokenizer import Tokenizer, iter_texts, train_bpe_dir
from orizuru.train.config import PretrainConfig
from orizuru.train.loss import lm_loss, selective_lm_loss
from orizuru.train.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # noise_synth: the planted-noise corpus test_rho1.py uses
from noise_synth import noisy_and_clean_shards  # noqa: E402


def texts() -> list[str]:
    docs = [r["text"] for r in read_jsonl(DATA / "sample" / "wiki.jsonl")]
    for work in iter_texts([DATA / "sample" / "aozora.jsonl"]):
        docs.extend(_pieces(work))
    return docs


def arm(work: Path, name: str, data: Path, overrides: list[str], steps: int) -> dict:
    run = work / name
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.time()
    cfg = load_config(PretrainConfig, overrides=[f"data.dirs=[{json.dumps(str(data))}]", f"run.dir={json.dumps(str(run))}",
                                                 f"train.max_steps={steps}", f"train.ckpt_every={steps}", *overrides])
    pretrain(cfg)
    rows = read_jsonl(run / "metrics.jsonl")
    curve = orizuru_rows(run)
    loss_at = {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}
    for c in curve:
        c["val_loss"] = loss_at[c["step"]]
        c["train_s"] = round(c["train_s"], 2)
    out = {"final_val_loss": curve[-1]["val_loss"], "final_val_bpb": curve[-1]["val_bpb"], "tokens": curve[-1]["tokens"],
           "train_s": curve[-1]["train_s"], "tokens_per_s": round(curve[-1]["tokens"] / curve[-1]["train_s"], 1),
           "wall_s": round(time.time() - t0, 1), "curve": curve, "cfg": cfg}
    if "selected_frac" in rows[-1]:
        out["selected_frac"] = rows[-1]["selected_frac"]
    return out


def step_cost(cfg: PretrainConfig, ref_dir: Path, reps: int = 15) -> dict:
    """Forward + backward of one batch, plain loss vs Rho-1's (reference forward included), timed
    interleaved in one process, so the machine's other load hits both alike (medians)."""
    model, ref = Llama(cfg.model), load_model(ref_dir).requires_grad_(False)
    model.init_weights(seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.train.seq_len + 1), generator=g)
    x, y = ids[:, :-1], ids[:, 1:]
    runs = {"plain": lambda: lm_loss(model, x, y, cfg.train, None).backward(),
            "rho1": lambda: selective_lm_loss(model, ref, x, y, cfg.train, None)[0].backward()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(reps + 2):
        for k, f in runs.items():
            t0 = time.perf_counter()
            f()
            if i >= 2:  # warm-up
                times[k].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    tokens = cfg.train.batch_size * cfg.train.seq_len
    return {"plain_tokens_per_s": round(tokens / med["plain"], 1), "rho1_tokens_per_s": round(tokens / med["rho1"], 1),
            "tokens_per_s_ratio": round(med["plain"] / med["rho1"], 4), "reps": reps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/bench-rho1", help="data, tokenizer and run directories (rebuilt)")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of each arm on the noisy corpus")
    ap.add_argument("--ref-steps", type=int, default=400, help="optimizer steps of the reference on the clean subset")
    ap.add_argument("--noise-frac", type=float, default=0.5, help="share of the noisy corpus's characters that are noise")
    ap.add_argument("--ref-frac", type=float, default=0.5, help="share of the training documents the reference sees (clean)")
    ap.add_argument("--ratio", type=float, default=0.6, help="train.select_ratio")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--no-control", action="store_true", help="skip the random-init-reference control arm")
    ap.add_argument("--set", action="append", default=[], help="override of every arm's config (key=value)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    docs = texts()
    train_docs = [t for i, t in enumerate(docs) if i % 10]
    (work / "clean-train.txt").write_text("\n\n".join(train_docs), encoding="utf-8")
    tok_dir = train_bpe_dir([work / "clean-train.txt"], work / "tokenizer", args.vocab)  # clean training text only
    noisy, clean = noisy_and_clean_shards(work, docs, tok_dir, noise_frac=args.noise_frac, ref_frac=args.ref_frac)
    tok = Tokenizer.load(tok_dir)
    clean_tokens = sum(len(ids) + 2 for ids in tok.encode_batch(train_docs))
    noisy_tokens = json.loads((noisy / "meta.json").read_text())["inputs"][0]["train_tokens"]
    base = ["model.dim=128", "model.n_layers=4", "model.n_heads=4", "model.n_kv_heads=2", f"model.vocab_size={args.vocab}",
            "model.max_seq_len=128", "train.seq_len=128", "train.batch_size=8", "train.lr=3e-3", "train.warmup_steps=50",
            "train.log_every=25", "train.eval_every=50", "train.eval_batches=24", *args.set]
    ref = arm(work, "ref", clean, base, args.ref_steps)
    plain = arm(work, "plain", noisy, base, args.steps)
    rho1 = arm(work, "rho1", noisy, [*base, f"train.select_ref={json.dumps(str(work / 'ref' / 'model'))}",
                                     f"train.select_ratio={args.ratio}"], args.steps)
    arms = {"plain": plain, "rho1": rho1}
    if not args.no_control:
        init = Llama(ref["cfg"].model)
        init.init_weights(seed=ref["cfg"].train.seed + 1)
        save_model(init, work / "random-ref", tok)
        arms["control_random_ref"] = arm(work, "control", noisy, [*base, f"train.select_ref={json.dumps(str(work / 'random-ref'))}",
                                                                  f"train.select_ratio={args.ratio}"], args.steps)
    cfg = plain["cfg"]
    target = plain["curve"][-1]["val_bpb"]  # bits/byte is the loss x a constant on the same held-out windows
    result = {
        "data": {"documents": len(docs), "train_documents": len(train_docs), "clean_train_tokens": clean_tokens,
                 "noisy_train_tokens": noisy_tokens, "noise_token_frac": round(1 - clean_tokens / noisy_tokens, 4),
                 "reference_train_tokens": json.loads((clean / "meta.json").read_text())["inputs"][0]["train_tokens"],
                 "vocab": args.vocab, "noise_char_frac": args.noise_frac},
        "model": {"params": count_params(cfg.model).total, "seq_len": cfg.train.seq_len,
                  "tokens_per_step": cfg.train.batch_size * cfg.train.seq_len, "steps": args.steps, "threads": args.threads},
        "reference": {"kind": "same size as the trained model, trained on the clean subset", "steps": args.ref_steps,
                      "tokens": ref["tokens"], "train_s": ref["train_s"], "clean_val_loss": ref["final_val_loss"]},
        "select_ratio": args.ratio,
        "ref_forward_flops_per_token_over_training": round(flops_per_token(ref["cfg"].model, cfg.train.seq_len) / 3
                                                           / flops_per_token(cfg.model, cfg.train.seq_len), 4),
    }
    for name, a in arms.items():
        reach = tokens_to_reach(a["curve"], target)
        at_wall = interp(a["curve"], "train_s", plain["train_s"])
        result[name] = {k: v for k, v in a.items() if k != "cfg"}
        result[name].update(tokens_to_plain_final=reach, token_ratio_to_plain=None if reach is None else round(reach / plain["tokens"], 4),
                            seconds_to_plain_final=None if reach is None else round(interp(a["curve"], "tokens", reach, "train_s"), 1),
                            val_bpb_at_plain_train_s=None if at_wall is None else round(at_wall, 4))
        secs = result[name]["seconds_to_plain_final"]
        result[name]["time_ratio_to_plain"] = None if secs is None else round(secs / plain["train_s"], 4)
    cost = step_cost(rho1["cfg"], work / "ref" / "model")
    token_ratio = result["rho1"]["token_ratio_to_plain"]
    result["rho1_vs_plain"] = {
        "val_loss_equal_tokens": [rho1["final_val_loss"], plain["final_val_loss"]],
        "token_ratio_to_reach_plain_final": token_ratio,
        "tokens_per_s_ratio_in_runs": round(rho1["tokens_per_s"] / plain["tokens_per_s"], 4),  # arms at different times: load noise
        "time_ratio_to_reach_plain_final_in_runs": result["rho1"]["time_ratio_to_plain"],
        "step_cost_interleaved": cost,
        "time_ratio_to_reach_plain_final_at_interleaved_cost": None if token_ratio is None else round(token_ratio / cost["tokens_per_s_ratio"], 4),
        # the reference's own training (same model size: plain's cost per token) added to Rho-1's side
        "time_ratio_including_reference_training_at_interleaved_cost":
            None if token_ratio is None else round(token_ratio / cost["tokens_per_s_ratio"] + ref["tokens"] / plain["tokens"], 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
