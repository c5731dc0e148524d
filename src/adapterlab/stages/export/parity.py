"""Parity of an export with the adapter it came from, measured the same way for every runtime.

For a generative adapter: the adapter (PEFT on its base, in transformers) writes its greedy continuation of each
case prompt; then every runtime scores that same token sequence teacher-forced, and we compare, per continuation
token, the log-probability each gives it and each one's top-1 token. Exact strings are a poor test (a near-tie
flips a greedy token and the rest of the text diverges); log-probabilities of one fixed sequence are not.

- ``max_abs_logprob_diff`` / ``mean_abs_logprob_diff``: over every continuation token of every case;
- ``top1_agreement_clear``: the share of tokens whose top-1 token agrees, counted only where the adapter's top-1
  margin (its best minus its second-best log-probability) is at least ``CLEAR_MARGIN``, so that near-ties do
  not count as failures.

A check passes when both stay within the tolerances of the export's precision (:data:`TOLERANCES`); the numbers,
the tolerances and the greedy texts side by side go into ``parity.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

CLEAR_MARGIN = 1.0  # nats between the adapter's best and second-best token

# (max |delta log-prob|, mean |delta log-prob|, top-1 agreement where the margin is clear), per precision/quant.
# The quantised bounds come from llama.cpp on SmolLM2-135M (9 cases, 288 tokens; docs/export.md): worst measured
# q8_0 0.50 / 0.045 / 100 %, q5_x 3.95 / 0.26 / 98 %, q4_x 3.94 / 0.44 / 91 % (its weights were Q4_1 once, which
# makes re-quantising to other 4/5-bit grids unusually lossy). The mean and the top-1 agreement do the work; a
# single token's log-probability swings by nats at 4 bits, so the max bound only catches a broken file. One layer's
# weights scaled by 1.5 gives q8_0 1.1 / 0.13: outside.
TOLERANCES: dict[str, tuple[float, float, float]] = {
    "fp32": (1e-3, 1e-4, 1.0),
    "fp16": (0.15, 0.02, 1.0),
    "bf16": (0.5, 0.06, 0.98),
    "q8_0": (1.0, 0.08, 0.97),
    "q5_1": (6.0, 0.5, 0.9),
    "q5_0": (6.0, 0.5, 0.9),
    "q4_1": (6.0, 0.7, 0.8),
    "q4_0": (6.0, 0.7, 0.8),
}


@dataclass
class Scores:
    """A runtime's view of one case: the continuation tokens' log-probabilities and its own top-1 tokens."""

    logprobs: list[float]
    top1: list[int]
    margins: list[float] = field(default_factory=list)  # best minus second-best log-probability (reference only)


@dataclass
class Case:
    """One prompt and the adapter's greedy continuation of it (token ids), with the texts for the report."""

    id: str
    prompt_ids: list[int]
    continuation_ids: list[int]
    prompt: str = ""
    reference_text: str = ""


def teacher_forced(model, prompt_ids: Sequence[int], continuation_ids: Sequence[int]) -> Scores:
    """A transformers model's scores of ``continuation_ids`` after ``prompt_ids``, in one forward pass."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([[*prompt_ids, *continuation_ids]], device=device)
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    target = torch.tensor(list(continuation_ids), device=device)
    chosen = logprobs.gather(1, target[:, None]).squeeze(1)
    best = logprobs.topk(2, dim=-1)
    margins = (best.values[:, 0] - best.values[:, 1]).tolist()
    return Scores(chosen.tolist(), best.indices[:, 0].tolist(), margins)


def greedy_cases(model, tokenizer, prompts: list[tuple[str, list[int]]], max_new_tokens: int = 32) -> list[Case]:
    """The adapter's greedy continuation of each (id, prompt ids), cut at its stop tokens."""
    import torch

    from adapterlab.generation import stop_token_ids

    stops = set(stop_token_ids(tokenizer, model))
    device = next(model.parameters()).device
    cases = []
    for case_id, prompt_ids in prompts:
        ids = torch.tensor([prompt_ids], device=device)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, temperature=None, top_p=None, top_k=None,
                                 eos_token_id=sorted(stops), pad_token_id=tokenizer.pad_token_id)  # fmt: skip
        continuation = out[0, len(prompt_ids) :].tolist()
        cut = next((i for i, t in enumerate(continuation) if t in stops), len(continuation))
        continuation = continuation[: cut + 1] if cut < len(continuation) else continuation  # keep the stop token
        text = tokenizer.decode(continuation, skip_special_tokens=True)
        prompt = tokenizer.decode(prompt_ids, skip_special_tokens=False)
        cases.append(Case(case_id, list(prompt_ids), continuation, prompt, text))
    return cases


def compare(reference: list[Scores], other: list[Scores], tolerance: str) -> dict[str, Any]:
    """The figures of one runtime against the adapter, and whether they are within ``tolerance``'s bounds."""
    diffs = [abs(a - b) for ref, got in zip(reference, other, strict=True)
             for a, b in zip(ref.logprobs, got.logprobs, strict=True)]  # fmt: skip
    clear = [(r, g) for ref, got in zip(reference, other, strict=True)
             for r, g, m in zip(ref.top1, got.top1, ref.margins, strict=True) if m >= CLEAR_MARGIN]  # fmt: skip
    max_diff = max(diffs, default=0.0)
    mean_diff = sum(diffs) / len(diffs) if diffs else 0.0
    agreement = sum(r == g for r, g in clear) / len(clear) if clear else 1.0
    bound_max, bound_mean, bound_agree = TOLERANCES[tolerance]
    finite = all(math.isfinite(d) for d in diffs)
    passed = finite and max_diff <= bound_max and mean_diff <= bound_mean and agreement >= bound_agree
    return {
        "passed": passed,
        "tokens": len(diffs),
        "clear_margin_tokens": len(clear),
        "max_abs_logprob_diff": max_diff,
        "mean_abs_logprob_diff": mean_diff,
        "top1_agreement_clear": agreement,
        "tolerance": {
            "name": tolerance,
            "max_abs_logprob_diff": bound_max,
            "mean_abs_logprob_diff": bound_mean,
            "top1_agreement_clear": bound_agree,
            "clear_margin_nats": CLEAR_MARGIN,
        },
    }


def summary_line(result: dict[str, Any]) -> str:
    return (
        f"max |d logprob| {result['max_abs_logprob_diff']:.4g} (<= {result['tolerance']['max_abs_logprob_diff']}), "
        f"mean {result['mean_abs_logprob_diff']:.3g} (<= {result['tolerance']['mean_abs_logprob_diff']}), "
        f"top-1 agreement {result['top1_agreement_clear']:.1%} on {result['clear_margin_tokens']} clear-margin "
        f"tokens (>= {result['tolerance']['top1_agreement_clear']:.0%}) over {result['tokens']} tokens"
    )
