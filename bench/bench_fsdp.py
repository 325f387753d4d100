"""FSDP2 in a process group of one: steps, a checkpoint, a SIGKILL, a resume, against an uninterrupted run.

    python bench/bench_fsdp.py --data SHARDS --vocab-size V [--size small|tiny --steps 12 --work DIR]

Each run is `torchrun --standalone --nproc-per-node 1 -m orizuru.cli pretrain` with
`train.fsdp=true` (NCCL on CUDA, gloo on the CPU). The first run is killed (SIGKILL, its whole
process group) once its first checkpoint is written; the second, same run directory, must say
"resumed at step N" and log the same losses as a third, uninterrupted run. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch.distributed as dist

from orizuru.runtime import init_distributed

SIZES = {  # bench/bench_model.py's shapes
    "small": {"model.dim": 768, "model.n_layers": 12, "model.n_heads": 12, "model.n_kv_heads": 4, "model.max_seq_len": 1024,
             "train.seq_len": 1024, "train.batch_size": 8},
    "tiny": {"model.dim": 64, "model.n_layers": 2, "model.n_heads": 4, "model.n_kv_heads": 2, "model.max_seq_len": 64,
             "train.seq_len": 32, "train.batch_size": 4},
}  # fmt: skip


NO_GROUP = ("orizuru starts no process group for one process (runtime.init_distributed: WORLD_SIZE > 1), so train.fsdp=true "
            "trained the unsharded model: a checkpoint/resume check, not FSDP2")


def command(run_dir: Path, data: str, vocab: int, size: str, steps: int, ckpt_every: int) -> list[str]:
    sets = {**SIZES[size], "model.vocab_size": vocab, "model.tie_embeddings": "true", "train.max_steps": steps,
            "train.warmup_steps": 2, "train.lr": "1e-3", "train.log_every": 1, "train.eval_every": steps, "train.eval_batches": 1,
            "train.ckpt_every": ckpt_every, "train.fsdp": "true", "data.dirs": json.dumps([data]), "run.dir": json.dumps(str(run_dir))}  # fmt: skip
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m", "orizuru.cli", "pretrain",
            *sum((["--set", f"{k}={v}"] for k, v in sets.items()), [])]  # fmt: skip


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def process_group_at_world_one() -> bool:
    """Whether orizuru starts a process group for one torchrun process (else FSDP2 is never applied)."""
    one = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29581",
           "TORCHELASTIC_RUN_ID": "bench"}  # as torchrun sets them
    saved = dict(os.environ)
    os.environ.update(one)
    try:
        init_distributed()
        started = dist.is_initialized()
        if started:
            dist.destroy_process_group()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return started


def run(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float]:
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"pretrain failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="token shard directory (bench/bench_model.py writes one)")
    ap.add_argument("--vocab-size", type=int, required=True)
    ap.add_argument("--size", choices=SIZES, default="small")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--work", type=Path, default=None, help="folder for the run directories (default: a temporary one)")
    ap.add_argument("--timeout", type=float, default=300, help="seconds for each run")
    a = ap.parse_args()
    if a.work is not None:
        a.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-fsdp-", dir=a.work))  # fresh: a run directory left over would resume
    ckpt_every = max(1, a.steps // 4)
    args = dict(data=a.data, vocab=a.vocab_size, size=a.size, steps=a.steps, ckpt_every=ckpt_every)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    killed = work / "killed"
    latest = killed / "checkpoints" / "latest.txt"
    t0 = time.perf_counter()
    p = subprocess.Popen(command(killed, **args), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while p.poll() is None and not latest.exists() and time.perf_counter() - t0 < a.timeout:
        time.sleep(0.005)
    if p.poll() is not None:
        sys.exit(f"the first run ended before it could be killed (exit {p.returncode}):\n{p.stderr.read()[-3000:]}")
    for pid in [p.pid, *descendants(p.pid)]:
        os.kill(pid, signal.SIGKILL)
    p.wait()
    first_s = time.perf_counter() - t0
    checkpoint = latest.read_text().strip()
    ckpt_dir = killed / "checkpoints" / checkpoint
    ckpt_files = sorted(f.name for f in ckpt_dir.iterdir())  # read now: the resumed run prunes old checkpoints
    ckpt_bytes = sum(f.stat().st_size for f in ckpt_dir.rglob("*") if f.is_file())

    resumed, resume_s = run(command(killed, **args), a.timeout)
    m = re.search(r"resumed at step (\d+)", resumed.stderr)
    full, full_s = run(command(work / "full", **args), a.timeout)
    a_loss, b_loss = losses(killed), losses(work / "full")
    after = [s for s in b_loss if m and s > int(m.group(1))]
    rel = max((abs(a_loss[s] - b_loss[s]) / abs(b_loss[s]) for s in after if s in a_loss), default=None)
    summary = json.loads((killed / "summary.json").read_text())
    group = process_group_at_world_one()
    print(json.dumps({
        "bench": "fsdp2_resume", "world_size": 1, "process_group": group,
        **({} if group else {"note": NO_GROUP}), "size": a.size, "steps": a.steps, "checkpoint": checkpoint,
        "checkpoint_files": ckpt_files, "checkpoint_mb": round(ckpt_bytes / 2**20, 1),
        "resumed_at_step": int(m.group(1)) if m else None, "steps_compared": len(after),
        "max_rel_loss_diff_vs_uninterrupted": rel, "final_loss": summary.get("train_loss"),
        "seconds": {"killed_run": round(first_s, 1), "resumed_run": round(resume_s, 1), "uninterrupted_run": round(full_s, 1)},
        "device": "cuda" if "on cuda" in full.stderr else "cpu",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
