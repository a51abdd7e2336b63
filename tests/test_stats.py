"""The package's statistics: t-interval, the crossed test and its calibration, quadratic-argmin bootstrap, Holm,
interior grid choice (table-driven)."""

from __future__ import annotations

import numpy as np
import pytest

from so8t_core import stats


@pytest.mark.parametrize(
    ("x", "mean", "lo_below", "hi_below", "p_small"),
    [
        ([1.0, 1.1, 0.9, 1.05, 0.95], 1.0, False, False, True),  # clearly above 0
        ([-1.0, -1.1, -0.9, -1.05, -0.95], -1.0, True, True, True),  # clearly below 0
        ([1.0, -1.0, 0.5, -0.5, 0.0], 0.0, True, False, False),  # straddles 0
    ],
)
def test_t_interval_cases(x, mean, lo_below, hi_below, p_small):
    r = stats.t_interval(x)
    assert r["mean"] == pytest.approx(mean)
    assert r["n"] == len(x)
    assert (r["lo"] < 0) == lo_below
    assert (r["hi"] < 0) == hi_below
    assert (r["p"] < 0.01) == p_small
    assert r["lo"] <= r["mean"] <= r["hi"]


def test_t_interval_matches_the_textbook_value():
    # mean 2, sd 1, n 4: half-width t_{0.975, 3} * 1 / 2 = 3.182446 / 2
    r = stats.t_interval([1.0, 2.0, 3.0, 2.0 + 0.0])
    sd = np.std([1.0, 2.0, 3.0, 2.0], ddof=1)
    assert r["hi"] - r["mean"] == pytest.approx(3.182446305 * sd / 2, rel=1e-6)


@pytest.mark.parametrize("x", [[1.0], []])
def test_t_interval_refuses_fewer_than_two(x):
    with pytest.raises(ValueError, match="x="):
        stats.t_interval(x)


def test_crossed_test_is_wider_when_templates_disagree():
    clusters = [i % 4 for i in range(40)]
    rng = np.random.default_rng(0)
    same = rng.normal(-1.0, 0.1, (5, 40))
    by_template = same + np.array([[-4.0, 4.0, -3.0, 3.0][c] for c in clusters])  # template effects, mean 0
    a = stats.crossed_test(same, clusters, n_boot=400)
    b = stats.crossed_test(by_template, clusters, n_boot=400)
    assert a["hi"] < 0
    assert a["p"] < 0.01
    assert a["n_seeds"] == 5
    assert a["n_clusters"] == 4
    assert (b["hi"] - b["lo"]) > 5 * (a["hi"] - a["lo"])
    assert b["lo"] < 0 < b["hi"]
    assert b["p"] > 0.05


def test_crossed_test_resamples_seeds():
    clusters = [i % 3 for i in range(30)]
    seeds_disagree = np.array([[v] * 30 for v in (-3.0, 1.0, 2.0, -1.5, 1.5)])  # no item spread, only seeds
    r = stats.crossed_test(seeds_disagree, clusters, n_boot=400)
    assert r["lo"] < 0 < r["hi"]
    assert r["estimate"] == pytest.approx(0.0)
    assert r["per_seed"] == pytest.approx([-3.0, 1.0, 2.0, -1.5, 1.5])
    assert r["df"] == pytest.approx(4.0, rel=1e-6)


def test_crossed_test_p_is_floored_and_consistent_with_the_interval():
    clusters = [i % 4 for i in range(40)]
    d = np.random.default_rng(3).normal(5.0, 0.1, (5, 40))  # a huge effect: p would underflow to 0
    r = stats.crossed_test(d, clusters, n_boot=500)
    assert r["p"] == pytest.approx(1 / 500)
    assert r["lo"] > 0
    for shift in np.linspace(-0.2, 0.2, 9):  # p < 0.05 exactly when the 95 % interval excludes 0
        x = stats.crossed_test(np.random.default_rng(4).normal(shift, 1.0, (3, 40)), clusters, n_boot=300)
        assert (x["p"] < 0.05) == (x["lo"] > 0 or x["hi"] < 0)


def test_crossed_test_min_effect_never_calls_a_smaller_difference():
    clusters = [i % 8 for i in range(80)]
    d = np.random.default_rng(5).normal(0.3, 0.05, (5, 80))
    plain = stats.crossed_test(d, clusters, n_boot=400)
    strict = stats.crossed_test(d, clusters, n_boot=400, min_effect=0.5)
    assert stats.significant(plain) == 1
    assert plain["p"] < 0.01
    assert strict["p"] == 1.0
    assert stats.significant(strict) == 0


