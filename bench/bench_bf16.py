"""bf16 logits of orizuru's Llama vs transformers' LlamaForCausalLM, same weights, and which SDPA kernel ran.

    python bench/bench_bf16.py --model DIR [--batch 4 --seq 512 --device auto]

On CUDA both models run in bfloat16 and are also compared with orizuru's float32 logits (TF32
off), so each one's own bf16 error is on the record beside their difference. On a machine
without CUDA both run in float32 (the comparison then checks the weights' mapping only). The
SDPA kernel is read from the profiler's op names (flash, memory-efficient, cuDNN or math) for a
training-style forward (no mask: `is_causal`) of each model. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM

from orizuru.model.checkpoint import load_model

KERNELS = {  # aten op -> SDPA backend
    "aten::_scaled_dot_product_flash_attention": "flash",
    "aten::_scaled_dot_product_flash_attention_for_cpu": "flash (cpu)",
    "aten::_scaled_dot_product_efficient_attention": "memory-efficient",
    "aten::_scaled_dot_product_cudnn_attention": "cudnn",
    "aten::_scaled_dot_product_attention_math": "math",
    "aten::_scaled_dot_product_fused_attention_overrideable": "fused (overrideable)",
}


def sdpa_backends(forward) -> list[str]:
    """The SDPA kernels one call of `forward` ran, from the profiler's op names."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward()
    names = {e.name for e in prof.events()}
    return sorted({KERNELS[n] for n in names if n in KERNELS})


def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.float() - b.float()).abs()
    return {"max": round(d.max().item(), 5), "mean": round(d.mean().item(), 6)}


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="HF Llama directory (bench/bench_model.py writes one)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ours = load_model(a.model, device=device, dtype=dtype)
    theirs = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    seq = min(a.seq, ours.cfg.max_seq_len)
    ids = torch.randint(0, ours.cfg.vocab_size, (a.batch, seq), generator=torch.Generator().manual_seed(0)).to(device)
    lo, lt = ours(ids), theirs(input_ids=ids).logits
    out = {
        "bench": "bf16_logits", "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "batch": a.batch, "seq_len": seq,
        "n_heads": ours.cfg.n_heads, "n_kv_heads": ours.cfg.n_kv_heads,
        "ours_vs_transformers": diff(lo, lt), "logit_std": round(lo.float().std().item(), 4),
        "sdpa_backend_ours": sdpa_backends(lambda: ours(ids)),
        "sdpa_backend_transformers": sdpa_backends(lambda: theirs(input_ids=ids)),
    }
    if dtype != torch.float32:
        ref = load_model(a.model, device=device, dtype=torch.float32)(ids)
        out["ours_vs_float32"] = diff(lo, ref)
        out["transformers_vs_float32"] = diff(lt, ref)
        out["argmax_agreement"] = round((lo.argmax(-1) == lt.argmax(-1)).float().mean().item(), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
