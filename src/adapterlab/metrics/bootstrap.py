"""Paired bootstrap for the adapter-minus-base difference of a metric.

Both systems are scored on the same test examples, so the examples are resampled once per round and both
corpus values are recomputed on that resample (from summed per-example statistics, so corpus BLEU is resampled
as corpus BLEU). The 95% interval is the 2.5th-97.5th percentile of the resampled differences; a difference is
"more than noise" when that interval excludes zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adapterlab.metrics.stats import MetricStats


@dataclass
class Delta:
    base: float
    adapter: float
    delta: float
    low: float
    high: float
    resamples: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_bootstrap(base: MetricStats, adapter: MetricStats, resamples: int = 1000, seed: int = 0) -> Delta:
    n = len(base.stats)
    if n != len(adapter.stats):
        raise ValueError("paired bootstrap needs the same examples for both systems")
    point_base, point_adapter = base.value, adapter.value
    rng = np.random.default_rng(seed)
    # counts[b, i] = how often example i is drawn in round b: summed statistics are counts @ stats.
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)
    sums_base, sums_adapter = counts @ base.stats, counts @ adapter.stats
    deltas = np.array(
        [adapter.reduce(a) - base.reduce(b) for a, b in zip(sums_adapter, sums_base, strict=True)], dtype=float
    )
    deltas = deltas[np.isfinite(deltas)]
    low, high = np.percentile(deltas, [2.5, 97.5]) if len(deltas) else (float("nan"), float("nan"))
    return Delta(point_base, point_adapter, point_adapter - point_base, float(low), float(high), resamples)
