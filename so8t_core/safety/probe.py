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


def probe_scores(
    features: Mapping[str, np.ndarray],
    train_labels: Sequence[str],
    dev_labels: Sequence[str] | None = None,
    grid: Sequence[float] = C_GRID,
) -> dict[str, Any]:
    """P(REFUSE) on each split from a standardised logistic-regression probe fitted on ``features["train"]``.

    The inverse L2 strength ``C`` is chosen from ``grid`` by AUPRC of REFUSE on ``features["dev"]`` (tuning on dev,
    never on test); without ``dev_labels`` the last value of ``grid`` is used.

    Args:
        features: split -> (N, H) pooled states; needs ``train`` (and ``dev`` when tuning).
        train_labels: gold labels of the train rows.
        dev_labels: gold labels of the dev rows, to choose ``C``.
        grid: candidate ``C`` values; classes balanced by weight.
    Returns:
        split -> (N,) scores for every split in ``features``, and ``"C"``: the chosen value.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(train_labels) == "REFUSE"
    check(0 < y.sum() < len(y), "train_labels", int(y.sum()), "need both REFUSE and other prompts")
    check(len(grid) > 0, "grid", grid, "needs at least one C")
    best: tuple[float, float, Any] | None = None
    for c in grid if dev_labels is not None else grid[-1:]:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
        clf.fit(np.asarray(features["train"], dtype=np.float64), y)
        if dev_labels is None:
            best = (0.0, c, clf)
            break
        ydev = np.asarray(dev_labels) == "REFUSE"
        score = auprc_refuse(ydev, clf.predict_proba(np.asarray(features["dev"], dtype=np.float64))[:, 1])
        if best is None or score > best[0]:
            best = (score, c, clf)
    assert best is not None
    _, c, clf = best
    out: dict[str, Any] = {s: clf.predict_proba(np.asarray(x, dtype=np.float64))[:, 1] for s, x in features.items()}
    return out | {"C": c}


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


def precondition_verdicts(diffs: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict[str, bool]:
    """Notebook 00's verdicts from ``paired_differences`` results.

    Args:
        diffs: needs ``probe_vs_random`` and ``probe_vs_tfidf``.
    Returns:
        ``pretraining_beats_random_init`` / ``probe_beats_tfidf``: the AUPRC difference is significantly above 0
        (``stats.significant``: p < 0.05, interval above 0, at least ``min_effect``); ``probe_loses_to_tfidf``:
        significantly below. Two comparisons, each its own question, so no Holm over them.
    """
    from so8t_core.stats import significant
    from so8t_core.verdicts import need

    what = "precondition_verdicts"
    rnd = need(need(diffs, "probe_vs_random", what), "auprc_refuse", what)
    tfidf = need(need(diffs, "probe_vs_tfidf", what), "auprc_refuse", what)
    return {
        "pretraining_beats_random_init": significant(dict(rnd)) == 1,
        "probe_beats_tfidf": significant(dict(tfidf)) == 1,
        "probe_loses_to_tfidf": significant(dict(tfidf)) == -1,
    }


def table(systems: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = REPORTED) -> list[dict[str, Any]]:
    """One row per system: its dev threshold (and whether the dev rule found one), the test metrics in ``keys``
    and the dev over-refusal cap, so test over-refusal is read against it."""
    return [
        {
            "system": n,
            "threshold": s["threshold"],
            "no_admissible_threshold": s.get("no_admissible_threshold", False),
            **{k: s["metrics"][k] for k in keys},
            "over_refusal_cap": s["metrics"].get("over_refusal_cap", float("nan")),
        }
        for n, s in systems.items()
    ]


__all__ = ["LABELS", "paired_differences", "precondition_verdicts", "probe_scores", "score_system", "table"]


def reading(verdicts: Mapping[str, bool], diffs: Mapping[str, Mapping[str, Mapping[str, float]]]) -> list[str]:
    """Plain sentences for the notebook's reading cell, from the computed verdicts and intervals (no number typed)."""

    def iv(name: str, key: str = "auprc_refuse") -> str:
        d = diffs[name][key]
        return f"{d['estimate']:+.3f} (95 % interval {d['lo']:+.3f} to {d['hi']:+.3f}, {d['n_clusters']} pairs)"

    out = []
    if "probe_vs_random" in diffs:
        did = "beats" if verdicts["pretraining_beats_random_init"] else "does not beat"
        out.append(f"Pretraining {did} the random-init probe on AUPRC of REFUSE: {iv('probe_vs_random')}.")
        f1 = diffs["probe_vs_random"].get("safety_f1")
        if f1 is not None:
            side = "higher" if f1["lo"] > 0 else "lower" if f1["hi"] < 0 else "not distinguishable"
            out.append(
                f"At the dev-tuned threshold its safety F1 is {side} than the random-init probe's: "
                f"{iv('probe_vs_random', 'safety_f1')}; ranking (AUPRC) and the decision at one threshold can disagree."
            )
    if verdicts.get("probe_beats_tfidf"):
        out.append(f"The probe on the pretrained base beats TF-IDF: {iv('probe_vs_tfidf')}.")
    elif verdicts.get("probe_loses_to_tfidf"):
        out.append(
            f"The probe on the pretrained base loses to TF-IDF: {iv('probe_vs_tfidf')}. A character n-gram "
            "classifier on the same generated data reads the hand-written prompts better than a linear "
            "probe on this base's pooled states: a finding about the base, not a failure of the check."
        )
    else:
        out.append(f"The probe and TF-IDF are not distinguishable: {iv('probe_vs_tfidf')}.")
    return out
