import pytest
from post_fixtures import single_thread, tiny_tokenizer  # noqa: F401
from transformers import AutoTokenizer

from orizuru.errors import UserError
from orizuru.tokenizer.chat import ChatTokenizer, prompt_ids, render

pytestmark = pytest.mark.usefixtures("single_thread")

CONVERSATIONS = [
    [{"role": "user", "content": "日本の首都はどこですか？"}, {"role": "assistant", "content": "東京です。"}],
    [
        {"role": "system", "content": "あなたは親切なアシスタントです。"},
        {"role": "user", "content": " 先頭に空白、\n改行と 123 の数字"},
        {"role": "assistant", "content": "はい。\n\n- 一つ目\n- 二つ目 "},
        {"role": "user", "content": "Thanks! English too?"},
        {"role": "assistant", "content": "Yes, 英語も大丈夫です。"},
    ],
]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    tok = tiny_tokenizer()
    d = tmp_path_factory.mktemp("tok")
    ChatTokenizer(tok.hf).save(d)
    return tok, d


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_ids_match_transformers_apply_chat_template(tok_dir, messages):
    tok, d = tok_dir
    hf = AutoTokenizer.from_pretrained(d)
    ours = render(tok, messages)
    theirs = hf.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert ours.ids == list(theirs)
    gen = hf.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=False)
    assert prompt_ids(tok, messages[:-1]) == list(gen)


def test_mask_covers_exactly_the_assistant_answers(tok_dir):
    tok, _ = tok_dir
    messages = CONVERSATIONS[1]
    r = render(tok, messages)
    assert len(r.mask) == len(r.ids)
    trained = [i for i, m in zip(r.ids, r.mask) if m]
    want = tok.encode("はい。\n\n- 一つ目\n- 二つ目 <|end|>") + tok.encode("Yes, 英語も大丈夫です。<|end|>")
    assert trained == want
    # the prompt part (system and user turns, role markers) carries no loss
    assert sum(r.mask) == len(want) and r.mask[0] == 0


def test_unknown_role_is_an_error(tok_dir):
    tok, _ = tok_dir
    with pytest.raises(UserError, match="unknown chat role 'tool'"):
        render(tok, [{"role": "tool", "content": "x"}])
