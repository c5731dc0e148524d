"""The OpenAI-compatible HTTP API (FastAPI) in front of the registry and the batching engine.

Every error has the OpenAI shape ``{"error": {"message", "type", "param", "code"}}`` and a 4xx status when the
client can fix it. Bodies are read with a size limit and parsed here (strict UTF-8, JSON object, bounded
fields), so malformed input never reaches a model and never turns into a 500.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapterlab.serve.batching import Engine, Event, Job, QueueFull, Sampling
from adapterlab.serve.registry import ChatModel, Registry, ServeError
from adapterlab.serve.schemas import (
    AdapterLoad,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    Limits,
    _Sampling,
)

log = logging.getLogger("adapterlab.serve")

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable",
}


@dataclass
class Settings:
    api_key: str | None = None
    max_body_bytes: int = 1 << 20
    limits: Limits = field(default_factory=Limits)
    cors_origins: list[str] = field(default_factory=list)
    default_temperature: float = 0.0  # greedy unless asked: what eval measured is what is served
    max_batch: int = 8
    max_queue: int = 64
    ui: bool = True


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}  # fmt: skip


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


class State:
    """What the app knows while it runs: models load in the background so /health can say 503 meanwhile."""

    def __init__(self, registry: Registry, settings: Settings):
        self.registry = registry
        self.settings = settings
        self.engine: Engine | None = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.classify_lock = threading.Lock()

    def load(self) -> None:
        try:
            self.registry.load()
            if self.registry.model is not None:
                tokenizer = self.registry.chat["base"].tokenizer
                pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
                self.engine = Engine(
                    self.registry.model,
                    pad_token_id=pad,
                    max_batch=self.settings.max_batch,
                    max_queue=self.settings.max_queue,
                    mixed_adapters=not self.registry.has_dora,
                )
                self.engine.start()
            self.ready.set()
            log.info("serving %s", ", ".join(self.registry.names()))
        except Exception as exc:
            self.load_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.exception("loading failed")


# ---------------------------------------------------------------------------------------------- helpers


async def read_body(request: Request, schema: type[BaseModel], max_bytes: int) -> Any:
    """The request body as a validated model, or an ApiError naming what is wrong."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {max_bytes}", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise ApiError(413, f"request body is over the limit of {max_bytes} bytes", code="body_too_large")
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"request body is not valid UTF-8 (byte {exc.start})", code="invalid_encoding") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
                       code="invalid_json") from None  # fmt: skip
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = error_param(first["loc"])
        raise ApiError(400, f"{param}: {first['msg']}" if param else first["msg"], param=param,
                       code="invalid_value") from None  # fmt: skip


def error_param(loc: tuple) -> str | None:
    """The field a validation error is about (``messages.0.role``), without pydantic's union-member labels."""
    parts = [str(p) for p in loc if isinstance(p, int) or not (set(str(p)) & set("[(-") or p in _TYPE_LABELS)]
    return ".".join(parts) or None


_TYPE_LABELS = {"str", "int", "float", "bool", "list", "dict", "body", "constrained-str"}


def check_key(state: State, request: Request) -> None:
    """Constant-time API-key check (``Authorization: Bearer KEY``) on every route that reaches a model."""
    key = state.settings.api_key
    if not key:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), key.encode("utf-8")):
        raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key")


def check_ready(state: State) -> None:
    if state.load_error:
        raise ApiError(503, f"the server could not load its models: {state.load_error}", code="load_failed")
    if not state.ready.is_set():
        raise ApiError(503, "the server is still loading its models; retry shortly", code="loading")


def model_card(name: str, model: Any, base: str | None) -> dict[str, Any]:
    if model.task == "classify":  # a classifier is its own (encoder) model, not an adapter of the chat base
        root, parent = model.classifier.meta["base_model"]["spec"], None
    else:
        root, parent = base, (None if name == "base" else "base")
    return {"id": name, "object": "model", "created": model.created, "owned_by": "adapterlab",
            "task": model.task, "root": root, "parent": parent}  # fmt: skip


