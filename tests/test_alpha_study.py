"""Notebook 02 over seeds: the runs replicate (seeds differ, a seed repeats exactly), the crossed test with Holm
over the declared family decides, and a tie can never be a win."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from so8t_core.gate.alpha import LinearSchedule
from so8t_core.studies import alpha_study as st
from so8t_core.studies.gate_studies import MODES_2, TEACHERS

PHI = (1 + 5**0.5) / 2


def fake_runs(gap: dict[str, float], seeds=(0, 1, 2), n: int = 64) -> dict:
    """Records whose held-out losses differ by ``gap[teacher]`` (learned - scheduled) plus per-seed noise."""
    rng = np.random.default_rng(0)
    runs = {}
    for t in TEACHERS:
        base = rng.uniform(0.2, 0.4, n)
        for s in seeds:
            noise = rng.normal(0, 0.01, n)
            for m in MODES_2:
                loss = base + noise + (gap[t] if m == "learned" else 0.0) + rng.normal(0, 0.002, n)
                runs[(t, m, s)] = [{"alpha": 1.0 + 0.1 * s, "eval_item_loss": loss.tolist()}]
    return runs


@pytest.mark.parametrize(
    ("gap", "learned", "schedule"),
    [
        ({"dense_orthogonal": -0.1, "linear": 0.1}, ["dense_orthogonal"], ["linear"]),
        ({"dense_orthogonal": 0.0, "linear": 0.0}, [], []),  # no difference: neither side may win
        ({"dense_orthogonal": -0.005, "linear": 0.005}, [], []),  # below the minimum effect: no win
    ],
)
def test_verdicts_come_from_the_crossed_test_and_can_go_either_way(gap, learned, schedule) -> None:
    rows = st.compare(fake_runs(gap), n_boot=300)
    assert set(rows) == set(st.PRIMARY)
    assert all(r["n_seeds"] == 3 and len(r["per_seed"]) == 3 for r in rows.values())
    assert all(r["p_holm"] >= r["p"] for r in rows.values())
    v = st.alpha_verdicts(rows, PHI)
    assert v["learned_wins_for_teachers"] == learned
    assert v["schedule_wins_for_teachers"] == schedule
    first = rows[st.PRIMARY[0]]
    assert f"{first['estimate']:+.3f}" in v["conclusion"]
    assert f"{first['per_seed'][2]:+.3f}" in v["conclusion"]
    with pytest.raises(KeyError, match="alpha_verdicts"):
        st.alpha_verdicts({st.PRIMARY[0]: first}, PHI)


def test_runs_replicate_and_score_the_shared_held_out_inputs() -> None:
    sched = LinearSchedule(-5.0, PHI, 2, 10)
    runs = st.run_seeds([0, 1], 16, 15, 8, 0.05, sched, teacher_seed=0, n_eval=32)
    again = st.run_seeds([0], 16, 15, 8, 0.05, sched, teacher_seed=0, n_eval=32)
    a, b = (runs[("linear", "learned", s)][-1]["eval_item_loss"] for s in (0, 1))
    assert len(a) == 32
    assert a != b
    assert again[("linear", "learned", 0)][-1]["eval_item_loss"] == a  # the same seed repeats exactly
    x = st.eval_inputs(16, 32, 0)
    assert torch.equal(x, st.eval_inputs(16, 32, 0))
    assert not torch.equal(x, st.eval_inputs(16, 32, 1))
