"""Continuous batching: one worker thread runs every generation request through one loaded model.

Requests join the running batch between decoding steps (their prompts are prefilled and their KV cache is
left-padded into the batch's cache) and leave it as soon as they finish, are cancelled or hit their limit, so
a short answer never waits for a long one and a new request never waits for a whole batch to drain. Each row
carries its own adapter (PEFT's per-row ``adapter_names``; ``__base__`` is the plain base), sampling settings,
random generator, stop strings and token budget. Tokens are handed to the request's callback as they come, so
streaming works per request while batched.

Admission is bounded and counted in rows (one row per choice): :meth:`Engine.submit` takes all the rows of a
request or none, and refuses with :class:`QueueFull` when ``max_batch`` running plus ``max_queue`` waiting rows
are taken, counting rows that are being prefilled. The API turns that into a 429.

A failure stays with the rows it belongs to: a row whose sampling fails ends alone, a prefill that fails ends
only the rows it was joining, and only a failing decode step (which computes every row at once) ends the batch.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger("adapterlab.serve")

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
SEED_SPACE = 2**64  # torch.Generator seeds are 64-bit; per-choice seeds wrap around in this space


class Refused(Exception):
    """The engine does not take the request now; ``status``/``code`` say how the API answers."""

    status, code = 503, "unavailable"


class QueueFull(Refused):
    """Every row of the capacity is taken; the caller should retry later."""

    status, code = 429, "queue_full"


class ShuttingDown(Refused):
    status, code = 503, "shutting_down"


@dataclass(frozen=True)
class Failure:
    """Why a row ended with an error, and how the API reports it."""

    status: int
    code: str
    message: str


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    repetition_penalty: float = 1.0  # >1: every token already in the prompt or the answer is made less likely
    presence_penalty: float = 0.0  # OpenAI's: subtracted once from every token already in the answer
    frequency_penalty: float = 0.0  # OpenAI's: subtracted once per time a token is already in the answer


@dataclass
class Event:
    """What a request hears from the engine: text deltas, then one final event with the finish reason."""

    delta: str = ""
    finish_reason: str | None = None  # stop | length | cancelled | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    failure: Failure | None = None  # with finish_reason "error"

    @property
    def error(self) -> str | None:
        return self.failure.message if self.failure else None


_ids = itertools.count()


@dataclass(eq=False)
class Job:
    """One row: a prompt, its sampling settings and the callback that hears its tokens."""

    prompt_ids: list[int]
    sampling: Sampling
    tokenizer: Any
    stop_token_ids: set[int]
    on_event: Callable[[Event], None]
    adapter: str = BASE
    cancelled: threading.Event = field(default_factory=threading.Event)
    id: int = field(default_factory=lambda: next(_ids))
    generated: list[int] = field(default_factory=list)
    emitted: str = ""
    generator: torch.Generator | None = None
    failure: Failure | None = None

    def __post_init__(self) -> None:
        # Made here, before the job is queued, so a seed torch cannot take fails the request, not the batch.
        if self.generator is None and (self.sampling.seed is not None or self.sampling.temperature > 0):
            self.generator = torch.Generator()
            if self.sampling.seed is None:
                self.generator.seed()  # non-deterministic, and leaves torch's global generator alone
            else:
                self.generator.manual_seed(self.sampling.seed % SEED_SPACE)

    def cancel(self) -> None:
        self.cancelled.set()

    def abort(self, failure: Failure) -> None:
        """End the row with an error (the engine reports it at its next step)."""
        self.failure = self.failure or failure
        self.cancelled.set()


def held_back(text: str, stops: list[str]) -> int:
    """How many trailing characters might still become a stop string (or finish a multi-byte character)."""
    if text.endswith("\ufffd"):
        return 1
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return hold


def penalise(logits: torch.Tensor, sampling: Sampling, prompt: list[int], answer: list[int]) -> torch.Tensor:
    """One row's next-token logits after its penalties, in vLLM's order. The repetition penalty is transformers'
    rule (as in evaluation): the score of every token already in the prompt or the answer is divided by it where
    positive and multiplied where negative. Then OpenAI's: every token already in the answer loses
    ``presence_penalty`` once and ``frequency_penalty`` per time it occurs."""
    if sampling.repetition_penalty != 1.0 and (prompt or answer):
        index = torch.tensor(sorted({*prompt, *answer}), device=logits.device)
        scores = logits.gather(0, index)
        scores = torch.where(scores < 0, scores * sampling.repetition_penalty, scores / sampling.repetition_penalty)
        logits = logits.scatter(0, index, scores)
    if (sampling.presence_penalty or sampling.frequency_penalty) and answer:
        tokens, counts = torch.tensor(answer, device=logits.device).unique(return_counts=True)
        cut = sampling.presence_penalty + sampling.frequency_penalty * counts.to(logits.dtype)
        logits = logits.scatter_add(0, tokens, -cut)
    return logits


def sample_row(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> int:
    """One token from one row's next-token logits (after :func:`penalise`): greedy at temperature 0, else
    temperature + nucleus sampling.

    Safe for every temperature in (0, 2] and top_p in (0, 1]: the scores are shifted so the best is 0 and divided
    in float64, so a tiny temperature gives 0 and -inf (greedy), never inf - inf or 0 / 0; the most likely token
    always stays in the nucleus, even for a top_p that no float32 can hold.
    """
    if sampling.temperature <= 0:
        return int(logits.argmax())
    scores = logits.double()
    probs = torch.softmax((scores - scores.max()) / sampling.temperature, dim=-1)
    if sampling.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < sampling.top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        raise ValueError("the model's next-token scores for this request are not finite")
    return int(torch.multinomial(probs, 1, generator=generator))


class Engine:
    """Owns the model; every forward pass happens in its worker thread (or under :attr:`lock`)."""

    def __init__(self, model, pad_token_id: int, max_batch: int = 8, max_queue: int = 64, mixed_adapters: bool = True):
        self.model = model
        self.pad_token_id = pad_token_id
        self.max_batch = max_batch
        self.max_queue = max_queue
        # DoRA adapters cannot be mixed in one batch; then a batch holds rows of one adapter at a time.
        self.mixed_adapters = mixed_adapters
        self.is_peft = hasattr(model, "peft_config")
        self.lock = threading.RLock()  # held for each step; admin operations take it to change adapters safely
        # Reentrant: a row's end (_finish) updates the books under it, also when its caller already holds it.
        self._cv = threading.Condition(threading.RLock())
        self._pending: deque[Job] = deque()
        self._active: set[Job] = set()  # accepted and not yet finished: waiting, being prefilled or decoding
        self._closed: Failure | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self._reset()
        self.steps = 0
        self.peak_batch = 0

    # ------------------------------------------------------------------ public

    @property
    def capacity(self) -> int:
        return self.max_batch + self.max_queue

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="adapterlab-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is running and queued, then stop the worker."""
        deadline = time.monotonic() + timeout
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread:
            self._thread.join(timeout=5)

    def submit(self, *jobs: Job) -> None:
        """Queue every row of one request, or none of them (QueueFull / ShuttingDown)."""
        with self._cv:
            if self._closed is not None:
                raise ShuttingDown(self._closed.message)
            self._drop_cancelled()
            if len(self._active) + len(jobs) > self.capacity:
                raise QueueFull(
                    f"the server is at capacity ({self.max_batch} rows running, {self.max_queue} waiting; "
                    f"this request needs {len(jobs)}); retry later"
                )
            self._pending.extend(jobs)
            self._active.update(jobs)
            self._cv.notify()

    def busy(self) -> bool:
        with self._cv:
            return bool(self._active)

    def stats(self) -> dict[str, int]:
        with self._cv:
            waiting = len(self._pending)
            # Rows wait beyond max_queue only while batch slots are free: they join at the next step.
            return {"waiting": waiting, "running": len(self._active) - waiting, "capacity": self.capacity,
                    "max_batch": self.max_batch, "max_queue": self.max_queue}  # fmt: skip

    def abort_adapter(self, adapter: str, failure: Failure) -> None:
        """End every queued or running row of an adapter that is being unloaded with ``failure``."""
        with self._cv:
            for job in [j for j in self._active if j.adapter == adapter]:
                self._abort(job, failure)

    def close(self, failure: Failure) -> None:
        """Refuse new rows and end every queued or running one with ``failure`` (the end of a drain)."""
        with self._cv:
            self._closed = failure
            for job in list(self._active):
                self._abort(job, failure)
            self._cv.notify()

    # ------------------------------------------------------------------ worker

    def _abort(self, job: Job, failure: Failure) -> None:
        """A waiting row ends now; a running one at the worker's next step (it owns the batch's tensors)."""
        job.abort(failure)
        if job in self._pending:
            self._pending.remove(job)
            self._finish(job, "error", job.failure)

    def _drop_cancelled(self) -> None:
        """Waiting rows whose client went away give their place back now, not when the worker reaches them."""
        for job in [j for j in self._pending if j.cancelled.is_set()]:
            self._pending.remove(job)
            self._finish(job, "error" if job.failure else "cancelled", job.failure)

    def _reset(self) -> None:
        self._jobs: list[Job] = []
        self._cache = None
        self._mask: torch.Tensor | None = None  # (B, L) 1 for real tokens, 0 for left padding
        self._positions: torch.Tensor | None = None  # (B,) position of each row's next token
        self._logits: torch.Tensor | None = None  # (B, V) next-token logits

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._pending and not self._jobs:
                    self._cv.wait()
                if self._stop and not self._jobs and not self._pending:
                    return
                new = self._admit()
            try:
                with self.lock, torch.inference_mode():
                    self._step(new)
            except Exception as exc:  # a failing decode step fails its batch, never the server
                log.exception("generation step failed")
                failure = Failure(500, "generation_failed", f"generation failed: {_one_line(exc)}")
                for job in {*self._jobs, *new}:
                    self._finish(job, "error", failure)
                self._reset()

    def _admit(self) -> list[Job]:
        self._drop_cancelled()
        new: list[Job] = []
        adapters = {j.adapter for j in self._jobs}
        while self._pending and len(self._jobs) + len(new) < self.max_batch:
            job = self._pending[0]
            if not self.mixed_adapters and adapters and job.adapter not in adapters:
                break
            adapters.add(job.adapter)
            new.append(self._pending.popleft())
        return new

    def _step(self, new: list[Job]) -> None:
        for job in [j for j in new if j.cancelled.is_set()]:  # aborted (e.g. its adapter unloaded) while admitted
            new.remove(job)
            self._finish(job, "error" if job.failure else "cancelled", job.failure)
        if new:
            self._join(new)
        if not self._jobs:
            return
        self.peak_batch = max(self.peak_batch, len(self._jobs))
        tokens = [self._sample(i, job) for i, job in enumerate(self._jobs)]
        keep = [i for i, (job, tok) in enumerate(zip(self._jobs, tokens, strict=True)) if self._advance(job, tok)]
        if len(keep) < len(self._jobs):
            self._select(keep)
            tokens = [tokens[i] for i in keep]
        if not self._jobs:
            self._reset()
            return
        self._decode(tokens)
        self.steps += 1

    def _sample(self, row: int, job: Job) -> int | None:
        """The row's next token, or None when sampling fails for this row (it then ends alone)."""
        if job.cancelled.is_set():
            return None
        try:
            logits = penalise(self._logits[row], job.sampling, job.prompt_ids, job.generated)
            return sample_row(logits, job.sampling, job.generator)
        except Exception as exc:
            log.warning("sampling failed for one row: %s", _one_line(exc))
            job.abort(Failure(500, "generation_failed", f"generation failed: {_one_line(exc)}"))
            return None

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache, jobs: list[Job]):
        kwargs: dict[str, Any] = {}
        if self.is_peft:
            kwargs["adapter_names"] = [j.adapter for j in jobs]
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        return out.logits[:, -1, :], out.past_key_values

    def _join(self, new: list[Job]) -> None:
        """Prefill the new prompts (left-padded) and merge their cache into the running batch's."""
        from transformers import DynamicCache

        device = self._device()
        width = max(len(j.prompt_ids) for j in new)
        ids = torch.tensor([[self.pad_token_id] * (width - len(j.prompt_ids)) + j.prompt_ids for j in new])
        mask = torch.tensor([[0] * (width - len(j.prompt_ids)) + [1] * len(j.prompt_ids) for j in new])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        try:
            logits, cache = self._forward(ids.to(device), mask.to(device), positions.to(device), DynamicCache(), new)
        except Exception as exc:  # nothing of the running batch has changed yet: only the joining rows fail
            log.exception("prefill failed")
            failure = Failure(500, "generation_failed", f"generation failed: {_one_line(exc)}")
            for job in new:
                self._finish(job, "error", job.failure or failure)
            return
        next_pos = torch.tensor([len(j.prompt_ids) for j in new], device=device)
        if not self._jobs:
            self._jobs, self._cache, self._mask, self._positions, self._logits = (
                new,
                cache,
                mask.to(device),
                next_pos,
                logits,
            )
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        total = max(old_len, new_len)
        for old_layer, new_layer in zip(self._cache.layers, cache.layers, strict=True):
            old_layer.keys = torch.cat([_pad_left(old_layer.keys, total), _pad_left(new_layer.keys, total)])
            old_layer.values = torch.cat([_pad_left(old_layer.values, total), _pad_left(new_layer.values, total)])
        self._mask = torch.cat([F.pad(self._mask, (total - old_len, 0)), F.pad(mask.to(device), (total - new_len, 0))])
        self._positions = torch.cat([self._positions, next_pos])
        self._logits = torch.cat([self._logits, logits])
        self._jobs = self._jobs + new

    def _decode(self, tokens: list[int]) -> None:
        device = self._device()
        ids = torch.tensor(tokens, device=device).unsqueeze(1)
        self._mask = torch.cat([self._mask, torch.ones_like(self._mask[:, :1])], dim=1)
        self._logits, self._cache = self._forward(
            ids, self._mask, self._positions.unsqueeze(1), self._cache, self._jobs
        )
        self._positions = self._positions + 1

    def _select(self, keep: list[int]) -> None:
        """Drop finished rows, and the left-padding columns no remaining row needs."""
        self._jobs = [self._jobs[i] for i in keep]
        if not keep:
            return
        index = torch.tensor(keep, device=self._mask.device)
        self._mask = self._mask.index_select(0, index)
        self._positions = self._positions.index_select(0, index)
        self._logits = self._logits.index_select(0, index)
        first = int(self._mask.any(dim=0).nonzero()[0])
        for layer in self._cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, first:]
            layer.values = layer.values.index_select(0, index)[:, :, first:]
        self._mask = self._mask[:, first:]

    def _advance(self, job: Job, token: int | None) -> bool:
        """Record one token for a row; emit the text that is safe to show; False when the row is done."""
        if job.cancelled.is_set() or token is None:
            self._finish(job, "error" if job.failure else "cancelled", job.failure)
            return False
        if token in job.stop_token_ids:
            self._flush(job, job.tokenizer.decode(job.generated, skip_special_tokens=True), "stop")
            return False
        job.generated.append(token)
        text = job.tokenizer.decode(job.generated, skip_special_tokens=True)
        stops = job.sampling.stop
        hits = [text.find(s) for s in stops if s and s in text]
        if hits:
            self._flush(job, text[: min(hits)], "stop")
            return False
        if len(job.generated) >= job.sampling.max_new_tokens:
            self._flush(job, text, "length")
            return False
        safe = text[: len(text) - held_back(text, stops)]
        if len(safe) > len(job.emitted) and safe.startswith(job.emitted):
            job.on_event(Event(delta=safe[len(job.emitted) :]))
            job.emitted = safe
        return True

    def _flush(self, job: Job, text: str, reason: str) -> None:
        if text.endswith("\ufffd"):
            text = text.rstrip("\ufffd")
        if len(text) > len(job.emitted) and text.startswith(job.emitted):
            job.on_event(Event(delta=text[len(job.emitted) :]))
            job.emitted = text
        self._finish(job, reason)

    def _finish(self, job: Job, reason: str, failure: Failure | None = None) -> None:
        """The row's last event, once; its place in the capacity is free from here on."""
        with self._cv:
            if job not in self._active:
                return
            self._active.discard(job)
        event = Event(finish_reason=reason, prompt_tokens=len(job.prompt_ids), completion_tokens=len(job.generated),
                      failure=failure)  # fmt: skip
        try:
            job.on_event(event)
        except Exception:  # a broken listener is the listener's problem, not the batch's
            log.exception("request callback failed")

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device


def _one_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pad a (B, H, L, D) cache tensor with zeros along L."""
    return F.pad(t, (0, 0, length - t.shape[2], 0)) if t.shape[2] < length else t
