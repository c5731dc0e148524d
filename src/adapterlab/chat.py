"""``adapterlab chat RUN``: a multi-turn terminal chat with the adapter (or ``--base``), tokens streamed."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from adapterlab.console import console
from adapterlab.errors import ModelError
from adapterlab.generation import BASE, Decoding, TransformersGenerator
from adapterlab.registry import get_task
from adapterlab.rendering import fit_turns
from adapterlab.runs import AdapterInfo

HELP = "Type a message; /reset starts over, /exit (or Ctrl-D) quits."
ADAPTER = "adapter"


def chat_loop(
    generator: TransformersGenerator,
    system_prompt: str | None,
    decoding: Decoding,
    read: Callable[[], str],
    write: Callable[[str], None],
    model: str = ADAPTER,
    max_turns: int | None = None,
) -> list[dict[str, str]]:
    """The conversation loop, with input and output injected so that a test can drive it. Each prompt is the
    conversation so far, its earliest turns left out (whole turns) where it would not fit the model's context with
    room for the reply, or where it holds more than ``max_turns`` messages (a dialogue adapter's trained window)."""
    history: list[dict[str, str]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    start = len(history)
    while True:
        try:
            text = read().strip()
        except EOFError:
            break
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            del history[start:]
            write("(conversation cleared)\n")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        pieces = []
        # --base: the same loaded weights with the LoRA layers bypassed, so both answers share one model.
        budget = context_length(generator) - decoding.max_new_tokens
        prompt = fit_turns(generator.tokenizer, history, budget, max_turns)
        for piece in generator.stream(prompt, model, decoding):
            pieces.append(piece)
            write(piece)
        write("\n")
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
    return history


def context_length(generator: TransformersGenerator) -> int:
    return int(getattr(generator.model.config, "max_position_embeddings", 2048) or 2048)


def chat(
    run: str | Path, use_base: bool = False, decoding: Decoding | None = None, system: str | None = None,
    repetition_penalty: float | None = None,
) -> list[dict[str, str]]:  # fmt: skip
    """``repetition_penalty`` None and no stop strings in ``decoding``: the run's own, as its evaluation decoded
    (for the base model too, as evaluation compared them)."""
    from adapterlab.generative.infer import predict_decoding
    from adapterlab.models import load_with_adapter

    info = AdapterInfo.read(run)
    if not get_task(info.task).generative:
        raise ModelError(f"{info.path}: a '{info.task}' adapter does not write replies; use adapterlab predict")
    model, tokenizer = load_with_adapter(info, adapter_name=ADAPTER)
    generator = TransformersGenerator(model, tokenizer)
    system_prompt = system if system is not None else info.task_info.get("prompt", {}).get("system_prompt")
    who = "the base model (adapter disabled)" if use_base else f"the adapter in {info.path}"
    console.print(f"[bold]Chatting with {who}.[/bold] {HELP}")

    # A summariser learned prompts led by its instruction: a bare article typed here gets it too (not for --base).
    prefix = None if use_base else info.task_info.get("prompt", {}).get("user_prefix")

    def read() -> str:
        text = console.input("[bold cyan]you>[/bold cyan] ")
        return (
            prefix + text
            if prefix and text.strip() and not text.startswith("/") and not text.startswith(prefix.strip())
            else text
        )

    def write(piece: str) -> None:
        console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)

    decoding = decoding or Decoding(max_new_tokens=256)
    saved = predict_decoding(info, decoding.max_new_tokens)
    decoding = dataclasses.replace(
        decoding,
        stop_strings=decoding.stop_strings or saved.stop_strings,
        repetition_penalty=saved.repetition_penalty if repetition_penalty is None else repetition_penalty,
    )
    if decoding.repetition_penalty != 1.0:
        console.print(f"[dim]repetition penalty {decoding.repetition_penalty:g} (--repetition-penalty)[/dim]")
    # A dialogue adapter learned replies to its last few lines; the prompt keeps that many (plus the new one).
    turns = info.task_info.get("prompt", {}).get("context_turns")
    max_turns = turns + 1 if turns else None
    return chat_loop(generator, system_prompt, decoding, read, write, BASE if use_base else ADAPTER, max_turns)
