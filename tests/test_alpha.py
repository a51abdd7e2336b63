import itertools
import math

import pytest
import torch

from so8t_core.config import GOLDEN_RATIO
from so8t_core.gate.alpha import AlphaGate, LinearSchedule, SigmoidSchedule, phase_status
from so8t_core.gate.rotation import BlockSO8Rotation, rotate_blocks
from so8t_core.gate.soul import mix


def test_golden_ratio_value():
    assert math.isclose(GOLDEN_RATIO, 1.6180339887498949, rel_tol=1e-15)
    assert math.isclose(GOLDEN_RATIO**2, GOLDEN_RATIO + 1, rel_tol=1e-12)


def test_linear_schedule_original_endpoints_and_monotone():
    s = LinearSchedule(-5.0, 1.618, warmup=50, anneal=400)
    assert s(0) == -5.0
    assert s(50) == -5.0
    assert math.isclose(s(250), -5.0 + 0.5 * 6.618)
    assert math.isclose(s(450), 1.618)
    assert math.isclose(s(10_000), 1.618)
    values = [s(t) for t in range(0, 600)]
    assert all(b >= a for a, b in itertools.pairwise(values))


def test_sigmoid_schedule_endpoints_and_monotone():
    s = SigmoidSchedule(-5.0, GOLDEN_RATIO, midpoint=200, width=30)
    assert math.isclose(s(0), -5.0, abs_tol=1e-12)
    assert math.isclose(s(5000), GOLDEN_RATIO, abs_tol=1e-6)
    values = [s(t) for t in range(0, 800)]
    assert all(b > a for a, b in itertools.pairwise(values))
    assert abs(s(200) - (-5.0 + GOLDEN_RATIO) / 2) < 0.2  # near the middle at the midpoint


@pytest.mark.parametrize(
    ("alpha", "phase"),
    [
        (-5.0, "stable"),
        (-3.0, "stable"),
        (math.log(0.05 / 0.95) - 1e-9, "stable"),
        (math.log(0.05 / 0.95) + 1e-3, "transitioning"),
        (0.0, "transitioning"),
        (1.5, "transitioning"),
        (1.618, "golden"),
        (GOLDEN_RATIO + 0.049, "golden"),
        (3.0, "transitioning"),
    ],
)
def test_phase_status(alpha, phase):
    assert phase_status(alpha) == phase


def test_phase_status_rejects_nan():
    with pytest.raises(ValueError, match="alpha"):
        phase_status(float("nan"))


def test_gate_modes_feed_mix():
    h, R = torch.randn(3, 8), BlockSO8Rotation(8, init_std=0.5).matrices().detach()
    rh = rotate_blocks(h, R)
    fixed = AlphaGate("fixed", init=0.0)
    torch.testing.assert_close(mix(h, R, fixed.weight), h + 0.5 * rh)
    sched = AlphaGate("scheduled", schedule=LinearSchedule(warmup=0, anneal=10))
    assert sched.alpha.item() == -5.0
    assert not sched.alpha.requires_grad
    sched.set_step(10)
    assert math.isclose(sched.alpha.item(), GOLDEN_RATIO, rel_tol=1e-6)
    learned = AlphaGate("learned", init=-1.0)
    mix(h, R, learned.weight).sum().backward()
    s = torch.sigmoid(torch.tensor(-1.0))
    torch.testing.assert_close(learned.alpha.grad, (s * (1 - s) * rh.sum()))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"mode": "sometimes"}, "mode='sometimes'"),
        ({"mode": "scheduled"}, "schedule=None"),
    ],
)
def test_gate_bad_arguments(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        AlphaGate(**kwargs)


def test_schedule_bad_arguments():
    with pytest.raises(ValueError, match="anneal=0"):
        LinearSchedule(anneal=0)
    with pytest.raises(ValueError, match="width=0"):
        SigmoidSchedule(width=0)
