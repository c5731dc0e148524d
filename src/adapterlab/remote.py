"""Generation through any OpenAI-compatible server (vLLM, TGI, llama.cpp's server, our own ``adapterlab serve``).

:class:`OpenAIGenerator` has the :class:`adapterlab.generation.Generator` interface, so evaluation runs through
it unchanged: ``generate(prompts, model, decoding, n)`` sends one request per prompt (``/chat/completions`` for a
message list, ``/completions`` for a raw string), ``eval.batch_size`` of them in flight at once so the server can
batch them, and maps our model names (``base``, ``adapter``) to the server's. Greedy decoding is
``temperature: 0``; sampling sends temperature, top_p and the seed. Connection errors, 429 and 5xx answers are
retried with backoff; the last failure is one error naming the endpoint. A server gives no log-likelihood of a
given reply, so there is no ``completion_nll``: perplexity is listed under "not computed" with :data:`NO_NLL`.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapterlab.console import console
from adapterlab.errors import AdapterlabError
from adapterlab.generation import BASE, Decoding, Generation, Messages, cut_at_stop, progress_bar

NO_NLL = "an OpenAI-compatible server returns no log-likelihood of a given reference reply (eval.backend openai)"
RETRIED = {429, 500, 502, 503, 504}


class EndpointError(AdapterlabError):
    """The server at eval.endpoint cannot be reached or refuses a request."""


class OpenAIGenerator:
    """One HTTP client for all calls; ``names`` maps our model names to the server's (``adapter`` -> ``my-run``)."""

    name = "openai"
    nll_unavailable = NO_NLL

    def __init__(
        self, endpoint: str, names: dict[str, str] | None = None, *, api_key: str | None = None,
        concurrency: int = 8, timeout: float = 600.0, retries: int = 3, backoff: float = 0.5, transport=None,
    ):  # fmt: skip
        try:
            import httpx
        except ImportError:  # pragma: no cover - httpx comes with huggingface_hub
            raise AdapterlabError("eval.backend openai needs httpx: pip install httpx") from None
        self.endpoint = endpoint.rstrip("/")
        self.names = dict(names or {BASE: BASE})
        self.concurrency, self.retries, self.backoff = max(1, concurrency), retries, backoff
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(timeout=timeout, headers=headers, transport=transport)
        self._warned: set[str] = set()
        self.on_close: list = []  # called by close(): e.g. stopping a server started for this generator

    def models(self) -> list[str]:
        return list(self.names)

    def served_name(self, model: str) -> str:
        return self.names.get(model, model)

    def check_models(self) -> None:
        """Fail before generating when the server lists its models and ours are not among them."""
        try:
            listed = {m["id"] for m in self._request("GET", "/models")["data"]}
        except (KeyError, TypeError):
            return  # a server without a usable model list: the first request will tell
        missing = [f"{ours} -> '{theirs}'" for ours, theirs in self.names.items() if theirs not in listed]
        if missing:
            raise EndpointError(
                f"{self.endpoint}: serves {', '.join(sorted(listed)) or 'no models'}, not {', '.join(missing)}; "
                "set eval.base_model_name / eval.adapter_model_name to the names the server uses"
            )

    def generate(
        self, prompts: list[Messages] | list[str], model: str = BASE, decoding: Decoding | None = None, n: int = 1,
        label: str | None = None,
    ) -> list[Generation]:  # fmt: skip
        decoding = decoding or Decoding()
        self._warn_unsupported(decoding)
        served = self.served_name(model)
        with ThreadPoolExecutor(self.concurrency) as pool, progress_bar(label, len(prompts)) as advance:
            futures = [pool.submit(self._one, prompt, served, decoding, n) for prompt in prompts]
            results = []
            for future in futures:
                results.append(future.result())
                advance(1)
        return results

    def _one(self, prompt: Messages | str, served: str, decoding: Decoding, n: int) -> Generation:
        """One prompt's ``n`` replies: asked for in one request; a server that answers fewer choices (some
        ignore ``n``) is asked again, one reply per request, with the seed moved on as our server does."""
        raw = isinstance(prompt, str)
        began = time.perf_counter()
        texts, tokens = self._ask(prompt, served, decoding, n, decoding.seed)
        while len(texts) < n:
            seed = None if decoding.seed is None else decoding.seed + len(texts)
            more, more_tokens = self._ask(prompt, served, decoding, 1, seed)
            texts, tokens = texts + more, tokens + more_tokens
        elapsed = time.perf_counter() - began
        # As the transformers backend: a chat reply is stripped, a raw continuation keeps its leading indentation.
        texts = [cut_at_stop(t, decoding.stop_strings) for t in texts[:n]]
        texts = [t.rstrip() if raw else t.strip() for t in texts]
        return Generation(texts[0], tokens, elapsed, elapsed, texts)

    def _ask(self, prompt: Messages | str, served: str, decoding: Decoding, n: int, seed: int | None):
        raw = isinstance(prompt, str)
        body: dict[str, Any] = {"model": served, "max_tokens": decoding.max_new_tokens, "n": n}
        body["prompt" if raw else "messages"] = prompt
        if decoding.do_sample:
            body.update(temperature=decoding.temperature, top_p=decoding.top_p)
        else:
            body["temperature"] = 0.0  # greedy in the OpenAI API
        if seed is not None:
            body["seed"] = seed
        if decoding.stop_strings:
            body["stop"] = decoding.stop_strings
        if decoding.repetition_penalty != 1.0:
            body["repetition_penalty"] = decoding.repetition_penalty  # vLLM's extension of the API
        answer = self._request("POST", "/completions" if raw else "/chat/completions", body)
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        texts = [(c.get("text") if raw else (c.get("message") or {}).get("content")) or "" for c in choices]
        tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
        return texts, tokens

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """The JSON answer; transient failures retried with exponential backoff, then one error naming the URL."""
        import httpx

        url = self.endpoint + path
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self.client.request(method, url, json=body)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code in RETRIED:
                last = f"HTTP {response.status_code}: {error_message(response)}"
                continue
            if response.status_code >= 400:
                model = f" for model '{body['model']}'" if body else ""
                hint = (
                    "; set eval.base_model_name / eval.adapter_model_name to the server's names"
                    if response.status_code == 404 else ""
                )  # fmt: skip
                raise EndpointError(f"{url}: HTTP {response.status_code}{model}: {error_message(response)}{hint}")
            try:
                return response.json()
            except ValueError:
                raise EndpointError(f"{url}: the answer is not JSON (is eval.endpoint the /v1 base URL?)") from None
        raise EndpointError(
            f"{url}: no answer after {self.retries + 1} tries ({last}); is the server running at eval.endpoint?"
        )

    def _warn_unsupported(self, decoding: Decoding) -> None:
        if decoding.repetition_penalty != 1.0 and "repetition_penalty" not in self._warned:
            self._warned.add("repetition_penalty")
            console.print(
                "[yellow]eval.repetition_penalty is sent as the `repetition_penalty` field (vLLM's extension, which "
                "adapterlab serve takes too); servers without it, such as OpenAI's, ignore it[/yellow]"
            )

    def close(self) -> None:
        self.client.close()
        for callback in self.on_close:
            callback()
        self.on_close.clear()


def error_message(response) -> str:
    """The server's own error message (OpenAI shape) or the start of its body."""
    try:
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else (error or data.get("detail"))
        return str(message)[:300]
    except (ValueError, AttributeError):
        return response.text[:300].strip() or "(empty body)"


def openai_generator(cfg: Any, adapter_name: str, adapter_key: str = "adapter") -> OpenAIGenerator:
    """The generator an eval section asks for: endpoint, key from ``cfg.api_key_env``, the two model names."""
    names = {BASE: cfg.base_model_name, adapter_key: cfg.adapter_model_name or adapter_name}
    generator = OpenAIGenerator(
        cfg.endpoint, names, api_key=os.environ.get(cfg.api_key_env) or None, concurrency=cfg.batch_size
    )
    generator.check_models()
    return generator