def test_crossed_test_with_no_spread_is_flagged_and_floored():
    clusters = [i % 4 for i in range(12)]
    r = stats.crossed_test(np.full((5, 12), 0.4), clusters, n_boot=100)
    assert r["degenerate"]
    assert r["p"] == pytest.approx(0.01)
    assert r["lo"] == r["hi"] == pytest.approx(0.4)
    zero = stats.crossed_test(np.zeros((5, 12)), clusters, n_boot=100)
    assert zero["degenerate"]
    assert zero["p"] == 1.0
    assert stats.significant(zero) == 0
    small = stats.crossed_test(np.full((5, 12), 0.4), clusters, n_boot=100, min_effect=0.5)
    assert small["p"] == 1.0
    assert stats.significant(small) == 0


def test_crossed_stat_test_agrees_with_crossed_test_on_a_mean():
    clusters = [i % 6 for i in range(60)]
    d = np.random.default_rng(6).normal(0.2, 1.0, (4, 60)) + np.random.default_rng(7).normal(0, 0.5, 60)
    fast = stats.crossed_test(d, clusters, n_boot=600)
    slow = stats.crossed_stat_test(lambda s, i: float(d[np.ix_(s, i)].mean()), 4, clusters, n_boot=600)
    assert slow["estimate"] == pytest.approx(fast["estimate"])
    assert slow["per_seed"] == pytest.approx(fast["per_seed"])
    assert slow["se"] == pytest.approx(fast["se"], rel=0.15)
    assert slow["df"] == pytest.approx(fast["df"], rel=0.3)


@pytest.mark.parametrize(
    ("row", "want"),
    [
        ({"estimate": 0.3, "lo": 0.1, "hi": 0.5, "p": 0.01}, 1),
        ({"estimate": -0.3, "lo": -0.5, "hi": -0.1, "p": 0.01}, -1),
        ({"estimate": 0.3, "lo": 0.1, "hi": 0.5, "p": 0.06}, 0),  # not significant
        ({"estimate": 0.3, "lo": 0.1, "hi": 0.5, "p": 0.01, "min_effect": 0.4}, 0),  # smaller than the minimum
    ],
)
def test_significant_cases(row, want):
    assert stats.significant(row) == want


@pytest.mark.parametrize(
    ("d", "clusters", "field"),
    [(np.zeros((2, 3)), [0, 0, 0], "clusters"), (np.zeros((2, 3)), [0, 1], "clusters"), (np.zeros(3), [0, 1, 2], "d")],
)
def test_crossed_test_refuses_bad_input(d, clusters, field):
    with pytest.raises(ValueError, match=f"{field}="):
        stats.crossed_test(d, clusters)


@pytest.mark.parametrize("centre", [-0.5, 1.0, 1.618, 2.4])
def test_quadratic_argmin_bootstrap_finds_the_vertex(centre):
    x = [-2.0, 0.0, 1.0, 1.5, 1.618, 1.75, 2.0, 3.0]
    rng = np.random.default_rng(1)
    y = np.array([[(a - centre) ** 2 + 0.01 * rng.normal() for a in x] for _ in range(5)])
    r = stats.quadratic_argmin_bootstrap(x, y, n_boot=200)
    assert r["estimate"] == pytest.approx(centre, abs=0.05)
    assert r["lo"] <= centre + 0.05
    assert r["hi"] >= centre - 0.05
    assert r["n_dropped"] == 0


def test_quadratic_argmin_is_nan_for_a_parabola_that_opens_downward():
    x = [0.0, 1.0, 2.0, 3.0]
    assert np.isnan(stats.quadratic_argmin(x, [-((a - 1.5) ** 2) for a in x]))
    r = stats.quadratic_argmin_bootstrap(x, np.array([[-((a - 1.5) ** 2) for a in x]] * 3), n_boot=20)
    assert r["n_dropped"] == 20
    assert np.isnan(r["lo"])


@pytest.mark.parametrize(
    ("p", "adjusted"),
    [
        ({"a": 0.01, "b": 0.04, "c": 0.03}, {"a": 0.03, "b": 0.06, "c": 0.06}),
        ({"a": 0.5, "b": 0.6}, {"a": 1.0, "b": 1.0}),
        ({"a": 0.001}, {"a": 0.001}),
    ],
)
def test_holm_cases(p, adjusted):
    assert stats.holm(p) == pytest.approx(adjusted)


def test_t_interval_with_seeds_that_agree_exactly_is_no_evidence():
    for x in ([0.5, 0.5, 0.5], [0.0, 0.0, 0.0]):
        r = stats.t_interval(x)
        assert r["p"] == 1.0
        assert r["degenerate"]
        assert np.isnan(r["lo"])
        assert np.isnan(r["hi"])


