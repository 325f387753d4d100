"""The one step loop under real `torchrun` (gloo, 2 processes): data parallelism that changes no
number, token-count weighting, DCP checkpoints that survive SIGKILL and change world size."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, tiny_overrides
from post_fixtures import DATA, single_thread, tiny_model_dir  # noqa: F401
from safetensors.torch import load_file
from test_post_dpo import synthetic_pairs

from orizuru.config import ConfigError, load_config
from orizuru.files import read_jsonl
from orizuru.model.config import ModelConfig
from orizuru.model.llama import Llama
from orizuru.post.ppo import PPOConfig
from orizuru.post.sft import SFTConfig
from orizuru.train.loop import Stage, accumulate
from orizuru.train.pretrain import pretrain_loss

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
_port = iter(range(29600, 29700))


def sets(overrides: dict) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]


def launch(command: list[str], nproc: int = 1, **kw) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "orizuru.cli", *command]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc), "--master-port", str(next(_port)),
            "-m", "orizuru.cli", *command]


def run(command: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    proc = subprocess.run(launch(command, nproc), env=ENV, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")}


def assert_same_run(a: Path, b: Path, weights: str = "model/model.safetensors") -> None:
    la, lb = losses(a), losses(b)
    assert list(la) == list(lb) and la
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-4), step
    wa, wb = load_file(a / weights), load_file(b / weights)
    assert wa.keys() == wb.keys()
    scale = max(v.abs().max().item() for v in wa.values())
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4 * scale


# ---------------------------------------------------------------- token-count weighting


def test_micro_batches_with_different_target_counts_give_the_full_batch_gradient(single_thread):  # noqa: F811
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=32)
    model = Llama(cfg)
    model.init_weights(seed=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 64, (4, 12), generator=g)
    y = torch.randint(0, 64, (4, 12), generator=g)
    y[:2, 1:] = -100  # micro-batch 0: 2 targets; micro-batch 1: 24
    model(x, y).backward()  # the full batch's mean over its 26 targets
    full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    stage = Stage("t", lambda step, m: (x[2 * m : 2 * m + 2], y[2 * m : 2 * m + 2]), pretrain_loss)
    total = accumulate(stage, model, model, 0, 2, list(model.parameters()), torch.device("cpu"), None, {})
    assert total[1].item() == 26
    for a, b in zip(full, model.parameters()):
        torch.testing.assert_close(b.grad, a, rtol=1e-5, atol=1e-7)
    # the old weighting (mean of the micro-batches' means) is a different gradient: the test can fail
    model.zero_grad(set_to_none=True)
    for m in range(2):
        (model(x[2 * m : 2 * m + 2], y[2 * m : 2 * m + 2]) / 2).backward()
    assert max((a - p.grad).abs().max().item() for a, p in zip(full, model.parameters())) > 1e-3


# ---------------------------------------------------------------- 2 processes x B == 1 process x 2B


def stage_overrides(stage: str, tmp_path: Path, run: Path, batch: int, fsdp: bool) -> list[str]:
    base = tmp_path / "base"
    if not (base / "config.json").exists():
        tiny_model_dir(base)
    d = {"model": f'"{base}"', "run.dir": f'"{run}"', "train.batch_size": str(batch), "schedule.epochs": "0", "schedule.warmup_ratio": "0",
         "train.max_steps": "4", "train.warmup_steps": "1", "train.log_every": "1", "train.eval_every": "4", "train.ckpt_every": "4",
         "train.fsdp": str(fsdp).lower()}
    if stage == "sft":
        d.update({"data.train": f'["{DATA / "instruction_ja.jsonl"}"]', "data.val_fraction": "0.05", "train.seq_len": "64", "train.lr": "3e-3"})
    else:
        pairs = tmp_path / "pairs.jsonl"
        if not pairs.exists():
            synthetic_pairs(pairs)
        d.update({"data.train": f'["{pairs}"]', "data.val_fraction": "0.25", "train.seq_len": "48", "train.lr": "2e-3"})
    return [stage, *sets(d)]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo", "reward"])
def test_two_processes_match_one_with_double_batch(tmp_path, stage):
    run(stage_overrides(stage, tmp_path, tmp_path / "one", 8, False))
    for fsdp in (False, True):
        two = tmp_path / f"two-{'fsdp' if fsdp else 'ddp'}"
        proc = run(stage_overrides(stage, tmp_path, two, 4, fsdp), nproc=2)
        assert "2 process(es)" in proc.stderr
        assert_same_run(tmp_path / "one", two)
        val = [r for r in read_jsonl(two / "metrics.jsonl") if "val_loss" in r]
        assert val and val[-1]["val_loss"] == pytest.approx(read_jsonl(tmp_path / "one" / "metrics.jsonl")[-1]["val_loss"], rel=1e-4)


# ---------------------------------------------------------------- DCP: SIGKILL, then resume with another world size


def pretrain_args(shards: Path, run_dir: Path, batch: int, **extra) -> list[str]:
    o = tiny_overrides(shards, run_dir, **{"train.batch_size": batch, "train.max_steps": 40, "train.ckpt_every": 5, "train.eval_every": 20, **extra})
    return ["pretrain", *[a for kv in o for a in ("--set", kv)]]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_shards_dir) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    run(pretrain_args(tiny_shards_dir, out, 8))
    return out


def kill_after_first_checkpoint(command: list[str], run_dir: Path) -> None:
    p = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run_dir / "checkpoints" / "latest.txt"
    deadline = time.time() + 180
    while time.time() < deadline and not (latest.exists() and latest.read_text().strip() >= "step_00000005") and p.poll() is None:
        time.sleep(0.002)
    # torchrun starts each worker in a session of its own: kill the workers, then the launcher
    workers = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split() if p.poll() is None else []
    for pid in [*map(int, workers), p.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    p.wait()
    assert latest.exists() and not (run_dir / "summary.json").exists(), "the run ended before it could be killed"


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)], ids=["2to1", "1to2"])
def test_sigkilled_run_resumes_with_another_world_size(tmp_path, tiny_shards_dir, uninterrupted, before, after):
    killed = tmp_path / "killed"
    # the 2-process run writes its checkpoints asynchronously (train.ckpt_async)
    killed_args = pretrain_args(tiny_shards_dir, killed, 8 // before, **{"train.ckpt_async": str(before == 2).lower()})
    kill_after_first_checkpoint(launch(killed_args, before), killed)
    proc = run(pretrain_args(tiny_shards_dir, killed, 8 // after), nproc=after)
    assert "resumed at step" in proc.stderr
    assert_same_run(uninterrupted, killed)


# ---------------------------------------------------------------- more than one machine


@pytest.mark.slow
def test_two_launchers_as_two_nodes_match_one_process(tmp_path, tiny_shards_dir, uninterrupted):
    """`torchrun --nnodes 2` with c10d rendezvous, one process per node, both nodes on 127.0.0.1."""
    out = tmp_path / "nodes"
    port = next(_port)
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "orizuru-test",
         "-m", "orizuru.cli", *pretrain_args(tiny_shards_dir, out, 4)],
        env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=240) for p in nodes]
    assert all(p.returncode == 0 for p in nodes), [e[-2000:] for _, e in outs]
    assert_same_run(uninterrupted, out)


# ---------------------------------------------------------------- every key honoured or rejected


def test_keys_a_stage_does_not_use_are_rejected():
    with pytest.raises(ConfigError, match="'train.init_from' is not used"):
        load_config(SFTConfig, overrides=['data.train=["x.jsonl"]', 'train.init_from="m"'])
    with pytest.raises(ConfigError, match="'train.eval_batches' is not used"):
        load_config(SFTConfig, overrides=['data.train=["x.jsonl"]', "train.eval_batches=3"])
    for key in ("seq_len=64", "grad_accum=2", "eval_every=5", "fsdp=true"):
        with pytest.raises(ConfigError, match=f"'train.{key.split('=')[0]}' is not used"):
            load_config(PPOConfig, overrides=['data.prompts=["p.jsonl"]', 'ppo.rule="contains_answer"', f"train.{key}"])


def test_max_steps_caps_the_epochs(tmp_path, single_thread):  # noqa: F811
    from orizuru.post.sft import sft

    o = stage_overrides("sft", tmp_path, tmp_path / "run", 8, False)
    o = [a for a in o[1:] if not a.startswith(("schedule.epochs", "train.max_steps"))] + ["--set", "schedule.epochs=3", "--set", "train.max_steps=3"]
    cfg = load_config(SFTConfig, overrides=[a for a in o if a != "--set"])
    assert sft(cfg)["step"] == 3
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]


# ---------------------------------------------------------------- eval under torchrun


@pytest.mark.slow
def test_eval_under_two_processes_writes_the_same_results(tmp_path):
    """Each rank scores a slice (a likelihood and a greedy generative task, limit 40 > one chunk of
    32 per rank); rank 0 writes the records in one process's order, so the scores are the same."""
    import json

    from eval_helpers import build_tiny_model

    model = build_tiny_model(tmp_path / "model", max_seq_len=512)
    out = {}
    for n in (1, 2):
        out[n] = tmp_path / f"out{n}"
        run(["eval", "--model", str(model), "--tasks", "jcommonsenseqa,niilc", "--limit", "40", "--max-new-tokens", "8",
             "--output", str(out[n]), "--device", "cpu"], nproc=n)
    saved = [json.loads((out[n] / "results.json").read_text()) for n in (1, 2)]
    assert [r["processes"] for r in saved] == [1, 2]
    one, two = (r["tasks"] for r in saved)
    assert one.keys() == two.keys() == {"jcommonsenseqa", "niilc"}
    for task in one:
        assert two[task]["n"] == one[task]["n"] == 40
        assert two[task]["metrics"] == pytest.approx(one[task]["metrics"], abs=1e-12), task
    for task in one:  # the same records in the same order
        a, b = read_jsonl(out[1] / f"{task}.jsonl"), read_jsonl(out[2] / f"{task}.jsonl")
        assert [r["id"] for r in a] == [r["id"] for r in b]
        assert [r["prediction"] for r in a] == [r["prediction"] for r in b]


