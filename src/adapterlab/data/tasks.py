"""Task formatters: a table row -> a rendered, tokenised training example (or a reason to drop it).

``classify``: text columns joined and cleaned (:mod:`adapterlab.data.clean`), tokenised with truncation that is
counted, the label kept as a string until the label map is built from the training split.

The ``chat`` task builds a conversational prompt-completion pair: an optional system prompt, a user message
rendered from columns by ``data.prompt_template``, and the assistant reply from ``data.target_column``. The
base model's own chat template renders it; the loss mask covers the completion only (the reply and the
template's end-of-turn token, so the model learns to stop).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapterlab.config import Recipe, template_columns

# Below this many completion tokens a truncated example teaches nothing useful; it is dropped instead.
MIN_COMPLETION_TOKENS = 16


@dataclass
class Dropped:
    reason: str  # a stable key counted in data_report.json
    detail: str  # the one-line explanation shown to the user
    fatal: bool = True  # bad data (honours on_bad_rows: error) vs. a policy drop


@dataclass
class Example:
    prompt: list[dict[str, str]]
    completion: list[dict[str, str]]
    input_ids: list[int]
    completion_mask: list[int]
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids) - sum(self.completion_mask)

    @property
    def completion_tokens(self) -> int:
        return sum(self.completion_mask)


def render_messages(row: dict[str, str | None], template: str, system_prompt: str | None) -> list[dict[str, str]]:
    """The prompt messages for one row; the same function renders prompts at eval and serve time."""
    user = template.format(**{k: (row.get(k) or "") for k in template_columns(template)})
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, {"role": "user", "content": user}]


def encode_prompt(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))


class ChatFormatter:
    """Renders, tokenises and length-checks rows for the ``chat`` task."""

    def __init__(self, recipe: Recipe, tokenizer):
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

    def format(self, row: dict[str, str | None]) -> Example | Dropped:
        bad = self.check_fields(row)
        if bad is not None:
            return bad
        prompt = render_messages(row, self.template, self.system_prompt)
        completion = [{"role": "assistant", "content": (row[self.target] or "").strip()}]
        prompt_ids = encode_prompt(self.tokenizer, prompt)
        full_ids = list(self.tokenizer.apply_chat_template(prompt + completion, return_dict=False))
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
                    "over_token_limit",
                    f"{len(full_ids)} tokens > data.max_tokens={self.max_tokens}",
                    fatal=False,
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
        return Example(prompt, completion, full_ids, mask, truncated)


@dataclass
class ClassifyExample:
    text: str  # cleaned, as the model sees it
    label: str | None
    input_ids: list[int]
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def join_text(row: dict[str, str | None], columns: list[str]) -> str | None:
    """The text of a row: its text columns joined by newlines; None when every one of them is missing."""
    values = [row.get(c) for c in columns]
    if all(v is None for v in values):
        return None
    return "\n".join(v.strip() for v in values if v and v.strip())


class ClassifyFormatter:
    """Cleans, checks and tokenises rows for the ``classify`` task (labels are mapped to ids after splitting)."""

    def __init__(self, recipe: Recipe, tokenizer):
        from adapterlab.data.clean import clean_text

        self.tokenizer = tokenizer
        self.columns = recipe.data.text_columns or []
        self.label_column = recipe.data.label_column or ""
        self.steps = recipe.data.clean.steps("classify")
        self.clean = clean_text
        self.max_tokens = recipe.data.max_tokens
        self.on_too_long = recipe.data.on_too_long

    def text_of(self, row: dict[str, str | None]) -> str | Dropped:
        raw = join_text(row, self.columns)
        if raw is None:
            return Dropped("missing_field", f"text column '{self.columns[0]}' has no value")
        if not raw:
            return Dropped("empty_field", f"text column{'s' if len(self.columns) > 1 else ''} empty")
        text = self.clean(raw, self.steps)
        if not text.strip():
            return Dropped("empty_after_cleaning", "nothing is left of the text after cleaning (only URLs, emoji, ...)")
        return text

    def format(self, row: dict[str, str | None], need_label: bool = True) -> ClassifyExample | Dropped:
        text = self.text_of(row)
        if isinstance(text, Dropped):
            return text
        label = (row.get(self.label_column) or "").strip() or None
        if need_label and label is None:
            return Dropped("missing_label", f"label column '{self.label_column}' is empty")
        return self.encode(text, label)

    def format_text(self, raw: str, label: str | None) -> ClassifyExample | Dropped:
        """A text written by a model (augmentation): cleaned, length-checked and tokenised like any row."""
        text = self.clean(raw, self.steps)
        if not text.strip():
            return Dropped("empty_after_cleaning", "nothing is left of the text after cleaning")
        return self.encode(text, label)

    def encode(self, text: str, label: str | None) -> ClassifyExample | Dropped:
        ids = list(self.tokenizer(text, truncation=False)["input_ids"])
        truncated = False
        if len(ids) > self.max_tokens:
            if self.on_too_long == "drop":
                return Dropped(
                    "over_token_limit", f"{len(ids)} tokens > data.max_tokens={self.max_tokens}", fatal=False
                )
            ids, truncated = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"], True
        return ClassifyExample(text, label, list(ids), truncated)


def formatter_for(recipe: Recipe, tokenizer) -> ChatFormatter | ClassifyFormatter:
    return ChatFormatter(recipe, tokenizer) if recipe.task == "chat" else ClassifyFormatter(recipe, tokenizer)
