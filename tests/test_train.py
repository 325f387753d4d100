import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_overrides

from orizuru.config import load_config
from orizuru.errors import UserError
from orizuru.files import read_jsonl
from orizuru.model.llama import Llama
from orizuru.train.config import PretrainConfig, TrainConfig
from orizuru.train.optim import configure_optimizer, lr_at
from orizuru.train.pretrain import pretrain


def run_cli(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "orizuru.cli", *args], env=env, capture_output=True, text=True, **kw)


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")}


def test_lr_schedule():
    t = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, t) == pytest.approx(1e-4)
    assert lr_at(9, t) == pytest.approx(1e-3)
    assert lr_at(60, t) == pytest.approx(0.55e-3)  # half-way down the cosine
    assert lr_at(110, t) == pytest.approx(1e-4)
    assert all(lr_at(s, t) >= lr_at(s + 1, t) for s in range(10, 110))


def test_no_weight_decay_on_norms_and_embeddings():
    cfg = load_config(PretrainConfig, overrides=["model.dim=64", "model.n_layers=2", "model.vocab_size=100"])
    model = Llama(cfg.model)
    opt = configure_optimizer(model, cfg.train)
    decay, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {names[id(p)] for p in no_decay["params"]} >= {"model.embed_tokens.weight", "model.norm.weight"}
    assert all(p.ndim == 2 for p in decay["params"])
    assert "model.layers.0.self_attn.q_proj.weight" in {names[id(p)] for p in decay["params"]}


def test_pretrain_learns_and_writes_run_dir(tmp_path, tiny_shards_dir):
    run = tmp_path / "run"
    cfg = load_config(PretrainConfig, overrides=tiny_overrides(tiny_shards_dir, run, **{"train.max_steps": 40}))
    summary = pretrain(cfg)
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 41))
    assert {"loss", "lr", "grad_norm", "tokens_per_s"} <= set(rows[0])
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30, 40]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] < 6.3  # ln(512) = 6.24 at chance
    assert 0 < evals[-1]["val_bpb"] < 8
    assert summary["val_loss"] == evals[-1]["val_loss"]
    for f in ("config.toml", "summary.json", "model/config.json", "model/model.safetensors", "model/tokenizer.json"):
        assert (run / f).exists(), f
    # the run directory's config repeats the run
    again = load_config(PretrainConfig, run / "config.toml")
    assert again == cfg


