import json

import pytest
import torch
from post_fixtures import single_thread, tiny_model_dir, write_jsonl  # noqa: F401

from orizuru.config import ConfigError, load_config
from orizuru.errors import UserError
from orizuru.files import read_jsonl
from orizuru.post.ppo import PPOConfig, gae, ppo, ppo_losses

pytestmark = pytest.mark.usefixtures("single_thread")


def test_gae_matches_hand_computation():
    gamma, lam = 0.9, 0.8
    # row 0: prompt at t=0, answer at t=1..3, padding at t=4; row 1: answer at t=2..4
    rewards = torch.tensor([[0.0, 0.1, -0.2, 1.0, 0.0], [0.0, 0.0, 0.3, 0.0, 2.0]])
    values = torch.tensor([[9.0, 0.5, 0.4, 0.3, 9.0], [9.0, 9.0, 1.0, 0.2, -0.5]])
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.float32)
    adv, ret = gae(rewards, values * mask, mask, gamma, lam)
    for row in range(2):
        ts = [t for t in range(5) if mask[row, t]]
        want, running = {}, 0.0
        for k, t in reversed(list(enumerate(ts))):
            v_next = values[row, ts[k + 1]].item() if k + 1 < len(ts) else 0.0
            delta = rewards[row, t].item() + gamma * v_next - values[row, t].item()
            running = delta + gamma * lam * running
            want[t] = running
        for t in range(5):
            assert adv[row, t].item() == pytest.approx(want.get(t, 0.0), abs=1e-6)
            if t in want:
                assert ret[row, t].item() == pytest.approx(want[t] + values[row, t].item(), abs=1e-6)


def test_clipped_objective_matches_hand_computation():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    old = torch.tensor([[-1.5, -1.9, -0.5]])
    adv = torch.tensor([[1.0, -2.0, 0.5]])
    v, old_v, ret = torch.tensor([[0.5, 1.0, 0.0]]), torch.tensor([[0.0, 1.1, 0.0]]), torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    pg, vf, clipfrac = ppo_losses(logp, old, v, old_v, adv, ret, mask, clip=0.2, value_clip=0.2)
    import math
    r0, r1 = math.exp(0.5), math.exp(-0.1)
    want_pg = (max(-1.0 * r0, -1.0 * min(r0, 1.2)) + max(2.0 * r1, 2.0 * max(min(r1, 1.2), 0.8))) / 2
    assert pg.item() == pytest.approx(want_pg, rel=1e-6)
    vc0, vc1 = 0.0 + 0.2, 1.1 - 0.1
    want_vf = (0.5 * max((0.5 - 1) ** 2, (vc0 - 1) ** 2) + 0.5 * max((1.0 - 1) ** 2, (vc1 - 1) ** 2)) / 2
    assert vf.item() == pytest.approx(want_vf, rel=1e-6)
    assert clipfrac.item() == pytest.approx(0.5)


def test_reward_rises_on_a_rule_based_reward(tmp_path):
    """A random tiny policy learns to put the right number (7) in its answers within 20 PPO steps."""
    base = tiny_model_dir(tmp_path / "base", vocab_size=300)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"{a}たす{7 - a}は？", "answer": 7} for a in range(8)])
    run = tmp_path / "run"
    o = {
        "model": f'"{base}"', "run.dir": f'"{run}"', "data.prompts": f'["{prompts}"]', "ppo.rule": '"contains_answer"',
        "ppo.rollout_batch": "32", "ppo.max_new_tokens": "12", "ppo.ppo_epochs": "2", "ppo.kl_coef": "0.01",
        "train.batch_size": "16", "train.lr": "1e-2", "train.max_steps": "20", "train.ckpt_every": "20",
    }
    ppo(load_config(PPOConfig, overrides=[f"{k}={v}" for k, v in o.items()]))
    scores = [r["score"] for r in read_jsonl(run / "metrics.jsonl")]
    assert len(scores) == 20
    first, final = sum(scores[:5]) / 5, sum(scores[-5:]) / 5
    assert final > first + 0.3 and final > 0.5, scores
    assert (run / "model" / "config.json").is_file()


def test_ppo_leaves_no_hook_or_head_on_the_model(tmp_path, monkeypatch):
    import orizuru.post.ppo as mod

    base = tiny_model_dir(tmp_path / "base", vocab_size=300)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1たす6は？", "answer": 7}])
    saved = []
    monkeypatch.setattr(mod, "save_chat_model", lambda model, directory, tok: saved.append(model))
    o = {
        "model": f'"{base}"', "run.dir": f'"{tmp_path / "run"}"', "data.prompts": f'["{prompts}"]', "ppo.rule": '"contains_answer"',
        "ppo.rollout_batch": "2", "ppo.max_new_tokens": "2", "ppo.ppo_epochs": "1", "train.batch_size": "2", "train.max_steps": "1",
    }
    ppo(load_config(PPOConfig, overrides=[f"{k}={v}" for k, v in o.items()]))
    (policy,) = saved
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in policy.modules())
    assert not hasattr(policy, "value_head") and not hasattr(policy, "last_hidden")


