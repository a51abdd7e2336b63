"""The package's statistics: t-interval, two-level bootstrap, quadratic-argmin bootstrap, Holm (table-driven)."""

from __future__ import annotations

import numpy as np
import pytest

from so8t_core import stats


@pytest.mark.parametrize(
    "x, mean, lo_below, hi_below, p_small",
    [
        ([1.0, 1.1, 0.9, 1.05, 0.95], 1.0, False, False, True),  # clearly above 0
        ([-1.0, -1.1, -0.9, -1.05, -0.95], -1.0, True, True, True),  # clearly below 0
        ([1.0, -1.0, 0.5, -0.5, 0.0], 0.0, True, False, False),  # straddles 0
    ],
)
def test_t_interval_cases(x, mean, lo_below, hi_below, p_small):
    r = stats.t_interval(x)
    assert r["mean"] == pytest.approx(mean) and r["n"] == len(x)
    assert (r["lo"] < 0) == lo_below and (r["hi"] < 0) == hi_below
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


def test_two_level_bootstrap_is_wider_when_templates_disagree():
    clusters = [i % 4 for i in range(40)]
    rng = np.random.default_rng(0)
    same = rng.normal(-1.0, 0.1, (5, 40))
    by_template = same + np.array([[-4.0, 4.0, -3.0, 3.0][c] for c in clusters])  # template effects, mean 0
    a = stats.two_level_bootstrap(same, clusters, n_boot=400)
    b = stats.two_level_bootstrap(by_template, clusters, n_boot=400)
    assert a["hi"] < 0 and a["p_boot"] < 0.01 and a["n_seeds"] == 5 and a["n_clusters"] == 4
    assert (b["hi"] - b["lo"]) > 5 * (a["hi"] - a["lo"])
    assert b["lo"] < 0 < b["hi"]


def test_two_level_bootstrap_resamples_seeds():
    clusters = [i % 3 for i in range(30)]
    seeds_disagree = np.array([[v] * 30 for v in (-3.0, 1.0, 2.0, -1.5, 1.5)])  # no item spread, only seeds
    r = stats.two_level_bootstrap(seeds_disagree, clusters, n_boot=400)
    assert r["lo"] < 0 < r["hi"] and r["estimate"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "d, clusters, field",
    [(np.zeros((2, 3)), [0, 0, 0], "clusters"), (np.zeros((2, 3)), [0, 1], "clusters"), (np.zeros(3), [0, 1, 2], "d")],
)
def test_two_level_bootstrap_refuses_bad_input(d, clusters, field):
    with pytest.raises(ValueError, match=f"{field}="):
        stats.two_level_bootstrap(d, clusters)


@pytest.mark.parametrize("centre", [-0.5, 1.0, 1.618, 2.4])
def test_quadratic_argmin_bootstrap_finds_the_vertex(centre):
    x = [-2.0, 0.0, 1.0, 1.5, 1.618, 1.75, 2.0, 3.0]
    rng = np.random.default_rng(1)
    y = np.array([[(a - centre) ** 2 + 0.01 * rng.normal() for a in x] for _ in range(5)])
    r = stats.quadratic_argmin_bootstrap(x, y, n_boot=200)
    assert r["estimate"] == pytest.approx(centre, abs=0.05)
    assert r["lo"] <= centre + 0.05 and r["hi"] >= centre - 0.05 and r["n_dropped"] == 0


def test_quadratic_argmin_is_nan_for_a_parabola_that_opens_downward():
    x = [0.0, 1.0, 2.0, 3.0]
    assert np.isnan(stats.quadratic_argmin(x, [-((a - 1.5) ** 2) for a in x]))
    r = stats.quadratic_argmin_bootstrap(x, np.array([[-((a - 1.5) ** 2) for a in x]] * 3), n_boot=20)
    assert r["n_dropped"] == 20 and np.isnan(r["lo"])


@pytest.mark.parametrize(
    "p, adjusted",
    [
        ({"a": 0.01, "b": 0.04, "c": 0.03}, {"a": 0.03, "b": 0.06, "c": 0.06}),
        ({"a": 0.5, "b": 0.6}, {"a": 1.0, "b": 1.0}),
        ({"a": 0.001}, {"a": 0.001}),
    ],
)
def test_holm_cases(p, adjusted):
    assert stats.holm(p) == pytest.approx(adjusted)
