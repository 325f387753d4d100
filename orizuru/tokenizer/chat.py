"""The one chat format: role marker tokens, a Jinja `chat_template`, and loss masks.

    <s><|system|>\\n{system}<|end|>\\n<|user|>\\n{user}<|end|>\\n<|assistant|>\\n{answer}<|end|>\\n

The same template is stored in `tokenizer_config.json`, so `transformers`' `apply_chat_template`
renders exactly the ids orizuru trains on (tests compare them token for token). `render` builds
the ids piece by piece, cutting only at special tokens (which the tokenizer never merges across),
so it can mark which tokens belong to assistant answers: those, and their closing `<|end|>`, are
the only tokens that carry loss. Generation stops at `<|end|>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from orizuru.errors import UserError
from orizuru.tokenizer.tokenizer import ASSISTANT, END, SYSTEM, USER, Tokenizer

ROLES = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


@dataclass
class Rendered:
    ids: list[int]
    mask: list[int]  # 1 where the token is part of an assistant answer (loss is computed there)


def render(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> Rendered:
    """Token ids of a conversation (BOS first) and the per-token loss mask for assistant turns."""
    ids, mask = [tok.bos_id], [0]

    def add(text: str, weight: int) -> None:
        if text:
            piece = tok.encode(text)
            ids.extend(piece)
            mask.extend([weight] * len(piece))

    for m in messages:
        role = m.get("role")
        if role not in ROLES:
            raise UserError(f"unknown chat role {role!r} (expected system, user or assistant)")
        answer = role == "assistant"
        add(f"{ROLES[role]}\n", 0)
        add(m["content"] + END, int(answer))
        add("\n", 0)
    if add_generation_prompt:
        add(f"{ASSISTANT}\n", 0)
    return Rendered(ids, mask)


def stop_id(tok: Tokenizer) -> int:
    """Assistant turns end with `<|end|>`: the token that stops generation."""
    return tok.token_id(END)


def prompt_ids(tok: Tokenizer, messages: list[dict]) -> list[int]:
    """Ids to generate an answer from: the conversation so far plus `<|assistant|>\\n`."""
    return render(tok, messages, add_generation_prompt=True).ids


class ChatTokenizer(Tokenizer):
    """A tokenizer whose saved `tokenizer_config.json` carries the chat template (pass it to `save_model`)."""

    def save(self, directory: str | Path, model_max_length: int = 2048, chat_template: str | None = CHAT_TEMPLATE) -> None:
        super().save(directory, model_max_length=model_max_length, chat_template=chat_template)