# --- calibration: simulated experiments with no true difference, shaped like notebook 03's tiers ---


def _null_experiments(n: int, seed: int = 0) -> list[tuple[np.ndarray, list[int]]]:
    """``n`` paired differences (arm a - arm b) of 5 seeds x 100 items in 4 templates, no true arm difference.

    Both arms share a template effect and a seed effect (they cancel in the difference); each arm has its own
    per-item deviation that is the same under every seed (seeds only reorder minibatches), its own per-template
    and per-seed deviation, and a little noise: the items are a sample, so they are what the test must resample.
    """
    rng = np.random.default_rng(seed)
    S, T, N = 5, 4, 100
    template = np.arange(N) % T
    out = []
    for _ in range(n):
        arms = []
        shared = rng.normal(0, 1.0, T)[template] + rng.normal(0, 1.0, (S, 1))  # (S, N) by broadcasting
        for _arm in range(2):
            own = rng.normal(0, 0.7, N) + rng.normal(0, 0.07, T)[template] + rng.normal(0, 0.035, (S, 1))
            arms.append(shared + own + rng.normal(0, 0.2, (S, N)))
        out.append((arms[0] - arms[1], template.tolist()))
    return out


def _nested_draws(rng, n_boot, n_seeds, n_clusters):
    return rng.integers(0, n_clusters, (n_boot, n_seeds, n_clusters))  # a fresh draw of clusters per seed


@pytest.mark.parametrize(
    ("draws", "lo", "hi"), [(None, 0.0, 0.08), (_nested_draws, 0.15, 1.0)], ids=["crossed", "nested"]
)
def test_crossed_test_rejects_at_its_nominal_rate_and_nested_does_not(monkeypatch, draws, lo, hi):
    if draws is not None:
        monkeypatch.setattr(stats, "_cluster_draws", draws)
    null = _null_experiments(400)  # 400: the rate's own sd is then about 1.2 points
    rate = np.mean([stats.crossed_test(d, c, n_boot=1000, seed=k)["p"] < 0.05 for k, (d, c) in enumerate(null)])
    assert lo <= rate <= hi, f"rejection rate {rate:.3f} at nominal 0.05"


# --- interior grid choice ---


@pytest.mark.parametrize(
    ("optimum", "minimize", "want_edge", "want_ext"),
    [
        (0.01, True, False, 0),  # interior from the start
        (0.1, True, False, 2),  # best at the top; 0.09 is the top again; 0.27 makes 0.09 interior
        (1e-4, True, False, 3),  # below the grid: three steps down (ratio 10/3) reach past it
        (10.0, True, True, 3),  # far above: still at the edge after 3 extensions
        (1e-3, False, False, 1),  # maximising the negated curve finds the same optimum
    ],
)
def test_choose_interior_extends_until_interior(optimum, minimize, want_edge, want_ext):
    calls = []

    def dev(x: float) -> float:
        calls.append(x)
        v = (np.log(x) - np.log(optimum)) ** 2
        return float(v if minimize else -v)

    r = stats.choose_interior([1e-3, 3e-3, 1e-2, 3e-2], dev, minimize=minimize)
    assert r["edge"] is want_edge
    assert r["extensions"] == want_ext
    assert len(calls) == 4 + want_ext
    assert r["grid"] == sorted(r["grid"])
    assert len(r["scores"]) == len(r["grid"])
    if not want_edge:
        assert 0 < r["grid"].index(r["choice"]) < len(r["grid"]) - 1
        assert abs(np.log(r["choice"] / optimum)) <= np.log(np.sqrt(10)) / 2 + 1e-9
    else:
        assert r["side"] == "high"
        assert r["choice"] == max(r["grid"])


def test_choose_interior_respects_limits_known_scores_and_nan():
    r = stats.choose_interior([0.1, 0.3], lambda x: -x, limits=(0.0, 1.0))  # 0.9 is tried, 2.7 is not
    assert r["edge"]
    assert r["grid"] == pytest.approx([0.1, 0.3, 0.9])
    assert r["extensions"] == 1
    seen = []
    r = stats.choose_interior([1.0, 2.0, 4.0], lambda x: seen.append(x) or float("nan") if x > 4 else -x,
                              known={1.0: -1.0, 2.0: -2.0, 4.0: -4.0})  # fmt: skip
    assert seen == [8.0]
    assert r["choice"] == 4.0
    assert not r["edge"]
    with pytest.raises(ValueError, match="grid="):
        stats.choose_interior([0.1], lambda x: x)
