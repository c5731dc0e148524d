"""Causal attention over padding-free (packed) batches, without flash-attention and without a block mask.

TRL's padding-free collator concatenates a batch into one row and passes the sequence boundaries
(``cu_seq_lens_q``); its consumer is flash-attention's varlen kernel, which needs a CUDA GPU and the
``flash-attn`` package. Through SDPA, transformers turns such a row into one (total x total) block-diagonal mask,
so attention costs the square of the whole batch's length and more than the padding it saves.

``adapterlab_packed`` (registered with transformers' ``AttentionInterface``) instead runs attention once per
sequence of the packed row: no padding and no mask. On a CUDA GPU each sequence goes through SDPA with
``is_causal`` (its flash kernel); on a CPU, sequences up to :data:`CPU_EXPLICIT_MAX` tokens use plain batched
matmuls over blocks of queries, each against the keys up to its last position with an additive causal mask
(forward and backward 2-3x faster there than the CPU flash kernel at 300-640 tokens), at the cost of keeping
the bf16 attention probabilities (about heads x length^2 / 2) for the backward pass. Inputs without sequence
boundaries (padded evaluation batches, generation) take transformers' SDPA path unchanged, with its masks.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import pairwise
from typing import Any

import torch

NAME = "adapterlab_packed"
# Above this many tokens per sequence the CPU path keeps O(length) memory with the flash kernel.
CPU_EXPLICIT_MAX = 1024
# Queries per block of the CPU path: 128-192 were fastest at 300-1024 tokens on the benchmark machine.
CPU_BLOCK_ROWS = 128
_UNSUPPORTED_KWARGS = ("sliding_window", "softcap", "s_aux")


def supports_packed_attention(config: Any) -> bool:
    """Plain causal self-attention in every layer: no sliding windows, logit soft-capping or attention sinks."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    return not any(getattr(config, name, None) for name in ("attn_logit_softcapping", "attention_sink_size"))


@lru_cache(maxsize=64)
def _causal_bias(first: int, end: int, groups: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive mask of queries ``first..end-1`` over keys ``0..end-1`` (0 or -inf), repeated per grouped head.

    Built once per sequence length and block, then shared by every layer of the step (forward only: the mask
    needs no gradient).
    """
    rows = torch.arange(first, end, device=device)[:, None]
    keys = torch.arange(end, device=device)[None, :]
    bias = torch.zeros(end - first, end, dtype=dtype, device=device).masked_fill(keys > rows, float("-inf"))
    return bias.repeat(groups, 1)


def _explicit_causal(module, query, key, value, dropout: float, scaling: float | None) -> torch.Tensor:
    """(1, heads, L, d) causal attention by batched matmuls, in blocks of about :data:`CPU_BLOCK_ROWS` queries.

    Query heads are grouped under their key/value head (GQA), so each block is two ``bmm`` over the key/value
    heads. A block of queries only multiplies the keys up to its last position (the causal upper triangle
    beyond it is never computed), and the mask is added inside the first matmul (``baddbmm``) rather than
    written over the scores afterwards. Each block's scores then stay small enough for the CPU's caches.
    """
    _, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else dim**-0.5
    grouped = (query * scale).view(kv_heads, groups, length, dim)
    keys_t, values = key[0].transpose(-1, -2), value[0]
    blocks = max(1, round(length / CPU_BLOCK_ROWS))
    edges = [length * i // blocks for i in range(blocks + 1)]
    outputs = []
    for first, end in pairwise(edges):
        rows = grouped[:, :, first:end].reshape(kv_heads, groups * (end - first), dim)
        bias = _causal_bias(first, end, groups, rows.dtype, rows.device)
        probs = torch.softmax(torch.baddbmm(bias, rows, keys_t[:, :, :end]), dim=-1)
        if dropout and module.training:
            probs = torch.nn.functional.dropout(probs, p=dropout)
        outputs.append((probs @ values[:, :end]).view(kv_heads, groups, end - first, dim))
    out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return out.view(1, heads, length, dim).transpose(1, 2)


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    if bounds is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    unsupported = [name for name in _UNSUPPORTED_KWARGS if kwargs.get(name) is not None]
    if unsupported or not getattr(module, "is_causal", True):
        raise NotImplementedError(f"{NAME} handles plain causal attention only, not {unsupported or 'bidirectional'}")
    explicit_ok = query.device.type == "cpu"
    edges = bounds.tolist()
    outputs = []
    for start, end in pairwise(edges):
        q, k, v = query[:, :, start:end], key[:, :, start:end], value[:, :, start:end]
        if explicit_ok and end - start <= CPU_EXPLICIT_MAX:
            outputs.append(_explicit_causal(module, q, k, v, dropout, scaling))
        else:
            out, _ = sdpa_attention_forward(module, q, k, v, None, dropout, scaling, is_causal=True)
            outputs.append(out)
    return torch.cat(outputs, dim=1), None


def register() -> str:
    """Register ``adapterlab_packed`` with transformers (idempotent); unpacked inputs get SDPA's masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, packed_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
