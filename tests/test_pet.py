import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from so8t_core.gate.pet import PETSchedule, pet_loss


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(3, 20), kind=st.sampled_from(["l2", "huber"]))
def test_zero_on_sequences_linear_in_t(seed, T, kind):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(2, 1, 16, generator=g, dtype=torch.float64).unbind(0)
    t = torch.arange(T, dtype=torch.float64)[None, :, None]
    h = (a + b * t).expand(3, T, 16)  # (B, T, D), linear in t
    assert pet_loss(h, kind=kind).item() < 1e-20


def test_hand_computed_quadratic():
    # h[t] = t^2 in every feature: second difference is exactly 2 everywhere.
    h = (torch.arange(6.0) ** 2)[None, :, None].repeat(1, 1, 4)
    assert pet_loss(h).item() == pytest.approx(4.0)
    assert pet_loss(h, kind="huber", delta=1.0).item() == pytest.approx(1.5)  # delta * (|x| - delta / 2)
    assert pet_loss(h, kind="huber", delta=3.0).item() == pytest.approx(2.0)  # 0.5 x^2 below delta


def test_ignores_padded_positions_left_and_right():
    torch.manual_seed(0)
    h = torch.randn(2, 9, 8)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 6:] = 0  # right padding
    mask[1, :2] = 0  # left padding
    base = pet_loss(h, mask)
    h2 = h.clone()
    h2[0, 6:] = 1e3
    h2[1, :2] = -1e3
    torch.testing.assert_close(pet_loss(h2, mask), base)
    # equal to computing each sequence on its real tokens only
    d0 = h[0, :6, :]
    d1 = h[1, 2:, :]
    manual = torch.cat([(d[2:] - 2 * d[1:-1] + d[:-2]).pow(2).flatten() for d in (d0, d1)]).mean()
    torch.testing.assert_close(base, manual)


def test_short_or_fully_padded_sequences_give_zero_with_grad():
    h = torch.randn(2, 2, 8, requires_grad=True)
    loss = pet_loss(h)
    loss.backward()
    assert loss.item() == 0.0
    assert h.grad is not None
    h3 = torch.randn(1, 5, 8, requires_grad=True)
    assert pet_loss(h3, torch.zeros(1, 5)).item() == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind='abs'"):
        pet_loss(torch.randn(1, 4, 8), kind="abs")
    with pytest.raises(ValueError, match=r"attention_mask.shape"):
        pet_loss(torch.randn(1, 4, 8), torch.ones(1, 5))
    with pytest.raises(ValueError, match=r"h.shape"):
        pet_loss(torch.randn(4, 8))


def test_three_phase_schedule():
    s = PETSchedule(max_lambda=0.1, warmup=100, main=1000, anneal=200)
    assert s(0) == 0.0
    assert math.isclose(s(50), 0.05)
    assert s(100) == 0.1
    assert s(1099) == 0.1
    assert math.isclose(s(1200), 0.05)
    assert s(1300) == 0.0
    assert s(5000) == 0.0
    assert [s.phase(t) for t in (0, 100, 1100, 1300)] == ["warmup", "main", "anneal", "done"]
    ramp = [s(t) for t in range(0, 101)]
    decay = [s(t) for t in range(1100, 1301)]
    assert all(b >= a for a, b in itertools.pairwise(ramp))
    assert all(b <= a for a, b in itertools.pairwise(decay))
    with pytest.raises(ValueError, match="max_lambda=-1"):
        PETSchedule(max_lambda=-1)