def test_resume_after_sigkill_matches_uninterrupted(tmp_path, tiny_shards_dir):
    full = tmp_path / "full"
    proc = run_cli(["pretrain", *sum((["--set", o] for o in tiny_overrides(tiny_shards_dir, full)), [])], timeout=300)
    assert proc.returncode == 0, proc.stderr
    killed = tmp_path / "killed"
    args = ["pretrain", *sum((["--set", o] for o in tiny_overrides(tiny_shards_dir, killed)), [])]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "orizuru.cli", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    latest = killed / "checkpoints" / "latest.txt"
    # the first checkpoint (step 5 of 20) leaves 15 steps to land in: a 100k-parameter model runs
    # them in well under a second, so the poll must be tight
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() >= "step_00000005"):
        time.sleep(0.002)
    time.sleep(0.01)  # land somewhere inside the next steps
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "summary.json").exists()
    proc = run_cli(args, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "resumed at step" in proc.stderr
    a, b = losses(full), losses(killed)
    assert list(b) == list(range(1, 21))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-6), step
    assert json.loads((killed / "summary.json").read_text())["val_loss"] == pytest.approx(
        json.loads((full / "summary.json").read_text())["val_loss"], rel=1e-5
    )


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_match_one_with_double_batch(tmp_path, tiny_shards_dir, fsdp):
    one = tmp_path / "one"
    sets = sum((["--set", o] for o in tiny_overrides(tiny_shards_dir, one, **{"train.batch_size": 8, "train.max_steps": 8})), [])
    proc = run_cli(["pretrain", *sets], timeout=300)
    assert proc.returncode == 0, proc.stderr
    two = tmp_path / "two"
    two_sets = {"train.batch_size": 4, "train.max_steps": 8, "train.fsdp": str(fsdp).lower()}
    sets = sum((["--set", o] for o in tiny_overrides(tiny_shards_dir, two, **two_sets)), [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(29533 + fsdp), "-m", "orizuru.cli", "pretrain", *sets]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = losses(one), losses(two)
    assert list(a) == list(b) == list(range(1, 9))
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step
    # both wrote the same final weights (up to float reduction order)
    from safetensors.torch import load_file

    wa, wb = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_cli_errors_name_the_key(tmp_path, tiny_shards_dir):
    proc = run_cli(["pretrain", "--set", "train.lrr=1", "--set", f"data.dirs=['{tiny_shards_dir}']"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("orizuru pretrain: error: unknown config key 'train.lrr'")
    proc = run_cli(["pretrain", "--set", f"data.dirs=['{tmp_path}']", "--set", f"run.dir='{tmp_path / 'r'}'"])
    assert proc.returncode == 2 and "not a token shard directory" in proc.stderr
    proc = run_cli(["pretrain", *sum((["--set", o] for o in tiny_overrides(tiny_shards_dir, tmp_path / "v", **{"model.vocab_size": 300})), [])])
    assert proc.returncode == 2 and "model.vocab_size" in proc.stderr
    assert not (tmp_path / "v" / "checkpoints").exists()


def test_activation_checkpointing_same_gradients():
    cfg = load_config(PretrainConfig, overrides=["model.dim=64", "model.n_layers=2", "model.vocab_size=100"])
    model = Llama(cfg.model)
    model.init_weights(seed=0)
    x = torch.randint(0, 100, (2, 16))
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.activation_checkpointing = ckpt
        model(x, x).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_continued_pretraining_from_hf_dir_with_mixture(tmp_path, tiny_tokenizer_dir, tiny_shards_dir):
    from orizuru.model.checkpoint import load_model, save_model
    from orizuru.tokenizer.tokenizer import Tokenizer

    base = tmp_path / "base"
    pretrain(load_config(PretrainConfig, overrides=tiny_overrides(tiny_shards_dir, base, **{"train.max_steps": 30})))
    base_loss = losses(base)[30]
    # a second shard set (same tokenizer) mixed in at 10%, as Swallow mixes English into Japanese
    cont = tmp_path / "cont"
    overrides = tiny_overrides(tiny_shards_dir, cont, **{"train.max_steps": 5, "train.warmup_steps": 0, "train.lr": 1e-4})
    overrides += [f'data.dirs=["{tiny_shards_dir}", "{tiny_shards_dir}"]', "data.weights=[0.9, 0.1]",
                  f'train.init_from="{base / "model"}"', "model.dim=32"]  # model.* comes from the checkpoint
    cfg = load_config(PretrainConfig, overrides=overrides)
    pretrain(cfg)
    first = losses(cont)[1]
    assert first < base_loss + 0.3 < 6.0  # starts from the trained weights, not from scratch
    assert load_model(cont / "model").cfg.dim == 64
    assert "dim = 64" in (cont / "config.toml").read_text()
    # a model whose tokenizer differs from the shards' is refused
    other = tmp_path / "other"
    model = load_model(base / "model")
    from conftest import sample_texts

    from orizuru.tokenizer.tokenizer import train_bpe

    tok = Tokenizer(train_bpe(sample_texts(600)[300:], 512, show_progress=False))  # same size, other merges
    save_model(model, other, tok)
    bad = tiny_overrides(tiny_shards_dir, tmp_path / "bad") + [f'train.init_from="{other}"']
    with pytest.raises(UserError, match="different tokenizer"):
        pretrain(load_config(PretrainConfig, overrides=bad))


@pytest.mark.slow  # inductor compiles C++ kernels for forward and backward: ~1 min on 2 cores
def test_compiled_training_matches_eager_and_saves_plain_names(tmp_path, tiny_shards_dir):
    """`train.compile = true` (meant for GPUs) on the CPU: same losses as eager, and the checkpoints
    and HF model hold the plain parameter names, not torch.compile's `_orig_mod.` wrappers."""
    runs = {}
    for mode in ("eager", "compiled"):
        extra = {"train.max_steps": 6, "train.eval_every": 6, "train.ckpt_every": 3, "train.compile": str(mode == "compiled").lower()}
        pretrain(load_config(PretrainConfig, overrides=tiny_overrides(tiny_shards_dir, tmp_path / mode, **extra)))
        runs[mode] = losses(tmp_path / mode)
    assert runs["eager"].keys() == runs["compiled"].keys()
    for step, loss in runs["eager"].items():
        assert runs["compiled"][step] == pytest.approx(loss, rel=1e-4), step
    from safetensors import safe_open

    with safe_open(tmp_path / "compiled" / "model" / "model.safetensors", "pt") as f:
        assert "model.layers.0.self_attn.q_proj.weight" in f.keys() and not any("_orig_mod" in k for k in f.keys())
    # its training state loads into a plain (uncompiled) model: a run can resume with compile off
    from orizuru.model.checkpoint import load_model
    from orizuru.train.state import load_checkpoint

    cfg = load_config(PretrainConfig, tmp_path / "compiled" / "config.toml")
    model = Llama(cfg.model)
    assert load_checkpoint(tmp_path / "compiled", model, configure_optimizer(model, cfg.train))[0] == 6
    final = load_model(tmp_path / "compiled" / "model")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), final.state_dict().values()))


def test_bf16_autocast_training_tracks_float32(tmp_path, tiny_shards_dir):
    """The GPU's precision path (bf16 autocast: bf16 matmuls and activations, RMSNorm in float32,
    float32 loss and weights) run on the CPU: it learns, and stays near the float32 run."""
    runs = {}
    for dtype in ("float32", "bfloat16"):
        extra = {"train.max_steps": 20, "train.dtype": dtype}
        pretrain(load_config(PretrainConfig, overrides=tiny_overrides(tiny_shards_dir, tmp_path / dtype, **extra)))
        runs[dtype] = losses(tmp_path / dtype)
    f32, bf16 = runs["float32"], runs["bfloat16"]
    assert bf16[20] < bf16[1] - 0.5  # it learns
    assert all(abs(bf16[s] - f32[s]) < 0.05 * f32[s] for s in f32)  # bf16 rounding, not a different run
    assert bf16 != f32  # the autocast path really ran
    rows = read_jsonl(tmp_path / "bfloat16" / "metrics.jsonl")
    assert rows[-1]["val_loss"] == pytest.approx(read_jsonl(tmp_path / "float32" / "metrics.jsonl")[-1]["val_loss"], rel=0.03)
