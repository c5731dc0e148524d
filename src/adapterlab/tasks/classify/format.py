"""``classify`` rows -> cleaned, tokenised texts with a label, and the prepared files the trainer reads.

The text columns are joined and cleaned (:func:`adapterlab.data.clean.row_text`, the same at prediction), then
tokenised with truncation that is counted. The label stays a string until the label map is built from the
training split (:mod:`adapterlab.tasks.classify.labels`). A row without a label is kept aside (``pending``) when
the recipe weak-labels the data file's own unlabeled rows, and dropped as ``missing_label`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from adapterlab.data.clean import clean_text, join_text
from adapterlab.data.tokenized import save_tokenized
from adapterlab.runs import RunDir, write_json, write_jsonl
from adapterlab.task import Dropped


@dataclass
class ClassifyExample:
    text: str  # cleaned, as the model sees it
    label: str | None
    input_ids: list[int]
    truncated: bool = False
    meta: dict[str, Any] = field(default_factory=dict)

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
        self.max_tokens = recipe.data.max_tokens
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
        ids = list(self.tokenizer(text, truncation=False)["input_ids"])
        truncated = False
        if len(ids) > self.max_tokens:
            if self.on_too_long == "drop":
                return Dropped(
                    "over_token_limit", f"{len(ids)} tokens > data.max_tokens={self.max_tokens}", fatal=False
                )
            ids, truncated = self.tokenizer(text, truncation=True, max_length=self.max_tokens)["input_ids"], True
        return ClassifyExample(text, label, list(ids), truncated)


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
