"""Classification metrics (scikit-learn), the cheap TF-IDF baseline, and per-example statistics for the bootstrap.

Weighted F1 is a corpus-level number, so for the paired bootstrap each example contributes a row of one-hot
counts (true positive, false positive, false negative per class); the reduce turns summed counts into the
metric exactly as scikit-learn does (zero_division=0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from adapterlab.metrics.stats import MetricStats

SUMMARY = ("accuracy", "weighted_f1", "macro_f1", "weighted_precision", "weighted_recall")


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

    labels = list(range(num_labels))
    kw: dict[str, Any] = {"labels": labels, "zero_division": 0}
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", **kw)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", **kw)),
        "weighted_precision": float(precision_score(y_true, y_pred, average="weighted", **kw)),
        "weighted_recall": float(recall_score(y_true, y_pred, average="weighted", **kw)),
    }


def per_class_report(y_true, y_pred, names: list[str]) -> dict[str, dict[str, float]]:
    from sklearn.metrics import classification_report

    report = classification_report(
        y_true, y_pred, labels=list(range(len(names))), target_names=names, output_dict=True, zero_division=0
    )
    return {name: {k: float(v) for k, v in report[name].items()} for name in names}


def confusion(y_true, y_pred, num_labels: int) -> list[list[int]]:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true, y_pred, labels=list(range(num_labels))).tolist()


def trainer_metrics(num_labels: int):
    """``compute_metrics`` for the Trainer: logits -> the summary metrics (keys get the ``eval_`` prefix)."""

    def compute(prediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return classification_metrics(prediction.label_ids, np.argmax(logits, axis=-1), num_labels)

    return compute


def count_stats(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> np.ndarray:
    """Per example: [tp_0..tp_K-1, fp_0..fp_K-1, fn_0..fn_K-1]; summed over examples these give every metric."""
    rows = np.zeros((len(y_true), 3 * num_labels))
    for i, (t, p) in enumerate(zip(y_true, y_pred, strict=True)):
        if t == p:
            rows[i, t] = 1
        else:
            rows[i, num_labels + p] = 1
            rows[i, 2 * num_labels + t] = 1
    return rows


def _from_counts(summed: np.ndarray, num_labels: int, metric: str) -> float:
    tp, fp, fn = summed[:num_labels], summed[num_labels : 2 * num_labels], summed[2 * num_labels :]
    support = tp + fn
    if metric == "accuracy":
        return float(tp.sum() / max(support.sum(), 1))
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    if metric == "macro_f1":
        return float(f1.mean())
    weights = support / max(support.sum(), 1)
    values = {"weighted_f1": f1, "weighted_precision": precision, "weighted_recall": recall}[metric]
    return float((values * weights).sum())


def metric_stats(y_true, y_pred, num_labels: int, metric: str) -> MetricStats:
    stats = count_stats(y_true, y_pred, num_labels)
    correct = np.asarray([float(t == p) for t, p in zip(y_true, y_pred, strict=True)])
    return MetricStats(stats, lambda s: _from_counts(s, num_labels, metric), correct)


def tfidf_baseline(train_texts: list[str], train_labels: list[int], seed: int = 0):
    """TF-IDF (word 1-2-grams + character 2-5-grams, fits any script) + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True),
    )
    model = make_pipeline(features, LogisticRegression(max_iter=2000, class_weight="balanced", random_state=seed))
    model.fit(train_texts, train_labels)
    return model
