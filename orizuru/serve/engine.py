"""The continuous-batching engine: fixed slots over one KV cache, run in its own thread.

Each slot is one row of a `KVCache.slots` cache with its own length. Every step decodes one
token for every running slot in one batched forward, then folds in prompt chunks of admitted
requests (at most `prefill_chunk` prompt tokens per step), so a long prompt never stalls the
streams already running. A request with `n` choices takes n slots: its prompt is prefilled once
and the keys/values copied to the other n-1. Each choice samples with its own settings and its
own `torch.Generator`, so a seeded request gives the same tokens alone or beside others.
Sampling, stop strings and UTF-8 hold-back are `orizuru.model.generate`'s; the HTTP layer
(`app.py`) and `orizuru chat` only submit requests and read their events.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

from orizuru.model.checkpoint import check_tokenizer_matches, generation_ids, load_model
from orizuru.model.generate import StreamPrinter, _find_stop, _trim_to, sample_next
from orizuru.model.llama import KVCache, Llama
from orizuru.runtime import inference_device
from orizuru.serve.metrics import Metrics
from orizuru.serve.prompts import read_chat_template
from orizuru.tokenizer.tokenizer import END, Tokenizer


class QueueFull(Exception):
    """More requests are waiting than the engine accepts (the HTTP layer answers 503)."""


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None  # choice i samples from a generator seeded with seed + i
    stop: list[str] = field(default_factory=list)
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False  # generate exactly max_tokens (benchmarks)


@dataclass
class Token:
    """One generated token with its log-probability from the raw logits and the most likely alternatives."""

    id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Delta:
    index: int  # the choice
    text: str  # text that can no longer change
    tokens: list[Token]  # logprobs of the tokens behind it (empty unless asked for)


@dataclass
class Finish:
    index: int
    reason: str  # "stop" (EOS or a stop string) or "length"
    completion_tokens: int


@dataclass
class Failed:
    message: str


@dataclass
class Request:
    """A prompt's ids and settings; `emit` receives Delta/Finish/Failed events from the engine thread."""

    prompt: list[int]
    params: SamplingParams
    emit: Callable[[object], None]
    eos: set[int] = field(default_factory=set)
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    prefilled: int = 0  # prompt tokens already in the cache
    choices: list["Choice"] = field(default_factory=list)


class _Collector:
    """A file-like sink for StreamPrinter: what it would print is what a stream may send."""

    def __init__(self):
        self.parts: list[str] = []

    def write(self, s: str) -> None:
        self.parts.append(s)

    def flush(self) -> None:
        pass

    def take(self) -> str:
        text, self.parts = "".join(self.parts), []
        return text


@dataclass
class Choice:
    request: Request
    index: int
    slot: int
    generator: torch.Generator
    printer: StreamPrinter
    sink: _Collector
    pending: int | None = None  # sampled, not yet fed to the model
    done: bool = False


