"""Per-example sufficient statistics: what every metric returns, so the bootstrap resamples corpus values exactly,
and the one summary of a list of lengths (token counts) used by every report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class MetricStats:
    """Per-example sufficient statistics (n x k) and how summed statistics become the corpus value."""

    stats: np.ndarray
    reduce: Callable[[np.ndarray], float]
    per_example: np.ndarray  # the value shown per example in predictions.jsonl

    @property
    def value(self) -> float:
        return self.reduce(self.stats.sum(axis=0))


def mean_stats(values: Sequence[float]) -> MetricStats:
    arr = np.asarray(values, dtype=float)
    stats = np.stack([arr, np.ones_like(arr)], axis=1) if len(arr) else np.zeros((0, 2))
    return MetricStats(stats, lambda s: float(s[0] / s[1]) if s[1] else float("nan"), arr)


def distribution(values: Sequence[int | float]) -> dict[str, float]:
    """min / mean / p50 / p95 / max / sum of a list of lengths (token counts per example)."""
    arr = np.asarray(values)
    return {
        "min": int(arr.min()),
        "mean": round(float(arr.mean()), 1),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": int(arr.max()),
        "sum": int(arr.sum()),
    }