def test_prompt_rows_in_every_format_and_bad_rows_with_file_and_line(tmp_path, capsys):
    base = tiny_model_dir(tmp_path / "base", vocab_size=300)
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": "1たす6は？", "answer": 7},
        {"conversations": [{"from": "human", "value": "3たす4は？"}], "answer": 7},
        {"messages": [{"role": "user", "content": "2たす5は？"}], "answer": 7},
        {"instruction": "7を書いてください。", "input": "", "answer": 7},
        {"messages": [{"role": "bot", "content": "0たす7は？"}], "answer": 7},
        {"prompt": "答えのない行"},
    ])
    o = {
        "model": f'"{base}"', "run.dir": f'"{tmp_path / "run"}"', "data.prompts": f'["{prompts}"]', "ppo.rule": '"contains_answer"',
        "ppo.rollout_batch": "4", "ppo.max_new_tokens": "2", "ppo.ppo_epochs": "1", "train.batch_size": "4", "train.max_steps": "1",
    }
    summary = ppo(load_config(PPOConfig, overrides=[f"{k}={v}" for k, v in o.items()]))
    assert summary["rows"] == 6 and summary["skipped"] == 2
    err = capsys.readouterr().err
    assert f"skipped {prompts}:5: messages[0]: unknown role 'bot'" in err and f"skipped {prompts}:6: missing field 'answer'" in err
    with pytest.raises(UserError, match=rf"^{prompts}:5: messages\[0\]: unknown role 'bot'"):
        ppo(load_config(PPOConfig, overrides=[f"{k}={v}" for k, v in {**o, "data.strict": "true"}.items()]))


def test_exactly_one_reward_source():
    with pytest.raises(ConfigError, match="exactly one of 'ppo.reward_model'"):
        load_config(PPOConfig, overrides=['data.prompts=["p.jsonl"]'])


def test_ppo_checkpoints_tied_embeddings_and_resumes(tmp_path):
    base = tiny_model_dir(tmp_path / "base", vocab_size=300, tie_embeddings=True)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1たす6は？", "answer": 7}])
    o = {
        "model": f'"{base}"', "run.dir": f'"{tmp_path / "run"}"', "data.prompts": f'["{prompts}"]', "ppo.rule": '"contains_answer"',
        "ppo.rollout_batch": "4", "ppo.max_new_tokens": "4", "ppo.ppo_epochs": "1", "train.batch_size": "4", "train.ckpt_every": "1",
    }
    ppo(load_config(PPOConfig, overrides=[f"{k}={v}" for k, v in {**o, "train.max_steps": "2"}.items()]))
    ppo(load_config(PPOConfig, overrides=[f"{k}={v}" for k, v in {**o, "train.max_steps": "3"}.items()]))
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    assert json.loads((tmp_path / "run" / "model" / "config.json").read_text())["tie_word_embeddings"] is True


def test_first_minibatch_ratio_is_exactly_one_under_autocast(tmp_path):
    """Rollout log-probs come from the same precision (bf16 autocast) and the same minibatches as the
    first update, so before any parameter moves the ratio pi / pi_old is 1 to the last bit."""
    base = tiny_model_dir(tmp_path / "base", vocab_size=300)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"{a}たす{7 - a}は？", "answer": 7} for a in range(8)])
    o = {
        "model": f'"{base}"', "run.dir": f'"{tmp_path / "run"}"', "data.prompts": f'["{prompts}"]', "ppo.rule": '"contains_answer"',
        "ppo.rollout_batch": "8", "ppo.max_new_tokens": "6", "ppo.ppo_epochs": "2", "train.batch_size": "4", "train.max_steps": "2",
        "train.dtype": '"bfloat16"', "train.lr": "1e-2",
    }
    ppo(load_config(PPOConfig, overrides=[f"{k}={v}" for k, v in o.items()]))
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["first_ratio_dev"] for r in rows] == [0.0, 0.0]
    # what the check guards against: float32 rollout log-probs against bf16 updates are not ratio 1
    from orizuru.model.checkpoint import load_model
    from orizuru.post.finetune import token_logps

    model = load_model(base)
    x = torch.randint(0, 300, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f32 = token_logps(model(x[:, :-1]), x[:, 1:])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = token_logps(model(x[:, :-1]), x[:, 1:])
    assert (f32 - bf16).abs().max() > 1e-4
