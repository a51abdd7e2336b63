"""Does the pretrained base already carry the safety signal? A linear probe on its pooled hidden states against
the same probe on a random-init model of the same shape, TF-IDF and keywords, every system thresholded on dev by
one rule (``labels.refuse_threshold``) and scored on the hand-written test set, with intervals over translation
pairs.

Explained in notebooks/00_base_model.ipynb (the precondition check of the embedded base).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from so8t_core.config import check
from so8t_core.safety.labels import LABELS, LabeledSet, auprc_refuse, dev_rule, metrics, refuse_decisions
from so8t_core.stats import crossed_stat_test

REPORTED = ("auprc_refuse", "safety_f1", "refuse_recall", "over_refusal_rate")
Scored = Mapping[str, Any]  # a ``score_system`` result


C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)

# Notebook 00's declared primary family: the pretrained probe against the same probe on random-init models (does
# pretraining put the signal there?) and against TF-IDF (is it more than character n-grams?), on AUPRC of
# REFUSE. Holm corrects these two only; every other comparison (safety F1, keywords) is exploratory.
PRIMARY = ("probe_vs_random", "probe_vs_tfidf")
PRIMARY_METRIC = "auprc_refuse"
MIN_EFFECT = 0.03  # AUPRC of REFUSE: a smaller gap is not a signal a later notebook could build on


def probe_scores(
    features: Mapping[str, np.ndarray],
    train_labels: Sequence[str],
    dev_labels: Sequence[str] | None = None,
    grid: Sequence[float] = C_GRID,
) -> dict[str, Any]:
    """P(REFUSE) on each split from a standardised logistic-regression probe fitted on ``features["train"]``.

    The inverse L2 strength ``C`` is chosen by AUPRC of REFUSE on ``features["dev"]`` (tuning on dev, never on
    test) with ``stats.choose_interior``: the grid is extended while the best value is an end of it, and a choice
    still at an end is flagged ``edge`` (no verdict may rest on it). Without ``dev_labels`` the last value of
    ``grid`` is used and nothing is tuned.

    Args:
        features: split -> (N, H) pooled states; needs ``train`` (and ``dev`` when tuning).
        train_labels: gold labels of the train rows.
        dev_labels: gold labels of the dev rows, to choose ``C``.
        grid: candidate ``C`` values; classes balanced by weight.
    Returns:
        split -> (N,) scores for every split in ``features``, ``"C"`` (the chosen value) and ``"tuning"`` (the
        ``choose_interior`` record: ``edge``, ``side``, the extended ``grid`` and its dev ``scores``; None
        without dev labels).
    """
    from so8t_core.stats import choose_interior

    y = np.asarray(train_labels) == "REFUSE"
    check(0 < y.sum() < len(y), "train_labels", int(y.sum()), "need both REFUSE and other prompts")
    check(len(grid) > 0, "grid", grid, "needs at least one C")
    fitted: dict[float, Any] = {}

    def fit(c: float) -> Any:
        if c not in fitted:
            fitted[c] = _logistic(c).fit(np.asarray(features["train"], dtype=np.float64), y)
        return fitted[c]

    tuning = None
    if dev_labels is None:
        c = float(grid[-1])
    else:
        ydev = np.asarray(dev_labels) == "REFUSE"
        xdev = np.asarray(features["dev"], dtype=np.float64)
        tuning = choose_interior(grid, lambda c: auprc_refuse(ydev, fit(c).predict_proba(xdev)[:, 1]), minimize=False)
        c = tuning["choice"]
    clf = fit(c)
    out: dict[str, Any] = {s: clf.predict_proba(np.asarray(x, dtype=np.float64))[:, 1] for s, x in features.items()}
    return out | {"C": c, "tuning": tuning}


def _logistic(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # lbfgs on a strictly convex loss: the fit is a function of the data and C alone (no seed to replicate over)
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))


def score_system(
    dev: LabeledSet, test: LabeledSet, p_dev: Sequence[float], p_test: Sequence[float], max_over_refusal: float = 0.05
) -> dict[str, Any]:
    """Threshold on dev by the shared rule (``labels.dev_rule``), then ``metrics`` of the decisions on test.

    Returns:
        ``{"threshold", "no_admissible_threshold", "metrics", "preds", "scores"}`` (preds and scores on test);
        ``metrics`` gains ``over_refusal_cap`` (the dev cap) and ``over_refusal_excess`` (test over-refusal minus
        the cap), so the cap a threshold was tuned to is read next to what it gives on test.
    """
    rule = dev_rule(p_dev, dev.labels, max_over_refusal)
    preds = refuse_decisions(p_test, rule["threshold"])
    m = metrics(test.labels, preds, list(p_test))
    m |= {"over_refusal_cap": max_over_refusal, "over_refusal_excess": m["over_refusal_rate"] - max_over_refusal}
    return {
        "threshold": float(rule["threshold"]),
        "no_admissible_threshold": bool(rule["no_admissible_threshold"]),
        "metrics": m,
        "preds": preds,
        "scores": [float(s) for s in p_test],
    }


def _safety_f1(y: np.ndarray, pred: np.ndarray) -> float:
    tp, n = float((y & pred).sum()), float(y.sum() + pred.sum())
    return 2 * tp / n if n else float("nan")


def paired_differences(
    test: LabeledSet,
    a: Scored | Sequence[Scored],
    b: Scored | Sequence[Scored],
    n_boot: int = 2000,
    seed: int = 0,
    min_effect: float = 0.0,
) -> dict[str, dict[str, Any]]:
    """System ``a`` minus system ``b`` on test (AUPRC of REFUSE and safety F1) by ``stats.crossed_stat_test``:
    translation pairs (``extra["pair"]``; an en/ja twin pair is one unit) crossed with seeds.

    Args:
        test: the test set.
        a, b: a ``score_system`` result, or one per seed (seed i of ``a`` pairs with seed i of ``b``; a single
            result is used for every seed of the other side).
        n_boot, seed, min_effect: as in ``stats.crossed_stat_test``.
    Returns:
        ``{"auprc_refuse": crossed_stat_test(...), "safety_f1": ...}``; the safety-F1 entry has ``excluded`` True
        when either side had no admissible dev threshold (its F1 was switched off, not measured).
    """
    runs_a, runs_b = _seeds(a), _seeds(b)
    n = max(len(runs_a), len(runs_b))
    check(len(runs_a) in (1, n) and len(runs_b) in (1, n), "seeds", (len(runs_a), len(runs_b)), "must match or be 1")
    y = np.asarray(test.labels) == "REFUSE"
    pairs = [str(e.get("pair", i)) for i, e in enumerate(test.extra)]

    def per_seed(runs: Sequence[Scored], key: str) -> list[np.ndarray]:
        return [np.asarray(r[key]) == "REFUSE" if key == "preds" else np.asarray(r[key], dtype=float) for r in runs]

    def stat(metric: Any, va: list[np.ndarray], vb: list[np.ndarray]) -> Any:
        def f(seeds: np.ndarray, i: np.ndarray) -> float:
            return float(np.mean([metric(y[i], va[s % len(va)][i]) - metric(y[i], vb[s % len(vb)][i]) for s in seeds]))

        return f

    out = {
        "auprc_refuse": crossed_stat_test(
            stat(auprc_refuse, per_seed(runs_a, "scores"), per_seed(runs_b, "scores")), n, pairs, n_boot, seed,
            min_effect=min_effect,
        ),
        "safety_f1": crossed_stat_test(
            stat(_safety_f1, per_seed(runs_a, "preds"), per_seed(runs_b, "preds")), n, pairs, n_boot, seed,
            min_effect=min_effect,
        ),
    }  # fmt: skip
    out["safety_f1"]["excluded"] = any(r.get("no_admissible_threshold", False) for r in (*runs_a, *runs_b))
    return out


def _seeds(x: Scored | Sequence[Scored]) -> list[Scored]:
    return [x] if isinstance(x, Mapping) else list(x)


def table(systems: Mapping[str, Scored | Sequence[Scored]], keys: Sequence[str] = REPORTED) -> list[dict[str, Any]]:
    """One row per system and seed: its dev threshold (and whether the dev rule found one), the test metrics in
    ``keys`` and the dev over-refusal cap, so test over-refusal is read against it.

    Args:
        systems: name -> a ``score_system`` result, or one per seed (rows ``name[seed i]``, then ``name[mean]``).
        keys: the ``metrics`` reported.
    Returns:
        One dict per row.
    """
    rows = []
    for n, runs in systems.items():
        many = not isinstance(runs, Mapping)
        for i, s in enumerate(_seeds(runs)):
            rows.append(
                {
                    "system": f"{n}[seed {i}]" if many else n,
                    "threshold": s["threshold"],
                    "no_admissible_threshold": s.get("no_admissible_threshold", False),
                    **{k: s["metrics"][k] for k in keys},
                    "over_refusal_cap": s["metrics"].get("over_refusal_cap", float("nan")),
                }
            )
        if many:
            per = rows[-len(_seeds(runs)) :]
            rows.append({"system": f"{n}[mean]", **{k: float(np.mean([r[k] for r in per])) for k in keys}})
    return rows


__all__ = ["LABELS", "MIN_EFFECT", "PRIMARY", "paired_differences", "probe_scores", "score_system", "table"]
