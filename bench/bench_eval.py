"""Likelihood multiple-choice throughput: orizuru vs lm-evaluation-harness (HF backend), CPU or CUDA.

Both score the same (context, choice) pairs of JCommonsenseQA (0-shot, template "qa") on the same
HF model directory, in one run. lm-eval runs in a venv of its own layered over the project's
(its dependencies pull no torch: it uses the project's torch and transformers):

    python3.11 -m venv /tmp/venv-lmeval
    python -c "import site; print(site.getsitepackages()[0])" > /tmp/venv-lmeval/lib/python3.11/site-packages/project.pth
    /tmp/venv-lmeval/bin/pip install lm-eval==0.4.13
    python bench/bench_eval.py --lm-eval-python /tmp/venv-lmeval/bin/python --lm-eval-batch 32 --n 300 [--model DIR]

Without --model a demo-sized random-init model (3.1M parameters, 8192-token BPE, as
configs/demo.toml) is built in a temporary directory. Each engine is timed --repeat times (the
fastest counts, after a warm-up). Prints one JSON object: examples/s of each, the wall-time ratio,
the CPU-time ratio (steadier on a shared machine), and the largest per-choice log-likelihood
difference between the two engines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LM_EVAL_SCRIPT = r"""
import json, sys, time
import lm_eval, torch, transformers
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
torch.set_num_threads(int(sys.argv[4]))
pairs = json.load(open(sys.argv[2]))
lm = HFLM(pretrained=sys.argv[1], device=sys.argv[5], dtype=sys.argv[6], batch_size=int(sys.argv[3]), add_bos_token=True)
reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(c, x), idx=i) for i, (c, x) in enumerate(pairs)]
lm.loglikelihood(reqs[:10], disable_tqdm=True)  # warm-up, as for orizuru
times = []
for _ in range(int(sys.argv[7])):
    t, c = time.perf_counter(), time.process_time()
    out = lm.loglikelihood(reqs, disable_tqdm=True)
    times.append((time.perf_counter() - t, time.process_time() - c))
print(json.dumps({"seconds": min(w for w, _ in times), "cpu_seconds": min(c for _, c in times),
                  "logprobs": [float(o[0]) for o in out],
                  "versions": {"lm_eval": lm_eval.__version__, "transformers": transformers.__version__, "torch": torch.__version__}}))
"""


def build_model(directory: Path) -> Path:
    from orizuru.model.checkpoint import save_model
    from orizuru.model.config import ModelConfig
    from orizuru.model.llama import Llama
    from orizuru.tokenizer.tokenizer import Tokenizer, iter_texts, train_bpe

    sample = ROOT / "orizuru" / "data" / "sample"
    tok = Tokenizer(train_bpe(iter_texts([sample / "wiki.jsonl", sample / "aozora.jsonl"]), 8192, show_progress=False))
    cfg = ModelConfig(dim=192, n_layers=4, n_heads=6, n_kv_heads=2, vocab_size=8192, tie_embeddings=True, max_seq_len=256)
    model = Llama(cfg)
    model.init_weights(0)
    save_model(model, directory, tok)
    return directory


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--n", type=int, default=100, help="JCommonsenseQA examples (5 choices each)")
    p.add_argument("--lm-eval-python", default="/tmp/venv-lmeval/bin/python")
    p.add_argument("--lm-eval-batch", type=int, default=1, help="lm-eval batch size (its default is 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each engine (1: steadiest on a shared machine)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per engine (the fastest counts)")
    p.add_argument("--device", default="cpu", help="cpu or cuda, for both engines")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights of both engines")
    a = p.parse_args()

    import torch

    from orizuru.eval import likelihood as L
    from orizuru.eval.tasks import load_examples, load_task, render
    from orizuru.model.checkpoint import load_model
    from orizuru.tokenizer.tokenizer import Tokenizer

    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    model_dir = a.model or build_model(tmp / "model")
    task = load_task("jcommonsenseqa")
    examples, _ = load_examples(task)
    examples = examples[: a.n]
    pairs = [(render(task, task.templates[0], ex, []), c) for ex in examples for c in ex.choices]

    tok, model = Tokenizer.load(model_dir), load_model(model_dir, device=a.device, dtype=getattr(torch, a.dtype)).eval()
    L.score(model, [L.encode_pair(tok, c, x) for c, x in pairs[:10]], pad_id=tok.pad_id)  # warm-up
    times = []
    for _ in range(a.repeat):
        t, cpu = time.perf_counter(), time.process_time()
        ours = L.score(model, [L.encode_pair(tok, c, x) for c, x in pairs], pad_id=tok.pad_id)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t, time.process_time() - cpu))
    ours_s, ours_cpu = min(w for w, _ in times), min(c for _, c in times)

    (tmp / "pairs.json").write_text(json.dumps(pairs, ensure_ascii=False))
    proc = subprocess.run([a.lm_eval_python, "-c", LM_EVAL_SCRIPT, str(model_dir), str(tmp / "pairs.json"),
                           str(a.lm_eval_batch), str(a.threads), a.device, a.dtype, str(a.repeat)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"lm-eval failed:\n{proc.stderr[-3000:]}")
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    diff = max(abs(o["logprob"] - t) for o, t in zip(ours, theirs["logprobs"]))
    n = len(examples)
    print(json.dumps({
        "task": "jcommonsenseqa", "examples": n, "requests": len(pairs), "model_dir": str(model_dir),
        "orizuru_examples_per_s": round(n / ours_s, 2), "lm_eval_examples_per_s": round(n / theirs["seconds"], 2),
        "lm_eval_batch_size": a.lm_eval_batch, "ratio": round(theirs["seconds"] / ours_s, 2),
        # CPU seconds (all threads) are steadier than wall time on a shared machine
        "cpu_seconds": {"orizuru": round(ours_cpu, 2), "lm_eval": round(theirs["cpu_seconds"], 2)},
        "cpu_ratio": round(theirs["cpu_seconds"] / ours_cpu, 2),
        "max_abs_logprob_diff": diff, "lm_eval_versions": theirs["versions"], "threads": a.threads, "repeat": a.repeat,
        "device": a.device, "dtype": a.dtype,
    }, indent=2))


if __name__ == "__main__":
    main()
