"""The OpenAI-compatible HTTP API over an `Engine` (FastAPI): models, chat and text completions
(streamed as server-sent events or whole), health, Prometheus metrics, and the chat page.

The event loop never runs the model: a request is submitted to the engine thread, whose events
come back through an asyncio queue. Every invalid request is a 4xx in OpenAI's error shape; an
error after a stream has started is sent as an error event, then `data: [DONE]`. A client that
goes away (closed stream, or a dropped connection while waiting) has its request cancelled.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from orizuru.model.generate import _is_byte_token
from orizuru.serve.engine import Delta, Engine, Failed, Finish, QueueFull, SamplingParams, Token
from orizuru.serve.engine import Request as EngineRequest
from orizuru.serve.prompts import chat_prompt, completion_prompt
from orizuru.serve.protocol import ChatRequest, Common, CompletionRequest, error_body

DISCONNECT_CHECK_S = 0.25  # how often a waiting (non-streaming) request checks that its client is still there


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


class ClientGone(Exception):
    pass


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body, status_code=e.status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    err = exc.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    if err.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    # unions report each alternative (`prompt.str`, `prompt.list[int]`); the field is what the user wrote
    loc = [x for x in loc if not (x.startswith(("list[", "function-")) or x in ("str", "int", "float", "bool"))]
    param = ".".join(loc) or None
    msg = err.get("msg", "invalid value").removeprefix("Value error, ")
    if err.get("type") == "extra_forbidden":
        msg = "unknown or unsupported field"
    if err.get("type") == "missing":
        msg = "field required"
    return (f"{param}: {msg}" if param else msg), param


def token_text(engine: Engine, token: int) -> tuple[str, list[int]]:
    """A token's text and its UTF-8 bytes (a byte-fallback token is its one byte)."""
    tok = engine.tokenizer
    if _is_byte_token(tok, token):
        b = [int(tok.hf.id_to_token(token)[3:5], 16)]
        return bytes(b).decode("utf-8", errors="replace"), b
    text = tok.decode([token], skip_special=False)
    return text, list(text.encode("utf-8"))


def chat_logprobs(engine: Engine, tokens: list[Token]) -> dict:
    def entry(t: int, lp: float) -> dict:
        text, b = token_text(engine, t)
        return {"token": text, "logprob": lp, "bytes": b}

    return {"content": [{**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]} for t in tokens]}


def completion_logprobs(engine: Engine, tokens: list[Token], offset: int) -> dict:
    texts = [token_text(engine, t.id)[0] for t in tokens]
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{token_text(engine, i)[0]: lp for i, lp in t.top} for t in tokens],
        "text_offset": offsets,
    }