# ---------------------------------------------------------------- --device / --dtype


def test_device_and_dtype_flags(tmp_path):
    from orizuru.errors import UserError
    from orizuru.runtime import inference_device, resolve_device, setup_device

    cuda = torch.cuda.is_available()
    assert inference_device("auto", "auto") == ((torch.device("cuda", 0), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32))
    assert inference_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    assert setup_device("bfloat16", "cpu") == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(UserError, match="--device: expected auto|cpu|cuda|cuda:N, got 'gpu'"):
        resolve_device("gpu")
    if not cuda:
        with pytest.raises(UserError, match="no CUDA device"):
            resolve_device("cuda:0")
    model = tiny_model_dir(tmp_path / "m")
    outs = {}
    for dtype in ("float32", "bfloat16"):
        proc = run(["generate", "--model", str(model), "--prompt", "日本の首都は", "--max-new-tokens", "12", "--device", "cpu", "--dtype", dtype])
        outs[dtype] = proc.stdout
    assert outs["float32"].strip() and outs["bfloat16"].strip()
    proc = subprocess.run(launch(["generate", "--model", str(model), "--prompt", "x", "--device", "tpu"]), env=ENV, capture_output=True, text=True)
    assert proc.returncode == 2 and "--device: expected" in proc.stderr


