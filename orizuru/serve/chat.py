"""`orizuru chat`: a terminal chat, streamed, with a model directory (the serving engine in this
process) or any OpenAI-compatible server (`--url`, e.g. `orizuru serve`'s)."""

from __future__ import annotations

import os
import queue
import sys
from dataclasses import dataclass
from typing import Iterator

from orizuru.config import ConfigError, parse_command
from orizuru.errors import UserError


@dataclass
class ChatConfig:
    """`orizuru chat`: talk to a model in the terminal (one line per message; /reset starts over,
    /exit or end of input quits). Give --model DIR or --url URL."""

    model: str | None = None  # model directory: run it here, on the serving engine
    url: str | None = None  # OpenAI-compatible base URL instead, e.g. http://127.0.0.1:8000/v1
    system: str | None = None  # system prompt
    temperature: float = 0.7  # 0: greedy
    top_p: float | None = None
    max_tokens: int = 512  # per answer
    seed: int | None = None
    device: str = "auto"  # with --model: auto (cuda when available), cpu, cuda
    dtype: str = "auto"  # with --model: auto, float32 or bfloat16
    api_key_env: str = "OPENAI_API_KEY"  # with --url: environment variable holding the API key

    def validate(self) -> None:
        if (self.model is None) == (self.url is None):
            raise ConfigError("give exactly one of --model DIR or --url URL")
        if self.max_tokens < 1 or self.temperature < 0:
            raise ConfigError("--max-tokens must be >= 1 and --temperature >= 0")


def engine_replies(cfg: ChatConfig):
    """(messages -> streamed text pieces, close) on an engine in this process."""
    from orizuru.serve.engine import Delta, Engine, Failed, Finish, Request, SamplingParams
    from orizuru.serve.prompts import chat_prompt

    engine = Engine.from_dir(cfg.model, device=cfg.device, dtype=cfg.dtype, max_batch=1)
    if engine.chat_template is None:
        raise UserError(f"{cfg.model}: the model has no chat template (tokenizer_config.json has no 'chat_template')")
    engine.start()

    def reply(messages: list[dict]) -> Iterator[str]:
        ids = chat_prompt(engine.tokenizer, engine.chat_template, messages)
        room = engine.max_seq_len - len(ids)
        if room < 1:
            raise UserError(f"the conversation has {len(ids)} tokens, the model's context {engine.max_seq_len}: /reset to start over")
        events: queue.Queue = queue.Queue()
        params = SamplingParams(max_tokens=min(cfg.max_tokens, room), temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
        request = Request(ids, params, events.put, eos=engine.chat_eos)
        engine.submit(request)
        try:
            while True:
                event = events.get()
                if isinstance(event, Delta):
                    yield event.text
                elif isinstance(event, Finish):
                    return
                elif isinstance(event, Failed):
                    raise UserError(event.message)
        finally:
            engine.cancel(request)  # Ctrl-C mid-answer frees the slot

    return reply, engine.stop


def url_replies(cfg: ChatConfig):
    """The same over HTTP with the `openai` client."""
    from openai import APIError, OpenAI

    client = OpenAI(base_url=cfg.url, api_key=os.environ.get(cfg.api_key_env) or "none", max_retries=1)
    try:
        model = client.models.list().data[0].id
    except Exception as e:
        raise UserError(f"{cfg.url}: cannot list the server's models ({type(e).__name__}: {e})") from None

    def reply(messages: list[dict]) -> Iterator[str]:
        extra = {} if cfg.top_p is None else {"top_p": cfg.top_p}
        try:
            stream = client.chat.completions.create(model=model, messages=messages, stream=True, temperature=cfg.temperature,
                                                    max_tokens=cfg.max_tokens, seed=cfg.seed, **extra)  # fmt: skip
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
        except APIError as e:
            raise UserError(f"{cfg.url}: {e}") from None

    return reply, client.close


def main(argv: list[str]) -> int:
    cfg = parse_command(ChatConfig, argv, "orizuru chat", ChatConfig.__doc__)
    reply, close = engine_replies(cfg) if cfg.model else url_replies(cfg)
    try:
        return _loop(cfg, reply)
    finally:
        close()


def _loop(cfg: ChatConfig, reply) -> int:
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages = list(system)
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            messages = list(system)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        answer = ""
        for piece in reply(messages):
            sys.stdout.write(piece)
            sys.stdout.flush()
            answer += piece
        sys.stdout.write("\n")
        sys.stdout.flush()
        messages.append({"role": "assistant", "content": answer})
