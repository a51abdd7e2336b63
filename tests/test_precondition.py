"""Notebook 00's precondition study (Holm over the declared family only, edge choices make no verdict) and the
line downstream notebooks print from its metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from so8t_core.safety import precondition as pc
from so8t_core.safety import probe as pr
from so8t_core.safety.labels import LabeledSet
from so8t_core.verdicts import precondition, precondition_line


def labelled(n_pairs: int) -> LabeledSet:
    labels = [("REFUSE", "ALLOW")[(i // 2) % 2] for i in range(2 * n_pairs)]  # twins share a label
    extra = tuple({"pair": str(i // 2)} for i in range(2 * n_pairs))
    return LabeledSet("t", tuple(f"p{i}" for i in range(2 * n_pairs)), tuple(labels), tuple(range(2 * n_pairs)), extra)


def system(test: LabeledSet, noise: float, seed: int) -> dict:
    y = np.array(test.labels) == "REFUSE"
    s = (y + np.random.default_rng(seed).normal(0, noise, len(y))).tolist()
    return pr.score_system(test, test, s, s, 0.5)


def systems(test: LabeledSet, pretrained: float, random: float) -> dict:
    return {
        "probe_pretrained": system(test, pretrained, 0),
        "probe_random_init": [system(test, random, s) for s in (1, 2, 3)],
        "tfidf": system(test, 0.8, 9),
        "keyword": system(test, 2.0, 10),
    }


def test_holm_runs_over_the_primary_family_only_and_seeds_are_kept() -> None:
    test = labelled(40)
    d = pc.precondition_tests(test, systems(test, 0.3, 3.0), n_boot=200)
    primary = [(k, m) for k, by in d.items() for m, r in by.items() if r["primary"]]
    assert sorted(primary) == sorted((k, pr.PRIMARY_METRIC) for k in pr.PRIMARY)
    ps = {k: d[k][pr.PRIMARY_METRIC]["p"] for k in pr.PRIMARY}
    lo, hi = sorted(ps.values())
    assert sorted(d[k][pr.PRIMARY_METRIC]["p_holm"] for k in pr.PRIMARY) == pytest.approx(
        [min(1, 2 * lo), max(min(1, 2 * lo), hi)]
    )
    assert d["probe_vs_keyword"]["auprc_refuse"]["p_holm"] is None
    assert d["probe_vs_random"]["safety_f1"]["p_holm"] is None
    assert len(d["probe_vs_random"]["auprc_refuse"]["per_seed"]) == 3
    assert d["probe_vs_random"]["auprc_refuse"]["n_seeds"] == 3
    assert d["probe_vs_random"]["auprc_refuse"]["min_effect"] == pr.MIN_EFFECT


@pytest.mark.parametrize(
    ("pretrained", "random", "edge", "want"),
    [
        (0.3, 3.0, {}, True),  # a clear signal beyond random architectures
        (3.0, 3.0, {}, False),  # the same noise: no verdict can be won
        (0.3, 3.0, {"probe_random_init": True}, "edge"),  # a C at the end of its grid: no verdict
    ],
)
def test_precondition_verdicts_can_come_out_either_way(pretrained, random, edge, want) -> None:
    test = labelled(40)
    d = pc.precondition_tests(test, systems(test, pretrained, random), n_boot=200)
    v = pc.precondition_verdicts(d, edge)
    assert v["pretraining_beats_random_init"] == want
    text = " ".join(pc.reading(v, d))
    assert f"{d['probe_vs_random']['auprc_refuse']['estimate']:+.3f}" in text
    assert "Exploratory" in text
    with pytest.raises(KeyError, match="probe_vs_random"):
        pc.precondition_verdicts({"probe_vs_tfidf": d["probe_vs_tfidf"]}, {})


def test_a_difference_below_the_minimum_effect_is_no_win() -> None:
    row = {"estimate": 0.02, "lo": 0.01, "hi": 0.03, "p": 0.001, "p_holm": 0.001, "min_effect": pr.MIN_EFFECT}
    d = {"probe_vs_random": {"auprc_refuse": row}, "probe_vs_tfidf": {"auprc_refuse": row}}
    assert pc.precondition_verdicts(d, {})["pretraining_beats_random_init"] is False
    assert pc.edges({"a": [{"edge": False}, {"edge": True}], "b": {"edge": False}, "c": [None]}) == {
        "a": True, "b": False, "c": False}  # fmt: skip


@pytest.mark.parametrize(
    ("verdict", "status"), [(True, "holds"), (False, "fails"), ("edge", "edge"), (None, "not_run")]
)
def test_precondition_reads_stage_00_and_says_what_it_means(tmp_path, verdict, status) -> None:
    row = {"estimate": 0.12, "lo": 0.05, "hi": 0.19, "p_holm": 0.004, "per_seed": [0.1, 0.12, 0.14], "n_seeds": 3,
           "n_clusters": 165, "min_effect": 0.03}  # fmt: skip
    metrics = {"probe_differences": {"probe_vs_random": {"auprc_refuse": row}}}
    if verdict is not None:
        metrics["pretraining_beats_random_init"] = verdict
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    pre = precondition(tmp_path)
    assert pre["status"] == status
    assert pre["holds"] == (status == "holds")
    line = precondition_line(pre)
    beyond = "carry safety signal beyond the architecture"
    assert beyond in line
    assert ("do not" in line) == (status == "fails")
    if status != "not_run":
        assert "+0.120" in line
        assert "+0.050" in line
        assert "+0.140" in line
        assert "Holm p 0.004" in line
    with pytest.raises(FileNotFoundError, match="00_base_model"):
        precondition(tmp_path / "missing")
