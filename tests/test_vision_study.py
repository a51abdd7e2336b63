"""Notebook 05's findings over seeds: the crossed test with Holm over the declared family decides, a run without
seeds pairs with every seed, and the frozen-model hash notices any change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from so8t_core.studies import vision_study as vs

METHODS = ("weighted", "attention")
KINDS = ("colour", "count", "word")


def held_rows(n_images: int = 30) -> list[tuple[int, str, str, str]]:
    return [(i, f"q{i}{k}", "a", k) for i in range(n_images) for k in (*KINDS, "caption")]


def scored(rows, p: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"exact": bool(rng.random() < p), "kind": r[3]} for r in rows]


def world(visual: float, rival: float, tower: float, retrieval: tuple[float, float]) -> tuple:
    rows = held_rows()
    seeds = range(3)
    scores = {f"visual_{m}": [scored(rows, visual, 10 * s + j) for s in seeds] for j, m in enumerate(METHODS)}
    scores |= {f"text_only_blind_{m}": [scored(rows, rival, 100 + s) for s in seeds] for m in METHODS}
    scores["text_only_zero_shot"] = [scored(rows, 0.1, 7)]
    scores["random_tower_weighted"] = [scored(rows, tower, 200 + s) for s in seeds]
    rng = np.random.default_rng(5)
    hits = {"pretrained": [rng.random(60) < retrieval[0]], "random": [rng.random(60) < retrieval[1] for _ in seeds]}
    rivals = {m: f"text_only_blind_{m}" for m in METHODS}
    return scores, rows, rivals, hits


@pytest.mark.parametrize(
    ("visual", "rival", "tower", "retrieval", "want"),
    [
        (0.9, 0.2, 0.2, (0.9, 0.05), True),  # the image helps, the pretrained tower helps
        (0.5, 0.5, 0.5, (0.1, 0.1), False),  # no difference anywhere: no verdict can be won
    ],
)
def test_verdicts_come_out_either_way_from_the_declared_family(visual, rival, tower, retrieval, want) -> None:
    scores, rows, rivals, hits = world(visual, rival, tower, retrieval)
    c = vs.compare(scores, rows, rivals, "weighted", hits, n_boot=300)
    assert {k for k, r in c.items() if r["primary"]} == set(vs.primary(METHODS))
    assert all(r["p_holm"] is None for k, r in c.items() if not r["primary"])  # exploratory rows: no Holm
    assert all(len(c[k]["per_seed"]) == 3 for k in vs.primary(METHODS))
    v = vs.visual_verdicts(c, METHODS)
    assert set(v.values()) == {want}
    text = " ".join(vs.reading(v, c))
    r = c["weighted_vs_text_only"]
    assert f"{r['estimate']:+.3f}" in text
    assert f"{r['per_seed'][1]:+.3f}" in text
    assert "exploratory" in text


def test_a_run_without_seeds_pairs_with_every_seed_and_missing_runs_raise() -> None:
    a = [np.array([1.0, 0.0, 1.0, 1.0]), np.array([1.0, 1.0, 1.0, 1.0])]
    d = vs.difference(a, [np.zeros(4)], images=[0, 0, 1, 1], n_boot=50)
    assert d["per_seed"] == pytest.approx([0.75, 1.0])
    assert d["mean_b"] == [0.0]
    with pytest.raises(ValueError, match="seeds"):
        vs.difference(a, [np.zeros(4)] * 3, images=[0, 0, 1, 1])
    scores, rows, rivals, hits = world(0.5, 0.5, 0.5, (0.5, 0.5))
    with pytest.raises(KeyError, match="random_tower_attention"):
        vs.compare(scores, rows, rivals, "attention", hits, n_boot=20)
    with pytest.raises(KeyError, match="weighted_vs_text_only"):
        vs.visual_verdicts({}, METHODS)


def test_a_gap_below_the_minimum_effect_is_no_win() -> None:
    c = {k: {"estimate": vs.MIN_EFFECT / 2, "lo": 0.001, "hi": 0.02, "p": 0.001, "p_holm": 0.001,
             "min_effect": vs.MIN_EFFECT} for k in vs.primary(METHODS)}  # fmt: skip
    assert not any(vs.visual_verdicts(c, METHODS).values())


def test_state_hash_sees_any_change_and_better_fusion_uses_seed_means() -> None:
    m = torch.nn.Linear(3, 2)
    h = vs.state_hash(m)
    assert vs.state_hash(m) == h
    with torch.no_grad():
        m.bias[0] += 1e-6
    assert vs.state_hash(m) != h
    res = {
        "visual_weighted": [{"em_all": 0.9}, {"em_all": 0.1}],
        "visual_attention": [{"em_all": 0.6}, {"em_all": 0.5}],
    }
    assert vs.better_fusion(res, METHODS) == "attention"  # 0.55 > 0.5, though weighted has the best single seed
