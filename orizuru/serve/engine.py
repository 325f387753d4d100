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
from orizuru.model.generate import StreamPrinter, _find_stop, _trim_to, sample_probs
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
        """One decode forward for every running slot, then one forward for this step's prompt chunks."""
        if self._running:
            batch = sorted(self._running, key=lambda c: c.slot)
            self._advance(batch, self._decode(batch))
        plan = self._prefill_plan()
        if plan:
            width = max(take for _, take in plan)  # shorter chunks are padded; their lengths are set back below
            ids = torch.tensor([r.prompt[r.prefilled : r.prefilled + take] + [0] * (width - take) for r, take in plan], device=self.device)
            self.cache.rows = self._rows([r.choices[0].slot for r, _ in plan])
            hidden = self.model(ids, cache=self.cache, return_hidden=True)
            last = torch.tensor([take - 1 for _, take in plan], device=self.device)
            logits = self.model.lm_head(hidden[torch.arange(len(plan), device=self.device), last])
            ready, rows = [], []
            for i, (r, take) in enumerate(plan):
                r.prefilled += take
                src = r.choices[0].slot
                self.cache.lengths[src] = r.prefilled  # keys of the padding lie past it, masked
                if r.prefilled == len(r.prompt):
                    self._prefilling.remove(r)
                    n = len(r.prompt)
                    for c in r.choices[1:]:  # n > 1: one prefill, copied
                        self.cache.k[:, c.slot, :, :n] = self.cache.k[:, src, :, :n]
                        self.cache.v[:, c.slot, :, :n] = self.cache.v[:, src, :, :n]
                        self.cache.lengths[c.slot] = n
                    self._running.extend(r.choices)
                    ready += r.choices
                    rows += [i] * len(r.choices)
            if ready:
                self._advance(ready, logits[rows])
        self._running = [c for c in self._running if not c.done]
        self.cache.rows = None

    def _decode(self, batch: list[Choice]) -> torch.Tensor:
        """Logits (B, V) of each running choice's next token, `batch` sorted by slot. A few free or
        prefilling slots between running ones are decoded too, with a throwaway token, so the
        forward's rows stay one slice (a gather copies every row's keys/values in every layer, which
        costs more than a spare row while the gaps are at most a quarter of the batch); their
        lengths are set back, so what they wrote lies past them and is overwritten before it is read."""
        slots = [c.slot for c in batch]
        lo, hi = slots[0], slots[-1] + 1
        gaps = sorted(set(range(lo, hi)) - set(slots))
        if not gaps or 4 * len(gaps) > len(batch):
            self.cache.rows = self._rows(slots)
            return self.model(torch.tensor([[c.pending] for c in batch], device=self.device), cache=self.cache)[:, -1]
        pending = {c.slot: c.pending for c in batch}
        ids = torch.tensor([[pending.get(s, 0)] for s in range(lo, hi)], device=self.device)
        kept = self.cache.lengths[gaps].clone()
        self.cache.rows = slice(lo, hi)
        logits = self.model(ids, cache=self.cache)[:, -1]
        self.cache.lengths[gaps] = kept
        return logits[[s - lo for s in slots]]

    def _rows(self, slots: list[int]) -> torch.Tensor | slice:
        """The cache rows of a forward: a slice when they are contiguous (the rows' keys are then
        read as views; a gather copies them every layer), else an index tensor."""
        if slots == list(range(slots[0], slots[0] + len(slots))):
            return slice(slots[0], slots[0] + len(slots))
        return torch.tensor(slots, device=self.device)

    def _prefill_plan(self) -> list[tuple[Request, int]]:
        """This step's prompt chunks, (request, tokens), sorted by slot, for one forward: the oldest
        waiting prompt sets the width (up to `prefill_chunk` tokens), later ones join with at most
        that many while rows x width stays within `prefill_chunk` and no padded row passes the cache's end."""
        plan: list[tuple[Request, int]] = []
        width = 0
        for r in self._prefilling:
            left = len(r.prompt) - r.prefilled
            if not plan:
                width = min(left, self.prefill_chunk)
            elif (len(plan) + 1) * width > self.prefill_chunk or r.prefilled + width > self.max_seq_len:
                break
            plan.append((r, min(left, width)))
        return sorted(plan, key=lambda rt: rt[0].choices[0].slot)

    def _advance(self, choices: list[Choice], logits: torch.Tensor) -> None:
        """Sample each choice's next token from its row of logits (R, V) and send what became final.

        Rows sharing sampling settings are sampled together: greedy rows by one argmax, others through
        one `sample_probs` and then a draw per row from that choice's own generator (so a seeded
        choice draws the same alone or beside others). Token ids and logprobs reach the host once."""
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(choices):
            p = c.request.params
            groups.setdefault((p.temperature, p.top_k, p.top_p), []).append(i)
        picked = torch.empty(len(choices), dtype=torch.long, device=logits.device)
        for (temperature, top_k, top_p), idx in groups.items():
            rows = logits if len(idx) == len(choices) else logits[idx]
            if temperature == 0.0:
                picked[idx] = rows.argmax(-1)
            else:
                probs = sample_probs(rows, temperature, top_k, top_p)
                picked[idx] = torch.cat([torch.multinomial(probs[j], 1, generator=choices[i].generator) for j, i in enumerate(idx)])
        ids = picked.tolist()
        tokens: list[list[Token]] = [[] for _ in choices]
        want = [i for i, c in enumerate(choices) if c.request.params.logprobs]
        if want:
            lp = torch.log_softmax(logits[want].float(), -1)
            chosen = lp.gather(-1, picked[want, None])[:, 0].tolist()
            k = max(choices[i].request.params.top_logprobs for i in want)
            top = torch.topk(lp, k) if k else None
            top_ids, top_lps = (top.indices.tolist(), top.values.tolist()) if top is not None else ([], [])
            for j, i in enumerate(want):
                n = choices[i].request.params.top_logprobs
                pairs = list(zip(top_ids[j][:n], top_lps[j][:n])) if n else []
                tokens[i] = [Token(ids[i], chosen[j], pairs)]
        for c, t, toks in zip(choices, ids, tokens):
            self._accept(c, t, toks)

    def _accept(self, c: Choice, t: int, tokens: list[Token]) -> None:
        """Choice `c` sampled token `t` (with its logprobs, when asked for): send what became final."""
        r, p = c.request, c.request.params
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
