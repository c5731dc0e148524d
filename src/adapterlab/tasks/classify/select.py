"""What a classify run ships, chosen on the validation split among a few candidates (the test split decides nothing).

Three parts can be trained on the training split:

- ``finetuned``: the fine-tuned encoder (its best checkpoint on validation);
- ``embedding``: logistic regression on the base encoder's embeddings of the whole text, the encoder first tuned on
  pairs of training texts (:mod:`adapterlab.tasks.classify.embedding`, :mod:`adapterlab.tasks.classify.contrastive`);
- ``tfidf``: TF-IDF + logistic regression (what the report compares against, :mod:`adapterlab.tasks.classify.tfidf`).

``select.candidates`` lists what may ship, in order of preference: a part alone, a named mix of two or three parts
(``embedding+tfidf``: the equal-weight average of their probabilities), or ``ensemble``: the mix of all three parts,
then each pair (four mixes; one named earlier keeps its place). Equal weights only: a weight tuned
on a validation split of a hundred texts chases its noise. Every option's validation score is recorded
(summary.json ``selection``). What ships is the earliest option whose score is within ``select.tolerance`` of the
best one: on a hundred validation texts one or two labels more or less are noise. The default order puts
``embedding+tfidf`` first: it needs one encoder pass instead of two (half the latency) and over the eight corpora of
docs/benchmarks.md it scored as well on the test split as the three-part average, which comes next (the three parts
make different mistakes, and on the dev corpora the three-part average was the most reliable on the test split when
a pair only edged it on validation). The fine-tuned encoder's validation score is slightly optimistic (its
checkpoint was also chosen on validation), which favours it, never the cheaper parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from adapterlab.metrics.classification import classification_metrics
from adapterlab.tasks.classify.config import PARTS


@dataclass
class Selection:
    chosen: str  # a part, or "ensemble"
    weights: dict[str, float]  # part -> its share of the shipped probabilities (the parts that ship)
    metric: str
    scores: dict[str, float] = field(default_factory=dict)  # option -> validation metric
    models: dict[str, Any] = field(default_factory=dict)  # fitted embedding / tfidf parts that ship
    reason: str = ""
    option: str = ""  # the shipped option's name in ``scores`` ("ensemble finetuned+tfidf", "tfidf", ...)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the embedding part's contrastive stage

    @property
    def encoder_weight(self) -> float:
        """The fine-tuned encoder's share (1.0: it alone ships)."""
        return self.weights.get("finetuned", 0.0)

    def summary(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "option": self.option or self.chosen, "weights": self.weights,
                "metric": self.metric, "candidates": self.scores, "reason": self.reason, **self.details}  # fmt: skip


def mix(probs: dict[str, np.ndarray | None], weights: dict[str, float]) -> np.ndarray:
    """``sum(w * p)`` over the parts with a weight (the others may be None)."""
    total = None
    for part, weight in weights.items():
        term = weight * probs[part] if weight != 1.0 else probs[part]
        total = term if total is None else total + term
    return total


def score(y_true: list[int], probs: np.ndarray, num_labels: int, metric: str) -> float:
    return classification_metrics(y_true, probs.argmax(axis=1).tolist(), num_labels)[metric]


def mix_parts(candidate: str) -> tuple[str, ...]:
    """The parts of a named mix (``embedding+tfidf``), in the order of :data:`PARTS`."""
    named = candidate.split("+")
    return tuple(part for part in PARTS if part in named)


def _mix(parts: tuple[str, ...]) -> tuple[str, dict[str, float]]:
    return "ensemble " + "+".join(parts), {p: 1.0 / len(parts) for p in parts}


def options(candidates: list[str]) -> list[tuple[str, dict[str, float]]]:
    """(name, weights) of every option, in the recipe's order of preference; an option named twice (a named mix
    and ``ensemble``) keeps its first place."""
    out: dict[str, dict[str, float]] = {}
    for name in candidates:
        if name == "ensemble":
            for size in (3, 2):  # the most diverse mix first
                for parts in combinations(PARTS, size):
                    out.setdefault(*_mix(parts))
        elif "+" in name:
            out.setdefault(*_mix(mix_parts(name)))
        else:
            out.setdefault(name, {name: 1.0})
    return list(out.items())


def needed_parts(candidates: list[str]) -> set[str]:
    """The parts that must be trained and scored to choose among ``candidates``."""
    return {part for _, weights in options(candidates) for part in weights}


def select(
    candidates: list[str], metric: str, val_probs: dict[str, np.ndarray], val_labels: list[int], num_labels: int,
    models: dict[str, Any] | None = None, tolerance: float = 0.0,
) -> Selection:  # fmt: skip
    """Score each option on the validation split and ship the earliest within ``tolerance`` of the best.
    ``val_probs``: each trained part's validation probabilities (at least those of :func:`needed_parts`);
    ``models``: the fitted embedding / tfidf parts."""
    models = models or {}
    if not val_labels:
        return Selection(
            "finetuned", {"finetuned": 1.0}, metric, reason="no validation split: the fine-tuned encoder ships"
        )
    if candidates == ["finetuned"]:
        scores = {"finetuned": score(val_labels, val_probs["finetuned"], num_labels, metric)}
        return Selection("finetuned", {"finetuned": 1.0}, metric, scores, reason="select.candidates is [finetuned]")
    choices = options(candidates)
    scores = {name: score(val_labels, mix(val_probs, weights), num_labels, metric) for name, weights in choices}
    best = max(scores.values())
    best_name, best_weights = next(option for option in choices if scores[option[0]] >= best - tolerance - 1e-12)
    top = max(scores, key=scores.get)  # the first of the highest
    others = ", ".join(f"{n} {v:.4f}" for n, v in scores.items() if n != best_name)
    if top == best_name:
        reason = f"highest validation {metric}: {best_name} {scores[best_name]:.4f} (others: {others})"
    else:
        reason = (f"{best_name}: validation {metric} {scores[best_name]:.4f}, within select.tolerance {tolerance:g} of "
                  f"the highest ({top} {best:.4f}) and earlier in select.candidates (others: {others})")  # fmt: skip
    shipped = {part: models[part] for part in best_weights if part in models}
    return Selection(best_name.split(" ")[0], best_weights, metric, scores, shipped, reason, best_name)
