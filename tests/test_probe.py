"""The precondition check's package code: the probe, the dev rule applied per system, paired differences by
translation pair, and the verdicts (missing inputs raise)."""

from __future__ import annotations

import numpy as np
import pytest

from so8t_core.safety import probe as pr
from so8t_core.safety.labels import LabeledSet


def labelled(labels: list[str], pairs: list[str] | None = None) -> LabeledSet:
    n = len(labels)
    extra = tuple({"pair": (pairs or [str(i // 2) for i in range(n)])[i]} for i in range(n))
    return LabeledSet("t", tuple(f"p{i}" for i in range(n)), tuple(labels), tuple(range(n)), extra)


def synthetic(n: int, signal: float, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = np.array(["REFUSE" if i % 3 == 0 else ("ALLOW" if i % 3 == 1 else "ESCALATE") for i in range(n)])
    x = rng.normal(size=(n, 16))
    x[:, 0] += signal * (y == "REFUSE")
    return x, list(y)


def test_probe_finds_a_linear_signal_and_chooses_c_on_dev() -> None:
    xtr, ytr = synthetic(300, 3.0, 0)
    xdev, ydev = synthetic(120, 3.0, 1)
    out = pr.probe_scores({"train": xtr, "dev": xdev}, ytr, ydev)
    assert out["C"] in out["tuning"]["grid"]
    assert out["tuning"]["scores"]
    refuse = np.array(ydev) == "REFUSE"
    assert out["dev"][refuse].mean() > 0.8
    assert out["dev"][~refuse].mean() < 0.3
    noise = pr.probe_scores({"train": synthetic(300, 0.0, 0)[0]}, ytr)
    assert set(noise) == {"train", "C", "tuning"}
    assert noise["C"] == pr.C_GRID[-1]
    assert noise["tuning"] is None
    with pytest.raises(ValueError, match="train_labels"):
        pr.probe_scores({"train": xtr}, ["ALLOW"] * len(ytr))


def test_score_system_thresholds_on_dev_and_scores_test() -> None:
    dev = labelled(["REFUSE", "ALLOW", "REFUSE", "ALLOW"])
    test = labelled(["REFUSE", "ALLOW", "ESCALATE", "REFUSE"])
    s = pr.score_system(dev, test, [0.9, 0.2, 0.8, 0.3], [0.85, 0.1, 0.5, 0.2], max_over_refusal=0.0)
    assert s["threshold"] == 0.8
    assert s["preds"] == ["REFUSE", "ALLOW", "ALLOW", "ALLOW"]
    assert s["metrics"]["refuse_recall"] == 0.5
    assert s["metrics"]["over_refusal_rate"] == 0.0
    assert not s["no_admissible_threshold"]
    assert s["metrics"]["over_refusal_cap"] == 0.0
    over = pr.score_system(dev, test, [0.9, 0.2, 0.8, 0.3], [0.85, 0.9, 0.5, 0.2], max_over_refusal=0.0)
    assert over["metrics"]["over_refusal_excess"] == pytest.approx(1.0)  # the one test ALLOW is refused
    row = pr.table({"x": over})[0]
    assert row["over_refusal_rate"] == 1.0
    assert row["over_refusal_cap"] == 0.0
    assert not row["no_admissible_threshold"]


def test_score_system_flags_a_dev_rule_without_an_admissible_threshold() -> None:
    dev = labelled(["REFUSE", "ALLOW", "REFUSE", "ALLOW"])
    s = pr.score_system(dev, dev, [0.1, 0.9, 0.2, 0.8], [0.1, 0.9, 0.2, 0.8], max_over_refusal=0.0)
    assert s["no_admissible_threshold"]
    assert s["threshold"] > 0.9
    assert s["preds"] == ["ALLOW"] * 4
    good = {"scores": [0.9, 0.1, 0.8, 0.2], "preds": ["REFUSE", "ALLOW", "REFUSE", "ALLOW"]}
    d = pr.paired_differences(dev, good, s, n_boot=50)
    assert d["safety_f1"]["excluded"]
    assert "excluded" not in d["auprc_refuse"]


def test_paired_differences_are_zero_for_a_system_against_itself_and_resample_pairs() -> None:
    test = labelled(["REFUSE", "REFUSE", "ALLOW", "ALLOW", "REFUSE", "REFUSE", "ALLOW", "ALLOW"])
    a = {
        "scores": [0.9, 0.8, 0.1, 0.3, 0.7, 0.6, 0.2, 0.4],
        "preds": ["REFUSE"] * 2 + ["ALLOW"] * 2 + ["REFUSE", "ALLOW", "ALLOW", "ALLOW"],
    }
    same = pr.paired_differences(test, a, a, n_boot=50)
    assert all(v["estimate"] == v["lo"] == v["hi"] == 0.0 and v["p"] == 1.0 for v in same.values())
    assert same["auprc_refuse"]["n_clusters"] == 4  # eight rows, four translation pairs
    worse = {"scores": [0.1, 0.2, 0.9, 0.8, 0.3, 0.2, 0.7, 0.9], "preds": ["ALLOW"] * 4 + ["ALLOW"] * 4}
    d = pr.paired_differences(test, a, worse, n_boot=200)
    assert d["auprc_refuse"]["estimate"] > 0.4
    assert d["safety_f1"]["estimate"] > 0.5
    assert d["auprc_refuse"]["n_seeds"] == 1
    assert 0 < d["auprc_refuse"]["p"] <= 1


def test_paired_differences_average_over_seeds_and_keep_them() -> None:
    test = labelled(["REFUSE", "REFUSE", "ALLOW", "ALLOW"] * 4)
    rng = np.random.default_rng(0)
    y = np.array(test.labels) == "REFUSE"
    seeds = [{"scores": (y + rng.normal(0, s, 16)).tolist(), "preds": list(test.labels)} for s in (0.3, 0.6, 0.9)]
    base = {"scores": rng.random(16).tolist(), "preds": ["ALLOW"] * 16}
    d = pr.paired_differences(test, seeds, base, n_boot=100)
    want = [pr.auprc_refuse(y, np.array(r["scores"])) - pr.auprc_refuse(y, np.array(base["scores"])) for r in seeds]
    assert d["auprc_refuse"]["per_seed"] == pytest.approx(want)
    assert d["auprc_refuse"]["n_seeds"] == 3
    assert d["auprc_refuse"]["estimate"] == pytest.approx(np.mean(want))
    with pytest.raises(ValueError, match="seeds="):
        pr.paired_differences(test, seeds, seeds[:2], n_boot=10)


def test_probe_c_is_chosen_inside_its_grid_or_flagged_edge() -> None:
    xtr, ytr = synthetic(300, 1.0, 0)
    xdev, ydev = synthetic(200, 1.0, 1)
    xtr = np.hstack([xtr, np.random.default_rng(2).normal(size=(300, 200))])  # many noise features: C matters
    xdev = np.hstack([xdev, np.random.default_rng(3).normal(size=(200, 200))])
    out = pr.probe_scores({"train": xtr, "dev": xdev}, ytr, ydev, grid=(1e-3, 1e-2))
    t = out["tuning"]
    assert t["extensions"] >= 1
    assert t["grid"][0] < 1e-3 or t["grid"][-1] > 1e-2
    assert t["edge"] == (out["C"] in (t["grid"][0], t["grid"][-1]))
    best = t["grid"][int(np.argmax(t["scores"]))]
    assert out["C"] == best  # the dev-best value, not the last tried


def test_table_lists_every_seed_and_their_mean() -> None:
    dev = labelled(["REFUSE", "ALLOW", "REFUSE", "ALLOW"])
    runs = [pr.score_system(dev, dev, s, s, 0.5) for s in ([0.9, 0.1, 0.8, 0.2], [0.1, 0.9, 0.2, 0.8])]
    rows = pr.table({"one": runs[0], "many": runs})
    assert [r["system"] for r in rows] == ["one", "many[seed 0]", "many[seed 1]", "many[mean]"]
    assert rows[-1]["auprc_refuse"] == pytest.approx((rows[1]["auprc_refuse"] + rows[2]["auprc_refuse"]) / 2)
