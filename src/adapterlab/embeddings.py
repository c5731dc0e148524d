"""Sentence embeddings with a local encoder (mean pooling, unit length), as sentence-transformers computes them
for all-MiniLM-L6-v2. Used by weak labelling and the dialogue style metrics; the encoder is the embedded default
unless the recipe names one. ``length_batches`` is shared with the classify task's encoders."""

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
    result = torch.zeros(len(texts), model.config.hidden_size)
    with torch.inference_mode():
        for rows, batch, padding in length_batches(ids, batch_size, tokenizer.pad_token_id or 0):
            input_ids = torch.from_numpy(batch)
            mask = torch.ones_like(input_ids) if padding is None else torch.from_numpy(padding)
            hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state
            weight = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weight).sum(1) / weight.sum(1).clamp(min=1e-9)
            result[rows] = F.normalize(pooled, dim=-1).to(result.dtype)
    return result


def length_batches(encoded: list[list[int]], batch_size: int, pad: int):
    """``(row indices, ids, mask)`` batches of texts of similar length, so short texts do not pay for long ones
    (numpy int64 arrays). ``mask`` is None when the batch has no padding (always so at batch 1): no mask to build or
    apply. Used here and by the classify task's encoders."""
    import numpy as np

    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = np.array([list(encoded[i]) + [pad] * (width - len(encoded[i])) for i in chunk], dtype=np.int64)
        mask = None
        if any(len(encoded[i]) < width for i in chunk):
            mask = np.array([[1] * len(encoded[i]) + [0] * (width - len(encoded[i])) for i in chunk], dtype=np.int64)
        yield chunk, ids, mask
