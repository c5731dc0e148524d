"""Generation with the chat template stored alongside the adapter: batched (left-padded) and streamed.

Evaluation talks to a :class:`GenerationBackend`; :class:`TransformersBackend` is the default and a vLLM
backend can replace it without touching prompts or metrics.

Prompts are rendered exactly as in training (:func:`adapterlab.data.tasks.encode_prompt`), and generation stops
at the tokenizer's end-of-turn token, so what was trained is what is served.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from threading import Thread
from typing import Any, Protocol

from adapterlab.data.tasks import encode_prompt


@dataclass
class Decoding:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    stop_strings: list[str] = field(default_factory=list)
    repetition_penalty: float = 1.0  # >1 discourages loops, which small models fall into under greedy decoding

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
    text: str
    new_tokens: int
    seconds: float  # this example's share of its batch's wall time
    batch_seconds: float = 0.0  # wall time of the batch it was generated in (what a caller waits)

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


class GenerationBackend(Protocol):
    """What evaluation needs from a generator: the same prompts in, one reply each out, in order.

    The transformers backend below is the default; a vLLM backend fills the same seam for large test sets.
    """

    name: str

    def generate(
        self, prompts: list[list[dict[str, str]]], decoding: Decoding, label: str | None = None
    ) -> list[Generation]: ...


class TransformersBackend:
    """Left-padded batches through ``model.generate``; prompts are grouped by length to waste less padding."""

    name = "transformers"

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size

    def generate(
        self, prompts: list[list[dict[str, str]]], decoding: Decoding, label: str | None = None
    ) -> list[Generation]:
        encoded = [encode_prompt(self.tokenizer, messages) for messages in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[Generation | None] = [None] * len(encoded)
        with progress_bar(label, len(encoded)) as advance:
            for start in range(0, len(order), self.batch_size):
                chunk = order[start : start + self.batch_size]
                for index, generation in zip(chunk, self._batch([encoded[i] for i in chunk], decoding), strict=True):
                    results[index] = generation
                advance(len(chunk))
        return [r for r in results if r is not None]

    def _batch(self, chunk: list[list[int]], decoding: Decoding) -> list[Generation]:
        import torch

        model, tokenizer = self.model, self.tokenizer
        device = next(model.parameters()).device
        width = max(len(ids) for ids in chunk)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        began = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids, attention_mask=attention, **decoding.kwargs(tokenizer, model))
        elapsed = time.perf_counter() - began
        stops = set(stop_token_ids(tokenizer, model))
        results = []
        for row in output[:, width:].tolist():
            new = []
            for token in row:
                if token in stops or token == pad:
                    break
                new.append(token)
            text = cut_at_stop(tokenizer.decode(new, skip_special_tokens=True), decoding.stop_strings).strip()
            results.append(Generation(text, len(new), elapsed / len(chunk), elapsed))
        return results


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


def generate(
    model, tokenizer, prompts: list[list[dict[str, str]]], decoding: Decoding | None = None, batch_size: int = 8
) -> list[Generation]:
    """Generate one reply per prompt (a list of chat messages), in left-padded batches."""
    return TransformersBackend(model, tokenizer, batch_size).generate(prompts, decoding or Decoding())


def stream(model, tokenizer, messages: list[dict[str, str]], decoding: Decoding | None = None) -> Iterator[str]:
    """Yield the reply's text piece by piece as tokens are generated."""
    import torch
    from transformers import TextIteratorStreamer

    decoding = decoding or Decoding()
    ids = encode_prompt(tokenizer, messages)
    device = next(model.parameters()).device
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    kwargs = {
        "input_ids": torch.tensor([ids], device=device),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device),
        "streamer": streamer,
        **decoding.kwargs(tokenizer, model),
    }
    errors: list[BaseException] = []

    def work() -> None:
        try:
            with torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as exc:  # surfaced in the caller's thread below
            errors.append(exc)
            streamer.end()

    thread = Thread(target=work, daemon=True)
    thread.start()
    yield from (piece for piece in streamer if piece)
    thread.join()
    if errors:
        raise errors[0]
