"""Inference pieces every generative task shares."""

from __future__ import annotations

from adapterlab.runs import AdapterInfo


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
