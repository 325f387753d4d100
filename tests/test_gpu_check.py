"""bench/gpu_check.sh on the CPU: every step reports figures or a stated reason, and none stops the rest.

The script is what a session with a GPU runs in one call; here it runs at test sizes
(GPU_CHECK_TINY=1). Steps that can run without CUDA must give their figures (the shared model,
the logits comparison in float32, the kill-and-resume check); the GPU-only ones say why they skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["model", "mfu_compiled", "mfu_uncompiled", "mfu_activation_checkpointing", "bf16_logits", "fsdp2_resume",
         "eval_vs_lm_eval", "serve"]  # fmt: skip


def run_check(out: Path, **env) -> dict:
    env = {**os.environ, "PYTHON": sys.executable, "LM_EVAL_PYTHON": sys.executable, "GPU_CHECK_TINY": "1", **env}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert list(report["steps"]) == STEPS
    for name, entry in report["steps"].items():
        figures = set(entry) - {"skipped", "step_seconds", "log_tail", "bench"}
        assert ("skipped" in entry and entry["skipped"].strip()) or figures, (name, entry)
    return report


@pytest.mark.slow
def test_every_step_reports(tmp_path):
    import torch

    report = run_check(tmp_path / "gpu_check.json")
    steps = report["steps"]
    assert report["tiny"] is True and report["total_s"] < 200
    assert steps["model"]["params"] > 0 and steps["model"]["vocab_size"] == 512
    bf16 = steps["bf16_logits"]
    assert bf16["ours_vs_transformers"]["max"] < 1e-4 and bf16["sdpa_backend_ours"], bf16
    fsdp = steps["fsdp2_resume"]
    assert fsdp["resumed_at_step"] >= 1 and fsdp["steps_compared"] >= 1, fsdp
    assert fsdp["max_rel_loss_diff_vs_uninterrupted"] < 1e-5
    if not torch.cuda.is_available():
        for name in ("mfu_compiled", "mfu_uncompiled", "mfu_activation_checkpointing"):
            assert steps[name]["skipped"] == "no CUDA"
    if not (ROOT / "bench" / "bench_serve.py").exists():
        assert steps["serve"]["skipped"] == "bench/bench_serve.py not present"


def test_spent_budget_skips_the_rest(tmp_path):
    """A spent budget: every step is skipped with the reason, and the JSON is still written whole.
    (A 6-s budget raced the first step's speed: on a quiet machine it finished in time.)"""
    steps = run_check(tmp_path / "g.json", GPU_CHECK_BUDGET="4")["steps"]
    assert steps["model"]["skipped"] == "time budget of 4s spent before this step", steps["model"]
    assert steps["bf16_logits"]["skipped"] == "time budget of 4s spent before this step"
