"""``adapterlab chat RUN``: a multi-turn terminal chat with the adapter (or ``--base``), tokens streamed."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from adapterlab.console import console
from adapterlab.eval.generate import Decoding, stream

HELP = "Type a message; /reset starts over, /exit (or Ctrl-D) quits."


def chat_loop(
    model,
    tokenizer,
    system_prompt: str | None,
    decoding: Decoding,
    read: Callable[[], str],
    write: Callable[[str], None],
    use_base: bool = False,
) -> list[dict[str, str]]:
    """The conversation loop, with input and output injected so that a test can drive it."""
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
        bypass = model.disable_adapter() if use_base else contextlib.nullcontext()
        with bypass:
            for piece in stream(model, tokenizer, history, decoding):
                pieces.append(piece)
                write(piece)
        write("\n")
        history.append({"role": "assistant", "content": "".join(pieces).strip()})
    return history


def chat(
    run: str | Path, use_base: bool = False, decoding: Decoding | None = None, system: str | None = None
) -> list[dict[str, str]]:
    from adapterlab.models import load_with_adapter, read_adapter

    info = read_adapter(run)
    model, tokenizer = load_with_adapter(info)
    system_prompt = system if system is not None else info.meta["prompt"].get("system_prompt")
    who = "the base model (adapter disabled)" if use_base else f"the adapter in {info.path}"
    console.print(f"[bold]Chatting with {who}.[/bold] {HELP}")

    def read() -> str:
        return console.input("[bold cyan]you>[/bold cyan] ")

    def write(piece: str) -> None:
        console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)

    return chat_loop(model, tokenizer, system_prompt, decoding or Decoding(max_new_tokens=256), read, write, use_base)
