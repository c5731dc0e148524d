"""Style metrics for replies in a voice: lexical variety, repetition, and embedding similarity to a speaker.

Each returns a :class:`~adapterlab.metrics.stats.MetricStats` with per-example statistics, so the paired bootstrap
of the report resamples them like every other metric.

- ``distinct(replies, n)``: distinct-n of the whole set of replies (unique word n-grams / all word n-grams). Its
  per-example statistic is the sum over the reply's n-grams of 1 / (the n-gram's count in the set), so the sum over
  all replies is the number of unique n-grams exactly; a resample reuses the counts of the full set.
- ``repetition(replies)``: the share of each reply's word bigrams that repeat an earlier bigram of the same reply
  (a model stuck in a loop scores high), averaged over replies.
- ``centroid_margin(embeddings, centroids, target)``: cosine similarity to the target speaker's centroid minus the
  highest similarity to any other speaker's: above 0 when a reply sounds more like the target than like anyone else.
- ``similarity(a, b)``: cosine similarity row by row (relevance: a reply against the line it answers).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

from adapterlab.metrics.stats import MetricStats, mean_stats

WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)


def words(text: str) -> list[str]:
    return WORD.findall(text.casefold())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct(replies: Sequence[str], n: int) -> MetricStats:
    grams = [ngrams(words(r), n) for r in replies]
    counts = Counter(g for reply in grams for g in reply)
    unique_share = np.array([sum(1.0 / counts[g] for g in reply) for reply in grams], dtype=float)
    totals = np.array([len(reply) for reply in grams], dtype=float)
    stats = np.stack([unique_share, totals], axis=1) if len(grams) else np.zeros((0, 2))
    per_example = np.divide(unique_share, totals, out=np.ones_like(totals), where=totals > 0)
    return MetricStats(stats, lambda s: float(s[0] / s[1]) if s[1] else float("nan"), per_example)


def commonest_opening(replies: Sequence[str]) -> tuple[str, MetricStats]:
    """The commonest first word of the replies and the share of replies that open with it: a voice reduced to a
    catchphrase ("Oh! ...", every time) shows here long before it shows in distinct-n. Read against the real
    lines' own share."""
    firsts = [next(iter(words(r)), "") for r in replies]
    counted = Counter(f for f in firsts if f)
    word = counted.most_common(1)[0][0] if counted else ""
    return word, mean_stats([1.0 if word and f == word else 0.0 for f in firsts])


def repetition(replies: Sequence[str]) -> MetricStats:
    rates = []
    for reply in replies:
        grams = ngrams(words(reply), 2)
        seen: set[tuple[str, ...]] = set()
        repeated = 0
        for gram in grams:
            repeated += gram in seen
            seen.add(gram)
        rates.append(repeated / len(grams) if grams else 0.0)
    return mean_stats(rates)


def centroid_margin(embeddings: np.ndarray, centroids: dict[str, np.ndarray], target: str) -> MetricStats:
    if target not in centroids or len(centroids) < 2:
        raise ValueError("the centroid margin needs the target speaker and at least one other speaker")
    others = np.stack([c for name, c in centroids.items() if name != target])
    own = embeddings @ centroids[target]
    nearest_other = (embeddings @ others.T).max(axis=1) if len(embeddings) else np.zeros(0)
    return mean_stats(own - nearest_other)


def similarity(a: np.ndarray, b: np.ndarray) -> MetricStats:
    return mean_stats(np.einsum("ij,ij->i", a, b) if len(a) else [])


def centroid(embeddings: np.ndarray) -> np.ndarray:
    """The unit-length mean direction of unit-length embeddings."""
    mean = embeddings.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)
