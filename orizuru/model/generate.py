"""Text generation with a KV cache: greedy, temperature, top-k, top-p; EOS and stop strings.

The prompt is run once (prefill) into a preallocated `KVCache`; each step then feeds only the
newest token. A batch of prompts of different lengths is left-padded and masked, with
positions that skip the padding (as transformers does), so a prompt decodes the same alone or
in a batch. `orizuru generate` is the command-line front end.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Literal

import torch

from orizuru.config import ConfigError, parse_command
from orizuru.errors import UserError
from orizuru.model.checkpoint import check_tokenizer_matches, generation_ids, load_model
from orizuru.model.llama import KVCache, Llama
from orizuru.runtime import inference_device
from orizuru.tokenizer.tokenizer import Tokenizer


def sample_next(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token per row from logits (B, V): argmax when temperature == 0, else a sample from
    softmax(logits / temperature) restricted to the top-k tokens and the top-p nucleus."""
    if temperature == 0.0:
        return logits.argmax(-1)
    return torch.multinomial(sample_probs(logits, temperature, top_k, top_p), 1, generator=generator).squeeze(-1)


def sample_probs(logits: torch.Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """The distribution `sample_next` draws from (temperature > 0), per row of logits (B, V); each
    row's probabilities depend on that row alone, so rows sharing settings are computed together."""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # smallest set of most likely tokens whose probability reaches top_p (at least one token)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        drop = before >= top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits.softmax(-1)


def _find_stop(text: str, stop_strings: list[str]) -> int:
    """Index of the earliest stop string in `text`, or -1."""
    hits = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return min(hits) if hits else -1


def _trim_to(tokens: list[int], tokenizer: Tokenizer, end: int, text: str) -> list[int]:
    """Longest token prefix whose text lies within text[:end] (a token straddling a stop string goes)."""
    k = len(tokens)
    while k > 0:
        t = tokenizer.decode(tokens[:k])
        if len(t) <= end and text.startswith(t):
            break
        k -= 1
    return tokens[:k]


@torch.inference_mode()
def generate(
    model: Llama,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | Iterable[int] | None = None,
    stop_strings: list[str] | None = None,
    tokenizer: Tokenizer | None = None,
    seed: int | None = None,
    on_token: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Generate up to `max_new_tokens` per prompt; return only the new tokens of each.

    A row finishes at `eos_id` (one id or several; not included in the output) or when its text
    contains a stop string (output trimmed before it; needs `tokenizer`). Finished rows stop
    early and the loop ends when all rows have. `on_token(row, token)` is called for each
    token that is kept, as soon as it is chosen (streaming). `seed` makes sampling repeatable.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("generate: every prompt needs at least one token (encode it with Tokenizer.encode_prompt)")
    if max_new_tokens < 0:
        raise UserError(f"generate: max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise UserError(f"generate: temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise UserError(f"generate: top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"generate: top_p must be in (0, 1], got {top_p}")
    if stop_strings and tokenizer is None:
        raise UserError("generate: stop_strings need the tokenizer to read the text")
    vocab = model.cfg.vocab_size
    if any(t < 0 or t >= vocab for p in prompts for t in p):
        raise UserError(f"generate: prompt token ids must be in [0, {vocab}) (model.vocab_size)")
    eos = set() if eos_id is None else {eos_id} if isinstance(eos_id, int) else set(eos_id)
    stops = [s for s in stop_strings or [] if s]

    device = model.lm_head.weight.device
    B, lens = len(prompts), [len(p) for p in prompts]
    L = max(lens)
    ids = torch.zeros(B, L, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :] = torch.tensor(p)
    mask = None
    if min(lens) < L:  # left padding: mask it out of attention and out of the positions
        mask = torch.ones(B, L + max_new_tokens, dtype=torch.long)
        for i, n in enumerate(lens):
            mask[i, : L - n] = 0
        mask = mask.to(device)
    ids = ids.to(device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    if max_new_tokens == 0:
        return out
    cache = KVCache.empty(model.cfg, B, L + max_new_tokens, device, model.model.embed_tokens.weight.dtype)
    logits = model(ids, attention_mask=None if mask is None else mask[:, :L], cache=cache, last_only=True)[:, -1]
    for step in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator)
        for i, t in enumerate(nxt.tolist()):
            if done[i]:
                continue
            if t in eos:
                done[i] = True
                continue
            out[i].append(t)
            if stops:
                text = tokenizer.decode(out[i])
                at = _find_stop(text, stops)
                if at >= 0:
                    out[i] = _trim_to(out[i], tokenizer, at, text)
                    done[i] = True
                    continue
            if on_token is not None:
                on_token(i, t)
        if all(done) or step == max_new_tokens - 1:
            break
        step_mask = None if mask is None else mask[:, : L + step + 1]
        logits = model(nxt[:, None], attention_mask=step_mask, cache=cache)[:, -1]
    return out


# ---------------------------------------------------------------- command line


class StreamPrinter:
    """Prints one row's text as it grows, holding back what may still change: trailing
    byte-fallback tokens (a UTF-8 character split over tokens) and a tail that could begin a
    stop string. What is printed is always a prefix of the final text, except when a stop
    string is cut inside a token that was already shown."""

    def __init__(self, tokenizer: Tokenizer, stop_strings: list[str], out=None):
        self.tokenizer, self.stops, self.out = tokenizer, stop_strings, out or sys.stdout
        self.ids: list[int] = []
        self.printed = ""

    def safe_prefix(self, text: str) -> str:
        end = len(text)
        for s in self.stops:
            for k in range(min(len(s) - 1, end), 0, -1):
                if text[:end].endswith(s[:k]):
                    end -= k
                    break
        return text[:end]

    def __call__(self, row: int, token: int) -> None:
        self.ids.append(token)
        stable = len(self.ids)
        while stable and _is_byte_token(self.tokenizer, self.ids[stable - 1]):
            stable -= 1
        text = self.safe_prefix(self.tokenizer.decode(self.ids[:stable]))
        if len(text) > len(self.printed) and text.startswith(self.printed):
            self.out.write(text[len(self.printed) :])
            self.out.flush()
            self.printed = text

    def finish(self, final_text: str) -> None:
        if final_text.startswith(self.printed):
            self.out.write(final_text[len(self.printed) :])
        self.out.write("\n")
        self.out.flush()


def _is_byte_token(tokenizer: Tokenizer, token: int) -> bool:
    """<0xNN> pieces: consecutive ones decode together, so their text is final only later."""
    piece = tokenizer.hf.id_to_token(token) or ""
    return len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">")


def _read_prompts(path: str) -> list[str]:
    """One prompt per non-empty line of a text file, or the "prompt" field of each JSONL line."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read prompts file ({e})") from None
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{p}:{n}: not valid JSON") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise UserError(f"{p}:{n}: expected an object with a string field 'prompt'")
            prompts.append(row["prompt"])
        else:
            prompts.append(line)
    if not prompts:
        raise UserError(f"{p}: no prompts in file")
    return prompts


@dataclass
class GenerateConfig:
    """`orizuru generate`: greedy unless --temperature is given; prints only the generated text
    (streamed for a single prompt)."""

    model: str  # model directory (config.json, safetensors, tokenizer.json)
    prompt: list[str] = field(default_factory=list)  # prompt text (several, or repeat the flag, for a batch)
    prompts_file: str | None = None  # text file with one prompt per line, or JSONL with a 'prompt' field
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int | None = None  # sample only among the k most likely tokens
    top_p: float | None = None  # sample only within this probability mass (nucleus)
    seed: int | None = None  # seed for sampling (repeatable output)
    stop: list[str] = field(default_factory=list)  # stop strings; not printed
    batch_size: int = 8  # prompts decoded together
    device: str = "auto"  # auto|cpu|cuda|cuda:N (auto: cuda when available, else cpu)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # weights' dtype (auto: bf16 on CUDA, float32 on CPU)
    jsonl: bool = False  # print {"prompt", "text"} per prompt instead of the text

    def validate(self) -> None:
        if not self.prompt and not self.prompts_file:
            raise ConfigError("give at least one --prompt or --prompts-file")
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ConfigError("--batch-size and --max-new-tokens must be >= 1")
        if (self.top_k is not None or self.top_p is not None) and self.temperature == 0:
            raise ConfigError("--top-k/--top-p only apply when sampling: give --temperature > 0")


def main(argv: list[str]) -> int:
    cfg = parse_command(GenerateConfig, argv, "orizuru generate", GenerateConfig.__doc__)
    texts = list(cfg.prompt) + (_read_prompts(cfg.prompts_file) if cfg.prompts_file else [])
    device, dtype = inference_device(cfg.device, cfg.dtype)
    tokenizer = Tokenizer.load(cfg.model)
    model = load_model(cfg.model, device=device, dtype=dtype)
    check_tokenizer_matches(model.cfg, tokenizer, where=cfg.model)
    eos = generation_ids(cfg.model).get("eos_token_id", tokenizer.eos_id)
    opts = dict(
        temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, eos_id=eos,
        stop_strings=cfg.stop or None, tokenizer=tokenizer, seed=cfg.seed,
    )  # fmt: skip
    room = model.cfg.max_seq_len - cfg.max_new_tokens  # a prompt too long for it is an error with the counts
    if len(texts) == 1 and not cfg.jsonl:
        printer = StreamPrinter(tokenizer, cfg.stop)
        ids, _ = tokenizer.encode_prompt(texts[0], room, truncate=False)
        [new] = generate(model, [ids], cfg.max_new_tokens, on_token=printer, **opts)
        printer.finish(tokenizer.decode(new))
        return 0
    for start in range(0, len(texts), cfg.batch_size):
        chunk = texts[start : start + cfg.batch_size]
        outs = generate(model, [tokenizer.encode_prompt(text, room, truncate=False)[0] for text in chunk], cfg.max_new_tokens, **opts)
        for prompt, new in zip(chunk, outs):
            text = tokenizer.decode(new)
            print(json.dumps({"prompt": prompt, "text": text}, ensure_ascii=False) if cfg.jsonl else text, flush=True)
    return 0