def create_app(load: Callable[[], Engine], *, name: str, api_key: str | None = None) -> FastAPI:
    """`load` builds the engine (in a thread, so /health answers 503 while it runs)."""
    state: dict = {"engine": None, "error": None}

    def loader():
        try:
            state["engine"] = load().start()
        except Exception as e:  # reported by /health and every request
            state["error"] = f"{type(e).__name__}: {e}"

    @asynccontextmanager
    async def lifespan(app):
        thread = threading.Thread(target=loader, name="orizuru-load", daemon=True)
        thread.start()
        yield
        thread.join()
        if state["engine"] is not None:
            state["engine"].stop()

    app = FastAPI(title="orizuru", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc: RequestValidationError):
        message, param = _validation_message(exc)
        return _error_response(APIError(400, message, param=param))

    @app.exception_handler(HTTPException)
    async def _http(request, exc: HTTPException):
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(exc.status_code, str(exc.detail), type_))

    def engine_for(request: Request, model: str | None = None) -> Engine:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')", "authentication_error", code="invalid_api_key")
        if state["error"]:
            raise APIError(503, f"the model failed to load: {state['error']}", "server_error")
        if state["engine"] is None:
            raise APIError(503, "the model is still loading", "server_error")
        if model is not None and model != name:
            raise APIError(404, f"model '{model}' does not exist (this server serves '{name}')", "not_found_error", "model", "model_not_found")
        return state["engine"]

    @app.get("/health")
    async def health():
        if state["error"]:
            return JSONResponse({"status": "error", "error": state["error"]}, status_code=503)
        if state["engine"] is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics():
        engine = state["engine"]
        if engine is None:
            return PlainTextResponse("", status_code=503)
        waiting, running = engine.gauges()
        return PlainTextResponse(engine.metrics.render(waiting, running, engine.max_batch), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(files("orizuru.serve").joinpath("chat.html").read_text(encoding="utf-8"))

    @app.get("/v1/models")
    async def models(request: Request):
        engine = engine_for(request)
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "orizuru", "max_model_len": engine.max_seq_len}]}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        engine = engine_for(request, body.model)
        if engine.chat_template is None:
            message = f"model '{name}' has no chat template (tokenizer_config.json has no 'chat_template'); use /v1/completions"
            raise APIError(400, message, param="messages", code="no_chat_template")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        try:
            ids = chat_prompt(engine.tokenizer, engine.chat_template, messages)
        except ValueError as e:
            raise APIError(400, f"messages: {e}", param="messages") from None
        params = _params(engine, body, [ids], "messages", body.logprobs, body.top_logprobs or 0)
        return await _run(engine, request, body, [ids], params, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        engine = engine_for(request, body.model)
        vocab = engine.model.cfg.vocab_size
        prompts = []
        for p in body.prompts():
            if isinstance(p, list) and any(not 0 <= t < vocab for t in p):
                raise APIError(400, f"prompt: token ids must be in [0, {vocab})", param="prompt")
            prompts.append(completion_prompt(engine.tokenizer, p))
        params = _params(engine, body, prompts, "prompt", body.logprobs is not None, body.logprobs or 0)
        return await _run(engine, request, body, prompts, params, chat=False)

    return app


def _params(engine: Engine, body: Common, prompts: list[list[int]], field: str, logprobs: bool, top: int) -> SamplingParams:
    if body.n > engine.max_batch:
        raise APIError(400, f"n: at most {engine.max_batch} choices (the server's --max-batch), got {body.n}", param="n")
    if body.n * len(prompts) > engine.max_queue:
        raise APIError(400, f"{field}: {len(prompts)} prompts x n={body.n} exceed the queue ({engine.max_queue})", param=field)
    ctx, limit = engine.max_seq_len, body.limit()
    longest = max(map(len, prompts))
    if longest + (limit or 1) > ctx:
        asked = f"{longest + limit} tokens ({longest} in the {field}, {limit} for the completion)" if limit else f"{longest} tokens in the {field}"
        message = f"This model's maximum context length is {ctx} tokens. However, you requested {asked}."
        raise APIError(400, message, param=field, code="context_length_exceeded")
    return SamplingParams(
        max_tokens=limit or ctx - longest, temperature=1.0 if body.temperature is None else body.temperature,
        top_p=body.top_p, top_k=body.top_k, seed=body.seed, stop=body.stop or [], n=body.n,
        logprobs=logprobs, top_logprobs=top, ignore_eos=body.ignore_eos,
    )  # fmt: skip


async def _run(engine: Engine, request: Request, body: Common, prompts: list[list[int]], params: SamplingParams, chat: bool):
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def emitter(k: int):
        def emit(event):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (k, event))
            except RuntimeError:  # the loop closed (server shutting down)
                pass

        return emit

    reqs = [EngineRequest(ids, params, emitter(k), eos=engine.chat_eos if chat else engine.eos) for k, ids in enumerate(prompts)]
    submitted = []
    try:
        for r in reqs:
            engine.submit(r)
            submitted.append(r)
    except QueueFull as e:
        for r in submitted:
            engine.cancel(r)
        raise APIError(503, f"server busy: {e}; retry later", "server_error", code="queue_full") from None
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created, n = int(time.time()), params.n
    usage = {"prompt_tokens": sum(map(len, prompts)), "completion_tokens": 0}
    if body.stream:
        return StreamingResponse(_stream(engine, queue, reqs, rid, created, body, usage, chat), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
    texts = [""] * (n * len(prompts))
    tokens: list[list[Token]] = [[] for _ in texts]
    reasons: list[str | None] = [None] * len(texts)
    try:
        done, check = 0, loop.time() + DISCONNECT_CHECK_S
        while done < len(texts):
            try:
                k, event = await asyncio.wait_for(queue.get(), DISCONNECT_CHECK_S)
            except TimeoutError:
                k, event = None, None
            if loop.time() >= check:  # a client that gave up frees its slots while tokens still flow
                check = loop.time() + DISCONNECT_CHECK_S
                if await request.is_disconnected():
                    raise ClientGone
            if event is None:
                continue
            if isinstance(event, Failed):
                raise APIError(500, event.message, "server_error")
            i = k * n + event.index
            if isinstance(event, Delta):
                texts[i] += event.text
                tokens[i] += event.tokens
            elif isinstance(event, Finish):
                reasons[i] = event.reason
                usage["completion_tokens"] += event.completion_tokens
                del tokens[i][event.completion_tokens :]  # a stop string took back a token already sampled
                done += 1
    except (ClientGone, asyncio.CancelledError, APIError):
        for r in reqs:
            engine.cancel(r)
        raise
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    logprobs = params.logprobs
    if chat:
        choices = [{"index": i, "message": {"role": "assistant", "content": texts[i]},
                    "logprobs": chat_logprobs(engine, tokens[i]) if logprobs else None, "finish_reason": reasons[i]}
                   for i in range(len(texts))]  # fmt: skip
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model, "choices": choices, "usage": usage}
    choices = [{"index": i, "text": texts[i], "logprobs": completion_logprobs(engine, tokens[i], 0) if logprobs else None,
                "finish_reason": reasons[i]} for i in range(len(texts))]  # fmt: skip
    return {"id": rid, "object": "text_completion", "created": created, "model": body.model, "choices": choices, "usage": usage}


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def _stream(engine: Engine, queue: asyncio.Queue, reqs: list[EngineRequest], rid: str, created: int, body: Common, usage: dict, chat: bool):
    n, total = body.n, body.n * len(reqs)
    obj = "chat.completion.chunk" if chat else "text_completion"
    offsets = [0] * total
    logprobs = reqs[0].params.logprobs

    def chunk(choices: list[dict]) -> str:
        out = {"id": rid, "object": obj, "created": created, "model": body.model, "choices": choices}
        if body.include_usage():
            out["usage"] = None
        return _sse(out)

    done = 0
    try:
        if chat:
            yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None} for i in range(total)])
        while done < total:
            k, event = await queue.get()
            if isinstance(event, Failed):
                yield _sse(error_body(event.message, "server_error"))
                break
            i = k * n + event.index
            if isinstance(event, Delta):
                if chat:
                    lp = chat_logprobs(engine, event.tokens) if logprobs else None
                    yield chunk([{"index": i, "delta": {"content": event.text}, "logprobs": lp, "finish_reason": None}])
                else:
                    lp = completion_logprobs(engine, event.tokens, offsets[i]) if logprobs else None
                    yield chunk([{"index": i, "text": event.text, "logprobs": lp, "finish_reason": None}])
                offsets[i] += len(event.text)
            elif isinstance(event, Finish):
                done += 1
                usage["completion_tokens"] += event.completion_tokens
                if chat:
                    yield chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": event.reason}])
                else:
                    yield chunk([{"index": i, "text": "", "logprobs": None, "finish_reason": event.reason}])
        if done == total and body.include_usage():
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            yield _sse({"id": rid, "object": obj, "created": created, "model": body.model, "choices": [], "usage": usage})
        yield _sse("[DONE]")
    finally:
        if done < total:  # the client went away (or the engine failed): free the slots
            for r in reqs:
                engine.cancel(r)
