"""``adapterlab predict`` for a code adapter: one program per row, prompted exactly as in training.

Writes the whole reply and the program taken from it (what the evaluation would run). Nothing is executed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapterlab.generation import TransformersGenerator
from adapterlab.generative.infer import predict_decoding
from adapterlab.metrics.code import extract_code
from adapterlab.runs import AdapterInfo
from adapterlab.task import Skipped
from adapterlab.tasks.code.format import prompt_messages

ADAPTER = "adapter"


class CodePredictor:
    def __init__(self, info: AdapterInfo, precision: str, batch_size: int | None = None, max_new_tokens: int = 384,
                 **_options: Any):  # fmt: skip
        from adapterlab.models import load_with_adapter

        self.prompt = info.task_info["prompt"]
        self.columns = [c for c in (self.prompt["instruction_column"], self.prompt.get("signature_column"),
                                    self.prompt.get("context_column")) if c]  # fmt: skip
        self.output_columns = ["reply", "code"]
        model, tokenizer = load_with_adapter(info, precision, adapter_name=ADAPTER)
        self.generator = TransformersGenerator(model, tokenizer, batch_size or 8)
        self.decoding = predict_decoding(info, max_new_tokens)

    def predict(self, rows: Sequence[dict[str, str | None]]) -> list[dict[str, str] | Skipped]:
        instruction = self.prompt["instruction_column"]
        prompts = [
            prompt_messages(r, self.prompt) if (r.get(instruction) or "").strip() else Skipped("empty_instruction")
            for r in rows
        ]
        usable = [i for i, p in enumerate(prompts) if not isinstance(p, Skipped)]
        replies = self.generator.generate([prompts[i] for i in usable], ADAPTER, self.decoding, label="generate")
        by_row = {i: {"reply": g.text, "code": extract_code(g.text)} for i, g in zip(usable, replies, strict=True)}
        return [by_row.get(i, prompts[i]) for i in range(len(rows))]

    def describe(self, rows, outputs) -> dict[str, Any]:
        return {"columns": self.columns}
