"""Generation with the chat template stored alongside the adapter: batched (left-padded) and streamed.

Prompts are rendered exactly as in training (:func:`adapterlab.data.tasks.encode_prompt`), and generation stops
at the tokenizer's end-of-turn token, so what was trained is what is served.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from threading import Thread
from typing import Any

from adapterlab.data.tasks import encode_prompt


@dataclass
class Decoding:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.95
    stop_strings: list[str] = field(default_factory=list)

    def kwargs(self, tokenizer, model=None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": stop_token_ids(tokenizer, model),
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
    seconds: float


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (chat models often end turns there)."""
    ids = {tokenizer.eos_token_id}
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


def generate(
    model, tokenizer, prompts: list[list[dict[str, str]]], decoding: Decoding | None = None, batch_size: int = 8
) -> list[Generation]:
    """Generate one reply per prompt (a list of chat messages), in left-padded batches."""
    import torch

    decoding = decoding or Decoding()
    encoded = [encode_prompt(tokenizer, messages) for messages in prompts]
    results: list[Generation] = []
    device = next(model.parameters()).device
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        pad = tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        began = time.perf_counter()
        with torch.inference_mode():
            output = model.generate(input_ids=input_ids, attention_mask=attention, **decoding.kwargs(tokenizer, model))
        elapsed = time.perf_counter() - began
        stops = set(stop_token_ids(tokenizer, model))
        for row in output[:, width:].tolist():
            new = []
            for token in row:
                if token in stops:
                    break
                new.append(token)
            text = tokenizer.decode(new, skip_special_tokens=True).strip()
            results.append(Generation(text, len(new), elapsed / len(chunk)))
    return results


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
