"""Completion-only cross-entropy that runs the LM head on the completion positions only.

The vocabulary projection and its log-softmax are a large share of a small model's training step (49k x 576 for
SmolLM2-135M, every position, in fp32). Prompt positions carry no loss, so we gather the hidden states of the
positions that predict a completion token and project only those. The numbers are the same as the model's own
loss with ``-100`` labels (a test checks it); models whose head does more than a linear projection (logit
soft-capping or scaling) fall back to the model's own loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
# Config attributes of models whose logits are not just ``lm_head(hidden)``.
_LOGIT_MODIFIERS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)


def causal_lm_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers causal LM inside a PEFT wrapper (LoRA layers stay in place inside it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_compact_head(model: torch.nn.Module) -> bool:
    lm = causal_lm_of(model)
    config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
    if any(getattr(config, name, None) not in (None, 1.0) for name in _LOGIT_MODIFIERS):
        return False
    return hasattr(lm, "get_decoder") and lm.get_output_embeddings() is not None


def scored_tokens(inputs: dict[str, Any]) -> int:
    """How many completion tokens a batch's loss scores (the positions whose target is not ignored)."""
    shift_labels = inputs.get("shift_labels")
    targets = shift_labels if shift_labels is not None else inputs["labels"][:, 1:]
    return int((targets != IGNORE_INDEX).sum())


def _completion_positions(
    model: torch.nn.Module, inputs: dict[str, Any], project: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits of the positions that predict a completion token, their targets, the (batch, seq) mask).

    With ``project=False`` (compact-head models only) the final hidden states of those positions instead.
    """
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    shift_labels = inputs.pop("shift_labels", None)
    inputs["use_cache"] = False
    targets = shift_labels if shift_labels is not None else labels[:, 1:]
    mask = targets != IGNORE_INDEX
    if supports_compact_head(model):
        lm = causal_lm_of(model)
        out = lm.get_decoder()(**inputs).last_hidden_state
        out = (out if shift_labels is not None else out[:, :-1])[mask]
        out = lm.get_output_embeddings()(out) if project else out
    else:
        out = model(**inputs).logits
        out = (out if shift_labels is not None else out[:, :-1])[mask]
    return out, targets[mask], mask


class FrozenHeadCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``hidden @ weight.T`` for a frozen head, computed in row chunks.

    The usual path keeps (tokens x vocabulary) logits in bf16 and fp32 plus the log-softmax output for the
    backward pass, and makes two more passes over them there: ~1 GB and a tenth of a CPU step at 1,500 scored
    tokens and a 49k vocabulary. Here each chunk's logits live only while their softmax is turned into the
    gradient of the hidden states, which is all the backward pass needs (the head itself is not trained).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], chunk):
            rows = slice(start, start + chunk)
            logits = (hidden[rows] @ weight.T).float()
            target = targets[rows]
            target_logit = logits.gather(1, target[:, None]).squeeze(1)
            peak = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(peak).exp_()  # in place: one exp pass over the chunk
            norm = probs.sum(dim=1, keepdim=True)
            total += (peak.squeeze(1) + norm.log().squeeze(1) - target_logit).sum()
            probs.div_(norm)
            probs[torch.arange(len(target), device=probs.device), target] -= 1.0  # d(CE)/d(logits)
            grad_hidden[rows] = probs.to(weight.dtype) @ weight
        ctx.save_for_backward(grad_hidden)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_output.to(grad_hidden.dtype), None, None, None


def _fused_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The LM head when the chunked loss applies: a frozen, bias-free linear head and gradients wanted."""
    if not torch.is_grad_enabled() or not supports_compact_head(model):
        return None
    head = causal_lm_of(model).get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    return head


def completion_loss(
    model: torch.nn.Module,
    inputs: dict[str, Any],
    num_items_in_batch: torch.Tensor | int | None = None,
    chunk: int = 256,
) -> tuple[torch.Tensor, int]:
    """(loss, number of completion tokens scored). Mean over tokens, or sum / ``num_items_in_batch`` if given."""
    head = _fused_head(model)
    if head is not None:
        hidden, targets, mask = _completion_positions(model, inputs, project=False)
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) else None
        weight = head.weight if dtype is None else head.weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            loss_sum = FrozenHeadCrossEntropy.apply(hidden.to(weight.dtype), weight, targets, chunk)
    else:
        logits, targets, mask = _completion_positions(model, inputs)
        loss_sum = F.cross_entropy(logits.float(), targets, reduction="sum")
    scored = int(mask.sum())
    denominator = num_items_in_batch if num_items_in_batch is not None else max(scored, 1)
    if torch.is_tensor(denominator):
        denominator = denominator.to(loss_sum.device)
    return loss_sum / denominator, scored


def completion_nll_per_example(model: torch.nn.Module, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed negative log-likelihood of its completion tokens, and how many there are."""
    logits, targets, mask = _completion_positions(model, inputs)
    losses = F.cross_entropy(logits.float(), targets, reduction="none")
    rows = mask.nonzero()[:, 0]
    sums = torch.zeros(mask.shape[0], dtype=losses.dtype, device=losses.device).index_add_(0, rows, losses)
    return sums, mask.sum(dim=1)


def classification_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_weights: torch.Tensor | None = None,
    focal_gamma: float = 0.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy with optional class weights, label smoothing and focal modulation.

    Per example: ``(1 - p_y)^gamma * CE_smoothed,weighted``; averaged like PyTorch's weighted mean, i.e. divided
    by the summed weights of the examples' classes (by the number of examples without weights). ``gamma = 0``
    and no smoothing or weights is plain cross-entropy.
    """
    logits = logits.float()
    per_example = F.cross_entropy(
        logits, labels, weight=class_weights, label_smoothing=label_smoothing, reduction="none"
    )
    if focal_gamma:
        p_true = torch.softmax(logits, dim=-1).gather(1, labels.unsqueeze(1)).squeeze(1)
        per_example = per_example * (1.0 - p_true).clamp(min=0).pow(focal_gamma)
    denominator = class_weights[labels].sum() if class_weights is not None else labels.new_tensor(len(labels))
    return per_example.sum() / denominator.clamp(min=1e-12)


def balanced_class_weights(label_ids: list[int], num_labels: int) -> torch.Tensor:
    """n_samples / (n_classes * n_samples_of_class), as scikit-learn's ``class_weight='balanced'``."""
    counts = torch.bincount(torch.tensor(label_ids, dtype=torch.long), minlength=num_labels).float()
    weights = len(label_ids) / (num_labels * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.ones_like(weights))
