import json
import math

import pytest
import torch
from post_fixtures import DATA, single_thread, tiny_model, tiny_model_dir, tiny_tokenizer, write_jsonl  # noqa: F401

from orizuru.config import load_config
from orizuru.errors import UserError
from orizuru.post.data import BadRow, read_preferences, to_messages
from orizuru.post.dpo import DPOConfig, dpo, kto_loss, preference_loss
from orizuru.post.finetune import Seq, sequence_logps

pytestmark = pytest.mark.usefixtures("single_thread")

PC, PR, RC, RR = [-10.0, -20.0, -5.5, -30.0], [-12.0, -15.0, -9.0, -29.0], [-11.0, -19.0, -6.0, -31.0], [-11.5, -16.0, -8.0, -28.0]


def t(x):
    return torch.tensor(x, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["dpo", "ipo", "hinge"])
def test_paired_losses_match_hand_computation(kind):
    beta = 0.3
    losses, rc, rr = preference_loss(kind, t(PC), t(PR), t(RC), t(RR), beta)
    for i in range(4):
        h = (PC[i] - RC[i]) - (PR[i] - RR[i])
        want = {
            "dpo": -math.log(1 / (1 + math.exp(-beta * h))),
            "ipo": (h - 1 / (2 * beta)) ** 2,
            "hinge": max(0.0, 1 - beta * h),
        }[kind]
        assert losses[i].item() == pytest.approx(want, rel=1e-12)
        assert rc[i].item() == pytest.approx(beta * (PC[i] - RC[i])) and rr[i].item() == pytest.approx(beta * (PR[i] - RR[i]))


def test_kto_loss_matches_hand_computation():
    beta, wd, wu = 0.5, 1.0, 1.5
    desirable = [True, False, True, False]
    losses, rewards, z = kto_loss(t(PC), t(RC), torch.tensor(desirable), beta, wd, wu)
    r = [p - q for p, q in zip(PC, RC)]
    z_want = max(0.0, sum(r) / 4)
    assert z.item() == pytest.approx(z_want)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    for i in range(4):
        want = wd * (1 - sig(beta * (r[i] - z_want))) if desirable[i] else wu * (1 - sig(beta * (z_want - r[i])))
        assert losses[i].item() == pytest.approx(want, rel=1e-12)
        assert rewards[i].item() == pytest.approx(beta * r[i])


def test_sequence_logps_sum_only_answer_tokens():
    tok = tiny_tokenizer()
    model = tiny_model(tok.vocab_size)
    seqs = [Seq([1, 5, 9, 7, 3], [0, 0, 1, 1, 1]), Seq([1, 4, 6], [0, 0, 1])]
    got = sequence_logps(model, seqs, tok.pad_id, "cpu")
    for s, g in zip(seqs, got):
        logp = torch.log_softmax(model(torch.tensor([s.ids]))[0], -1)
        want = sum(logp[i - 1, s.ids[i]].item() for i in range(1, len(s.ids)) if s.mask[i])
        assert g.item() == pytest.approx(want, rel=1e-5)


def test_hh_dialog_prompt_becomes_turns():
    msgs = to_messages({"prompt": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"}, prompt=True)
    assert msgs == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "how?"}]


def synthetic_pairs(path, n=48):
    """Chosen: the start of a real answer; rejected: a refusal. Learnable, so held-out margins can rise."""
    rows = [json.loads(line) for line in (DATA / "instruction_ja.jsonl").read_text().splitlines()[:n]]
    return write_jsonl(path, [{"prompt": r["instruction"][:20], "chosen": r["output"][:16], "rejected": "わかりません。知りません。"} for r in rows])


def overrides(base, run, data, **extra):
    d = {
        "model": f'"{base}"', "run.dir": f'"{run}"', "data.train": f'["{data}"]', "data.val_fraction": "0.25",
        "train.seq_len": "48", "train.batch_size": "8", "train.lr": "2e-3", "schedule.epochs": "0",
        "train.max_steps": "10", "train.warmup_steps": "1", "schedule.warmup_ratio": "0", "train.log_every": "5",
        "train.eval_every": "10", "train.ckpt_every": "10", "dpo.beta": "0.1",
    }
    d.update(extra)
    return [f"{k}={v}" for k, v in d.items()]


