"""Prompts rendered with the base model's own chat template, one way for training, evaluation, chat and serving.

Parity by construction: :func:`encode_prompt` is the one function that turns messages into the token ids a
model sees, whether the messages come from a training row, a test row, a terminal chat or an HTTP request.

Text is text: a message whose content contains one of the tokenizer's control strings (``<|im_end|>``,
``<|im_start|>system`` ...) would otherwise be tokenised as the real control tokens, so a user could end their
turn and forge a system turn. Such content is tokenised with the control strings split into ordinary tokens,
while the template's own control tokens stay what they are. Content without control strings (nearly all of
it) is tokenised exactly as the template renders it, unchanged from the plain path.
"""

from __future__ import annotations

import re
import secrets
import string


def template_columns(template: str) -> list[str]:
    """The column names a ``str.format`` template refers to, in order."""
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise ValueError(f"prompt_template is not a valid format string ({exc}); write columns as {{name}}") from exc
    for name in fields:
        if not name or not name.isidentifier():
            raise ValueError(
                f"prompt_template refers to {{{name}}}; use plain column names such as {{subject}} "
                "(write literal braces as {{ and }})"
            )
    return list(dict.fromkeys(fields))


def render_messages(row: dict[str, str | None], template: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The prompt messages for one row; the same function renders prompts at eval, predict and serve time."""
    user = template.format(**{k: (row.get(k) or "") for k in template_columns(template)})
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": user}]


def control_strings(tokenizer) -> list[str]:
    """The strings the tokenizer turns into one added (control) token wherever they appear in a text."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return [t.content for t in decoder.values() if t.content]


def with_user_prefix(messages: list[dict[str, str]], prefix: str | None) -> list[dict[str, str]]:
    """The last user message led by ``prefix`` (an adapter's instruction, as every training prompt was), unless it
    already starts with it: a summarisation adapter served or chatted with gets a bare article as it was trained."""
    if not prefix:
        return messages
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None or messages[last]["content"].startswith(prefix.strip()):
        return messages
    led = {**messages[last], "content": prefix + messages[last]["content"]}
    return [*messages[:last], led, *messages[last + 1 :]]


def has_control_strings(tokenizer, text: str) -> bool:
    return any(s in text for s in control_strings(tokenizer))


def encode_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The prompt's token ids up to the assistant's turn (generation prompt added)."""
    return encode_chat(tokenizer, messages, add_generation_prompt=True)


def encode_chat(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> list[int]:
    """Messages -> token ids through the chat template, with message contents tokenised as text."""
    if not any(has_control_strings(tokenizer, m["content"]) for m in messages):
        return list(
            tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, return_dict=False)
        )
    return _encode_segmented(tokenizer, messages, add_generation_prompt)


class TemplateMismatch(ValueError):
    """The chat template renders an earlier part of a conversation differently once later turns follow it."""


def encode_conversation(
    tokenizer, messages: list[dict[str, str]], train_on: str = "last"
) -> tuple[list[int], list[int]]:
    """A whole conversation -> (token ids, loss mask): 1 on the assistant turns learned from (``train_on``: the
    ``last`` one or ``all``), their content and the template's end-of-turn tokens, 0 elsewhere.

    Each assistant turn's tokens are found by rendering the conversation up to it twice, as a prompt (generation
    prompt added) and with the turn, so the mask is exactly what inference would see before and the model must
    write. Raises :class:`TemplateMismatch` where a template renders a prefix differently once turns follow it
    (templates that drop earlier reasoning do): such a conversation cannot be trained turn by turn.
    """
    if train_on not in ("last", "all"):
        raise ValueError(f"train_on must be 'last' or 'all', not {train_on!r}")
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not turns:
        raise ValueError("the conversation has no assistant turn to learn from")
    full = encode_chat(tokenizer, messages)
    mask = [0] * len(full)
    for i in turns if train_on == "all" else turns[-1:]:
        before = encode_prompt(tokenizer, messages[:i])
        through = encode_chat(tokenizer, messages[: i + 1])
        if through[: len(before)] != before or full[: len(through)] != through:
            raise TemplateMismatch(f"the chat template renders the conversation before turn {i + 1} differently")
        mask[len(before) : len(through)] = [1] * (len(through) - len(before))
    return full, mask


def fit_turns(
    tokenizer, messages: list[dict[str, str]], max_tokens: int, max_turns: int | None = None
) -> list[dict[str, str]]:
    """The conversation without its earliest turns, whole turns only, so that its prompt fits ``max_tokens`` (and
    holds at most ``max_turns`` messages after the system message): the system message stays, the kept part starts
    with a user turn, the last message always stays."""
    head = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(head) :]
    starts = [i for i, m in enumerate(body) if m["role"] == "user"] or [0]
    for start in starts:
        kept = body[start:]
        if max_turns is not None and len(kept) > max_turns and start != starts[-1]:
            continue
        if start == starts[-1] or len(encode_prompt(tokenizer, head + kept)) <= max_tokens:
            return head + kept
    return head + body[starts[-1] :]


def _encode_segmented(tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> list[int]:
    """Render with a placeholder per content, then tokenise the template's parts as usual and each content with
    its control strings split into plain tokens (a content the template leaves out is left out here too)."""
    nonce = secrets.token_hex(8)
    marks = {f"\x00{nonce}:{i}\x00": m["content"] for i, m in enumerate(messages)}
    placeheld = [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)]
    rendered = tokenizer.apply_chat_template(placeheld, add_generation_prompt=add_generation_prompt, tokenize=False)
    ids: list[int] = []
    for i, part in enumerate(re.split(f"(\x00{nonce}:\\d+\x00)", rendered)):
        ids += _as_text(tokenizer, marks[part]) if i % 2 else _plain(tokenizer, part)
    return ids


def _plain(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _as_text(tokenizer, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
