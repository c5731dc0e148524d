"""``chat`` rows -> conversational prompt-completion examples, and the prepared files the trainer reads.

A prompt is an optional system prompt plus a user message rendered from columns by ``data.prompt_template``; the
reply comes from ``data.target_column``. The base model's own chat template renders both; the loss mask covers
the completion only (the reply and the template's end-of-turn token, so the model learns to stop). Text that
contains the template's control strings is tokenised as text (:mod:`adapterlab.rendering`) and counted.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from adapterlab.rendering import encode_chat, encode_prompt, has_control_strings, render_messages, template_columns
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


class ChatFormatter:
    """Renders, tokenises and length-checks rows for the ``chat`` task."""

    def __init__(self, recipe, tokenizer):
        data = recipe.data
        self.tokenizer = tokenizer
        self.template = data.prompt_template or ""
        self.system_prompt = data.system_prompt
        self.target = data.target_column or ""
        self.max_tokens = data.max_tokens
        self.on_too_long = data.on_too_long
        self.required = [*template_columns(self.template), self.target]

    def check_fields(self, row: dict[str, str | None]) -> Dropped | None:
        for column in self.required:
            value = row.get(column)
            if value is None:
                return Dropped("missing_field", f"column '{column}' has no value")
            if not value.strip():
                return Dropped("empty_field", f"column '{column}' is empty")
        return None

    def format(self, row: dict[str, str | None]) -> ChatExample | Dropped:
        bad = self.check_fields(row)
        if bad is not None:
            return bad
        prompt = render_messages(row, self.template, self.system_prompt)
        completion = [{"role": "assistant", "content": (row[self.target] or "").strip()}]
        prompt_ids = encode_prompt(self.tokenizer, prompt)
        full_ids = encode_chat(self.tokenizer, prompt + completion)
        # The completion starts where the two renderings diverge; a template that renders the prompt alone
        # differently would otherwise train on a context the model never sees at inference.
        if full_ids[: len(prompt_ids)] != prompt_ids:
            return Dropped(
                "template_mismatch",
                "the chat template renders the prompt differently with and without the reply",
            )
        n_prompt = len(prompt_ids)
        truncated = False
        if len(full_ids) > self.max_tokens:
            if self.on_too_long == "drop":
                return Dropped(
                    "over_token_limit", f"{len(full_ids)} tokens > data.max_tokens={self.max_tokens}", fatal=False
                )
            if self.max_tokens - n_prompt < MIN_COMPLETION_TOKENS:
                return Dropped(
                    "over_token_limit",
                    f"the prompt alone has {n_prompt} tokens, too close to data.max_tokens={self.max_tokens}",
                    fatal=False,
                )
            full_ids = full_ids[: self.max_tokens]  # keep the whole prompt, cut the reply's tail
            truncated = True
        mask = [0] * n_prompt + [1] * (len(full_ids) - n_prompt)
        control = any(has_control_strings(self.tokenizer, m["content"]) for m in prompt + completion)
        return ChatExample(prompt, completion, full_ids, mask, truncated, control_text=control)


def control_text_report(by_split: dict[str, list[ChatExample]]) -> dict[str, Any]:
    """The chat part of the data report: rows whose text held control strings (kept, tokenised as text)."""
    counts = Counter(name for name, rows in by_split.items() for e in rows if e.control_text)
    return {"control_strings_as_text": dict(counts)} if counts else {}


def write_examples(run: RunDir, by_split: dict[str, list[ChatExample]]) -> None:
    from datasets import Dataset, DatasetDict, Features, Sequence, Value

    features = Features({"input_ids": Sequence(Value("int32")), "completion_mask": Sequence(Value("int8"))})
    tokenized = {}
    for name, rows in by_split.items():
        write_jsonl(run.split_file(name), [
            {"id": e.meta["id"], "row": e.meta["row"], "messages": e.prompt, "completion": e.completion[0]["content"],
             "prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens, "truncated": e.truncated,
             "source": e.meta["source"]}
            for e in rows
        ])  # fmt: skip
        tokenized[name] = Dataset.from_dict(
            {"input_ids": [e.input_ids for e in rows], "completion_mask": [e.completion_mask for e in rows]},
            features=features,
        )
    DatasetDict(tokenized).save_to_disk(str(run.tokenized))
