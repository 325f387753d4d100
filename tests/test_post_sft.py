import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from post_fixtures import DATA, single_thread, tiny_model, tiny_model_dir, tiny_tokenizer, write_jsonl  # noqa: F401

from orizuru.config import load_config
from orizuru.errors import UserError
from orizuru.files import read_jsonl
from orizuru.model.checkpoint import load_model
from orizuru.post.finetune import Seq, fit, pad_batch
from orizuru.post.sft import SFTConfig, sft
from orizuru.tokenizer.chat import render
from orizuru.tokenizer.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")


def test_prompt_tokens_carry_zero_loss_weight():
    tok = tiny_tokenizer()
    chat = [{"role": "user", "content": "質問です"}, {"role": "assistant", "content": "答えです"}]
    r = render(tok, chat)
    x, y = pad_batch([Seq(r.ids, r.mask), Seq(r.ids[:5], [0] * 5)], tok.pad_id, "cpu")
    model = tiny_model(tok.vocab_size)
    x.requires_grad_(False)
    # gradient of the loss w.r.t. each position's logits: zero wherever the target is a prompt token
    logits = model(x).detach().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), ignore_index=-100)
    loss.backward()
    per_pos = logits.grad.abs().sum(-1)
    answer = torch.tensor(r.mask[1:], dtype=torch.bool)
    assert (per_pos[0, ~answer] == 0).all() and (per_pos[0, answer] > 0).all()
    assert (per_pos[1] == 0).all()  # a prompt-only row (and its padding) trains nothing
    assert model(x, y).item() == pytest.approx(loss.item(), rel=1e-5)


def test_overlong_truncates_with_count_or_errors():
    seqs = [Seq(list(range(10)), [0] * 4 + [1] * 6), Seq(list(range(10)), [0] * 9 + [1]), Seq([1, 2, 3], [0, 1, 1])]
    kept, truncated, dropped = fit(seqs, 6, "truncate", "example")
    assert truncated == 2 and dropped == 1 and [len(s.ids) for s in kept] == [6, 3]
    with pytest.raises(UserError, match="example #0 has 10 tokens, more than the context of 6"):
        fit(seqs, 6, "error", "example")


def overrides(base, run_dir, **extra):
    d = {
        "model": f'"{base}"', "run.dir": f'"{run_dir}"', "data.train": f'["{DATA / "instruction_ja.jsonl"}"]',
        "data.val_fraction": "0.1", "train.seq_len": "64", "train.batch_size": "8", "train.lr": "3e-3",
        "schedule.epochs": "0", "schedule.warmup_ratio": "0.1", "train.max_steps": "8", "train.log_every": "2",
        "train.eval_every": "4", "train.ckpt_every": "4",
    }
    d.update(extra)
    return [f"{k}={v}" for k, v in d.items()]


def test_sft_trains_resumes_and_writes_a_chat_model(tmp_path):
    base = tiny_model_dir(tmp_path / "base")
    run = tmp_path / "run"
    cfg = load_config(SFTConfig, overrides=overrides(base, run))
    summary = sft(cfg)
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(2, 9, 2))
    assert rows[-1]["val_loss"] < rows[0]["loss"]
    assert summary["train"] + summary["dropped_too_long"] == 360 and 30 < summary["val"] <= 40 and summary["truncated"] > 0
    cfg_json = json.loads((run / "model" / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in cfg_json["chat_template"]
    assert json.loads((run / "model" / "generation_config.json").read_text())["eos_token_id"][1] == Tokenizer.load(base).token_id("<|end|>")
    final = load_model(run / "model").state_dict()

    # resume: a run killed after its step-4 checkpoint (model/ and the step-8 checkpoint never written),
    # started through the CLI, continues to the same weights
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "step_00000008")
    (run / "checkpoints" / "latest.txt").write_text("step_00000004")
    proc = subprocess.run(
        [sys.executable, "-m", "orizuru.cli", "sft", *[a for kv in overrides(base, run) for a in ("--set", kv)]],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "resumed at step 4" in proc.stderr
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(2, 9, 2))
    resumed = load_model(run / "model").state_dict()
    for k in final:
        torch.testing.assert_close(resumed[k], final[k], atol=1e-6, rtol=1e-5)


def test_lora_sft_saves_adapter_and_merged_model(tmp_path):
    base = tiny_model_dir(tmp_path / "base")
    run = tmp_path / "run"
    sft(load_config(SFTConfig, overrides=overrides(base, run, **{"lora.rank": "4", "lora.targets": '["q_proj","v_proj"]', "train.max_steps": "4"})))
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    before, after = load_model(base).state_dict(), load_model(run / "model").state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight")) for k in changed)


def test_bad_rows_strict_and_unknown_lora_target(tmp_path):
    base = tiny_model_dir(tmp_path / "base")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "only"}])
    with pytest.raises(UserError, match=r"bad.jsonl:2: missing field 'output'"):
        sft(load_config(SFTConfig, overrides=overrides(base, tmp_path / "r1", **{"data.train": f'["{bad}"]', "data.strict": "true"})))
    with pytest.raises(UserError, match="not found in the model"):
        sft(load_config(SFTConfig, overrides=overrides(base, tmp_path / "r2", **{"lora.rank": "4", "lora.targets": '["wq"]'})))
    assert not (tmp_path / "r1" / "model").exists() and not (tmp_path / "r2" / "model").exists()
