"""Conversation cells -> checked message lists, the same for training rows and for ``adapterlab predict``.

A cell holds one conversation as a JSON list (a JSONL list arrives as its JSON text, a CSV cell may hold the same
text) in one of two shapes:

- OpenAI ``messages``: ``[{"role": "system"|"user"|"assistant", "content": "..."}, ...]`` (a content may also be a
  list of ``{"type": "text", "text": ...}`` parts);
- ShareGPT: ``[{"from": "system"|"human"|"gpt", "value": "..."}, ...]``, with ``user``/``assistant``/``bot``/
  ``model`` accepted for ``from``, and the record's optional top-level ``system`` field as its system message.

What is wrong with a conversation is a counted :class:`~adapterlab.task.Dropped` with its reason, never a silent
skip: ``not_a_conversation`` (not JSON, or not a list), ``empty_field`` (no messages), ``bad_message`` (a message
that is not an object or lacks its role or content), ``unknown_role``, ``misplaced_system`` (two system messages,
or one that is not first), ``empty_message``; for training also ``no_assistant_turn`` and ``no_user_turn`` (the
last reply answers nobody). What is repaired is counted as a note: consecutive messages of one role are merged
(joined by a blank line), user turns after the last reply are cut (they have no reply to learn).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any

from adapterlab.task import Dropped

ROLES = ("system", "user", "assistant")
# ShareGPT's speaker names and the aliases its many exporters use.
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "bot": "assistant", "model": "assistant"}  # fmt: skip
# (role key, content key) of each shape.
SHAPES = {"messages": ("role", "content"), "sharegpt": ("from", "value")}
SHAREGPT_SYSTEM_FIELD = "system"

# Notes: rows kept after a repair, counted in the data report.
MERGED = "same_role_merged"
TRAILING_CUT = "trailing_user_turns_cut"
EARLIER_TURNS_DROPPED = "earlier_turns_dropped_to_fit"


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    shape: str
    notes: list[str] = field(default_factory=list)  # repairs made on the way (MERGED, TRAILING_CUT ...)


def read_conversation(
    cell: str | None, shape: str = "auto", row_system: str | None = None, system_prompt: str | None = None
) -> Conversation | Dropped:
    """One cell -> its messages, checked and with same-role runs merged. ``row_system``: a ShareGPT record's
    ``system`` field; ``system_prompt`` (the recipe's) is the system message of conversations that carry none."""
    if cell is None:
        return Dropped("missing_field", "the conversation column has no value")
    if not cell.strip():
        return Dropped("empty_field", "the conversation column is empty")
    try:
        value = json.loads(cell)
    except (ValueError, RecursionError) as exc:
        why = exc.msg if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
        return Dropped("not_a_conversation", f"the conversation is not valid JSON ({why}); write a list of messages")
    if not isinstance(value, list):
        return Dropped("not_a_conversation", f"the conversation is {_kind(value)}, not a list of messages")
    if not value:
        return Dropped("empty_field", "the conversation has no messages")
    if shape == "auto":
        shape = _detect_shape(value[0])
        if shape == "auto":
            if not isinstance(value[0], dict):
                return Dropped("bad_message", _not_object(value[0], 1))
            return Dropped("bad_message", "message 1 has neither role/content (messages) nor from/value (sharegpt)")
    messages = []
    for number, message in enumerate(value, 1):
        checked = _message(message, number, shape)
        if isinstance(checked, Dropped):
            return checked
        messages.append(checked)
    extra = (row_system or "").strip() if shape == "sharegpt" else ""
    if extra:
        if messages[0]["role"] == "system":
            return Dropped("misplaced_system", "two system messages: the record's 'system' field and message 1")
        messages.insert(0, {"role": "system", "content": extra})
    bad = _system_placement(messages, shifted=bool(extra))
    if bad is not None:
        return bad
    if system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    merged = merge_same_roles(messages)
    return Conversation(merged, shape, [MERGED] if len(merged) < len(messages) else [])


def for_training(conversation: Conversation) -> Conversation | Dropped:
    """Ends at the last assistant reply (later user turns cut and noted), which must answer a user turn."""
    messages = conversation.messages
    replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if not replies:
        return Dropped("no_assistant_turn", "the conversation has no assistant message to learn from")
    last = replies[-1]
    if not any(m["role"] == "user" for m in messages[:last]):
        return Dropped("no_user_turn", "the conversation has no user message before its last assistant reply")
    notes = conversation.notes + ([TRAILING_CUT] if last < len(messages) - 1 else [])
    return replace(conversation, messages=messages[: last + 1], notes=notes)


def for_reply(conversation: Conversation) -> Conversation | Dropped:
    """The context a new reply continues: through the last user message (replies after it are set aside)."""
    messages = conversation.messages
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        return Dropped("no_user_turn", "the conversation has no user message to reply to")
    last = users[-1]
    notes = conversation.notes + ([TRAILING_CUT] if last < len(messages) - 1 else [])
    return replace(conversation, messages=messages[: last + 1], notes=notes)


def merge_same_roles(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Consecutive messages of one role as one message, their contents joined by a blank line."""
    merged: list[dict[str, str]] = []
    for message in messages:
        if merged and merged[-1]["role"] == message["role"]:
            merged[-1] = {"role": message["role"], "content": merged[-1]["content"] + "\n\n" + message["content"]}
        else:
            merged.append(dict(message))
    return merged


def earlier_turn_starts(messages: list[dict[str, str]]) -> list[int]:
    """Where the conversation may start instead when earlier turns must go to fit: each later user message, so the
    system message (if any) is followed by a user turn and the last reply is always kept."""
    first = 1 if messages[0]["role"] == "system" else 0
    return [i for i, m in enumerate(messages) if i > first and m["role"] == "user"]


def without_earlier_turns(messages: list[dict[str, str]], start: int) -> list[dict[str, str]]:
    head = messages[:1] if messages[0]["role"] == "system" else []
    return head + messages[start:]


# ------------------------------------------------------------------------------------------------ checks


def _detect_shape(message: Any) -> str:
    if isinstance(message, dict):
        for shape, (role_key, _) in SHAPES.items():
            if role_key in message:
                return shape
    return "auto"


def _message(message: Any, number: int, shape: str) -> dict[str, str] | Dropped:
    role_key, content_key = SHAPES[shape]
    if not isinstance(message, dict):
        return Dropped("bad_message", _not_object(message, number))
    for key in (role_key, content_key):
        if key not in message:
            return Dropped("bad_message", f"message {number} has no '{key}' (data.conversation_format: {shape})")
    role, content = message[role_key], _text(message[content_key])
    if not isinstance(role, str):
        return Dropped("bad_message", f"message {number}: '{role_key}' is {_kind(role)}, not text")
    known = SHAREGPT_ROLES if shape == "sharegpt" else {r: r for r in ROLES}
    normalised = known.get(role.strip().lower())
    if normalised is None:
        return Dropped("unknown_role", f"message {number} has {role_key} '{role[:40]}'; use one of {', '.join(known)}")
    if content is None:
        return Dropped("bad_message", f"message {number}: '{content_key}' is {_kind(message[content_key])}, not text")
    if not content.strip():
        return Dropped("empty_message", f"message {number} ({normalised}) is empty")
    return {"role": normalised, "content": content.strip()}


def _text(content: Any) -> str | None:
    """A content as text: a string, or OpenAI's list of text parts joined; None for anything else."""
    if isinstance(content, str):
        return content
    if (
        isinstance(content, list)
        and content
        and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content)
    ):
        return "".join(p["text"] for p in content)
    return None


def _system_placement(messages: list[dict[str, str]], shifted: bool) -> Dropped | None:
    # Message numbers as the file counts them (the record's system field, when inserted, is not one of them).
    numbers = [i + 1 - int(shifted) for i, m in enumerate(messages) if m["role"] == "system"]
    if len(numbers) > 1:
        where = "the record's 'system' field" if shifted else f"message {numbers[0]}"
        return Dropped("misplaced_system", f"two system messages: {where} and message {numbers[1]}; keep one")
    if numbers and messages[0]["role"] != "system":
        return Dropped("misplaced_system", f"the system message is message {numbers[0]}; it must come first")
    return None


def _not_object(message: Any, number: int) -> str:
    return f"message {number} is {_kind(message)}, not an object"


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "text"}.get(type(value), type(value).__name__)
