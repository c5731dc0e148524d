"""``adapterlab predict`` for a chat adapter: one reply per row of a file, prompted exactly as in training.

The prompt recipe (system prompt, template) travels with the adapter in ``adapterlab.json``, so a file with the
training columns gets the prompts the adapter learned from; replies are generated greedily in length-grouped
batches, as evaluation does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapterlab.generation import Decoding, TransformersGenerator
from adapterlab.rendering import render_messages, template_columns
from adapterlab.runs import AdapterInfo
from adapterlab.task import Skipped

ADAPTER = "adapter"


class ChatPredictor:
    def __init__(self, info: AdapterInfo, precision: str, batch_size: int | None = None, max_new_tokens: int = 256,
                 **_options: Any):  # fmt: skip
        from adapterlab.models import load_with_adapter

        prompt = info.task_info["prompt"]
        self.template, self.system_prompt = prompt["prompt_template"], prompt.get("system_prompt")
        self.columns = template_columns(self.template)
        self.output_columns = ["reply"]
        model, tokenizer = load_with_adapter(info, precision, adapter_name=ADAPTER)
        self.generator = TransformersGenerator(model, tokenizer, batch_size or 8)
        self.decoding = Decoding(max_new_tokens=max_new_tokens)

    def predict(self, rows: Sequence[dict[str, str | None]]) -> list[dict[str, str] | Skipped]:
        usable = [i for i, row in enumerate(rows) if any((row.get(c) or "").strip() for c in self.columns)]
        prompts = [render_messages(rows[i], self.template, self.system_prompt) for i in usable]
        replies = self.generator.generate(prompts, ADAPTER, self.decoding, label="generate")
        by_row = {i: {"reply": g.text} for i, g in zip(usable, replies, strict=True)}
        return [by_row.get(i, Skipped("empty_prompt_columns")) for i in range(len(rows))]

    def describe(self, rows, outputs) -> dict[str, Any]:
        return {"columns": self.columns}


def merged_model(info: AdapterInfo, precision: str):
    """The adapter merged into full-precision weights of its base (a QLoRA base de-quantised first), with a
    generation config that stops at the adapter's stop tokens, and the adapter's tokenizer (chat template)."""
    from adapterlab.models import load_with_adapter, torch_dtype

    model, tokenizer = load_with_adapter(info, precision, dequantized=True)
    merged = model.merge_and_unload().to(torch_dtype(precision))
    stops = info.task_info.get("stop", {}).get("token_ids") or []
    if stops:
        merged.generation_config.eos_token_id = stops if len(stops) > 1 else stops[0]
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.config.pad_token_id = tokenizer.pad_token_id
    return merged, tokenizer
