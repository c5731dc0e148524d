"""``classify`` rows -> cleaned, tokenised texts with a label, and the prepared files the trainer reads.

The text columns are joined and cleaned (:func:`adapterlab.data.clean.row_text`, the same at prediction), then
tokenised with truncation that is counted: :func:`encode_text` keeps the head, or the head and the tail, of a
text longer than ``data.max_tokens`` (the same function runs at prediction); ``data.max_tokens: auto`` is settled
after the split from the training texts' lengths (:func:`auto_max_tokens`). The label stays a string until the
label map is built from the training split (:mod:`adapterlab.tasks.classify.labels`). A row without a label is
kept aside (``pending``) when the recipe weak-labels the data file's own unlabeled rows, and dropped as
``missing_label`` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from adapterlab.data.clean import clean_text, join_text
from adapterlab.data.tokenized import save_tokenized
from adapterlab.errors import RecipeError
from adapterlab.runs import RunDir, write_json, write_jsonl
from adapterlab.task import Dropped


@dataclass
class ClassifyExample:
    text: str  # cleaned, as the model sees it
    label: str | None
    input_ids: list[int]
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)
    full_tokens: int = 0  # before truncation: what data.max_tokens: auto is settled from

    @property
    def pending(self) -> bool:
        return self.label is None

    def dedupe_key(self) -> tuple[str, Any]:
        return self.text, self.label

    def lengths(self) -> dict[str, int]:
        return {"total_tokens": len(self.input_ids)}


class ClassifyFormatter:
    """Cleans, checks and tokenises rows for the ``classify`` task (labels are mapped to ids after splitting)."""

    def __init__(self, recipe, tokenizer):
        self.tokenizer = tokenizer
        self.columns = recipe.data.text_columns or []
        self.label_column = recipe.data.label_column or ""
        self.steps = recipe.data.clean.steps()
        # auto: the encoder's own limit until the split is known (labels.settle_max_tokens sets the real one)
        self.max_tokens = encoder_limit(tokenizer) if recipe.data.max_tokens == "auto" else recipe.data.max_tokens
        if self.max_tokens > encoder_limit(tokenizer):  # the encoder has no position for a longer text
            raise RecipeError(
                f"data.max_tokens: {self.max_tokens} is more than the encoder takes ({encoder_limit(tokenizer)} "
                f"tokens); set at most {encoder_limit(tokenizer)}, or auto"
            )
        self.truncation = recipe.data.truncation
        self.on_too_long = recipe.data.on_too_long
        # Unlabeled rows of the data file itself are weak-labelled later (weak_label without a path).
        self.keep_unlabeled = recipe.weak_label is not None and recipe.weak_label.path is None

    def text_of(self, row: dict[str, str | None]) -> str | Dropped:
        raw = join_text(row, self.columns)
        if raw is None:
            return Dropped("missing_field", f"text column '{self.columns[0]}' has no value")
        if not raw:
            return Dropped("empty_field", f"text column{'s' if len(self.columns) > 1 else ''} empty")
        text = clean_text(raw, self.steps)
        if not text.strip():
            return Dropped("empty_after_cleaning", "nothing is left of the text after cleaning (only URLs, emoji, ...)")
        return text

    def format(self, row: dict[str, str | None], need_label: bool | None = None) -> ClassifyExample | Dropped:
        text = self.text_of(row)
        if isinstance(text, Dropped):
            return text
        label = (row.get(self.label_column) or "").strip() or None
        need = not self.keep_unlabeled if need_label is None else need_label
        if need and label is None:
            return Dropped("missing_label", f"label column '{self.label_column}' is empty")
        return self.encode(text, label)

    def format_text(self, raw: str, label: str | None) -> ClassifyExample | Dropped:
        """A text written by a model (augmentation): cleaned, length-checked and tokenised like any row."""
        text = clean_text(raw, self.steps)
        if not text.strip():
            return Dropped("empty_after_cleaning", "nothing is left of the text after cleaning")
        return self.encode(text, label)

    def encode(self, text: str, label: str | None) -> ClassifyExample | Dropped:
        full = list(self.tokenizer(text, truncation=False)["input_ids"])
        if len(full) > self.max_tokens and self.on_too_long == "drop":
            return Dropped("over_token_limit", f"{len(full)} tokens > data.max_tokens={self.max_tokens}", fatal=False)
        ids = cut(full, self.max_tokens, self.truncation, special_tokens(self.tokenizer))
        return ClassifyExample(text, label, ids, len(ids) < len(full), full_tokens=len(full))


# ---------------------------------------------------------------------------------------------- truncation

AUTO_QUANTILE = 0.9  # data.max_tokens: auto covers 90% of the training texts whole ...
AUTO_CAP = 128  # ... up to 128 tokens: training time grows with length, and 10 minutes on a 2-core CPU is the budget
AUTO_MULTIPLE = 32
TAIL_SHARE = 0.5  # head_tail keeps this share of the room from the end of the text


def encoder_limit(tokenizer) -> int:
    """The longest input the tokenizer's model takes (512 when the tokenizer does not say)."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 16 < limit <= 100_000 else 512


