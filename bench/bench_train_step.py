"""Training-step throughput: orizuru's Llama vs transformers' LlamaForCausalLM (sdpa), same weights.

Same config, batch, dtype and thread count, in one process; steps alternate between the two so
machine noise hits both alike. Prints one JSON object with tokens/s of each and the ratio.

    python bench/bench_train_step.py [--dim 512 --layers 8 --batch 8 --seq 256 --steps 10] [--compile]

--compile wraps both models in torch.compile (inductor; C++ kernels on the CPU), as
`train.compile = true` does in `orizuru pretrain`; compilation happens in the warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaForCausalLM

from orizuru.model.checkpoint import model_config_to_hf
from orizuru.model.config import ModelConfig
from orizuru.model.flops import count_params
from orizuru.model.llama import Llama


def make_models(cfg: ModelConfig):
    ours = Llama(cfg)
    ours.init_weights(seed=0)
    from transformers import LlamaConfig

    hf = LlamaForCausalLM(LlamaConfig(**model_config_to_hf(cfg), attn_implementation="sdpa"))
    hf.load_state_dict(ours.state_dict(), strict=False)
    if cfg.tie_embeddings:
        hf.tie_weights()
    return ours.train(), hf.train()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--compile", action="store_true", help="torch.compile both models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
                      vocab_size=args.vocab, max_seq_len=args.seq)  # fmt: skip
    cfg.validate()
    ours, hf = make_models(cfg)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, args.vocab, (args.batch, args.seq + 1), generator=g)
    inputs, targets = x[:, :-1], x[:, 1:]
    opts = {n: torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for n, m in (("orizuru", ours), ("transformers", hf))}
    run_ours, run_hf = (torch.compile(ours), torch.compile(hf)) if args.compile else (ours, hf)

    def step(name: str) -> tuple[float, float]:
        opt = opts[name]
        t0 = time.perf_counter()
        if name == "orizuru":
            loss = run_ours(inputs, targets)
        else:  # transformers shifts the labels itself
            loss = run_hf(input_ids=inputs, labels=inputs).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, loss.item()

    times = {"orizuru": [], "transformers": []}
    losses = {}
    for i in range(args.warmup + args.steps):
        for name in (("orizuru", "transformers") if i % 2 == 0 else ("transformers", "orizuru")):
            dt, loss = step(name)
            losses.setdefault(name, loss)
            if i >= args.warmup:
                times[name].append(dt)
    tokens = args.batch * args.seq
    tps = {n: tokens / statistics.median(t) for n, t in times.items()}
    print(json.dumps({
        "bench": "train_step", "device": "cpu", "dtype": "float32", "threads": args.threads, "compiled": args.compile,
        "config": {"dim": args.dim, "n_layers": args.layers, "n_heads": args.heads, "n_kv_heads": args.kv_heads,
                   "vocab_size": args.vocab, "batch": args.batch, "seq_len": args.seq},
        "params": count_params(cfg).total, "steps": args.steps,
        "first_loss": {n: round(v, 4) for n, v in losses.items()},
        "tokens_per_s": {n: round(v, 1) for n, v in tps.items()},
        "ratio": round(tps["orizuru"] / tps["transformers"], 3), "target_ratio": 1.2,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
