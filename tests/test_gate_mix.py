"""Every user of the soul gate equals ``gate.soul.mix`` on random inputs.

The gate ``h + sigmoid(alpha) R h`` is computed in one function; the wrapper, notebook 03's head study, the safety
pillars (views, pooled mix, gate matrix, factor margins), the notebook 01-02 studies and the fused output heads
(RL, export) must all agree with it, so a head trained in one room and served in another sees the same state.
"""

from __future__ import annotations

import pytest
import torch

from so8t_core.gate.alpha import LinearSchedule
from so8t_core.gate.rotation import BlockSO8Rotation, rotate_blocks
from so8t_core.gate.soul import SoulConfig, SoulWrapper, fused_head_weight, mix
from so8t_core.lm.base_model import build_model, tiny_phi3_config
from so8t_core.rl.training import FusedSoulHead
from so8t_core.safety import pillars as pl
from so8t_core.safety.heads import SafetyHeads
from so8t_core.studies import gate_studies as studies
from so8t_core.studies import head_study as hs

H = 32
EXACT = {"rtol": 0.0, "atol": 1e-6}  # the same arithmetic: only float32 rounding may differ
FUSED = {"rtol": 1e-5, "atol": 1e-6}  # W (h + s R h) against (W + s W R) h: another order of summation


@pytest.fixture(scope="module")
def wrapper() -> SoulWrapper:
    """A tiny Phi-3 with a soul whose rotation is far from the identity and an open gate."""
    model = build_model(tiny_phi3_config(120, hidden_size=H, num_layers=1, num_heads=2), seed=0)
    torch.manual_seed(3)
    return SoulWrapper.build(model, SoulConfig(hidden_size=H, alpha_mode="fixed", alpha_start=0.7, init_std=0.3))


def _gate(w: SoulWrapper) -> tuple[torch.Tensor, torch.Tensor]:
    return w.rotation.matrices(), w.alpha.weight


def test_mix_is_h_plus_s_times_the_block_diagonal_rotation() -> None:
    torch.manual_seed(0)
    rot = BlockSO8Rotation(H, init_std=0.5)
    R, h, s = rot.matrices(), torch.randn(4, 3, H, dtype=torch.float64), 0.3
    dense = torch.block_diag(*R).double()  # (H, H)
    torch.testing.assert_close(mix(h, R, s), h + s * h @ dense.T)
    alpha = torch.tensor(0.2, requires_grad=True)
    mix(h.float(), R, torch.sigmoid(alpha)).sum().backward()
    sig = torch.sigmoid(torch.tensor(0.2))
    torch.testing.assert_close(alpha.grad, sig * (1 - sig) * rotate_blocks(h.float(), R).sum())


def test_wrapper_mix_is_mix(wrapper: SoulWrapper) -> None:
    h = torch.randn(2, 5, H)
    torch.testing.assert_close(wrapper.mix(h), mix(h, *_gate(wrapper)), **EXACT)


@pytest.mark.parametrize("family", ["soul", "soul_composed", "soul_normed"])
def test_head_study_soul_gate_head_is_mix(wrapper: SoulWrapper, family: str) -> None:
    lm = wrapper.model
    head = hs.build(family, lm.model.norm, lm.lm_head, alpha=0.4)
    assert isinstance(head, hs.SoulGateHead)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in head.rotation.parameters():
            p.normal_(0, 0.3)
    x = torch.randn(7, H)
    s = torch.sigmoid(head.alpha)
    mixed = mix(head.norm(x), head.rotation.matrices(), s)
    want = head.lm_head(mixed / (1 + s) if family == "soul_normed" else mixed)
    torch.testing.assert_close(head(x), want, **EXACT)


@pytest.mark.parametrize("routed", [False, True])
def test_pillar_views_and_pooled_mix_are_mix(wrapper: SoulWrapper, routed: bool) -> None:
    h = torch.randn(3, 4, H)
    want = mix(h, *_gate(wrapper))
    for view in pl.mixed_views(wrapper, h, routed):
        torch.testing.assert_close(view, want, **EXACT)
    torch.testing.assert_close(pl.mix_pooled(wrapper, h[:, 0]), want[:, 0], **EXACT)


def test_gate_matrix_applies_mix(wrapper: SoulWrapper) -> None:
    h = torch.randn(6, H, dtype=torch.float64)
    R, s = _gate(wrapper)
    torch.testing.assert_close(h @ pl.gate_matrix(wrapper).T, mix(h, R, s.double()), **EXACT)


def test_factor_margins_use_mix(wrapper: SoulWrapper) -> None:
    torch.manual_seed(2)
    heads = SafetyHeads(H).eval()
    pooled, labels = torch.randn(6, H), ["REFUSE", "ALLOW", "ESCALATE"] * 2
    margins = pl.factor_report(wrapper, heads, pooled, labels)["margins"]
    y = torch.tensor([lab == "REFUSE" for lab in labels])
    with torch.no_grad():
        logit = heads(mix(pooled, *_gate(wrapper)))["refuse"]
    assert margins["both"] == pytest.approx(float(logit[y].mean() - logit[~y].mean()), abs=1e-6)


def test_mix_geometry_is_mix() -> None:
    rows = studies.mix_geometry([-1.0, 0.5], [0.2], hidden=16, n=8, seed=0)
    h = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    R = BlockSO8Rotation(16, init_std=0.2).matrices().detach()
    for row in rows:
        mixed = mix(h, R, torch.sigmoid(torch.tensor(row["alpha"])))
        assert row["norm_ratio"] == pytest.approx((mixed.norm(dim=-1) / h.norm(dim=-1)).mean().item(), abs=1e-6)


def test_alpha_experiment_student_is_mix() -> None:
    sched = LinearSchedule(start=0.5, warmup=2, anneal=4)
    first = studies.alpha_experiment("scheduled", "linear", 16, 1, 8, 0.05, sched, seed=0)[0]
    T = studies.teacher_map("linear", 16, 0)
    h = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    y = h @ T.T
    student = mix(h, torch.eye(8).expand(2, 8, 8), torch.sigmoid(torch.tensor(0.5)))  # identity rotation at start
    assert first["loss"] == pytest.approx(((student - y).pow(2).mean() / y.pow(2).mean()).item(), abs=1e-6)


def test_fused_heads_equal_the_head_on_mix(wrapper: SoulWrapper) -> None:
    head = wrapper.model.lm_head
    h = torch.randn(5, H)
    want = head(mix(h, *_gate(wrapper)))
    torch.testing.assert_close(FusedSoulHead(head, wrapper)(h), want, **FUSED)
    W = fused_head_weight(head.weight, *_gate(wrapper))
    torch.testing.assert_close(h @ W.T, want, **FUSED)
