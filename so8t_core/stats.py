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


def t_interval(x: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean of ``x`` with a Student-t interval and the two-sided one-sample t-test p-value against 0.

    Args:
        x: independent values (e.g. per-seed paired differences), at least 2.
        level: interval coverage.
    Returns:
        ``{"mean", "lo", "hi", "p", "n"}``; with zero spread the interval collapses to the mean and ``p`` is 0
        (or 1 when the mean is 0 too).
    """
    from scipy import stats as sps

    a = np.asarray(x, dtype=float)
    check(a.size >= 2, "x", a.size, "need at least 2 values for a t-interval")
    check(0.0 < level < 1.0, "level", level, "must be in (0, 1)")
    mean, se = float(a.mean()), float(a.std(ddof=1) / np.sqrt(a.size))
    if se == 0.0:
        return {"mean": mean, "lo": mean, "hi": mean, "p": float(mean == 0.0), "n": int(a.size)}
    q = float(sps.t.ppf(0.5 + level / 2, df=a.size - 1))
    p = float(2 * sps.t.sf(abs(mean / se), df=a.size - 1))
    return {"mean": mean, "lo": mean - q * se, "hi": mean + q * se, "p": p, "n": int(a.size)}


def two_level_bootstrap(
    d: np.ndarray, clusters: Sequence[Any], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Percentile interval of the grand mean of ``d`` (seeds x items), resampling seeds, then item clusters.

    Both levels are independent units: a seed (a training run) and a template (items phrased alike move
    together). Each resample draws seeds with replacement and, for each drawn seed, clusters with replacement.

    Args:
        d: (n_seeds, n_items) values, e.g. per-item paired NLL differences of one comparison under each seed.
        clusters: one cluster key per item (column).
        n_boot: resamples.
        seed: seed of the resampling.
        level: interval coverage.
    Returns:
        ``{"estimate", "lo", "hi", "p_boot", "n_seeds", "n_clusters"}``; ``p_boot`` is twice the smaller share of
        resamples on either side of 0 (a rough two-sided p-value, at least 1 / n_boot).
    """
    d = np.asarray(d, dtype=float)
    check(d.ndim == 2 and d.shape[0] >= 1, "d", d.shape, "must be (n_seeds, n_items)")
    check(len(clusters) == d.shape[1], "clusters", len(clusters), f"need one key per item ({d.shape[1]})")
    check(n_boot > 0, "n_boot", n_boot, "must be > 0")
    keys = list(dict.fromkeys(clusters))
    check(len(keys) >= 2, "clusters", len(keys), "need at least 2 clusters to resample")
    # per seed and cluster: (sum, count), so a resample is a few array lookups instead of a concatenation
    sums = np.stack([d[:, [i for i, c in enumerate(clusters) if c == k]].sum(1) for k in keys], 1)  # (S, K)
    counts = np.array([sum(1 for c in clusters if c == k) for k in keys], dtype=float)  # (K,)
    rng = np.random.default_rng(seed)
    S, K = sums.shape
    s_idx = rng.integers(0, S, (n_boot, S))  # (B, S) drawn seeds
    k_idx = rng.integers(0, K, (n_boot, S, K))  # (B, S, K) drawn clusters per drawn seed
    per_seed = sums[s_idx[..., None], k_idx].sum(-1) / counts[k_idx].sum(-1)  # (B, S)
    draws = per_seed.mean(-1)  # (B,)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(draws, [tail, 1 - tail]).tolist()
    p = max(2 * min(float((draws <= 0).mean()), float((draws >= 0).mean())), 1.0 / n_boot)
    return {
        "estimate": float(d.mean()),
        "lo": lo,
        "hi": hi,
        "p_boot": min(p, 1.0),
        "n_seeds": S,
        "n_clusters": K,
    }


def quadratic_argmin(x: Sequence[float], y: Sequence[float]) -> float:
    """argmin of the least-squares parabola through (x, y); NaN when it opens downward or is flat."""
    a, b, _ = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 2)
    return float(-b / (2 * a)) if a > 0 else float("nan")


def quadratic_argmin_bootstrap(
    x: Sequence[float], y: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Where a parabola fitted to the seed-mean curve ``y`` over ``x`` has its minimum, with a seed bootstrap.

    Args:
        x: the grid (e.g. fixed alpha values), at least 3 distinct points.
        y: (n_seeds, len(x)) values (e.g. test NLL of each fixed-alpha run under each seed).
        n_boot: resamples of the seeds.
        seed: seed of the resampling.
        level: interval coverage.
    Returns:
        ``{"estimate", "lo", "hi", "n_boot", "n_dropped"}``; resamples whose parabola opens downward have no
        minimum and are dropped and counted.
    """
    y = np.asarray(y, dtype=float)
    check(len(set(x)) >= 3, "x", list(x), "need at least 3 distinct grid points for a parabola")
    check(y.ndim == 2 and y.shape[1] == len(x), "y", y.shape, f"must be (n_seeds, {len(x)})")
    rng = np.random.default_rng(seed)
    draws = [quadratic_argmin(x, y[rng.integers(0, len(y), len(y))].mean(0)) for _ in range(n_boot)]
    kept = [v for v in draws if not np.isnan(v)]
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(kept, [tail, 1 - tail]).tolist() if kept else [float("nan")] * 2
    return {
        "estimate": quadratic_argmin(x, y.mean(0)),
        "lo": lo,
        "hi": hi,
        "n_boot": n_boot,
        "n_dropped": n_boot - len(kept),
    }
