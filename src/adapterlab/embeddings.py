"""Sentence embeddings with a local encoder (mean pooling, unit length), as sentence-transformers computes them
for all-MiniLM-L6-v2. Used by weak labelling; the encoder is the embedded default unless the recipe names one."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=2)
def load_encoder(spec: str):
    from transformers import AutoModel, AutoTokenizer

    from adapterlab.models import resolve_base

    path = resolve_base(spec)
    model = AutoModel.from_pretrained(path, use_safetensors=True)
    model.eval()
    return AutoTokenizer.from_pretrained(path), model


def embed(texts: list[str], spec: str = "default-encoder", batch_size: int = 64, max_length: int = 256):
    """A (len(texts), dim) float tensor of L2-normalised mean-pooled embeddings; an empty text gets zeros (it is
    similar to nothing)."""
    import torch

    tokenizer, model = load_encoder(spec)
    filled = [i for i, text in enumerate(texts) if text.strip()]
    result = torch.zeros(len(texts), model.config.hidden_size)
    if filled:
        result[filled] = _embed([texts[i] for i in filled], tokenizer, model, batch_size, max_length)
    return result


def _embed(texts: list[str], tokenizer, model, batch_size: int, max_length: int):
    """Texts of like length share a batch (as sentence-transformers orders them): little padding to compute."""
    import torch
    import torch.nn.functional as F

    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]), reverse=True)
    result = torch.zeros(len(texts), model.config.hidden_size)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            result[rows] = F.normalize(pooled, dim=-1).to(result.dtype)
    return result
