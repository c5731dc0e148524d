"""Generation behind one interface that names the model per call: ``generate(prompts, model, decoding, n)``.

``model`` is ``"base"`` or the name of an adapter. :class:`TransformersGenerator` holds one loaded base model with
any number of PEFT adapters attached and switches between them per call (the plain base runs with every adapter
bypassed), so base-vs-adapter evaluation loads the weights once. The same :class:`Generator` protocol is meant for
an HTTP client of any OpenAI-compatible server (ours, vLLM, TGI, llama.cpp's): evaluation only calls
``generate``, and asks for the optional ``completion_nll`` (perplexity of references) where a generator has it.

Prompts are rendered exactly as in training (:func:`adapterlab.rendering.encode_prompt`), and generation stops at
the tokenizer's end-of-turn token, so what was trained is what is served.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from threading import Thread
from typing import Any, Protocol

from adapterlab.rendering import encode_prompt

BASE = "base"
Messages = list[dict[str, str]]


@dataclass
class Decoding:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    stop_strings: list[str] = field(default_factory=list)
    repetition_penalty: float = 1.0  # >1 discourages loops, which small models fall into under greedy decoding
    seed: int | None = None  # sampling seed of a generate call (None: whatever the global RNG holds)

    def kwargs(self, tokenizer, model=None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": stop_token_ids(tokenizer, model),
            "repetition_penalty": self.repetition_penalty,
        }
        if self.do_sample:
            out.update(temperature=self.temperature, top_p=self.top_p)
        else:  # greedy: clear sampling defaults a generation_config may carry, to avoid warnings
            out.update(temperature=None, top_p=None, top_k=None)
        if self.stop_strings:
            out.update(stop_strings=self.stop_strings, tokenizer=tokenizer)
        return out


@dataclass
class Generation:
    """One prompt's reply (``text``), or its ``n`` sampled replies (``samples``, ``text`` is the first)."""

    text: str
    new_tokens: int
    seconds: float  # this example's share of its batch's wall time
    batch_seconds: float = 0.0  # wall time of the batch it was generated in (what a caller waits)
    samples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.samples:
            self.samples = [self.text]

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.batch_seconds if self.batch_seconds else 0.0


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (chat models often end turns there)."""
    ids = {tokenizer.eos_token_id}
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


def cut_at_stop(text: str, stop_strings: list[str]) -> str:
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return text[: min(cuts)] if cuts else text


class Generator(Protocol):
    """What evaluation, chat and golden prompts need from a generator; ``model`` is ``"base"`` or an adapter."""

    name: str

    def models(self) -> list[str]: ...

    def generate(
        self, prompts: list[Messages], model: str = BASE, decoding: Decoding | None = None, n: int = 1,
        label: str | None = None,
    ) -> list[Generation]: ...  # fmt: skip


class TransformersGenerator:
    """Left-padded batches through ``model.generate`` on one loaded base with its PEFT adapters."""

    name = "transformers"

    def __init__(self, model, tokenizer, batch_size: int = 16, inference_mode: bool = True, synced: bool = False):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.inference_mode = inference_mode  # False: plain no_grad (a model sharded by FSDP / DeepSpeed)
        # True: every rank of a sharded model generates in step (each gathers the weights in every forward) until all
        # have finished, as transformers does by itself only for ZeRO-3 and its own FSDP wrapping (synced_gpus).
        self.synced = synced

    def models(self) -> list[str]:
        return [BASE, *getattr(self.model, "peft_config", {})]

    @contextmanager
    def using(self, model: str):
        """The adapter ``model`` active (or, for ``base``, every adapter bypassed) for the duration."""
        adapters = getattr(self.model, "peft_config", {})
        if model == BASE:
            with self.model.disable_adapter() if adapters else contextlib.nullcontext():
                yield
            return
        if model not in adapters:
            raise KeyError(f"no adapter named '{model}' is loaded (loaded: {', '.join(self.models())})")
        previous = self.model.active_adapter
        if previous == model and not getattr(self.model, "_adapters_disabled", False):
            yield  # already the one (set_adapter would switch the weights' requires_grad off and on again)
            return
        self.model.set_adapter(model)
        try:
            yield
        finally:
            self.model.set_adapter(previous)

    def generate(
        self, prompts: list[Messages], model: str = BASE, decoding: Decoding | None = None, n: int = 1,
        label: str | None = None,
    ) -> list[Generation]:  # fmt: skip
        decoding = decoding or Decoding()
        if decoding.seed is not None:
            from transformers import set_seed

            set_seed(decoding.seed)
        # A string is a raw text prompt that a completion model continues (HumanEval's prompts for a base model):
        # tokenised as it is, and its continuation kept as generated (leading indentation matters there).
        raw = bool(prompts) and isinstance(prompts[0], str)
        encoded = [self.tokenizer(p)["input_ids"] if raw else encode_prompt(self.tokenizer, p) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[Generation | None] = [None] * len(encoded)
        with self.using(model), progress_bar(label, len(encoded)) as advance:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                batch = self._batch([encoded[i] for i in chunk], decoding, n, strip=not raw)
                for index, generation in zip(chunk, batch, strict=True):
                    results[index] = generation
                advance(len(chunk))
        return [r for r in results if r is not None]

    def _batch(self, chunk: list[list[int]], decoding: Decoding, n: int, strip: bool = True) -> list[Generation]:
        import torch

        model, tokenizer = self.model, self.tokenizer
        device = next(model.parameters()).device
        width = max(len(ids) for ids in chunk)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        began = time.perf_counter()
        with torch.inference_mode() if self.inference_mode else torch.no_grad():
            samples = {"num_return_sequences": n} if n > 1 else {}
            if self.synced:
                samples["synced_gpus"] = True
            output = model.generate(input_ids=input_ids, attention_mask=attention, **samples,
                                    **decoding.kwargs(tokenizer, model))  # fmt: skip
        elapsed = time.perf_counter() - began
        stops = set(stop_token_ids(tokenizer, model))
        texts, counts = [], []
        for row in output[:, width:].tolist():
            new = []
            for token in row:
                if token in stops or token == pad:
                    break
                new.append(token)
            text = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), decoding.stop_strings)
            texts.append(text.strip() if strip else text.rstrip())
            counts.append(len(new))
        share = elapsed / len(chunk)
        return [
            Generation(texts[i * n], sum(counts[i * n : (i + 1) * n]), share, elapsed, texts[i * n : (i + 1) * n])
            for i in range(len(chunk))
        ]

    def completion_nll(self, rows: list[dict[str, list[int]]], model: str = BASE) -> tuple[list[float], list[int]]:
        """Per row (``input_ids`` + ``completion_mask``): summed NLL of its completion tokens and their count."""
        import torch

        from adapterlab.training.losses import completion_nll_per_example

        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id
        sums: list[float] = []
        counts: list[int] = []
        with self.using(model), torch.inference_mode():
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                width = max(len(r["input_ids"]) for r in chunk)
                ids = [r["input_ids"] + [pad] * (width - len(r["input_ids"])) for r in chunk]
                mask = [[1] * len(r["input_ids"]) + [0] * (width - len(r["input_ids"])) for r in chunk]
                labels = [[t if m else -100 for t, m in zip(r["input_ids"], r["completion_mask"], strict=True)]
                          + [-100] * (width - len(r["input_ids"])) for r in chunk]  # fmt: skip
                batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
                batch_sums, batch_counts = completion_nll_per_example(
                    self.model, {k: torch.tensor(v, device=device) for k, v in batch.items()}
                )
                sums += batch_sums.tolist()
                counts += batch_counts.tolist()
        return sums, counts

    def stream(self, messages: Messages, model: str = BASE, decoding: Decoding | None = None) -> Iterator[str]:
        """Yield the reply's text piece by piece as tokens are generated."""
        import torch
        from transformers import TextIteratorStreamer

        decoding = decoding or Decoding()
        ids = encode_prompt(self.tokenizer, messages)
        device = next(self.model.parameters()).device
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {
            "input_ids": torch.tensor([ids], device=device),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device),
            "streamer": streamer,
            **decoding.kwargs(self.tokenizer, self.model),
        }
        errors: list[BaseException] = []

        def work() -> None:
            try:
                with torch.inference_mode():
                    self.model.generate(**kwargs)
            except BaseException as exc:  # surfaced in the caller's thread below
                errors.append(exc)
                streamer.end()

        with self.using(model):
            thread = Thread(target=work, daemon=True)
            thread.start()
            yield from (piece for piece in streamer if piece)
            thread.join()
        if errors:
            raise errors[0]


@contextmanager
def progress_bar(label: str | None, total: int):
    """A rich progress bar with ETA (nothing when ``label`` is None)."""
    if label is None:
        yield lambda n: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from adapterlab.console import console

    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task, n)