@pytest.mark.parametrize("kind", ["dpo", "ipo", "hinge", "kto"])
def test_training_raises_held_out_margin(tmp_path, kind):
    base = tiny_model_dir(tmp_path / "base")
    data = synthetic_pairs(tmp_path / "pairs.jsonl")
    run = tmp_path / "run"
    summary = dpo(load_config(DPOConfig, overrides=overrides(base, run, data, **{"dpo.loss": f'"{kind}"'})))
    before, after = summary["before"], summary["after"]
    if kind == "kto":
        assert after["val_rewards_desirable"] - after["val_rewards_undesirable"] > before["val_rewards_desirable"] - before["val_rewards_undesirable"] + 0.5
    else:
        assert before["val_margin"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at the start
        assert after["val_margin"] > 0.3 and after["val_reward_accuracy"] > 0.9
        assert after["val_loss"] < before["val_loss"]
    assert (run / "model" / "config.json").is_file() and (run / "reference_logps.safetensors").is_file()


def test_reference_logps_are_cached_and_reused(tmp_path, monkeypatch):
    base = tiny_model_dir(tmp_path / "base")
    data = synthetic_pairs(tmp_path / "pairs.jsonl", n=16)
    run = tmp_path / "run"
    dpo(load_config(DPOConfig, overrides=overrides(base, run, data, **{"train.max_steps": "2"})))
    import orizuru.post.dpo as mod

    # a longer run in the same directory: the policy is loaded once, the reference comes from the cache
    calls = []
    monkeypatch.setattr(mod, "load_base", lambda d, dev, _real=mod.load_base: (calls.append(d), _real(d, dev))[1])
    dpo(load_config(DPOConfig, overrides=overrides(base, run, data, **{"train.max_steps": "3"})))
    assert len(calls) == 1


def test_bad_preference_data(tmp_path):
    base = tiny_model_dir(tmp_path / "base")
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        {"prompt": "質問", "chosen": "良い答え", "rejected": "悪い答え"},
        {"prompt": "質問", "chosen": "", "rejected": "悪い"},
        {"prompt": "質問", "chosen": "同じ", "rejected": "同じ"},
        {"prompt": "", "chosen": "a", "rejected": "b"},
    ])
    with pytest.raises(UserError, match=r"bad.jsonl:2: missing or empty 'chosen'"):
        dpo(load_config(DPOConfig, overrides=overrides(base, tmp_path / "r", bad, **{"data.strict": "true"})))
    only_bad = write_jsonl(tmp_path / "only_bad.jsonl", [{"prompt": "質問", "chosen": "同じ", "rejected": "同じ"}])
    with pytest.raises(UserError, match="no usable preference rows"):
        dpo(load_config(DPOConfig, overrides=overrides(base, tmp_path / "r", only_bad)))
    long = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "長い" * 200, "chosen": "a", "rejected": "b"}] * 4)
    with pytest.raises(UserError, match="more than the context of 49"):
        dpo(load_config(DPOConfig, overrides=overrides(base, tmp_path / "r", long, **{"data.overlong": '"error"'})))
    with pytest.raises(UserError, match="no preference example fits"):
        dpo(load_config(DPOConfig, overrides=overrides(base, tmp_path / "r", long)))
    assert not (tmp_path / "r").exists()


def test_unpaired_rows_are_kto_only(tmp_path):
    rows = write_jsonl(tmp_path / "kto.jsonl", [
        {"prompt": "質問", "completion": "良い答え", "label": True},
        {"messages": [{"role": "user", "content": "質問"}], "completion": "悪い答え", "label": False},
        {"prompt": "質問", "completion": "ラベルなし"},
    ])
    pairs, singles, report = read_preferences([rows], strict=False)
    assert not pairs and [s.desirable for s in singles] == [True, False] and report.skipped == 1
    base = tiny_model_dir(tmp_path / "base")
    with pytest.raises(UserError, match="2 unpaired rows .* need dpo.loss = 'kto'"):
        dpo(load_config(DPOConfig, overrides=overrides(base, tmp_path / "r", rows)))


def test_bad_role_is_skipped_with_file_and_line_or_fatal_when_strict(tmp_path, capsys):
    """A bad role is a bad row like any other: reported as file:line, skipped unless strict. ShareGPT prompts work."""
    base = tiny_model_dir(tmp_path / "base")
    good = [json.loads(line) for line in synthetic_pairs(tmp_path / "pairs.jsonl", n=8).read_text().splitlines()]
    rows = write_jsonl(tmp_path / "mixed.jsonl", good[:4] + [
        {"messages": [{"role": "bot", "content": "質問"}], "chosen": "良い答え", "rejected": "悪い答え"},
        {"conversations": [{"from": "system", "value": "丁寧に"}, {"from": "human", "value": "日本の首都は？"}],
         "chosen": "東京です。", "rejected": "わかりません。"},
    ] + good[4:])
    pairs, _, report = read_preferences([rows], strict=False)
    assert report.skipped == 1 and report.problems == [f"{rows}:5: messages[0]: unknown role 'bot' (expected system, user, assistant)"]
    assert pairs[4].prompt == [{"role": "system", "content": "丁寧に"}, {"role": "user", "content": "日本の首都は？"}]
    capsys.readouterr()
    summary = dpo(load_config(DPOConfig, overrides=overrides(base, tmp_path / "run", rows, **{"train.max_steps": "1", "data.val_fraction": "0"})))
    assert summary["rows"] == 10 and summary["skipped"] == 1 and summary["train"] == 9
    assert f"skipped {rows}:5: messages[0]: unknown role 'bot'" in capsys.readouterr().err
    with pytest.raises(UserError, match=rf"^{rows}:5: messages\[0\]: unknown role 'bot'"):
        dpo(load_config(DPOConfig, overrides=overrides(base, tmp_path / "strict", rows, **{"data.strict": "true"})))


def test_prompt_rows_in_every_format_and_their_role_checks():
    hh = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    user = [{"role": "user", "content": "質問"}]
    assert to_messages({"prompt": "質問"}, prompt=True) == user
    assert to_messages({"messages": user}, prompt=True) == user
    assert to_messages({"conversations": [{"from": "human", "value": "質問"}]}, prompt=True) == user
    assert to_messages({"instruction": "質問", "output": "答え"}, prompt=True) == user  # the answer is not part of the prompt
    assert to_messages({"prompt": hh}, prompt=True)[-1] == {"role": "user", "content": "how?"}
    for row, why in [
        ({"messages": [{"role": "bot", "content": "x"}]}, "unknown role 'bot'"),
        ({"conversations": [{"from": "robot", "value": "x"}]}, "unknown role 'robot'"),
        ({"messages": user + [{"role": "assistant", "content": "答え"}]}, "must end with a user turn"),
        ({"prompt": "\n\nHuman: \n\nAssistant:"}, "empty 'prompt'"),
        ({"chosen": "a"}, "expected 'messages', 'conversations', 'prompt' or 'instruction'"),
    ]:
        with pytest.raises(BadRow, match=why):
            to_messages(row, prompt=True)