class Engine:
    def __init__(self, model: Llama, tokenizer: Tokenizer, *, max_batch: int = 16, max_seq_len: int | None = None,
                 prefill_chunk: int = 256, max_queue: int = 256, chat_template: str | None = None, eos: set[int] | None = None):  # fmt: skip
        """eos: the ids that end a completion (generation_config.json's, as `orizuru generate`);
        a chat answer also ends at the chat template's `<|end|>`."""
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.prefill_chunk, self.max_queue = max_batch, prefill_chunk, max_queue
        self.max_seq_len = min(max_seq_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        self.chat_template, self.eos = chat_template, set(eos or {tokenizer.eos_id})
        end = tokenizer.hf.token_to_id(END)
        self.chat_eos = self.eos | ({end} if end is not None else set())
        self.device = model.lm_head.weight.device
        dtype = model.model.embed_tokens.weight.dtype
        self.cache = KVCache.slots(model.cfg, max_batch, self.max_seq_len, self.device, dtype)
        self.metrics = Metrics()
        self._cv = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._prefilling: list[Request] = []
        self._running: list[Choice] = []
        self._free = list(range(max_batch))
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="orizuru-engine", daemon=True)

    @classmethod
    def from_dir(cls, directory: str, *, device: str = "auto", dtype: str = "auto", **kw) -> "Engine":
        """An engine over a model directory, on `runtime.inference_device`'s device and precision
        (bf16 on CUDA, float32 on the CPU, unless --dtype says otherwise)."""
        dev, weights = inference_device(device, dtype)
        tokenizer = Tokenizer.load(directory)
        model = load_model(directory, device=dev, dtype=weights)
        check_tokenizer_matches(model.cfg, tokenizer, where=directory)
        eos = generation_ids(directory).get("eos_token_id", tokenizer.eos_id)
        eos = {eos} if isinstance(eos, int) else set(eos)
        return cls(model, tokenizer, chat_template=read_chat_template(directory), eos=eos, **kw)

    # ------------------------------------------------------------ used by other threads

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()

    def submit(self, request: Request) -> None:
        with self._cv:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (the queue holds {self.max_queue})")
            self._waiting.append(request)
            self.metrics.prompt_tokens += len(request.prompt)
            self._cv.notify()

    def cancel(self, request: Request) -> None:
        """The client went away: its slots are freed at the start of the next step."""
        with self._cv:
            request.cancelled = True
            self._cv.notify()

    def gauges(self) -> tuple[int, int]:
        """(waiting requests, occupied slots)."""
        with self._cv:
            return len(self._waiting), self.max_batch - len(self._free)

    # ------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stopping or self._waiting or self._prefilling or self._running):
                    self._cv.wait()
                if self._stopping:
                    return
                self._drop_cancelled()
                self._admit()
            try:
                self._step()
            except Exception as e:  # a failed step fails its requests, never the server
                self.cache.rows = None
                failed = {id(c.request): c.request for c in self._running}
                failed.update({id(r): r for r in self._prefilling})
                for r in failed.values():
                    r.emit(Failed(f"generation failed: {type(e).__name__}: {e}"))
                    self._release(r)

    def _drop_cancelled(self) -> None:
        for r in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(r)
            self.metrics.finished["cancelled"] += 1
        for r in {id(c.request): c.request for c in self._running if c.request.cancelled}.values():
            self._release(r)
            self.metrics.finished["cancelled"] += 1
        for r in [r for r in self._prefilling if r.cancelled]:
            self._release(r)
            self.metrics.finished["cancelled"] += 1

    def _release(self, r: Request) -> None:
        for c in r.choices:
            if not c.done:  # a finished choice gave its slot back already
                self.cache.lengths[c.slot] = 0
                self._free.append(c.slot)
                c.done = True
        self._running = [c for c in self._running if c.request is not r]
        self._prefilling = [p for p in self._prefilling if p is not r]

    def _admit(self) -> None:
        """First come, first served: the oldest waiting request takes slots as soon as enough are free."""
        while self._waiting and len(self._free) >= self._waiting[0].params.n:
            r = self._waiting.popleft()
            self._free.sort()
            for i in range(r.params.n):
                slot = self._free.pop(0)
                self.cache.lengths[slot] = 0
                seed = r.params.seed + i if r.params.seed is not None else secrets.randbits(63)
                sink = _Collector()
                gen = torch.Generator(device=self.device).manual_seed(seed)
                r.choices.append(Choice(r, i, slot, gen, StreamPrinter(self.tokenizer, r.params.stop, out=sink), sink))
            self._prefilling.append(r)

    @torch.inference_mode()
    def _step(self) -> None:
        if self._running:
            batch = self._running
            ids = torch.tensor([[c.pending] for c in batch], device=self.device)
            self.cache.rows = torch.tensor([c.slot for c in batch], device=self.device)
            logits = self.model(ids, cache=self.cache)[:, -1]
            for c, row in zip(batch, logits):
                self._next(c, row)
        budget = self.prefill_chunk
        for r in list(self._prefilling):
            if budget <= 0:
                break
            take = min(budget, len(r.prompt) - r.prefilled)
            chunk = torch.tensor([r.prompt[r.prefilled : r.prefilled + take]], device=self.device)
            self.cache.rows = torch.tensor([r.choices[0].slot], device=self.device)
            logits = self.model(chunk, cache=self.cache, last_only=True)[0, -1]
            r.prefilled += take
            budget -= take
            if r.prefilled == len(r.prompt):
                self._prefilling.remove(r)
                src, n = r.choices[0].slot, len(r.prompt)
                for c in r.choices[1:]:  # n > 1: one prefill, copied
                    self.cache.k[:, c.slot, :, :n] = self.cache.k[:, src, :, :n]
                    self.cache.v[:, c.slot, :, :n] = self.cache.v[:, src, :, :n]
                    self.cache.lengths[c.slot] = n
                self._running.extend(r.choices)
                for c in r.choices:
                    self._next(c, logits)
        self._running = [c for c in self._running if not c.done]
        self.cache.rows = None

    def _next(self, c: Choice, logits: torch.Tensor) -> None:
        """Sample choice `c`'s next token from its logits (V,) and send what became final."""
        r, p = c.request, c.request.params
        t = int(sample_next(logits[None], p.temperature, p.top_k, p.top_p, c.generator)[0])
        tokens = []
        if p.logprobs:
            lp = torch.log_softmax(logits.float(), -1)
            top = torch.topk(lp, p.top_logprobs) if p.top_logprobs else None
            pairs = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
            tokens = [Token(t, float(lp[t]), pairs)]
        now = time.perf_counter()
        if r.first_token is None:
            r.first_token = now
            self.metrics.observe_ttft(now - r.submitted)
        self.metrics.count_token(now)
        ids = c.printer.ids
        if t in r.eos and not p.ignore_eos:  # what was held back (a split character, a stop-string prefix) is final now
            return self._finish(c, "stop", text=self._rest(c, self.tokenizer.decode(ids)))
        if p.stop:
            text = self.tokenizer.decode(ids + [t])
            at = _find_stop(text, p.stop)
            if at >= 0:
                kept = _trim_to(ids + [t], self.tokenizer, at, text)
                c.printer.ids = kept
                rest = self._rest(c, text[:at])
                return self._finish(c, "stop", text=rest, tokens=tokens if len(kept) > len(ids) else [])
        c.printer(c.index, t)
        if len(ids) >= p.max_tokens:
            return self._finish(c, "length", text=c.sink.take() + self._rest(c, self.tokenizer.decode(ids)), tokens=tokens)
        text = c.sink.take()
        if text or tokens:
            r.emit(Delta(c.index, text, tokens))
        c.pending = t

    @staticmethod
    def _rest(c: Choice, final: str) -> str:
        """The part of a choice's final text not sent yet."""
        rest = final[len(c.printer.printed) :] if final.startswith(c.printer.printed) else ""
        c.printer.printed = final
        return rest

    def _finish(self, c: Choice, reason: str, text: str = "", tokens: list[Token] = ()) -> None:
        r = c.request
        if text or tokens:
            r.emit(Delta(c.index, text, list(tokens)))
        c.done = True
        self.cache.lengths[c.slot] = 0
        self._free.append(c.slot)
        r.emit(Finish(c.index, reason, len(c.printer.ids)))
        if all(x.done for x in r.choices):
            self.metrics.finished[reason] += 1
