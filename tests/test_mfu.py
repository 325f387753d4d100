"""MFU arithmetic (the GPU benchmark and training logs use it) checked by hand on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from orizuru.model.config import ModelConfig
from orizuru.model.flops import flops_per_token, mfu, peak_flops


def test_flops_per_token_by_hand():
    cfg = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100, ffn_dim=160)
    # per layer: q 64*64, k and v 64*32 each, o 64*64, mlp 3*64*160, two norms 2*64
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 160 + 2 * 64
    matmul_params = 2 * per_layer + 64 + 100 * 64  # + final norm + lm_head (input embedding excluded)
    assert flops_per_token(cfg, 128) == 6 * matmul_params + 12 * 2 * 4 * 16 * 128
    cfg_tied = ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=100, ffn_dim=160, tie_embeddings=True)
    assert flops_per_token(cfg_tied, 128) == flops_per_token(cfg, 128)  # the tied matrix counts once


def test_mfu_arithmetic():
    # 1e9 FLOPs/token at 400k tokens/s on one H100 SXM = 4e14 / 9.89e14
    assert mfu(1e9, 4e5, peak_flops("NVIDIA H100 80GB HBM3")) == pytest.approx(0.40445, rel=1e-4)
    assert mfu(1e9, 4e5, 312e12, n_gpus=2) == pytest.approx(4e14 / 624e12)
    with pytest.raises(ValueError):
        mfu(1e9, 1.0, 0.0)


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("Tesla T4", None),
    ],
)
def test_peak_table(name, peak):
    assert peak_flops(name) == peak


def test_bench_mfu_skips_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the benchmark would really run")
    script = Path(__file__).resolve().parent.parent / "bench" / "bench_mfu.py"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"bench": "mfu", "skipped": "no CUDA"}
