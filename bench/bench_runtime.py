"""Data-parallel post-training on the CPU: `orizuru sft` and `orizuru dpo` under 2 gloo processes
(batch B each, DDP and FSDP2) against 1 process (batch 2B, the peer), same global batch and steps.

Figures per run: steps/s and tokens/s of the timed steps (the second half; the first half warms
up), scaling efficiency = (2-process tokens/s) / (1-process tokens/s) (1.0 is perfect on 2 workers
only when the single process also used one core: each process runs with --threads threads), and
peak memory per rank (the largest over ranks, from the loop's `peak_mem_mb`: CUDA memory allocated
on a GPU, the resident set's high-water mark on the CPU, which includes loading the whole model
before sharding and allocator caching) and training state per rank (`state_mb`: parameters,
gradients and AdamW moments held by the rank, what FSDP2 shards).

    python bench/bench_runtime.py [--dim 256 --layers 4 --batch 8 --steps 8 --threads 1]

Prints one JSON object. Needs no network: the tokenizer is trained on the shipped instruction data.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "orizuru" / "data" / "post"


def setup(work: Path, dim: int, layers: int) -> tuple[Path, Path]:
    """A random model of the asked size with a chat tokenizer, and a preference file."""
    sys.path.insert(0, str(ROOT))
    from orizuru.model.checkpoint import save_model
    from orizuru.model.config import ModelConfig
    from orizuru.model.llama import Llama
    from orizuru.tokenizer.tokenizer import Tokenizer, train_bpe

    rows = [json.loads(line) for line in (DATA / "instruction_ja.jsonl").read_text(encoding="utf-8").splitlines()]
    tok = Tokenizer(train_bpe([r["instruction"] for r in rows] + [r["output"] for r in rows], 2048, show_progress=False))
    cfg = ModelConfig(dim=dim, n_layers=layers, n_heads=max(1, dim // 64), n_kv_heads=max(1, dim // 64), vocab_size=tok.vocab_size, max_seq_len=256)
    cfg.validate()
    model = Llama(cfg)
    model.init_weights(0)
    save_model(model, work / "base", tok)
    pairs = work / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": r["instruction"][:40], "chosen": r["output"][:60], "rejected": "わかりません。"}, ensure_ascii=False) + "\n"
                             for r in rows), encoding="utf-8")
    return work / "base", pairs


def run(stage: str, work: Path, base: Path, pairs: Path, nproc: int, fsdp: bool, args) -> dict:
    out = work / f"{stage}-{nproc}-{'fsdp' if fsdp else 'ddp'}"
    batch = args.batch * 2 // nproc
    sets = {"model": f'"{base}"', "run.dir": f'"{out}"', "train.batch_size": batch, "schedule.epochs": 0, "train.max_steps": args.steps,
            "train.warmup_steps": 0, "schedule.warmup_ratio": 0, "train.log_every": max(1, args.steps // 2), "train.eval_every": 10**6,
            "train.ckpt_every": 10**6, "train.seq_len": 128, "train.fsdp": str(fsdp).lower(), "data.val_fraction": 0.02,
            "data.train": f'["{DATA / "instruction_ja.jsonl"}"]' if stage == "sft" else f'["{pairs}"]'}
    cmd = ["-m", "orizuru.cli", stage, *[a for k, v in sets.items() for a in ("--set", f"{k}={v}")]]
    if nproc > 1:
        cmd = ["-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(29750 + int(fsdp)), *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    timed = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])  # the second half of the steps
    return {"processes": nproc, "parallel": "fsdp2" if fsdp else ("ddp" if nproc > 1 else "none"), "batch_per_process": batch,
            "tokens_per_s": timed["tokens_per_s"], "steps_per_s": timed["steps_per_s"], "peak_mem_mb_per_rank": timed["peak_mem_mb"],
            "state_mb_per_rank": timed["state_mb"], "loss": timed["loss"], "wall_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="sequences per process with 2 processes (the single process takes twice that)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_runtime_"))
    base, pairs = setup(work, args.dim, args.layers)
    result = {"config": vars(args)}
    for stage in ("sft", "dpo"):
        one, ddp, fsdp = (run(stage, work, base, pairs, n, f, args) for n, f in ((1, False), (2, False), (2, True)))
        result[stage] = {
            "one": one, "ddp": ddp, "fsdp2": fsdp,
            "speedup_ddp": round(ddp["tokens_per_s"] / one["tokens_per_s"], 3),
            "speedup_fsdp2": round(fsdp["tokens_per_s"] / one["tokens_per_s"], 3),
            "scaling_efficiency_ddp": round(ddp["tokens_per_s"] / one["tokens_per_s"] / 2, 3),
            "scaling_efficiency_fsdp2": round(fsdp["tokens_per_s"] / one["tokens_per_s"] / 2, 3),
            "peak_mem_fsdp2_over_ddp": round(fsdp["peak_mem_mb_per_rank"] / ddp["peak_mem_mb_per_rank"], 3),
            "state_fsdp2_over_ddp": round(fsdp["state_mb_per_rank"] / ddp["state_mb_per_rank"], 3),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
