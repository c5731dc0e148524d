"""Between HTTP and the batching engine: per-request limits, queueing every choice as one unit, and turning the
engine's events into an OpenAI response or a server-sent-event stream.

Everything a request can get wrong is checked before anything is queued, all choices are queued together or
not at all, and a request that ends in any way (an error, a disconnect, a finished stream) cancels every choice
it still has in the engine, so no row is left decoding for nobody.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Request

from adapterlab.serve.batching import Event, Job, Refused, Sampling
from adapterlab.serve.errors import ApiError, error_body
from adapterlab.serve.registry import ChatModel
from adapterlab.serve.schemas import SamplingFields
from adapterlab.serve.state import State

GENERATION_FAILED = "generation failed"


def sampling_for(state: State, model: ChatModel, body: SamplingFields, prompt_len: int) -> Sampling:
    """The request's decoding settings within the server's limits, or a 400 naming the field. The repetition
    penalty and stop strings a request leaves out are the model's own (what its evaluation used)."""
    settings = state.settings
    context = state.registry.context_length
    room = context - prompt_len
    if room <= 0:
        raise ApiError(400, f"the prompt is {prompt_len} tokens; the model's context is {context}",
                       param="messages", code="context_length_exceeded")  # fmt: skip
    max_n = min(settings.max_n, settings.capacity)
    if body.n > max_n:
        raise ApiError(400, f"n: at most {max_n} choices per request on this server", param="n", code="invalid_value")
    budget = body.token_budget()
    if budget is not None and budget > room:
        raise ApiError(400, f"max_tokens: {budget} is more than the {room} tokens left in the context after the "
                       f"{prompt_len}-token prompt", param="max_tokens", code="context_length_exceeded")  # fmt: skip
    temperature = body.temperature if body.temperature is not None else settings.temperature
    return Sampling(
        max_new_tokens=budget or min(settings.max_tokens, room),
        temperature=float(temperature),
        top_p=float(body.top_p if body.top_p is not None else 1.0),
        seed=body.seed,
        stop=body.stops() if body.stop is not None else list(model.stop),
        repetition_penalty=float(
            body.repetition_penalty if body.repetition_penalty is not None else model.repetition_penalty
        ),
        presence_penalty=float(body.presence_penalty or 0.0),
        frequency_penalty=float(body.frequency_penalty or 0.0),
    )


def submit(state: State, model: ChatModel, prompt: list[int], sampling: Sampling, n: int):
    """Queue the request's n choices as one unit; their events arrive, tagged with the choice index, on one
    asyncio queue. Choice i is seeded with seed + i (wrapping within the 64-bit seed space)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
    jobs = []
    for index in range(n):
        seed = None if sampling.seed is None else sampling.seed + index
        row = dataclasses.replace(sampling, seed=seed)

        def on_event(event: Event, index: int = index) -> None:
            loop.call_soon_threadsafe(events.put_nowait, (index, event))

        jobs.append(Job(prompt, row, model.tokenizer, model.stop_token_ids, on_event, adapter=model.adapter))
    try:
        state.engine.submit(*jobs)
    except Refused as exc:
        raise ApiError(exc.status, str(exc), code=exc.code) from None
    return jobs, events


def failure_error(event: Event) -> ApiError:
    failure = event.failure
    if failure is None:
        return ApiError(500, GENERATION_FAILED, code="generation_failed")
    return ApiError(failure.status, failure.message, code=failure.code)


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
                    raise failure_error(event)
                results[index].update(finish_reason=event.finish_reason, prompt_tokens=event.prompt_tokens,
                                      completion_tokens=event.completion_tokens)  # fmt: skip
                remaining -= 1
    finally:
        watcher.cancel()
        for job in jobs:
            job.cancel()  # no-op for finished jobs; the other choices of a failed request stop here
    return results


def usage(results: list[dict[str, Any]]) -> dict[str, int]:
    prompt = results[0]["prompt_tokens"] if results else 0
    completion = sum(r["completion_tokens"] for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def stream_events(
    jobs: list[Job], events: asyncio.Queue, chunk: Callable, include_usage: bool, head: Callable | None = None
) -> AsyncIterator[str]:
    """Server-sent events in the OpenAI chunk format, always ending with [DONE]: a failed choice sends an
    OpenAI-shaped error event first (and ends the other choices); leaving early cancels the jobs."""
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
                    error = failure_error(event)
                    yield sse(error_body(error.status, error.message, code=error.code))
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
