"""Peak learning rate against model size, for the scaling sweep's per-size lr rule.

Each size of the sweep config's depth dial (`sweep_model`, so the same shapes the sweep trains) is
trained for the same number of steps at each learning rate, with the config's [train] section (its
optimizer and schedule) and only `train.lr` changed; every run is an ordinary `pretrain()` run in
`--work/d<depth>-lr<lr>/` (finished runs are reused). Per size, the best lr is the minimum of a
parabola in ln lr through the best grid point and its neighbours; then ln lr_opt is regressed on
ln width, which gives lr = a * width^-b. Prints one JSON object: every run's final validation loss,
each size's best lr and the fitted a, b.

    python bench/scaling_lr.py --config orizuru/configs/scaling/cpu-tiny.toml --depths 1 3 5 \\
        --lrs 4e-3 8e-3 1.6e-2 3.2e-2 --steps 500 --jobs 2 --work runs/scaling/lr
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from orizuru.config import load_config
from orizuru.scaling.sweep import SweepConfig, sweep_model
from orizuru.train.config import PretrainConfig, RunConfig
from orizuru.train.pretrain import pretrain


def _train(job: tuple[PretrainConfig, int]) -> dict:
    run, threads = job
    torch.set_num_threads(threads)
    out = Path(run.run.dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(out / "train.log", "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
        summary = pretrain(run)
    return {"dir": str(out), "val_loss": summary["val_loss"], "seconds": round(time.time() - t0, 1)}


def best_lr(lrs: list[float], losses: list[float]) -> tuple[float, bool]:
    """The parabola-in-ln-lr minimum through the best point and its neighbours; (lr, inside the grid)."""
    order = np.argsort(lrs)
    x, y = np.log(np.asarray(lrs)[order]), np.asarray(losses)[order]
    i = int(np.argmin(y))
    if i == 0 or i == len(x) - 1:
        return float(math.exp(x[i])), False
    c2, c1, _ = np.polyfit(x[i - 1:i + 2], y[i - 1:i + 2], 2)
    return float(math.exp(-c1 / (2 * c2))), True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", action="append", default=[], help="config override, as in `orizuru scaling sweep`")
    ap.add_argument("--depths", type=int, nargs="+", required=True)
    ap.add_argument("--lrs", type=float, nargs="+", required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--work", default="runs/scaling/lr")
    args = ap.parse_args()
    cfg = load_config(SweepConfig, args.config, args.set)
    t = cfg.train
    jobs, grid = [], []
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    for depth in args.depths:
        model = sweep_model(cfg, depth)
        for lr in args.lrs:
            train = dataclasses.replace(t, lr=lr, max_steps=args.steps, warmup_steps=min(t.warmup_steps, args.steps // 10),
                                        eval_every=args.steps, ckpt_every=max(1, args.steps // 2))
            run = PretrainConfig(model=model, train=train, data=cfg.data,
                                 run=RunConfig(dir=str(Path(args.work) / f"d{depth}-lr{lr:g}")))
            jobs.append((run, threads))
            grid.append({"depth": depth, "dim": model.dim, "lr": lr})
    jobs_big_first = sorted(range(len(jobs)), key=lambda i: -grid[i]["dim"])
    with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
        results = pool.map(_train, [jobs[i] for i in jobs_big_first])
    for i, r in zip(jobs_big_first, results):
        grid[i].update(r)
        print(f"d{grid[i]['depth']} lr {grid[i]['lr']:g}: val_loss {r['val_loss']:.4f} ({r['seconds']} s)", file=sys.stderr)
    sizes = []
    for depth in args.depths:
        rows = [g for g in grid if g["depth"] == depth]
        lr, inside = best_lr([g["lr"] for g in rows], [g["val_loss"] for g in rows])
        sizes.append({"depth": depth, "dim": rows[0]["dim"], "best_lr": lr, "inside_grid": inside,
                      "best_grid_loss": min(g["val_loss"] for g in rows)})
    slope, intercept = np.polyfit(np.log([s["dim"] for s in sizes]), np.log([s["best_lr"] for s in sizes]), 1)
    print(json.dumps({"optimizer": t.optimizer, "schedule": t.schedule, "steps": args.steps,
                      "tokens_per_step": t.batch_size * t.grad_accum * t.seq_len, "runs": grid, "sizes": sizes,
                      "rule": {"a": math.exp(intercept), "b": -slope}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
