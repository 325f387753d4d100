"""Post-training speed and memory on the CPU, each variant in a fresh process (for a clean peak RSS).

- SFT step tokens/s: orizuru (`Llama` + `pad_batch`, loss on answer tokens) vs the same step on
  transformers' `LlamaForCausalLM` with the same weights and batch (the peer).
- DPO step tokens/s and peak memory: reference log-probs cached (orizuru dpo: the reference model is
  freed before training) vs a live reference model kept in memory and run every step (the usual way).

    python bench/bench_post.py [--dim 512 --layers 8 --steps 5]

Prints one JSON object with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def build(args):
    import torch

    from orizuru.model.config import ModelConfig
    from orizuru.model.llama import Llama
    from orizuru.post.finetune import Seq

    torch.manual_seed(0)
    cfg = ModelConfig(dim=args.dim, n_layers=args.layers, n_heads=args.dim // 64, n_kv_heads=args.dim // 64, vocab_size=8192, max_seq_len=args.seq_len)
    cfg.validate()
    model = Llama(cfg)
    model.init_weights(0)
    g = torch.Generator().manual_seed(1)
    seqs = []
    for _ in range(args.batch):
        n = int(torch.randint(args.seq_len // 2, args.seq_len + 1, (1,), generator=g))
        ids = torch.randint(10, 8192, (n,), generator=g).tolist()
        seqs.append(Seq(ids, [0] * (n // 3) + [1] * (n - n // 3)))
    return model, seqs


def run_variant(args) -> dict:
    import torch

    from orizuru.post.dpo import preference_loss
    from orizuru.post.finetune import pad_batch, sequence_logps

    torch.set_num_threads(args.threads)
    model, seqs = build(args)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    tokens = sum(len(s.ids) for s in seqs)
    if args.variant in ("sft", "sft-hf"):
        x, y = pad_batch(seqs, 0, "cpu")
        if args.variant == "sft-hf":
            from transformers import LlamaConfig, LlamaForCausalLM

            c = model.cfg
            hf = LlamaForCausalLM(LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.ffn_dim, num_hidden_layers=c.n_layers,
                                              num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads, max_position_embeddings=c.max_seq_len,
                                              tie_word_embeddings=False, attn_implementation="sdpa"))  # fmt: skip
            hf.load_state_dict(model.state_dict(), strict=False)
            del model
            opt = torch.optim.AdamW(hf.parameters(), lr=1e-5)
            labels = torch.cat([torch.full((x.size(0), 1), -100), y[:, :-1]], 1)  # HF shifts labels itself

            def step():
                hf(input_ids=x, labels=labels).loss.backward()
        else:

            def step():
                model(x, y).backward()
    else:
        pairs = seqs[: len(seqs) // 2], seqs[len(seqs) // 2 :]
        flat = [s for c, r in zip(*pairs) for s in (c, r)]
        if args.variant == "dpo-live":
            ref, _ = build(args)
            ref.eval().requires_grad_(False)
        else:
            with torch.no_grad():
                cached = sequence_logps(model, flat, 0, "cpu").view(-1, 2)

        def step():
            logps = sequence_logps(model, flat, 0, "cpu").view(-1, 2)
            if args.variant == "dpo-live":
                with torch.no_grad():
                    refs = sequence_logps(ref, flat, 0, "cpu").view(-1, 2)
            else:
                refs = cached
            loss, _, _ = preference_loss("dpo", logps[:, 0], logps[:, 1], refs[:, 0], refs[:, 1], 0.1)
            loss.mean().backward()

    step()  # warm-up
    opt.step()
    opt.zero_grad()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
        opt.step()
        opt.zero_grad()
    dt = time.perf_counter() - t0
    return {"tokens_per_s": round(tokens * args.steps / dt, 1), "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    out = {"config": {k: v for k, v in vars(args).items() if k != "variant"}}
    for variant in ("sft", "sft-hf", "dpo-cached", "dpo-live"):
        flags = [a for k in ("dim", "layers", "seq_len", "batch", "steps", "threads") for a in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]
        cmd = [sys.executable, __file__, "--variant", variant, *flags]
        out[variant] = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    out["sft_speed_vs_transformers"] = round(out["sft"]["tokens_per_s"] / out["sft-hf"]["tokens_per_s"], 3)
    out["dpo_cached_vs_live_speed"] = round(out["dpo-cached"]["tokens_per_s"] / out["dpo-live"]["tokens_per_s"], 3)
    out["dpo_cached_vs_live_peak_rss"] = round(out["dpo-cached"]["peak_rss_mb"] / out["dpo-live"]["peak_rss_mb"], 3)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