def sampling_for(state: State, body: _Sampling, prompt_len: int) -> Sampling:
    limits = state.settings.limits
    room = state.registry.context_length - prompt_len
    if room <= 0:
        context = state.registry.context_length
        raise ApiError(400, f"the prompt is {prompt_len} tokens; the model's context is {context}",
                       param="messages", code="context_length_exceeded")  # fmt: skip
    if body.n > limits.max_n:
        raise ApiError(400, f"n: at most {limits.max_n} choices per request", param="n", code="invalid_value")
    if len(body.stops()) > limits.max_stop:
        raise ApiError(400, f"stop: at most {limits.max_stop} stop strings", param="stop", code="invalid_value")
    budget = body.token_budget()
    if budget is not None and budget > room:
        raise ApiError(400, f"max_tokens: {budget} is more than the {room} tokens left in the context after the "
                       f"{prompt_len}-token prompt", param="max_tokens", code="context_length_exceeded")  # fmt: skip
    temperature = body.temperature if body.temperature is not None else state.settings.default_temperature
    return Sampling(
        max_new_tokens=budget or min(limits.default_max_tokens, room),
        temperature=float(temperature),
        top_p=float(body.top_p if body.top_p is not None else 1.0),
        seed=body.seed,
        stop=body.stops(),
    )