@pytest.mark.slow
def test_ppo_under_two_processes(tmp_path):
    """PPO's own rollout loop on the shared pieces: each rank rolls out its prompts, DDP averages the
    updates, one DCP checkpoint; the first minibatch's ratio is still exactly 1."""
    from post_fixtures import write_jsonl

    base = tiny_model_dir(tmp_path / "base", vocab_size=300)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"{a}たす{7 - a}は？", "answer": 7} for a in range(8)])
    o = {"model": f'"{base}"', "run.dir": f'"{tmp_path / "run"}"', "data.prompts": f'["{prompts}"]', "ppo.rule": '"contains_answer"',
         "ppo.rollout_batch": "4", "ppo.max_new_tokens": "4", "ppo.ppo_epochs": "2", "train.batch_size": "2", "train.max_steps": "2",
         "train.ckpt_every": "2"}
    run(["ppo", *sets(o)], nproc=2)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["first_ratio_dev"] == 0.0 for r in rows)
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "state.json").is_file()
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_large_exports_are_sharded_as_transformers_writes_them():
    from orizuru.train.loop import SHARD_BYTES, export_shard_size

    with torch.device("meta"):
        big = Llama(ModelConfig(dim=4096, n_layers=32, n_heads=32, n_kv_heads=8, vocab_size=32000, max_seq_len=4096))  # 7B: 27 GiB in fp32
        small = Llama(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, max_seq_len=64))
    assert export_shard_size(big) == SHARD_BYTES and export_shard_size(small) is None


def test_native_dtype_takes_bf16_only_on_a_cpu_with_bf16_instructions(monkeypatch):
    from orizuru import runtime

    flags = set()
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags |= set(line.split(":", 1)[1].split())
    if os.uname().machine in ("x86_64", "AMD64"):  # the kernel's flags are an independent reference
        assert runtime.cpu_has_bf16() == bool(flags & {"avx512_bf16", "amx_tile"})
    for native, expected in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(runtime, "cpu_has_bf16", lambda native=native: native)
        assert runtime.setup_device("native", "cpu") == (torch.device("cpu"), expected)
    assert runtime.setup_device("auto", "cpu")[1] is None and runtime.setup_device("bfloat16", "cpu")[1] is torch.bfloat16
