"""What the app knows while it runs (kept on ``app.state.adapterlab``), and the checks every route makes.

Models load in a background thread so ``/health`` can say 503 meanwhile. A drain (SIGTERM) refuses new work at
once and, when ``--drain-seconds`` have passed, ends whatever still runs with 503 ``shutting_down`` so every
client gets a complete answer before the process exits.
"""

from __future__ import annotations

import hmac
import logging
import threading

from fastapi import Request

from adapterlab.serve.batching import Engine, Failure
from adapterlab.serve.errors import ApiError
from adapterlab.serve.registry import Registry
from adapterlab.serve.settings import ServeSettings

log = logging.getLogger("adapterlab.serve")

SHUTTING_DOWN = Failure(503, "shutting_down", "the server is shutting down; retry on another instance or later")


class State:
    def __init__(self, registry: Registry, settings: ServeSettings):
        self.registry = registry
        self.settings = settings
        self.engine: Engine | None = None
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.classify_lock = threading.Lock()
        self.admin_lock = threading.Lock()  # one /admin/adapters change at a time
        self.draining = threading.Event()
        self._drain_timer: threading.Timer | None = None

    def load(self) -> None:
        try:
            self.registry.load()
            if self.registry.engine == "vllm" and self.registry.chat:
                from adapterlab.serve.vllm_engine import VLLMEngine

                self.engine = VLLMEngine(self.registry, self.settings)
                self.engine.start()  # starts vLLM and waits until it answers; /health says loading meanwhile
                self.registry.remote = self.engine
                self.registry.vllm_max_rank = self.engine.server.max_lora_rank
            elif self.registry.model is not None:
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

    def begin_drain(self) -> None:
        """Refuse new work; after the drain period, end what still runs with 503 (called once, on SIGTERM)."""
        if self.draining.is_set():
            return
        self.draining.set()
        self._drain_timer = threading.Timer(self.settings.drain_seconds, self.end_drain)
        self._drain_timer.daemon = True
        self._drain_timer.start()

    def end_drain(self) -> None:
        if self.engine is not None:
            self.engine.close(SHUTTING_DOWN)

    def stop(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        if self.engine is not None:
            self.engine.stop()


def get_state(request: Request) -> State:
    return request.app.state.adapterlab


def check_key(request: Request) -> State:
    """Dependency of every route that reaches a model: the constant-time API-key check, then the state.

    Only ``Authorization: Bearer KEY`` is accepted (the one header OpenAI SDKs send).
    """
    state = get_state(request)
    key = state.settings.api_key
    if key:
        given = request.headers.get("authorization", "")
        token = given[7:] if given[:7].lower() == "bearer " else ""
        if not hmac.compare_digest(token.encode("utf-8", "surrogateescape"), key.encode("utf-8")):
            raise ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", code="invalid_api_key")
    return state


def check_ready(state: State) -> None:
    if state.load_error:
        raise ApiError(503, f"the server could not load its models: {state.load_error}", code="load_failed")
    if not state.ready.is_set():
        raise ApiError(503, "the server is still loading its models; retry shortly", code="loading")
    if state.draining.is_set():
        raise ApiError(503, SHUTTING_DOWN.message, code=SHUTTING_DOWN.code)