def submit(state: State, model: ChatModel, prompt: list[int], sampling: Sampling, n: int):
    """Queue n jobs; their events arrive, tagged with the choice index, on one asyncio queue."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    jobs = []
    for index in range(n):
        seed = None if sampling.seed is None else sampling.seed + index
        row = Sampling(sampling.max_new_tokens, sampling.temperature, sampling.top_p, seed, sampling.stop)

        def on_event(event: Event, index: int = index) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (index, event))

        jobs.append(Job(prompt, row, model.tokenizer, model.stop_token_ids, on_event, adapter=model.adapter))
    try:
        for job in jobs:
            state.engine.submit(job)
    except QueueFull as exc:
        for job in jobs:
            job.cancel()
        raise ApiError(429, str(exc), code="queue_full") from None
    return jobs, events


async def watch_disconnect(request: Request, jobs: list[Job]) -> None:
    while True:
        if await request.is_disconnected():
            for job in jobs:
                job.cancel()
            return
        await asyncio.sleep(0.2)


async def collect(request: Request, jobs: list[Job], events: asyncio.Queue) -> list[dict[str, Any]]:
    """Wait for every choice of a non-streamed request; a client that goes away cancels its jobs."""
    results = [{"text": "", "finish_reason": None, "prompt_tokens": 0, "completion_tokens": 0} for _ in jobs]
    watcher = asyncio.create_task(watch_disconnect(request, jobs))
    try:
        remaining = len(jobs)
        while remaining:
            index, event = await events.get()
            results[index]["text"] += event.delta
            if event.finish_reason:
                if event.finish_reason == "error":
                    raise ApiError(500, event.error or "generation failed", code="generation_failed")
                results[index].update(finish_reason=event.finish_reason, prompt_tokens=event.prompt_tokens,
                                      completion_tokens=event.completion_tokens)  # fmt: skip
                remaining -= 1
    finally:
        watcher.cancel()
        for job in jobs:
            job.cancel()
    return results


def usage(results: list[dict[str, Any]]) -> dict[str, int]:
    prompt = results[0]["prompt_tokens"] if results else 0
    completion = sum(r["completion_tokens"] for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def stream_events(
    jobs: list[Job], events: asyncio.Queue, chunk, include_usage: bool, head=None
) -> AsyncIterator[str]:
    """Server-sent events in the OpenAI chunk format, ending with [DONE]; leaving early cancels the jobs."""
    finished = 0
    prompt_tokens = completion_tokens = 0
    try:
        if head is not None:
            for index in range(len(jobs)):
                yield sse(head(index))
        while finished < len(jobs):
            index, event = await events.get()
            if event.delta:
                yield sse(chunk(index, event.delta, None))
            if event.finish_reason:
                finished += 1
                if event.finish_reason == "error":
                    yield sse(error_body(500, event.error or "generation failed", code="generation_failed"))
                    break
                prompt_tokens = event.prompt_tokens
                completion_tokens += event.completion_tokens
                yield sse(chunk(index, None, event.finish_reason))
        else:
            if include_usage:
                total = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                         "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
                yield sse(chunk(None, None, None) | {"choices": [], "usage": total})
        yield sse("[DONE]")
    finally:
        for job in jobs:
            job.cancel()  # no-op for finished jobs; frees the slot of a client that went away


# ---------------------------------------------------------------------------------------------- app


def create_app(registry: Registry, settings: Settings | None = None) -> FastAPI:
    from contextlib import asynccontextmanager

    settings = settings or Settings()
    state = State(registry, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=state.load, name="adapterlab-load", daemon=True).start()
        yield
        if state.engine is not None:
            await run_in_threadpool(state.engine.stop)

    app = FastAPI(title="adapterlab", version=_version(), lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.adapterlab = state
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"])  # fmt: skip

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError):
        return error_response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return error_response(exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = error_param(first["loc"])
        return error_response(400, f"{param}: {first['msg']}" if param else first["msg"], param, "invalid_value")

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unexpected error")
        return error_response(500, f"internal error: {type(exc).__name__}", code="internal_error")

    @app.get("/health")
    async def health():
        if state.load_error:
            return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
        if not state.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        queue = state.engine.stats() if state.engine else None
        return {"status": "ok", "models": registry.names(), "queue": queue}

    @app.get("/v1/models")
    async def list_models(request: Request):
        check_key(state, request)
        check_ready(state)
        cards = [model_card(n, m, registry.base_resolved) for n, m in {**registry.chat, **registry.classify}.items()]
        return {"object": "list", "data": cards}

    @app.get("/v1/models/{name}")
    async def get_model(name: str, request: Request):
        check_key(state, request)
        check_ready(state)
        model = registry.chat.get(name) or registry.classify.get(name)
        if model is None:
            raise ApiError(404, f"model '{name}' is not served here; GET /v1/models lists them", "model",
                           "model_not_found")  # fmt: skip
        return model_card(name, model, registry.base_resolved)

    def chat_model(name: str) -> ChatModel:
        if name in registry.chat:
            return registry.chat[name]
        if name in registry.classify:
            raise ApiError(400, f"model '{name}' is a classifier; use POST /v1/classify", "model", "wrong_task")
        raise ApiError(404, f"model '{name}' is not served here; available: {', '.join(registry.names())}",
                       "model", "model_not_found")  # fmt: skip

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_key(state, request)
        body: ChatRequest = await read_body(request, ChatRequest, settings.max_body_bytes)
        check_ready(state)
        model = chat_model(body.model)
        if len(body.messages) > settings.limits.max_messages:
            raise ApiError(400, f"messages: at most {settings.limits.max_messages} messages", "messages",
                           "invalid_value")  # fmt: skip
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        for i, m in enumerate(messages):
            # An earlier assistant turn may be blank (a model can answer with whitespace); what the user or the
            # system says may not.
            if m["role"] != "assistant" and not m["content"].strip():
                raise ApiError(400, f"messages.{i}.content: empty {m['role']} message", f"messages.{i}.content",
                               "invalid_value")  # fmt: skip
        if not any(m["role"] == "user" for m in messages):
            raise ApiError(400, "messages: at least one user message is needed", "messages", "invalid_value")
        prompt = model.encode_chat(messages)
        sampling = sampling_for(state, body, len(prompt))
        jobs, events = submit(state, model, prompt, sampling, body.n)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        base = {"id": rid, "created": created, "model": body.model, "system_fingerprint": f"adapterlab-{_version()}"}
        if body.stream:

            def chunk(index, delta, finish):
                content = {} if delta is None else {"content": delta}
                choices = [] if index is None else [{"index": index, "delta": content, "finish_reason": finish,
                                                     "logprobs": None}]  # fmt: skip
                return {**base, "object": "chat.completion.chunk", "choices": choices}

            def head(index):
                return {**base, "object": "chat.completion.chunk",
                        "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None, "logprobs": None}]}  # fmt: skip

            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream_events(jobs, events, chunk, include, head), media_type="text/event-stream")
        results = await collect(request, jobs, events)
        choices = [{"index": i, "message": {"role": "assistant", "content": r["text"]},
                    "finish_reason": r["finish_reason"], "logprobs": None} for i, r in enumerate(results)]  # fmt: skip
        return {**base, "object": "chat.completion", "choices": choices, "usage": usage(results)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_key(state, request)
        body: CompletionRequest = await read_body(request, CompletionRequest, settings.max_body_bytes)
        check_ready(state)
        model = chat_model(body.model)
        if not body.text():
            raise ApiError(400, "prompt: empty prompt", "prompt", "invalid_value")
        prompt = model.encode_text(body.text())
        sampling = sampling_for(state, body, len(prompt))
        jobs, events = submit(state, model, prompt, sampling, body.n)
        base = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model,
                "object": "text_completion"}  # fmt: skip
        if body.stream:

            def chunk(index, delta, finish):
                choices = [] if index is None else [{"index": index, "text": delta or "", "finish_reason": finish,
                                                     "logprobs": None}]  # fmt: skip
                return {**base, "choices": choices}

            include = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(stream_events(jobs, events, chunk, include), media_type="text/event-stream")
        results = await collect(request, jobs, events)
        choices = [{"index": i, "text": r["text"], "finish_reason": r["finish_reason"], "logprobs": None}
                   for i, r in enumerate(results)]  # fmt: skip
        return {**base, "choices": choices, "usage": usage(results)}

    @app.post("/v1/classify")
    async def classify(request: Request):
        check_key(state, request)
        body: ClassifyRequest = await read_body(request, ClassifyRequest, settings.max_body_bytes)
        check_ready(state)
        if body.model not in registry.classify:
            if body.model in registry.chat:
                raise ApiError(400, f"model '{body.model}' is not a classifier", "model", "wrong_task")
            raise ApiError(404, f"model '{body.model}' is not served here", "model", "model_not_found")
        texts = body.texts()
        if len(texts) > settings.limits.max_inputs:
            raise ApiError(400, f"input: at most {settings.limits.max_inputs} texts per request", "input",
                           "invalid_value")  # fmt: skip
        entry = registry.classify[body.model]

        def work():
            with state.classify_lock:
                return classify_texts(entry.classifier, texts, body.top_k)

        return {"object": "list", "model": body.model, **(await run_in_threadpool(work))}

    @app.post("/admin/adapters", status_code=201)
    async def load_adapter(request: Request):
        check_key(state, request)
        body: AdapterLoad = await read_body(request, AdapterLoad, settings.max_body_bytes)
        check_ready(state)

        def work():
            lock = state.engine.lock if state.engine else threading.Lock()
            with lock:
                model = registry.add(body.name, body.path)
                if state.engine is not None:
                    state.engine.mixed_adapters = not registry.has_dora
                return model

        model = await run_in_threadpool(_admin, work)
        return model_card(body.name, model, registry.base_resolved)

    @app.delete("/admin/adapters/{name}")
    async def unload_adapter(name: str, request: Request):
        check_key(state, request)
        check_ready(state)

        def work():
            lock = state.engine.lock if state.engine else threading.Lock()
            with lock:
                if state.engine is not None:
                    state.engine.cancel_adapter(name, f"model '{name}' was unloaded")
                registry.remove(name)

        await run_in_threadpool(_admin, work)
        return {"id": name, "object": "model", "deleted": True}

    if settings.ui:
        from adapterlab.serve.ui import mount_ui

        mount_ui(app)
    return app


def _admin(work):
    """Run an admin change, turning the registry's exceptions into API errors."""
    try:
        return work()
    except PermissionError as exc:
        raise ApiError(403, str(exc), "path", "forbidden") from None
    except FileNotFoundError as exc:
        raise ApiError(404, str(exc), "path", "not_found") from None
    except FileExistsError as exc:
        raise ApiError(409, str(exc), "name", "exists") from None
    except KeyError as exc:
        raise ApiError(404, f"model {exc} is not served here", "name", "model_not_found") from None
    except ServeError as exc:
        raise ApiError(400, str(exc), None, "invalid_adapter") from None


