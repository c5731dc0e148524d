"""What every generative task's examples share: a conversation rendered by the base model's chat template into
token ids and a loss mask, and the prepared files the trainer reads.

An example's prompt is everything before its last reply and its completion that reply, so evaluation, golden
prompts, predict and serve see the context exactly as training did. :class:`ConversationEncoder` turns a checked
message list into an example: the loss covers the last assistant reply or every one (``train_on``), and a
conversation over the token limit loses whole earlier turns (never part of a reply) or is counted as too long.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from adapterlab.data.tokenized import save_tokenized
from adapterlab.generative.conversation import EARLIER_TURNS_DROPPED, earlier_turn_starts, without_earlier_turns
from adapterlab.rendering import TemplateMismatch, encode_chat, encode_conversation, has_control_strings
from adapterlab.runs import RunDir, write_jsonl
from adapterlab.task import Dropped

# Below this many completion tokens a truncated example teaches nothing useful; it is dropped instead.
MIN_COMPLETION_TOKENS = 16


@dataclass
class ChatExample:
    prompt: list[dict[str, str]]
    completion: list[dict[str, str]]
    input_ids: list[int]
    completion_mask: list[int]
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    control_text: bool = False  # a message contained the template's control strings (tokenised as text)
    notes: list[str] = field(default_factory=list)  # repairs of a conversation row, counted in the data report
    # meta["fields"]: a task's own fields of the split file (a summary's document as the model saw it)

    pending = False

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids) - sum(self.completion_mask)

    @property
    def completion_tokens(self) -> int:
        return sum(self.completion_mask)

    def dedupe_key(self) -> tuple[str, Any]:
        return json.dumps([self.prompt, self.completion], ensure_ascii=False), None

    def lengths(self) -> dict[str, int]:
        total = len(self.input_ids)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


class ConversationEncoder:
    """A checked message list -> a :class:`ChatExample` learning its last reply or every reply."""

    def __init__(self, tokenizer, train_on: str, max_tokens: int, on_too_long: str):
        self.tokenizer = tokenizer
        self.train_on = train_on
        self.max_tokens = max_tokens
        self.on_too_long = on_too_long

    def example(self, messages: list[dict[str, str]], notes: list[str] | None = None) -> ChatExample | Dropped:
        notes = list(notes or [])
        encoded = self.encode(messages)
        if isinstance(encoded, Dropped):
            return encoded
        ids, mask = encoded
        truncated = len(ids) > self.max_tokens
        if truncated:
            if self.on_too_long == "drop":
                return Dropped(
                    "over_token_limit", f"{len(ids)} tokens > data.max_tokens={self.max_tokens}", fatal=False
                )
            fitted = self.fit(messages, len(ids))
            if isinstance(fitted, Dropped):
                return fitted
            messages, ids, mask = fitted
            notes.append(EARLIER_TURNS_DROPPED)
        control = any(has_control_strings(self.tokenizer, m["content"]) for m in messages)
        return ChatExample(messages[:-1], messages[-1:], ids, mask, truncated, control_text=control, notes=notes)

    def encode(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]] | Dropped:
        try:
            return encode_conversation(self.tokenizer, messages, self.train_on)
        except TemplateMismatch as exc:
            return Dropped("template_mismatch", f"{exc}; such a conversation cannot be trained turn by turn")

    def fit(self, messages: list[dict[str, str]], length: int):
        """(messages, ids, mask) without the fewest earlier turns that fit data.max_tokens; the system message and
        the last exchange always stay (a reply is never cut: it would teach the model to stop mid-sentence)."""
        starts = earlier_turn_starts(messages)
        for start in starts:
            shorter = without_earlier_turns(messages, start)
            shortest = len(encode_chat(self.tokenizer, shorter))
            if shortest <= self.max_tokens:
                encoded = self.encode(shorter)
                return encoded if isinstance(encoded, Dropped) else (shorter, *encoded)
        kept = f", {shortest} with only the last exchange" if starts else " in a single exchange"
        return Dropped("over_token_limit", f"{length} tokens > data.max_tokens={self.max_tokens}{kept}", fatal=False)


def only_last_reply(mask: list[int]) -> list[int]:
    """The mask's last run of ones alone: the final reply of a conversation (its only run for a single turn)."""
    end = len(mask) - mask[::-1].index(1) if 1 in mask else 0
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [0] * start + [1] * (end - start) + [0] * (len(mask) - end)


def finish_splits(by_split: dict[str, list[ChatExample]]) -> dict[str, Any]:
    """After the split: test examples score their last reply only, the reply evaluation compares with (training on
    every reply of a conversation still counts every reply in train and val); returns the chat report part."""
    for example in by_split.get("test", []):
        example.completion_mask = only_last_reply(example.completion_mask)
    return {**control_text_report(by_split), **notes_report(by_split)}


def control_text_report(by_split: dict[str, list[ChatExample]]) -> dict[str, Any]:
    """The chat part of the data report: rows whose text held control strings (kept, tokenised as text)."""
    counts = Counter(name for name, rows in by_split.items() for e in rows if e.control_text)
    return {"control_strings_as_text": dict(counts)} if counts else {}


def notes_report(by_split: dict[str, list[ChatExample]]) -> dict[str, Any]:
    """Kept conversation rows that were repaired, by note (a row counts once per note)."""
    counts = Counter(note for rows in by_split.values() for e in rows for note in set(e.notes))
    return {"conversation_notes": dict(sorted(counts.items()))} if counts else {}


def note_lines(report: dict[str, Any]) -> list[tuple[str, str]]:
    lines = [(f"note: {note}", str(count)) for note, count in report.get("conversation_notes", {}).items()]
    control = sum(report.get("control_strings_as_text", {}).values())
    return lines + ([("note: control_strings_as_text", str(control))] if control else [])


def write_examples(run: RunDir, by_split: dict[str, list[ChatExample]]) -> None:
    from datasets import Features, Sequence, Value

    features = Features({"input_ids": Sequence(Value("int32")), "completion_mask": Sequence(Value("int8"))})
    tokenized = {}
    for name, rows in by_split.items():
        write_jsonl(run.split_file(name), [
            {"id": e.meta["id"], "row": e.meta["row"], "messages": e.prompt, "completion": e.completion[0]["content"],
             "prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens, "truncated": e.truncated,
             "source": e.meta["source"], **e.meta.get("fields", {})}
            for e in rows
        ])  # fmt: skip
        tokenized[name] = {
            "input_ids": [e.input_ids for e in rows],
            "completion_mask": [e.completion_mask for e in rows],
        }
    save_tokenized(run.tokenized, tokenized, features)
