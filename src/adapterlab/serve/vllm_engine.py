"""``adapterlab serve --engine vllm``: the same API, with generation done by a vLLM server we start and own.

Everything before generation stays ours, so the two engines answer alike: the request is validated by our
schemas, the prompt is rendered and tokenised by the adapter's own :class:`~adapterlab.serve.registry.ChatModel`
(its chat template, default system prompt and user prefix: what training saw), and the per-request limits are
checked by ``generation.py``. Each choice (one :class:`~adapterlab.serve.batching.Job`, seeded ``seed + i`` as in
our engine) is sent to vLLM's ``/v1/completions`` as token ids with our stop tokens and streamed back as the same
events our batching engine produces, so the routes, streaming, usage, disconnect handling and drain are shared.
vLLM batches the rows itself (``--max-num-seqs`` = ``--max-batch``); a client that goes away closes its stream,
which makes vLLM abort the row.

The vLLM server listens on 127.0.0.1 with a random API key of its own: clients only ever reach our server (our
API key, our limits, our UI). With ``--adapter-root``, POST/DELETE ``/admin/adapters`` load and unload adapters in
vLLM at run time (``/v1/load_lora_adapter``), after the same path and refusal checks.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from adapterlab.serve.batching import BASE, Event, Failure, Job, QueueFull, ShuttingDown
from adapterlab.vllm import VLLMServer

log = logging.getLogger("adapterlab.serve")

SEED_RANGE = 2**63  # vLLM takes int64 seeds; ours span [-2**63, 2**64 - 1] and map into it one to one mod 2**63


class VLLMEngine:
    """The :class:`~adapterlab.serve.batching.Engine` interface over a vLLM server."""

    def __init__(self, registry: Any, settings: Any):
        self.registry = registry
        self.max_batch, self.max_queue = settings.max_batch, settings.max_queue
        self.mixed_adapters = True  # vLLM mixes LoRA adapters in one batch (DoRA is refused up front)
        self.lock = threading.RLock()  # admin changes take it, as with our engine
        self._cv = threading.Condition()
        self._active: set[Job] = set()
        self._closed: Failure | None = None
        log_file = tempfile.NamedTemporaryFile(prefix="adapterlab-vllm-", suffix=".log", delete=False)  # noqa: SIM115
        log_file.close()
        first = next(iter(registry.adapter_dirs.values()), None)
        self.server = VLLMServer(
            registry.base_resolved,
            dict(registry.adapter_dirs),
            tokenizer=str(first) if first else None,
            precision=registry.precision,
            python=settings.vllm_python,
            extra_args=["--max-num-seqs", str(settings.max_batch), *settings.vllm_args],
            log_path=Path(log_file.name),
            runtime_lora=registry.adapter_root is not None,
        )
        self._pool = ThreadPoolExecutor(max_workers=self.capacity, thread_name_prefix="adapterlab-vllm")
        self.client = None

    @property
    def capacity(self) -> int:
        return self.max_batch + self.max_queue

    def start(self) -> None:
        import httpx

        log.info("starting vLLM (log: %s): %s", self.server.log_path, " ".join(self.server.command()[1:]))
        self.server.start()
        limits = httpx.Limits(max_connections=self.capacity, max_keepalive_connections=self.capacity)
        auth = {"Authorization": f"Bearer {self.server.api_key}"}
        self.client = httpx.Client(base_url=self.server.endpoint, timeout=httpx.Timeout(None, connect=10.0),
                                   headers=auth, limits=limits)  # fmt: skip
        log.info("vLLM serves at %s", self.server.endpoint)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is running (up to ``timeout``), end the rest with an error, then stop vLLM."""
        with self._cv:
            if not self._cv.wait_for(lambda: not self._active, timeout):
                for job in self._active:
                    job.abort(Failure(503, "shutting_down", "the server is shutting down"))
                self._cv.wait_for(lambda: not self._active, 10.0)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            self.client.close()
        self.server.stop()

    def submit(self, *jobs: Job) -> None:
        with self._cv:
            if self._closed is not None:
                raise ShuttingDown(self._closed.message)
            if len(self._active) + len(jobs) > self.capacity:
                raise QueueFull(
                    f"the server is at capacity ({self.max_batch} rows running, {self.max_queue} waiting; "
                    f"this request needs {len(jobs)}); retry later"
                )
            self._active.update(jobs)
        for job in jobs:
            self._pool.submit(self._run, job)

    def busy(self) -> bool:
        with self._cv:
            return bool(self._active)

    def stats(self) -> dict[str, int]:
        with self._cv:
            active = len(self._active)
        running = min(active, self.max_batch)
        return {"waiting": active - running, "running": running, "capacity": self.capacity,
                "max_batch": self.max_batch, "max_queue": self.max_queue}  # fmt: skip

    def abort_adapter(self, adapter: str, failure: Failure) -> None:
        with self._cv:
            for job in [j for j in self._active if j.adapter == adapter]:
                job.abort(failure)

    def close(self, failure: Failure) -> None:
        with self._cv:
            self._closed = failure
            for job in self._active:
                job.abort(failure)

    # ------------------------------------------------------------------ adapters at run time

    def load_adapter(self, name: str, path: Path) -> None:
        self._admin("/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})

    def unload_adapter(self, name: str) -> None:
        self._admin("/unload_lora_adapter", {"lora_name": name})

    def _admin(self, path: str, body: dict[str, Any]) -> None:
        from adapterlab.serve.registry import ServeError

        response = self.client.post(path, json=body)
        if response.status_code >= 400:
            raise ServeError(f"path: vLLM refused {body['lora_name']}: {response.text[:300]}")

    # ------------------------------------------------------------------ one row

    def body_of(self, job: Job) -> dict[str, Any]:
        sampling = job.sampling
        body: dict[str, Any] = {
            "model": self.server.base_name if job.adapter == BASE else job.adapter,
            "prompt": list(job.prompt_ids),
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "stop_token_ids": sorted(job.stop_token_ids),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed % SEED_RANGE
        if sampling.stop:
            body["stop"] = list(sampling.stop)
        if sampling.repetition_penalty != 1.0:
            body["repetition_penalty"] = sampling.repetition_penalty
        for key in ("presence_penalty", "frequency_penalty"):
            if getattr(sampling, key):
                body[key] = getattr(sampling, key)
        return body

    def _run(self, job: Job) -> None:
        finish, prompt_tokens, completion_tokens = "stop", len(job.prompt_ids), 0
        try:
            if job.cancelled.is_set():
                finish = "cancelled"
                return
            with self.client.stream("POST", "/completions", json=self.body_of(job)) as response:
                if response.status_code != 200:
                    response.read()
                    job.failure = upstream_failure(response)
                    finish = "error"
                    return
                for line in response.iter_lines():
                    if job.cancelled.is_set():
                        finish = "cancelled"
                        return  # leaving the stream closes the connection: vLLM aborts the row
                    data = line[5:].strip() if line.startswith("data:") else ""
                    if not data or data == "[DONE]":
                        continue
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        prompt_tokens = chunk["usage"].get("prompt_tokens", prompt_tokens)
                        completion_tokens = chunk["usage"].get("completion_tokens", completion_tokens)
                    for choice in chunk.get("choices") or []:
                        if choice.get("text"):
                            job.on_event(Event(delta=choice["text"]))
                        if choice.get("finish_reason"):
                            finish = "length" if choice["finish_reason"] == "length" else "stop"
        except Exception as exc:  # the connection to vLLM failed: this row ends with 502, the others go on
            log.warning("vLLM request failed: %s", exc)
            job.failure = Failure(502, "engine_unavailable", f"the vLLM engine did not answer: {type(exc).__name__}")
            finish = "error"
        finally:
            if job.failure is not None:
                finish = "error"
            with self._cv:
                self._active.discard(job)
                self._cv.notify_all()
            job.on_event(Event("", finish, prompt_tokens, completion_tokens, job.failure))


def upstream_failure(response) -> Failure:
    """vLLM's error for one row: a 4xx it refused keeps its status and message; anything else is a 502."""
    try:
        error = response.json().get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
    except (ValueError, AttributeError):
        message = response.text[:300]
    status = response.status_code if 400 <= response.status_code < 500 else 502
    return Failure(status, "engine_refused" if status < 500 else "engine_failed", f"vLLM: {str(message)[:300]}")
