"""Continuous batching: one worker thread runs every generation request through one loaded model.

Requests join the running batch between decoding steps (their prompts are prefilled and their KV cache is
left-padded into the batch's cache) and leave it as soon as they finish, are cancelled or hit their limit, so
a short answer never waits for a long one and a new request never waits for a whole batch to drain. Each row
carries its own adapter (PEFT's per-row ``adapter_names``; ``__base__`` is the plain base), sampling settings,
random generator, stop strings and token budget. Tokens are handed to the request's callback as they come, so
streaming works per request while batched.

The queue in front of the batch is bounded: :meth:`Engine.submit` raises :class:`QueueFull` instead of
letting it grow, and the API turns that into a 429.
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


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should retry later."""


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class Event:
    """What a request hears from the engine: text deltas, then one final event with the finish reason."""

    delta: str = ""
    finish_reason: str | None = None  # stop | length | cancelled | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None


_ids = itertools.count()


@dataclass(eq=False)
class Job:
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

    def cancel(self) -> None:
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


def sample_next(logits: torch.Tensor, jobs: list[Job]) -> list[int]:
    """One token per row: greedy where temperature is 0, else temperature + nucleus sampling with the row's RNG."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1).tolist()
    out = []
    for i, job in enumerate(jobs):
        s = job.sampling
        if s.temperature <= 0:
            out.append(greedy[i])
            continue
        probs = torch.softmax(logits[i] / s.temperature, dim=-1)
        if s.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(0) - sorted_p < s.top_p  # always keeps the most likely token
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        out.append(int(torch.multinomial(probs, 1, generator=job.generator)))
    return out


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
        self._cv = threading.Condition()
        self._pending: deque[Job] = deque()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._reset()
        self.steps = 0
        self.peak_batch = 0

    # ------------------------------------------------------------------ public

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

    def submit(self, job: Job) -> None:
        with self._cv:
            # Room for max_batch running rows plus max_queue waiting ones; beyond that the caller gets a 429.
            if len(self._pending) + len(self._jobs) >= self.max_batch + self.max_queue:
                raise QueueFull(
                    f"the server is at capacity ({self.max_batch} running, {self.max_queue} waiting); retry later"
                )
            if job.sampling.seed is not None or job.sampling.temperature > 0:
                job.generator = torch.Generator().manual_seed(
                    job.sampling.seed if job.sampling.seed is not None else torch.seed()
                )
            self._pending.append(job)
            self._cv.notify()

    def busy(self) -> bool:
        with self._cv:
            return bool(self._pending) or bool(self._jobs)

    def stats(self) -> dict[str, int]:
        with self._cv:
            return {
                "waiting": len(self._pending),
                "running": len(self._jobs),
                "max_batch": self.max_batch,
                "max_queue": self.max_queue,
            }

    def cancel_adapter(self, adapter: str, reason: str) -> None:
        """Fail every queued or running request for an adapter that is being unloaded (call under lock)."""
        with self._cv:
            for job in [j for j in self._pending if j.adapter == adapter]:
                self._pending.remove(job)
                self._finish(job, "error", reason)
        for job in self._jobs:
            if job.adapter == adapter:
                job.cancel()

    # ------------------------------------------------------------------ worker

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
            except Exception as exc:  # a failing batch must never kill the server
                log.exception("generation step failed")
                for job in {*self._jobs, *new}:
                    self._finish(job, "error", f"generation failed: {exc}")
                self._reset()

    def _admit(self) -> list[Job]:
        new: list[Job] = []
        adapters = {j.adapter for j in self._jobs}
        while self._pending and len(self._jobs) + len(new) < self.max_batch:
            job = self._pending[0]
            if job.cancelled.is_set():
                self._pending.popleft()
                self._finish(job, "cancelled")
                continue
            if not self.mixed_adapters and adapters and job.adapter not in adapters:
                break
            adapters.add(job.adapter)
            new.append(self._pending.popleft())
        return new

    def _step(self, new: list[Job]) -> None:
        if new:
            self._join(new)
        if not self._jobs:
            return
        self.peak_batch = max(self.peak_batch, len(self._jobs))
        tokens = sample_next(self._logits, self._jobs)
        keep = [i for i, (job, tok) in enumerate(zip(self._jobs, tokens, strict=True)) if self._advance(job, tok)]
        if len(keep) < len(self._jobs):
            self._select(keep)
            tokens = [tokens[i] for i in keep]
        if not self._jobs:
            self._reset()
            return
        self._decode(tokens)
        self.steps += 1

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
        cache = DynamicCache()
        logits, cache = self._forward(ids.to(device), mask.to(device), positions.to(device), cache, new)
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

    def _advance(self, job: Job, token: int) -> bool:
        """Record one token for a row; emit the text that is safe to show; False when the row is done."""
        if job.cancelled.is_set():
            self._finish(job, "cancelled")
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

    def _finish(self, job: Job, reason: str, error: str | None = None) -> None:
        try:
            job.on_event(
                Event(
                    finish_reason=reason,
                    prompt_tokens=len(job.prompt_ids),
                    completion_tokens=len(job.generated),
                    error=error,
                )
            )
        except Exception:  # a broken listener is the listener's problem, not the batch's
            log.exception("request callback failed")

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device


def _pad_left(t: torch.Tensor, length: int) -> torch.Tensor:
    """Left-pad a (B, H, L, D) cache tensor with zeros along L."""
    return F.pad(t, (0, 0, length - t.shape[2], 0)) if t.shape[2] < length else t
