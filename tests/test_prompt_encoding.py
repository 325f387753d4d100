"""One prompt encoder (`Tokenizer.encode_prompt`): BOS first, exactly once, and a long prompt cut from
the left to fit the model's context, in every path that generates from a prompt."""

from __future__ import annotations

import jinja2
import pytest
from eval_helpers import build_tiny_model
from post_fixtures import single_thread, tiny_model, tiny_model_dir, tiny_tokenizer, write_jsonl  # noqa: F401

import orizuru.demo.run as demo_run
import orizuru.eval.generative as generative
import orizuru.eval.judge as judge
import orizuru.post.finetune as finetune
import orizuru.post.ppo as ppo
import orizuru.post.slick as slick
from orizuru.config import load_config
from orizuru.errors import UserError
from orizuru.eval.evaluate import EvalConfig, evaluate
from orizuru.model.checkpoint import save_model
from orizuru.tokenizer.chat import CHAT_TEMPLATE, ChatTokenizer, prompt_ids, render
from orizuru.tokenizer.tokenizer import Tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

LONG = "とても長い質問ですが、最後まで読んでください。" * 30


def test_bos_first_once_and_left_truncation_with_counts():
    tok = tiny_tokenizer()
    short = "日本の首都は？"
    assert tok.encode_prompt(short, 100) == (tok.encode(short, bos=True), 0)
    full = tok.encode(LONG, bos=True)
    ids, dropped = tok.encode_prompt(LONG, 50)
    assert ids == [tok.bos_id] + full[-49:] and dropped == len(full) - 50
    with pytest.raises(UserError, match=f"prompt of {len(full)} tokens exceeds the model's context: 50 tokens are left"):
        tok.encode_prompt(LONG, 50, truncate=False)
    # a rendered chat starts with BOS, and so does a chat template's text: neither gets a second one
    messages = [{"role": "user", "content": short}]
    chat = prompt_ids(tok, messages)
    assert chat[0] == tok.bos_id and tok.encode_prompt(chat, 100) == (chat, 0)
    text = jinja2.Template(CHAT_TEMPLATE).render(messages=messages, add_generation_prompt=True, bos_token=tok.bos_token)
    assert tok.encode_prompt(text, 100) == (chat, 0)
    long_chat = render(tok, [{"role": "user", "content": LONG}], add_generation_prompt=True).ids
    ids, dropped = tok.encode_prompt(long_chat, 40)
    assert ids == [tok.bos_id] + long_chat[-39:] and dropped == len(long_chat) - 40


def spy(monkeypatch, module) -> list[tuple[int, int, list[list[int]]]]:
    """Record (model context, max_new_tokens, prompts) of every `generate` call the module makes."""
    calls, real = [], module.generate

    def recording(model, prompts, max_new_tokens, **kwargs):
        calls.append((model.cfg.max_seq_len, max_new_tokens, [list(p) for p in prompts]))
        return real(model, prompts, max_new_tokens, **kwargs)

    monkeypatch.setattr(module, "generate", recording)
    return calls


def assert_bos_first_and_fits(calls, bos_id: int) -> None:
    assert calls
    for context, new, prompts in calls:
        for p in prompts:
            assert p[0] == bos_id and p[1] != bos_id and len(p) + new <= context
    assert any(len(p) + new == context for context, new, prompts in calls for p in prompts), "no prompt needed cutting"


def test_eval_generative_prompts(tmp_path, monkeypatch):
    small = build_tiny_model(tmp_path / "small", max_seq_len=64)
    calls = spy(monkeypatch, generative)
    results = evaluate(EvalConfig(model=str(small), tasks=["jsquad"], limit=2, output=str(tmp_path / "out")))
    assert results["tasks"]["jsquad"]["truncated_examples"] == 2
    assert_bos_first_and_fits(calls, Tokenizer.load(small).bos_id)


def test_slick_prompts(tmp_path, monkeypatch):
    base = tiny_model_dir(tmp_path / "base")
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": f"{LONG}{i}は？", "answer": str(i)} for i in range(3)])
    calls = spy(monkeypatch, slick)
    slick.slick(str(base), str(qa), str(tmp_path / "labels.jsonl"), shots=2, prompts=1, samples=1, max_new_tokens=4)
    assert_bos_first_and_fits(calls, tiny_tokenizer().bos_id)


def test_judge_answer_prompts_with_the_models_chat_template(tmp_path, monkeypatch):
    tok = tiny_tokenizer()
    model_dir = tmp_path / "chat"
    save_model(tiny_model(tok.vocab_size), model_dir, ChatTokenizer(tok.hf))
    calls = spy(monkeypatch, judge)
    questions = [judge.Question("1", "writing", ["短い質問です。", LONG]), judge.Question("2", "writing", [LONG])]
    judge.generate_answers(model_dir, questions, tmp_path / "answers.jsonl", max_new_tokens=8)
    assert_bos_first_and_fits(calls, tok.bos_id)
    # the short first turn: exactly the ids the chat format renders
    assert calls[0][2][0] == prompt_ids(tok, [{"role": "user", "content": "短い質問です。"}])


def test_sample_answers_prompts(tmp_path, monkeypatch):
    base = tiny_model_dir(tmp_path / "base")
    calls = spy(monkeypatch, finetune)
    finetune.sample_answers(base, ["日本の首都は？", LONG], max_new_tokens=8)
    assert_bos_first_and_fits(calls, tiny_tokenizer().bos_id)


def test_ppo_rollout_prompts(tmp_path, monkeypatch):
    base = tiny_model_dir(tmp_path / "base", vocab_size=300)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1たす6は？", "answer": 7}, {"prompt": LONG, "answer": 7}])
    calls = spy(monkeypatch, ppo)
    o = {
        "model": f'"{base}"', "run.dir": f'"{tmp_path / "run"}"', "data.prompts": f'["{prompts}"]', "ppo.rule": '"contains_answer"',
        "ppo.rollout_batch": "4", "ppo.max_new_tokens": "4", "ppo.ppo_epochs": "1", "train.batch_size": "4", "train.max_steps": "2",
    }
    ppo.ppo(load_config(ppo.PPOConfig, overrides=[f"{k}={v}" for k, v in o.items()]))
    assert_bos_first_and_fits(calls, tiny_tokenizer(300).bos_id)


def test_demo_generate_prompts(tmp_path, monkeypatch):
    base = tiny_model_dir(tmp_path / "base")
    calls = spy(monkeypatch, demo_run)
    demo_run.stage_generate(base, ["日本の", LONG], max_new_tokens=8)
    assert_bos_first_and_fits(calls, tiny_tokenizer().bos_id)