def classify_texts(classifier, texts: list[str], top_k: int | None) -> dict[str, Any]:
    """Labels with probabilities; texts that are empty after cleaning get no label and are counted."""
    from adapterlab.data.clean import clean_text

    cleaned = [clean_text(t, classifier.meta["clean"]) for t in texts]
    usable = [i for i, t in enumerate(cleaned) if t.strip()]
    probs = classifier.predict_proba([cleaned[i] for i in usable]) if usable else []
    by_index = dict(zip(usable, probs, strict=True))
    data = []
    for i in range(len(texts)):
        if i not in by_index:
            data.append({"index": i, "label": None, "score": None, "probabilities": {},
                         "error": "the text is empty after cleaning"})  # fmt: skip
            continue
        p = by_index[i]
        order = sorted(range(len(p)), key=lambda k: -p[k])[: top_k or len(p)]
        data.append({"index": i, "label": classifier.labels[order[0]], "score": round(float(p[order[0]]), 6),
                     "probabilities": {classifier.labels[k]: round(float(p[k]), 6) for k in order}})  # fmt: skip
    counts = {"inputs": len(texts), "classified": len(usable), "empty": len(texts) - len(usable)}
    return {"data": data, "counts": counts}


def _version() -> str:
    from adapterlab.version import __version__

    return __version__
