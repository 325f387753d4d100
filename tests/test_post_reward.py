import pytest
import torch
from post_fixtures import single_thread, tiny_model_dir  # noqa: F401
from test_post_dpo import synthetic_pairs
from transformers import AutoModelForSequenceClassification

from orizuru.config import load_config
from orizuru.post.finetune import answer_seq
from orizuru.post.reward import RewardConfig, load_reward_model, scores, train_reward

pytestmark = pytest.mark.usefixtures("single_thread")


def test_reward_model_learns_preferences_and_loads_in_transformers(tmp_path):
    base = tiny_model_dir(tmp_path / "base", tie_embeddings=True)
    data = synthetic_pairs(tmp_path / "pairs.jsonl")
    run = tmp_path / "run"
    overrides = {
        "model": f'"{base}"', "run.dir": f'"{run}"', "data.train": f'["{data}"]', "data.val_fraction": "0.25",
        "train.seq_len": "48", "train.batch_size": "8", "train.lr": "3e-3", "schedule.epochs": "0",
        "train.max_steps": "12", "train.warmup_steps": "1", "schedule.warmup_ratio": "0", "train.log_every": "6",
        "train.eval_every": "12", "train.ckpt_every": "12",
    }
    summary = train_reward(load_config(RewardConfig, overrides=[f"{k}={v}" for k, v in overrides.items()]))
    assert summary["val_accuracy"] >= 0.9 > summary["val_accuracy_before"]

    model, tok = load_reward_model(run / "model")
    prompt = [{"role": "user", "content": "日本の首都は？"}]
    seqs = [answer_seq(tok, prompt, "東京です。"), answer_seq(tok, prompt, "わかりません。知りません。")]
    with torch.no_grad():
        ours = scores(model, seqs, tok.pad_id, "cpu")
    assert ours[0] > ours[1]
    hf = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    pad = max(len(s.ids) for s in seqs)
    ids = torch.tensor([s.ids + [tok.pad_id] * (pad - len(s.ids)) for s in seqs])
    with torch.no_grad():
        theirs = hf(input_ids=ids, attention_mask=(ids != tok.pad_id).long()).logits[:, 0]
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
