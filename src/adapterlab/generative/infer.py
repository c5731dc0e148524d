"""Inference pieces every generative task shares: the merged model, the decoding ``predict`` uses, and the chat
predictor (which ``dialogue`` also uses for conversation files)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from adapterlab.generation import Decoding, TransformersGenerator
from adapterlab.generative.conversation import SHAREGPT_SYSTEM_FIELD, TRAILING_CUT, for_reply, read_conversation
from adapterlab.rendering import render_messages, template_columns
from adapterlab.runs import AdapterInfo
from adapterlab.task import Dropped, Skipped

ADAPTER = "adapter"


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


def predict_decoding(info: AdapterInfo, max_new_tokens: int) -> Decoding:
    """Greedy decoding with the stop strings and repetition penalty the run's evaluation used (saved with the
    adapter), so ``predict`` writes what the report scored; adapters saved without them decode plainly."""
    saved = info.task_info.get("decoding", {})
    return Decoding(max_new_tokens=max_new_tokens, stop_strings=list(saved.get("stop", [])),
                    repetition_penalty=saved.get("repetition_penalty", 1.0))  # fmt: skip


class ChatPredictor:
    """``adapterlab predict`` for a chat adapter: one reply per row of a file, prompted exactly as in training.

    The prompt recipe (system prompt, template) travels with the adapter in ``adapterlab.json``, so a file with the
    training columns gets the prompts the adapter learned from; replies are generated greedily in length-grouped
    batches, as evaluation does. An adapter trained on conversations reads a conversation per row from the same column
    (read and checked as in training) and continues it: one reply to its last user message; replies that follow that
    message in the file are set aside (counted), and a conversation that cannot be read is skipped with its reason.
    """

    def __init__(self, info: AdapterInfo, precision: str, batch_size: int | None = None, max_new_tokens: int = 256,
                 **_options: Any):  # fmt: skip
        from adapterlab.models import load_with_adapter

        prompt = info.task_info["prompt"]
        self.template, self.system_prompt = prompt.get("prompt_template"), prompt.get("system_prompt")
        self.conversation_column = prompt.get("conversation_column")
        self.conversation_format = prompt.get("conversation_format") or "auto"
        self.columns = [self.conversation_column] if self.conversation_column else template_columns(self.template)
        self.output_columns = ["reply"]
        self.replies_set_aside = 0
        model, tokenizer = load_with_adapter(info, precision, adapter_name=ADAPTER)
        self.generator = TransformersGenerator(model, tokenizer, batch_size or 8)
        self.decoding = predict_decoding(info, max_new_tokens)

    def predict(self, rows: Sequence[dict[str, str | None]]) -> list[dict[str, str] | Skipped]:
        prompts = [self.conversation(row) if self.conversation_column else self.prompt(row) for row in rows]
        usable = [i for i, p in enumerate(prompts) if not isinstance(p, Skipped)]
        replies = self.generator.generate([prompts[i] for i in usable], ADAPTER, self.decoding, label="generate")
        by_row = {i: {"reply": g.text} for i, g in zip(usable, replies, strict=True)}
        return [by_row.get(i, prompts[i]) for i in range(len(rows))]

    def prompt(self, row: dict[str, str | None]) -> list[dict[str, str]] | Skipped:
        if not any((row.get(c) or "").strip() for c in self.columns):
            return Skipped("empty_prompt_columns")
        return render_messages(row, self.template, self.system_prompt)

    def conversation(self, row: dict[str, str | None]) -> list[dict[str, str]] | Skipped:
        cell, system = row.get(self.conversation_column), row.get(SHAREGPT_SYSTEM_FIELD)
        read = read_conversation(cell, self.conversation_format, system, self.system_prompt)
        context = for_reply(read) if not isinstance(read, Dropped) else read
        if isinstance(context, Dropped):
            return Skipped(context.reason)
        self.replies_set_aside += TRAILING_CUT in context.notes
        return context.messages

    def describe(self, rows, outputs) -> dict[str, Any]:
        if not self.replies_set_aside:
            return {"columns": self.columns}
        note = (f"{self.replies_set_aside} conversations continued after their last user message: the replies "
                "that followed it in the file were set aside and a new one generated")  # fmt: skip
        return {"columns": self.columns, "replies_set_aside": self.replies_set_aside, "notes": [note]}