@cache
def _special_counts(tokenizer) -> tuple[int, int]:
    probe = "a b c"
    full = list(tokenizer(probe)["input_ids"])
    content = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for front in range(len(full) - len(content) + 1):
        if full[front : front + len(content)] == content:
            return front, len(full) - front - len(content)
    return 0, 0


def special_tokens(tokenizer) -> tuple[int, int]:
    """(tokens the tokenizer adds before a text, after it): [CLS] and [SEP] for BERT, none for most decoders."""
    try:
        return _special_counts(tokenizer)
    except TypeError:  # an unhashable tokenizer: probe every time (cheap)
        return _special_counts.__wrapped__(tokenizer)


def cut(ids: list[int], max_tokens: int, policy: str, specials: tuple[int, int]) -> list[int]:
    """``ids`` (special tokens included) shortened to ``max_tokens``, keeping the special tokens: the head of
    the content, or its head and its tail (``head_tail``: reviews and articles often conclude at the end)."""
    if len(ids) <= max_tokens:
        return list(ids)
    front, back = specials
    content = ids[front : len(ids) - back]
    room = max(max_tokens - front - back, 1)
    tail = int(room * TAIL_SHARE) if policy == "head_tail" else 0
    kept = content[: room - tail] + (content[len(content) - tail :] if tail else [])
    return [*ids[:front], *kept, *ids[len(ids) - back :]]


def encode_text(tokenizer, texts: list[str], max_tokens: int, policy: str = "head") -> list[list[int]]:
    """Token ids of cleaned texts as training saw them (prediction uses this too)."""
    specials = special_tokens(tokenizer)
    return [cut(list(ids), max_tokens, policy, specials) for ids in tokenizer(texts, truncation=False)["input_ids"]]


def auto_max_tokens(lengths: list[int], limit: int) -> int:
    """The token limit for ``data.max_tokens: auto``: the 90th percentile of the training texts' lengths (special
    tokens included), rounded up to a multiple of 32, at most 128 and the encoder's limit, at least 64."""
    if not lengths:
        return min(AUTO_CAP, limit)
    ordered = sorted(lengths)
    quantile = ordered[min(len(ordered) - 1, math.ceil(AUTO_QUANTILE * len(ordered)) - 1)]
    rounded = AUTO_MULTIPLE * math.ceil(quantile / AUTO_MULTIPLE)
    return max(min(rounded, AUTO_CAP, limit), min(64, limit))


def write_examples(run: RunDir, by_split: dict[str, list[ClassifyExample]], labels: list[str]) -> None:
    """data/{split}.jsonl (readable), data/tokenized (input_ids, labels), data/label_map.json."""
    from datasets import Features, Sequence, Value

    label2id = {label: i for i, label in enumerate(labels)}
    features = Features({"input_ids": Sequence(Value("int32")), "labels": Value("int64")})
    tokenized = {}
    for name, rows in by_split.items():
        write_jsonl(run.split_file(name), [
            {"id": e.meta["id"], "row": e.meta["row"], "text": e.text, "label": e.label, "label_id": label2id[e.label],
             "tokens": len(e.input_ids), "truncated": e.truncated, "weak": bool(e.meta.get("weak")),
             "confidence": e.meta.get("confidence"), "augmented": e.meta.get("augmented"),
             "source_id": e.meta.get("source_id"), "source": e.meta["source"]}
            for e in rows
        ])  # fmt: skip
        tokenized[name] = {"input_ids": [e.input_ids for e in rows], "labels": [label2id[e.label] for e in rows]}
    save_tokenized(run.tokenized, tokenized, features)
    write_json(run.label_map, {"labels": labels, "label2id": label2id})
