"""Intervals and multiple-comparison corrections: the one home for the package's statistics.

The resampling unit is whatever is independent in the data (a translation pair, an image, a template, a seed);
callers pass it as ``clusters`` and every member of a cluster moves together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from so8t_core.config import check


def cluster_bootstrap(
    stat: Callable[[np.ndarray], float],
    clusters: Sequence[Any],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile interval of ``stat`` over rows, resampling whole clusters with replacement.

    Args:
        stat: row indices (with repeats) -> a number, e.g. an AUPRC difference between two systems.
        clusters: one cluster key per row (rows of one key are resampled together).
        n_boot: resamples; a resample whose statistic is NaN (e.g. no positive left) is dropped and counted.
        seed: seed of the resampling.
        level: interval coverage.
    Returns:
        ``{"estimate", "lo", "hi", "n_boot", "n_dropped", "n_clusters"}`` (``estimate`` on all rows).
    """
    check(n_boot > 0, "n_boot", n_boot, "must be > 0")
    check(0.0 < level < 1.0, "level", level, "must be in (0, 1)")
    keys = list(dict.fromkeys(clusters))
    check(len(keys) >= 2, "clusters", len(keys), "need at least 2 clusters to resample")
    members: dict[Any, list[int]] = {k: [] for k in keys}
    for i, c in enumerate(clusters):
        members[c].append(i)
    groups = [np.array(members[k]) for k in keys]
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        idx = np.concatenate([groups[j] for j in rng.integers(0, len(groups), len(groups))])
        v = float(stat(idx))
        if not np.isnan(v):
            draws.append(v)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail]).tolist() if draws else [float("nan")] * 2
    return {
        "estimate": float(stat(np.arange(len(clusters)))),
        "lo": lo,
        "hi": hi,
        "n_boot": n_boot,
        "n_dropped": n_boot - len(draws),
        "n_clusters": len(keys),
    }


def holm(p_values: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    order = sorted(p_values, key=p_values.__getitem__)
    out, running, m = {}, 0.0, len(order)
    for rank, name in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[name]))
        out[name] = running
    return out
