"""The OpenAI-compatible routes: health, models, chat and text completions, classification.

Each route reads its body with :func:`read_body` (documented in ``/openapi.json`` through ``openapi_extra``,
since FastAPI only documents bodies it parses itself), gets the app's :class:`State` from the ``check_key``
dependency, and answers errors by raising :class:`ApiError`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from adapterlab.serve.body import read_body
from adapterlab.serve.errors import ApiError, ErrorBody
from adapterlab.serve.generation import collect, sampling_for, stream_events, submit, usage
from adapterlab.serve.registry import BASE_NAME, ChatModel, Registry, display_name, shown
from adapterlab.serve.schemas import ChatRequest, ClassifyRequest, CompletionRequest
from adapterlab.serve.state import State, check_key, check_ready, get_state

router = APIRouter()
Authorized = Annotated[State, Depends(check_key)]


def json_body(schema: type) -> dict[str, Any]:
    """``openapi_extra`` that documents a body this route reads itself (the schema goes into components)."""
    ref = {"$ref": f"#/components/schemas/{schema.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": "an OpenAI-shaped error"} for status in statuses}


GENERATION_ERRORS = errors(400, 401, 404, 409, 413, 429, 500, 503)


@router.get("/health", responses=errors(503))
async def health(request: Request):
    state = get_state(request)
    if state.load_error:
        return JSONResponse({"status": "error", "error": state.load_error}, status_code=503)
    if not state.ready.is_set():
        return JSONResponse({"status": "loading"}, status_code=503)
    queue = state.engine.stats() if state.engine else None
    if state.draining.is_set():
        return JSONResponse({"status": "draining", "queue": queue}, status_code=503)
    return {"status": "ok", "models": state.registry.names(), "queue": queue}


def model_card(name: str, model: Any, registry: Registry) -> dict[str, Any]:
    """An OpenAI model object plus ``kind`` (what it does: ``generate`` or ``classify``), ``task`` (what it was
    trained for; ``base`` for the plain base), ``root`` (the base model's name), ``parent``, and for a generator the
    ``decoding`` a request gets for the fields it leaves out (``repetition_penalty``, ``stop``)."""
    if model.kind == "classify":  # a classifier is its own (encoder) model, not an adapter of the chat base
        root, parent = display_name(str(model.classifier.meta["base_model"]["spec"])), None
    else:
        root, parent = registry.base_name, (None if name == BASE_NAME else BASE_NAME)
    card = {"id": name, "object": "model", "created": model.created, "owned_by": "adapterlab",
            "kind": model.kind, "task": model.task, "root": root, "parent": parent}  # fmt: skip
    if model.kind == "generate":
        card["decoding"] = model.decoding()
    return card


@router.get("/v1/models", responses=errors(401, 503))
async def list_models(state: Authorized):
    check_ready(state)
    registry = state.registry
    served = {**registry.chat, **registry.classify}
    return {"object": "list", "data": [model_card(n, m, registry) for n, m in served.items()]}


@router.get("/v1/models/{name}", responses=errors(401, 404, 503))
async def get_model(name: str, state: Authorized):
    check_ready(state)
    model = state.registry.chat.get(name) or state.registry.classify.get(name)
    if model is None:
        raise ApiError(404, f"model {shown(name)} is not served here; GET /v1/models lists them", "model",
                       "model_not_found")  # fmt: skip
    return model_card(name, model, state.registry)


def generator_model(state: State, name: str) -> ChatModel:
    registry = state.registry
    if name in registry.chat:
        return registry.chat[name]
    if name in registry.classify:
        raise ApiError(400, f"model {shown(name)} is a classifier; use POST /v1/classify", "model", "wrong_kind")
    raise ApiError(404, f"model {shown(name)} is not served here; available: {', '.join(registry.names())}",
                   "model", "model_not_found")  # fmt: skip


def chat_messages(body: ChatRequest) -> list[dict[str, str]]:
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    for i, m in enumerate(messages):
        # An earlier assistant turn may be blank (a model can answer with whitespace); what the user or the
        # system says may not.
        if m["role"] != "assistant" and not m["content"].strip():
            raise ApiError(400, f"messages.{i}.content: empty {m['role']} message", f"messages.{i}.content",
                           "invalid_value")  # fmt: skip
    if not any(m["role"] == "user" for m in messages):
        raise ApiError(400, "messages: at least one user message is needed", "messages", "invalid_value")
    return messages


@router.post("/v1/chat/completions", openapi_extra=json_body(ChatRequest), responses=GENERATION_ERRORS)
async def chat_completions(request: Request, state: Authorized):
    body = await read_body(request, ChatRequest, state.settings.max_body_bytes)
    check_ready(state)
    model = generator_model(state, body.model)
    prompt = model.encode_chat(chat_messages(body))
    jobs, events = submit(state, model, prompt, sampling_for(state, model, body, len(prompt)), body.n)
    base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "created": int(time.time()), "model": body.model,
            "system_fingerprint": f"adapterlab-{server_version()}"}  # fmt: skip
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


@router.post("/v1/completions", openapi_extra=json_body(CompletionRequest), responses=GENERATION_ERRORS)
async def completions(request: Request, state: Authorized):
    body = await read_body(request, CompletionRequest, state.settings.max_body_bytes)
    check_ready(state)
    model = generator_model(state, body.model)
    if not body.text():
        raise ApiError(400, "prompt: empty prompt", "prompt", "invalid_value")
    prompt = model.encode_text(body.text())
    jobs, events = submit(state, model, prompt, sampling_for(state, model, body, len(prompt)), body.n)
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


@router.post("/v1/classify", openapi_extra=json_body(ClassifyRequest), responses=errors(400, 401, 404, 413, 503))
async def classify(request: Request, state: Authorized):
    body = await read_body(request, ClassifyRequest, state.settings.max_body_bytes)
    check_ready(state)
    registry = state.registry
    if body.model not in registry.classify:
        if body.model in registry.chat:
            raise ApiError(400, f"model {shown(body.model)} is not a classifier", "model", "wrong_kind")
        raise ApiError(404, f"model {shown(body.model)} is not served here", "model", "model_not_found")
    entry = registry.classify[body.model]
    texts = body.texts()

    def work():
        with state.classify_lock:
            return classify_texts(entry.classifier, texts, body.top_k)

    return {"object": "list", "model": body.model, **(await run_in_threadpool(work))}


def classify_texts(classifier, texts: list[str], top_k: int | None) -> dict[str, Any]:
    """Labels with probabilities; texts that are empty after cleaning get no label and are counted."""
    cleaned = [classifier.clean(t) for t in texts]  # the cleaning saved with the classifier, as in training
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


def server_version() -> str:
    from adapterlab.version import __version__

    return __version__
