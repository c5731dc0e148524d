"""What a classify run ships, chosen on the validation split among a few candidates (the test split decides nothing).

- ``finetuned``: the fine-tuned encoder (its best checkpoint on validation);
- ``tfidf``: TF-IDF + logistic regression trained on the same training split (what the report compares against);
- ``ensemble``: the two averaged, ``w * p_encoder + (1 - w) * p_tfidf`` with ``w`` in ``ENSEMBLE_WEIGHTS``.

Every candidate's validation score is recorded (summary.json ``selection``); the best one ships, ties going to
the earlier one in ``select.candidates``. On a few hundred texts TF-IDF and a fine-tuned encoder make different
mistakes, so their average often beats both (docs/benchmarks.md). The fine-tuned encoder's validation score is
slightly optimistic (its checkpoint was also chosen on validation), which favours it, never TF-IDF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adapterlab.metrics.classification import classification_metrics
from adapterlab.tasks.classify.tfidf import TfidfModel

ENSEMBLE_WEIGHTS = (0.25, 0.5, 0.75)  # the encoder's share of the averaged probabilities


@dataclass
class Selection:
    chosen: str
    encoder_weight: float  # 1.0: the encoder alone, 0.0: TF-IDF alone
    metric: str
    scores: dict[str, float] = field(default_factory=dict)  # candidate -> validation metric
    tfidf: TfidfModel | None = None  # fitted when a candidate needs it
    reason: str = ""

    def summary(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "encoder_weight": self.encoder_weight, "metric": self.metric,
                "candidates": self.scores, "reason": self.reason}  # fmt: skip


def blend(encoder: np.ndarray | None, tfidf: np.ndarray | None, weight: float) -> np.ndarray:
    """``weight * encoder + (1 - weight) * tfidf``; a part with weight 0 is not needed (may be None)."""
    if weight >= 1.0 or tfidf is None:
        return encoder
    if weight <= 0.0 or encoder is None:
        return tfidf
    return weight * encoder + (1.0 - weight) * tfidf


def score(y_true: list[int], probs: np.ndarray, num_labels: int, metric: str) -> float:
    return classification_metrics(y_true, probs.argmax(axis=1).tolist(), num_labels)[metric]


def select(
    candidates: list[str], metric: str, encoder_val: np.ndarray, val_labels: list[int], train_texts: list[str],
    train_labels: list[int], val_texts: list[str], num_labels: int, seed: int,
) -> Selection:  # fmt: skip
    """Score each candidate on the validation split and pick the best (``metric``: a classification metric)."""
    if not val_labels:
        return Selection("finetuned", 1.0, metric, reason="no validation split: the fine-tuned encoder ships")
    if candidates == ["finetuned"]:
        scores = {"finetuned": score(val_labels, encoder_val, num_labels, metric)}
        return Selection("finetuned", 1.0, metric, scores, reason="select.candidates is [finetuned]")
    tfidf = TfidfModel.fit(train_texts, train_labels, num_labels, seed)
    tfidf_val = tfidf.predict_proba(val_texts)
    options: list[tuple[str, float]] = []  # (name, encoder weight), in the recipe's order of preference
    for name in candidates:
        if name == "ensemble":
            options += [(f"ensemble w={w}", w) for w in ENSEMBLE_WEIGHTS]
        else:
            options.append((name, 1.0 if name == "finetuned" else 0.0))
    scores = {name: score(val_labels, blend(encoder_val, tfidf_val, w), num_labels, metric) for name, w in options}
    best_name, best_weight = max(options, key=lambda option: scores[option[0]])  # first of equals wins
    chosen = best_name.split(" ")[0]
    others = ", ".join(f"{n} {v:.4f}" for n, v in scores.items() if n != best_name)
    reason = f"highest validation {metric}: {best_name} {scores[best_name]:.4f} (others: {others})"
    return Selection(chosen, best_weight, metric, scores, tfidf if best_weight < 1.0 else None, reason)
