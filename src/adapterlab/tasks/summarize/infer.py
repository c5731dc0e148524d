"""``adapterlab predict`` for a summarisation adapter: one summary per row, prompted exactly as in training.

The prompt recipe (instruction, document columns, title, how documents are cut) travels with the adapter in
``adapterlab.json``. A document is cut to leave room for ``max_new_tokens`` of summary within the training limit,
from the side the recipe named; each cut row is counted in the prediction report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapterlab.generation import TransformersGenerator
from adapterlab.generative.infer import predict_decoding
from adapterlab.rendering import encode_prompt
from adapterlab.runs import AdapterInfo
from adapterlab.task import Skipped
from adapterlab.tasks.summarize.format import cut_to_fit, document_of, prompt_messages

ADAPTER = "adapter"


class SummaryPredictor:
    def __init__(self, info: AdapterInfo, precision: str, batch_size: int | None = None, max_new_tokens: int = 128,
                 **_options: Any):  # fmt: skip
        from adapterlab.models import load_with_adapter

        self.prompt = info.task_info["prompt"]
        self.columns = list(self.prompt["document_columns"])
        self.title = self.prompt.get("title_column")
        self.output_columns = ["summary"]
        model, self.tokenizer = load_with_adapter(info, precision, adapter_name=ADAPTER)
        self.generator = TransformersGenerator(model, self.tokenizer, batch_size or 8)
        self.decoding = predict_decoding(info, max_new_tokens)
        self.limit = max(self.prompt["max_tokens"] - max_new_tokens, 64)
        self.cut = 0

    def messages(self, row: dict[str, str | None]) -> list[dict[str, str]] | Skipped:
        document = document_of(row, self.columns)
        if not document:
            return Skipped("empty_document")
        title = row.get(self.title) if self.title else None

        def length_of(text: str) -> int:
            return len(encode_prompt(self.tokenizer, prompt_messages(text, title, self.prompt)))

        if length_of(document) > self.limit:
            shorter = cut_to_fit(self.tokenizer, document, length_of, self.limit, self.prompt["truncate"])
            if shorter is None:
                return Skipped("over_token_limit")
            document, self.cut = shorter, self.cut + 1
        return prompt_messages(document, title, self.prompt)

    def predict(self, rows: Sequence[dict[str, str | None]]) -> list[dict[str, str] | Skipped]:
        prompts = [self.messages(row) for row in rows]
        usable = [i for i, p in enumerate(prompts) if not isinstance(p, Skipped)]
        replies = self.generator.generate([prompts[i] for i in usable], ADAPTER, self.decoding, label="summarise")
        by_row = {i: {"summary": g.text} for i, g in zip(usable, replies, strict=True)}
        return [by_row.get(i, prompts[i]) for i in range(len(rows))]

    def describe(self, rows, outputs) -> dict[str, Any]:
        if not self.cut:
            return {"columns": self.columns}
        note = f"{self.cut} documents were cut ({self.prompt['truncate']}) to fit the adapter's token limit"
        return {"columns": self.columns, "documents_cut": self.cut, "notes": [note]}
