"""MFU of a ~125M-parameter Llama training on one CUDA GPU: seq 1024, bf16 autocast, torch.compile.

On a machine without CUDA it prints {"skipped": "no CUDA"} and exits 0, so it can run anywhere.

    python bench/bench_mfu.py [--batch 16 --steps 30 --no-compile --activation-checkpointing]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from orizuru.model.config import ModelConfig
from orizuru.model.flops import count_params, flops_per_token, mfu, peak_flops
from orizuru.model.llama import Llama

# GPT-2-small-sized Llama: 12 layers, dim 768, 12 heads, 48k tied vocabulary: ~123M parameters
CONFIG = dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=12, vocab_size=49152, max_seq_len=1024, tie_embeddings=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--activation-checkpointing", action="store_true", help="recompute each block in the backward pass")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "mfu", "skipped": "no CUDA"}))
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    device = "cuda"
    name = torch.cuda.get_device_name()
    cfg = ModelConfig(**CONFIG)
    cfg.validate()
    model = Llama(cfg).to(device)
    model.init_weights(seed=0)
    model.train()
    model.activation_checkpointing = args.activation_checkpointing
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    step_model = model if args.no_compile else torch.compile(model)
    x = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), device=device)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step() -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = step_model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    tps = args.batch * args.seq / dt
    fpt = flops_per_token(cfg, args.seq)
    peak = peak_flops(name)
    print(json.dumps({
        "bench": "mfu", "device": name, "params": count_params(cfg).total, "batch": args.batch, "seq_len": args.seq,
        "dtype": "bfloat16 autocast", "compiled": not args.no_compile,
        "activation_checkpointing": args.activation_checkpointing, "step_s": round(dt, 4),
        "tokens_per_s": round(tps), "flops_per_token": fpt, "peak_flops": peak,
        "mfu": None if peak is None else round(mfu(fpt, tps, peak), 4), "loss": round(loss.item(), 3),
        "max_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2), "target_mfu": 0.5,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
