"""Intervals, tests and multiple-comparison corrections: the one home for the package's statistics.

The resampling unit is whatever is independent in the data (a translation pair, an image, a template, a seed);
callers pass it as ``clusters`` and every member of a cluster moves together.

Comparisons over seeds and shared items use one test, ``crossed_test`` (or ``crossed_stat_test`` for a statistic
that is not a mean, like AUPRC). Seeds are training runs; the items (grouped by template or translation pair) are
the same for every seed, so one bootstrap draw of the item clusters applies to every seed, and seeds are drawn
on top of it (crossed). Drawing clusters afresh for each seed (nested) treats the items as if each seed had its
own, and shrinks the item part of the variance by the number of seeds: on simulated data with no effect it
rejects several times more often than it should (``tests/test_stats.py`` measures both).

The draws give the standard error; the interval and the p-value both read it against a Student t with
Satterthwaite's degrees of freedom. With four templates a percentile read of the draws cannot be calibrated: a
resample of four clusters sees little more than their signs, and a percentile test rejects about one time in
five on null data (measured while building this module), so the tails come from the t reference instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from so8t_core.config import check

ALPHA = 0.05  # the default family-wise error rate after Holm


def cluster_bootstrap(
    stat: Callable[[np.ndarray], float],
    clusters: Sequence[Any],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile interval of one statistic over rows (a system's metric), resampling whole clusters.

    For the difference between two systems use ``crossed_test`` / ``crossed_stat_test``: they give the p-value too.

    Args:
        stat: row indices (with repeats) -> a number, e.g. the safety F1 of one system.
        clusters: one cluster key per row (rows of one key are resampled together).
        n_boot: resamples; a resample whose statistic is NaN (e.g. no positive left) is dropped and counted.
        seed: seed of the resampling.
        level: interval coverage.
    Returns:
        ``{"estimate", "lo", "hi", "n_boot", "n_dropped", "n_clusters"}`` (``estimate`` on all rows).
    """
    check(n_boot > 0, "n_boot", n_boot, "must be > 0")
    check(0.0 < level < 1.0, "level", level, "must be in (0, 1)")
    groups = _groups(clusters)
    rng = np.random.default_rng(seed)
    draws = [float(stat(_rows(groups, rng.integers(0, len(groups), len(groups))))) for _ in range(n_boot)]
    kept = [v for v in draws if not np.isnan(v)]
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(kept, [tail, 1 - tail]).tolist() if kept else [float("nan")] * 2
    return {
        "estimate": float(stat(np.arange(len(clusters)))),
        "lo": lo,
        "hi": hi,
        "n_boot": n_boot,
        "n_dropped": n_boot - len(kept),
        "n_clusters": len(groups),
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
        ``{"mean", "lo", "hi", "p", "n", "degenerate"}``. With zero spread the values are not replicates of
        anything (seeds that change nothing agree exactly): no interval (NaN), ``p`` 1 and ``degenerate`` True,
        so no comparison is ever won on them.
    """
    from scipy import stats as sps

    a = np.asarray(x, dtype=float)
    check(a.size >= 2, "x", a.size, "need at least 2 values for a t-interval")
    check(0.0 < level < 1.0, "level", level, "must be in (0, 1)")
    mean, se = float(a.mean()), float(a.std(ddof=1) / np.sqrt(a.size))
    if se == 0.0:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "p": 1.0, "n": int(a.size), "degenerate": True}
    q = float(sps.t.ppf(0.5 + level / 2, df=a.size - 1))
    p = float(2 * sps.t.sf(abs(mean / se), df=a.size - 1))
    return {"mean": mean, "lo": mean - q * se, "hi": mean + q * se, "p": p, "n": int(a.size), "degenerate": False}


def crossed_test(
    d: np.ndarray,
    clusters: Sequence[Any],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    min_effect: float = 0.0,
) -> dict[str, Any]:
    """The calibrated test of a paired difference over seeds and shared items: is the grand mean of ``d`` != 0?

    Each resample draws the item clusters once (shared by every seed) and the seeds, both with replacement. The
    draws give the standard error; interval and p-value read it against Student's t (see the module docstring).

    Args:
        d: (n_seeds, n_items) values, e.g. per-item paired NLL differences of one comparison under each seed;
            one row (one system, no seeds) resamples the clusters only.
        clusters: one cluster key per item (column): a template, a translation pair, an image.
        n_boot: resamples; the p-value is never below ``1 / n_boot``.
        seed: seed of the resampling.
        level: interval coverage.
        min_effect: the smallest difference that counts, named before the run: the p-value tests
            ``|difference| <= min_effect``, so a smaller difference is never significant.
    Returns:
        ``{"estimate", "se", "df", "lo", "hi", "p", "per_seed", "n_boot", "n_seeds", "n_clusters", "min_effect",
        "degenerate"}``; ``per_seed`` is each seed's mean difference. ``degenerate``: every seed and cluster gave
        the same number; the interval is that number and ``p`` is 1 for 0 (or within ``min_effect``), else the
        floor ``1 / n_boot``.
    """
    d = np.asarray(d, dtype=float)
    check(d.ndim == 2 and d.shape[0] >= 1, "d", d.shape, "must be (n_seeds, n_items)")
    check(len(clusters) == d.shape[1], "clusters", len(clusters), f"need one key per item ({d.shape[1]})")
    _check_args(n_boot, level, min_effect)
    groups = _groups(clusters)
    # per seed and cluster: (sum, count), so a resample is a few array lookups instead of a concatenation
    sums = np.stack([d[:, g].sum(1) for g in groups], 1)  # (S, K)
    counts = np.array([len(g) for g in groups], dtype=float)  # (K,)
    S, K = sums.shape
    rng = np.random.default_rng(seed)
    s_idx = rng.integers(0, S, (n_boot, S))  # (B, S) drawn seeds
    k_idx = _cluster_draws(rng, n_boot, S, K)  # (B, 1, K) shared by every seed; (B, S, K) would be nested

    def mean_of(seeds: np.ndarray, ks: np.ndarray) -> np.ndarray:
        return (sums[seeds[..., None], ks].sum(-1) / counts[ks].sum(-1)).mean(-1)  # (B,)

    per_seed = sums.sum(1) / counts.sum()  # (S,)
    draws = mean_of(s_idx, k_idx)
    seed_only = per_seed[s_idx].mean(-1)
    clusters_only = mean_of(np.broadcast_to(np.arange(S), (n_boot, S)), k_idx)
    out = _t_reference(float(d.mean()), draws, seed_only, clusters_only, S, K, level, min_effect)
    return out | {"per_seed": per_seed.tolist(), "n_boot": n_boot, "n_dropped": 0}


def crossed_stat_test(
    stat: Callable[[np.ndarray, np.ndarray], float],
    n_seeds: int,
    clusters: Sequence[Any],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    min_effect: float = 0.0,
) -> dict[str, Any]:
    """``crossed_test`` for a statistic that is not a mean of rows (an AUPRC or F1 difference, averaged over seeds).

    Args:
        stat: (seed indices, row indices), both with repeats -> a number, e.g. the mean over the given seeds of
            system a's AUPRC on the rows minus system b's. NaN draws (no positive left) are dropped and counted.
        n_seeds: how many seeds ``stat`` indexes (1: one system, only the clusters are resampled).
        clusters: one cluster key per row.
        n_boot, seed, level, min_effect: as in ``crossed_test``.
    Returns:
        ``crossed_test``'s fields; ``per_seed`` is ``stat`` of each seed on all rows. With fewer than 2 usable
        resamples (or a NaN estimate) the result is ``degenerate`` with NaN interval and ``p`` 1.
    """
    check(n_seeds >= 1, "n_seeds", n_seeds, "must be >= 1")
    _check_args(n_boot, level, min_effect)
    groups = _groups(clusters)
    rng = np.random.default_rng(seed)
    all_seeds, all_rows = np.arange(n_seeds), np.arange(len(clusters))
    draws, seed_only, clusters_only = [], [], []
    for _ in range(n_boot):
        seeds = rng.integers(0, n_seeds, n_seeds)
        rows = _rows(groups, _cluster_draws(rng, 1, n_seeds, len(groups))[0, 0])
        draws.append(float(stat(seeds, rows)))
        seed_only.append(float(stat(seeds, all_rows)) if n_seeds > 1 else 0.0)
        clusters_only.append(float(stat(all_seeds, rows)) if n_seeds > 1 else draws[-1])
    keep = ~(np.isnan(draws) | np.isnan(seed_only) | np.isnan(clusters_only))
    est = float(stat(all_seeds, all_rows))
    if keep.sum() < 2 or math.isnan(est):  # e.g. a rate over trap prompts on a split without traps
        nan = math.nan
        return {"estimate": est, "se": nan, "df": nan, "lo": nan, "hi": nan, "p": 1.0, "degenerate": True,
                "n_seeds": n_seeds, "n_clusters": len(groups), "min_effect": min_effect, "per_seed": [nan] * n_seeds,
                "n_boot": n_boot, "n_dropped": int((~keep).sum())}  # fmt: skip
    out = _t_reference(
        est, np.array(draws)[keep], np.array(seed_only)[keep], np.array(clusters_only)[keep], n_seeds,
        len(groups), level, min_effect,
    )  # fmt: skip
    per_seed = [float(stat(np.array([s]), all_rows)) for s in range(n_seeds)]
    return out | {"per_seed": per_seed, "n_boot": n_boot, "n_dropped": int((~keep).sum())}


def significant(row: dict[str, Any], alpha: float = ALPHA, p_key: str = "p") -> int:
    """+1 / -1 when a ``crossed_test`` row says the difference is above / below 0, else 0.

    Significant means: ``row[p_key] < alpha`` (``p_holm`` once Holm-adjusted), the interval excludes 0 on that
    side and the estimate is at least ``min_effect`` away from 0.
    """
    if not row[p_key] < alpha or abs(row["estimate"]) < row.get("min_effect", 0.0):
        return 0
    return 1 if row["lo"] > 0 else -1 if row["hi"] < 0 else 0


def _check_args(n_boot: int, level: float, min_effect: float) -> None:
    check(n_boot >= 2, "n_boot", n_boot, "must be >= 2")
    check(0.0 < level < 1.0, "level", level, "must be in (0, 1)")
    check(min_effect >= 0.0, "min_effect", min_effect, "must be >= 0")


def _groups(clusters: Sequence[Any]) -> list[np.ndarray]:
    """Row indices of each distinct cluster key, in order of first appearance."""
    members: dict[Any, list[int]] = {}
    for i, c in enumerate(clusters):
        members.setdefault(c, []).append(i)
    check(len(members) >= 2, "clusters", len(members), "need at least 2 clusters to resample")
    return [np.array(v) for v in members.values()]


def _rows(groups: list[np.ndarray], picked: np.ndarray) -> np.ndarray:
    return np.concatenate([groups[j] for j in picked])


def _cluster_draws(rng: np.random.Generator, n_boot: int, n_seeds: int, n_clusters: int) -> np.ndarray:
    """(n_boot, 1, n_clusters) cluster indices: one draw per resample, applied to every seed (crossed)."""
    return rng.integers(0, n_clusters, (n_boot, 1, n_clusters))


def _t_reference(
    est: float,
    draws: np.ndarray,
    seed_only: np.ndarray,
    clusters_only: np.ndarray,
    S: int,
    K: int,
    level: float,
    min_effect: float,
) -> dict[str, Any]:
    """Interval and p-value of ``est`` from its crossed bootstrap draws, against Student's t.

    The seed-only and cluster-only draws (same random numbers) split the variance between the two units: each
    part is scaled by n / (n - 1) (a bootstrap of n units underestimates the variance by that factor) and the
    degrees of freedom are Satterthwaite's for the two parts (S - 1 and K - 1).
    """
    from scipy import stats as sps

    n_boot = len(draws)
    v, vs, vk = float(draws.var()), float(seed_only.var()), float(clusters_only.var())
    tiny = (1e-9 * max(abs(est), float(np.abs(draws).max()))) ** 2  # rounding, not spread
    v, vs, vk = (x if x > tiny else 0.0 for x in (v, vs, vk))
    a = vs * S / (S - 1) if S > 1 else 0.0
    b = vk * K / (K - 1)
    base = {"estimate": est, "n_seeds": S, "n_clusters": K, "min_effect": min_effect}
    if v <= 0.0 and a + b <= 0.0:  # every seed and every cluster gives the same number
        p = 1.0 if abs(est) <= min_effect else 1.0 / n_boot  # all units agree: as strong as the draws can show
        return base | {"se": 0.0, "df": math.nan, "lo": est, "hi": est, "p": p, "degenerate": True}
    if a + b > 0.0:
        se = math.sqrt(v * (a + b) / (vs + vk)) if v > 0.0 else math.sqrt(a + b)
        df = (a + b) ** 2 / ((a * a / (S - 1) if S > 1 else 0.0) + b * b / (K - 1))
    else:  # only the seed-by-cluster interaction varies: the smaller unit count bounds the information
        se, df = math.sqrt(v), float(max(min(S, K) - 1, 1))
    q = float(sps.t.ppf(0.5 + level / 2, df))
    p = float(2 * sps.t.sf((abs(est) - min_effect) / se, df))
    p = min(max(p, 1.0 / n_boot), 1.0)  # the draws cannot resolve a smaller p-value
    return base | {"se": se, "df": float(df), "lo": est - q * se, "hi": est + q * se, "p": p, "degenerate": False}


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


def choose_interior(
    grid: Sequence[float],
    score: Callable[[float], float],
    minimize: bool = True,
    max_extensions: int = 3,
    limits: tuple[float, float] = (0.0, math.inf),
    known: dict[float, float] | None = None,
) -> dict[str, Any]:
    """The grid value with the best dev score, the grid extended until that value is interior.

    A choice at an end of the grid means the grid is too small, not that the value is best. While the best value
    is an end, one more value is scored past that end, one geometric step further (the ratio of the two values at
    that end), up to ``max_extensions`` times or until the next value would leave ``limits``.

    Args:
        grid: positive candidate values (a learning rate, a probe's ``C``), at least 2.
        score: value -> dev score, e.g. ``lambda lr: dev NLL after training with lr`` or ``lambda c: dev AUPRC of
            the probe fitted with C``. NaN (a diverged run) counts as the worst score.
        minimize: lower scores are better (a loss); False for AUPRC or accuracy.
        max_extensions: at most this many extra values are scored.
        limits: values outside ``(lo, hi)`` are never tried (e.g. a learning rate above 1).
        known: value -> score already measured (not scored again).
    Returns:
        ``{"choice", "edge", "side", "grid", "scores", "extensions"}``: ``edge`` is True when the choice is still
        an end of the extended grid (``side`` "low" or "high"): a verdict must not rest on such a choice.
    """
    values = sorted({float(g) for g in grid})
    check(len(values) >= 2 and values[0] > 0, "grid", list(grid), "need at least 2 positive values")
    check(max_extensions >= 0, "max_extensions", max_extensions, "must be >= 0")
    scores = {float(k): float(v) for k, v in (known or {}).items()}
    for g in values:
        if g not in scores:
            scores[g] = float(score(g))
    extensions = 0
    while True:
        sign = 1.0 if minimize else -1.0
        ranked = [sign * scores[g] if not math.isnan(scores[g]) else math.inf for g in values]
        check(min(ranked) < math.inf, "score", "NaN", "every grid value scored NaN")
        best = int(np.argmin(ranked))
        side = "low" if best == 0 else "high" if best == len(values) - 1 else None
        nxt = values[0] ** 2 / values[1] if side == "low" else values[-1] ** 2 / values[-2]
        if side is None or extensions >= max_extensions or not limits[0] < nxt < limits[1]:
            break
        scores[nxt] = float(score(nxt))
        values = sorted([*values, nxt])
        extensions += 1
    return {
        "choice": values[best],
        "edge": side is not None,
        "side": side,
        "grid": values,
        "scores": [scores[g] for g in values],
        "extensions": extensions,
    }
