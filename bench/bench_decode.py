"""Decoding throughput: orizuru's KV-cache `generate` vs transformers' `generate`, same weights.

Greedy, batch 1 and batch 8 (left-padded prompts of different lengths), every row forced to
the full length (no EOS), same thread count; runs alternate between the two. Checks that both
produce the same tokens, then prints one JSON object with new tokens/s and the ratios.

    python bench/bench_decode.py [--dim 512 --layers 8 --prompt-len 64 --new 64 --reps 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from orizuru.model.checkpoint import model_config_to_hf
from orizuru.model.config import ModelConfig
from orizuru.model.flops import count_params
from orizuru.model.generate import generate
from orizuru.model.llama import Llama


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.heads, n_kv_heads=args.kv_heads,
                      vocab_size=args.vocab, max_seq_len=args.prompt_len + args.new)  # fmt: skip
    cfg.validate()
    ours = Llama(cfg)
    ours.init_weights(seed=0)
    ours.eval()
    hf = LlamaForCausalLM(LlamaConfig(**model_config_to_hf(cfg), attn_implementation="sdpa")).eval()
    hf.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(0)

    results = {}
    for B in (int(b) for b in args.batches.split(",")):
        lens = [args.prompt_len - 3 * i for i in range(B)]  # different lengths: a padded batch
        prompts = [torch.randint(10, args.vocab, (n,), generator=g).tolist() for n in lens]
        L = max(lens)
        ids = torch.tensor([[0] * (L - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])

        def run_ours():
            return generate(ours, prompts, args.new)

        @torch.inference_mode()
        def run_hf():
            out = hf.generate(input_ids=ids, attention_mask=mask if B > 1 else None, max_new_tokens=args.new,
                              min_new_tokens=args.new, do_sample=False, pad_token_id=0, eos_token_id=None)  # fmt: skip
            return out[:, L:].tolist()

        same = run_ours() == run_hf()  # also the warm-up
        times = {"orizuru": [], "transformers": []}
        for r in range(args.reps):
            for name, fn in (("orizuru", run_ours), ("transformers", run_hf))[:: 1 if r % 2 == 0 else -1]:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        tps = {n: B * args.new / statistics.median(t) for n, t in times.items()}
        results[f"batch_{B}"] = {
            "tokens_per_s": {n: round(v, 1) for n, v in tps.items()},
            "ratio": round(tps["orizuru"] / tps["transformers"], 3),
            "same_tokens": same,
        }
    print(json.dumps({
        "bench": "decode", "device": "cpu", "dtype": "float32", "threads": args.threads,
        "config": {"dim": args.dim, "n_layers": args.layers, "n_heads": args.heads, "n_kv_heads": args.kv_heads,
                   "vocab_size": args.vocab, "prompt_len": args.prompt_len, "new_tokens": args.new},
        "params": count_params(cfg).total, **results, "target_ratio_batch_1": 1.5,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
