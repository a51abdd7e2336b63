"""Notebook 00's precondition check as a study: the pretrained probe against its rivals by the crossed test, Holm
over the declared family (``probe.PRIMARY``) only, and the verdicts and sentences that come out of it.

The pretrained base is one pinned run (its pretraining seed is the stage's seed; two runs of one commit give the
same model). What replicates is the rival that has a seed of its own: the random-init model of the same shape,
built under ``n`` init seeds. The comparison "pretrained - random init" is then crossed over those seeds and the
translation pairs of the test set (``stats.crossed_stat_test``), so its interval carries both the spread over
random architectures and over test items. The probe itself is a convex fit (lbfgs): given features and ``C`` it has
no seed, so "probe seeds" would be copies, not replicates.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from so8t_core.safety.labels import LabeledSet
from so8t_core.safety.probe import MIN_EFFECT, PRIMARY, PRIMARY_METRIC, Scored, paired_differences
from so8t_core.stats import ALPHA, holm, significant
from so8t_core.verdicts import need

COMPARISONS = {  # name -> (a, b): the difference a - b
    "probe_vs_random": ("probe_pretrained", "probe_random_init"),
    "probe_vs_tfidf": ("probe_pretrained", "tfidf"),
    "probe_vs_keyword": ("probe_pretrained", "keyword"),
}
EDGE = "edge"  # a verdict's value when a tuned C it rests on sits at the end of its grid


def precondition_tests(
    test: LabeledSet,
    systems: Mapping[str, Scored | Sequence[Scored]],
    n_boot: int = 1000,
    seed: int = 0,
    min_effect: float = MIN_EFFECT,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every comparison of ``COMPARISONS`` whose two systems were run, Holm over the primary family only.

    Args:
        test: the hand-written test set (``extra["pair"]`` is the resampling unit).
        systems: name -> ``probe.score_system`` result, or one per seed (``probe_random_init``).
        n_boot, seed: as in ``stats.crossed_stat_test``.
        min_effect: the smallest difference that counts (AUPRC), named before the run.
    Returns:
        comparison -> metric -> the crossed test's row plus ``primary`` (in the declared family) and ``p_holm``
        (Holm over the family; None for exploratory rows).
    """
    diffs = {
        k: paired_differences(test, systems[a], systems[b], n_boot, seed, min_effect)
        for k, (a, b) in COMPARISONS.items()
        if a in systems and b in systems
    }
    adjusted = holm({k: diffs[k][PRIMARY_METRIC]["p"] for k in PRIMARY if k in diffs})
    for k, by_metric in diffs.items():
        for metric, row in by_metric.items():
            row["primary"] = k in adjusted and metric == PRIMARY_METRIC
            row["p_holm"] = adjusted[k] if row["primary"] else None
    return diffs


def edges(tuning: Mapping[str, Any]) -> dict[str, bool]:
    """System -> True when any of its seeds chose ``C`` at an end of the extended grid.

    Args:
        tuning: system -> ``probe_scores(...)["tuning"]``, or a list of them (one per seed).
    Returns:
        system -> bool.
    """
    runs = lambda t: [t] if isinstance(t, Mapping) else list(t)
    return {n: any(bool(r and r["edge"]) for r in runs(t)) for n, t in tuning.items()}


def precondition_verdicts(
    diffs: Mapping[str, Mapping[str, Mapping[str, Any]]], edge: Mapping[str, bool], alpha: float = ALPHA
) -> dict[str, Any]:
    """Notebook 00's verdicts, from the primary rows of ``precondition_tests``.

    Args:
        diffs: needs ``probe_vs_random`` and ``probe_vs_tfidf`` (with ``p_holm``).
        edge: ``edges(...)``: a comparison whose probe chose ``C`` at an end of its grid makes no verdict.
        alpha: family-wise error rate.
    Returns:
        ``pretraining_beats_random_init``, ``probe_beats_tfidf``, ``probe_loses_to_tfidf``: True / False from
        ``stats.significant`` on the Holm-adjusted p (interval on that side of 0, at least ``min_effect``), or
        ``"edge"``.
    """
    what = "precondition_verdicts"
    rnd = need(need(diffs, "probe_vs_random", what), PRIMARY_METRIC, what)
    tfidf = need(need(diffs, "probe_vs_tfidf", what), PRIMARY_METRIC, what)
    s_rnd, s_tfidf = significant(dict(rnd), alpha, "p_holm"), significant(dict(tfidf), alpha, "p_holm")
    edge_rnd = edge.get("probe_pretrained", False) or edge.get("probe_random_init", False)
    edge_tfidf = edge.get("probe_pretrained", False)
    return {
        "pretraining_beats_random_init": EDGE if edge_rnd else s_rnd == 1,
        "probe_beats_tfidf": EDGE if edge_tfidf else s_tfidf == 1,
        "probe_loses_to_tfidf": EDGE if edge_tfidf else s_tfidf == -1,
    }


def describe(row: Mapping[str, Any], unit: str = "pairs") -> str:
    """``+0.123 (95 % interval ..., Holm p ..., per seed ...)`` of one crossed-test row."""
    p = f"Holm p {row['p_holm']:.3g}" if row.get("p_holm") is not None else f"p {row['p']:.3g}, exploratory"
    seeds = row.get("per_seed") or []
    per = f", per seed {', '.join(f'{v:+.3f}' for v in seeds)}" if len(seeds) > 1 else ""
    return (
        f"{row['estimate']:+.3f} (95 % interval {row['lo']:+.3f} to {row['hi']:+.3f}, {p}, "
        f"{row['n_seeds']} seed{'s' if row['n_seeds'] > 1 else ''} x {row['n_clusters']} {unit}{per})"
    )


def reading(verdicts: Mapping[str, Any], diffs: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """Plain sentences for the notebook's reading cell, from the computed verdicts and rows (no number typed).

    Args:
        verdicts: ``precondition_verdicts`` output.
        diffs: ``precondition_tests`` output.
    Returns:
        Sentences, primary comparisons first.
    """
    out = []
    rnd = verdicts["pretraining_beats_random_init"]
    row = diffs["probe_vs_random"][PRIMARY_METRIC]
    if rnd == EDGE:
        out.append(
            f"No verdict on pretraining vs random init: a probe's C sits at the end of its grid ({describe(row)})."
        )
    else:
        did = "beats" if rnd else "does not beat"
        out.append(f"Pretraining {did} the random-init probe on AUPRC of REFUSE: {describe(row)}.")
    tf = diffs["probe_vs_tfidf"][PRIMARY_METRIC]
    if verdicts["probe_beats_tfidf"] == EDGE:
        out.append(f"No verdict on the probe vs TF-IDF: the probe's C sits at the end of its grid ({describe(tf)}).")
    elif verdicts["probe_beats_tfidf"]:
        out.append(f"The probe on the pretrained base beats TF-IDF: {describe(tf)}.")
    elif verdicts["probe_loses_to_tfidf"]:
        out.append(
            f"The probe on the pretrained base loses to TF-IDF: {describe(tf)}. A character n-gram classifier on the "
            "same generated data reads the hand-written prompts better than a linear probe on this base's pooled "
            "states: a finding about the base, not a failure of the check."
        )
    else:
        out.append(f"The probe and TF-IDF are not distinguishable: {describe(tf)}.")
    for k, by_metric in diffs.items():
        for metric, r in by_metric.items():
            if not r["primary"]:
                out.append(f"Exploratory (no verdict), {k} on {metric}: {describe(r)}.")
    return out
