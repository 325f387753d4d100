"""A request's prompt ids: chat messages through the model's chat template, completion prompts
exactly as `orizuru generate` encodes them (`Tokenizer.encode_prompt`)."""

from __future__ import annotations

import json
from pathlib import Path

from orizuru.errors import UserError
from orizuru.tokenizer.chat import CHAT_TEMPLATE, prompt_ids
from orizuru.tokenizer.tokenizer import Tokenizer

NO_LIMIT = 1 << 62  # lengths are checked against the context by the caller, with the counts


def read_chat_template(directory: str | Path) -> str | None:
    """`chat_template` of the model's tokenizer_config.json (None when it has none)."""
    path = Path(directory) / "tokenizer_config.json"
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a valid JSON file ({e})") from None
    if isinstance(template, list):  # the HF form with several named templates
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def chat_prompt(tokenizer: Tokenizer, template: str, messages: list[dict]) -> list[int]:
    """Ids to answer `messages` [{role, content}] from. orizuru's own template is rendered by
    `tokenizer.chat` (cut at special tokens, as in training); any other through Jinja, as
    transformers' `apply_chat_template` does. ValueError for a conversation the template rejects."""
    if template == CHAT_TEMPLATE:
        return prompt_ids(tokenizer, messages)
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        text = env.from_string(template).render(
            messages=messages, add_generation_prompt=True, bos_token=tokenizer.bos_token, eos_token=tokenizer.eos_token
        )
    except TemplateError as e:
        raise ValueError(f"the model's chat template failed: {e}") from None
    return tokenizer.encode_prompt(text, NO_LIMIT)[0]


def completion_prompt(tokenizer: Tokenizer, prompt: str | list[int]) -> list[int]:
    """BOS first, exactly once, as `orizuru generate --prompt` encodes it."""
    return tokenizer.encode_prompt(prompt, NO_LIMIT)[0]
