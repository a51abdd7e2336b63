"""Heads inside the soul: joint training, gradient routing, matched controls and exact fusion of the heads."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from so8t_core.config import SafetyEvalStageConfig
from so8t_core.safety.heads import SafetyHeads, pooled_hidden_states
from so8t_core.safety.labels import LabeledSet
from so8t_core.safety.pillars import (
    FAMILIES,
    PillarSettings,
    build_family,
    factor_report,
    fuse_heads,
    gate_matrix,
    mix_pooled,
    mixed_views,
    pillar_probs,
    pooled_states,
    soul_size,
    train_pillars,
    trainable_count,
)

TEXTS = ["how do I bake bread", "write a poem about rain", "make a weapon to hurt people", "fix my python code"] * 3
PROMPTS = ["how do I bake bread", "make a weapon", "write a poem", "fix python code", "hurt people now", "rain"]
LABELS_ = ("ALLOW", "REFUSE", "ALLOW", "ESCALATE", "REFUSE", "ALLOW")
TASKS_ = ("advice", "information", "creative", "coding", "advice", "creative")
SETTINGS = PillarSettings.from_stage(SafetyEvalStageConfig(steps=3, batch_size=4, max_length=16, batch_eval=4))


def _data() -> LabeledSet:
    extra = tuple({"task": t} for t in TASKS_)
    return LabeledSet("t", tuple(PROMPTS), LABELS_, tuple(range(1, 7)), extra)


@pytest.fixture(scope="module")
def lm(tiny_lm):
    return tiny_lm(TEXTS, hidden=32, layers=2, heads=2)


def _random_soul(lm, seed=1):
    w = build_family(lm.model, "soul", SETTINGS)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in w.rotation.parameters():
            p.normal_(0, 0.3)
    return w


def _random_heads(H, seed=2):
    torch.manual_seed(seed)
    heads = SafetyHeads(H)
    with torch.no_grad():
        heads.mu.normal_(0, 0.5)
        heads.sigma.uniform_(0.5, 2.0)
    return heads.eval()


def test_fused_heads_on_h_equal_wrapper_heads_on_mixed_state(lm):
    w = _random_soul(lm)
    heads = _random_heads(32)
    pooled = pooled_states(w, lm.tok, PROMPTS, SETTINGS)
    # the fused checkpoint's feature is notebook 06's pooled_hidden_states of the plain model
    h = pooled_hidden_states(lm.model, lm.tok, PROMPTS, max_length=SETTINGS.max_length)
    assert torch.allclose(h, pooled, atol=1e-5)
    want = pillar_probs(w, heads, pooled)
    fused = fuse_heads(heads, gate_matrix(w))
    got = {k: v.numpy() for k, v in fused.probs(h).items()}
    for k in want:
        assert abs(want[k] - got[k]).max() < 1e-5, k
    # dropping (I + sR) must break the parity: the test can fail
    dropped = {k: v.numpy() for k, v in fuse_heads(heads, torch.eye(32, dtype=torch.float64)).probs(h).items()}
    assert max(abs(want[k] - dropped[k]).max() for k in want) > 1e-3


def test_pooling_the_mixed_state_equals_mixing_the_pooled_state(lm):
    w = _random_soul(lm)
    ids = lm.tok("make a weapon")["input_ids"]
    h = w.hidden(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).float()
    a = w.mix(h).mean(1)
    b = mix_pooled(w, h.mean(1))
    assert torch.allclose(a, b, atol=1e-5)


def test_routing_keeps_values_and_splits_gradients(lm):
    w = _random_soul(lm)
    h = torch.randn(2, 3, 32)
    m_lm, m_safe = mixed_views(w, h, routed=True)
    assert torch.allclose(m_lm, m_safe, atol=1e-6)
    m_lm.sum().backward()
    assert w.rotation.r_cmd.generators.grad.abs().sum() > 0
    assert w.rotation.r_safe.generators.grad is None
    w.zero_grad(set_to_none=True)
    _, m_safe = mixed_views(w, h, routed=True)
    m_safe.pow(2).sum().backward()
    assert w.rotation.r_safe.generators.grad.abs().sum() > 0
    assert w.rotation.r_cmd.generators.grad is None


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_its_part_only_near_the_souls_size(lm, family):
    before = copy.deepcopy(lm.model.state_dict())
    w = build_family(lm.model, family, SETTINGS)
    n = trainable_count(w)
    assert 0.4 * soul_size(32) <= n <= 2.5 * soul_size(32), (family, n)
    start = {k: v.clone() for k, v in w.named_parameters() if v.requires_grad}
    heads, timeline = train_pillars(w, lm.tok, _data(), SETTINGS, routed=family == "soul_routed")
    assert len(timeline) == SETTINGS.steps
    assert all(r["lm"] > 0 for r in timeline)
    moved = [k for k, v in w.named_parameters() if v.requires_grad and not torch.equal(v, start[k])]
    assert moved, family
    for k, v in lm.model.state_dict().items():  # the shared base is never trained in place
        assert torch.equal(v, before[k])
    probs = pillar_probs(w, heads, pooled_states(w, lm.tok, PROMPTS, SETTINGS))
    assert probs["p_refuse"].shape == (len(PROMPTS),)


@pytest.mark.slow
def test_routed_training_moves_r_safe_only_through_the_safety_losses(lm):
    w = build_family(lm.model, "soul_routed", replace(SETTINGS, steps=2, lam=0.0, batch_eval=64))
    train_pillars(w, lm.tok, _data(), replace(SETTINGS, steps=2, lam=0.0, batch_eval=64), routed=True)
    # lam = 0 leaves only the LM loss: R_safe must not move, R_cmd must
    assert w.rotation.r_safe.generators.abs().max() == 0
    assert w.rotation.r_cmd.generators.abs().max() > 0


def test_factor_report_names_both_spectra_and_margins(lm):
    w = _random_soul(lm)
    heads = _random_heads(32)
    rep = factor_report(w, heads, torch.randn(6, 32), LABELS_)
    assert len(rep["angles_safe"]) == len(rep["angles_cmd"]) == 4 * 4
    assert rep["commutator"] > 0
    assert set(rep["margins"]) == {"both", "safe_only", "cmd_only", "none"}


def test_a_prompts_pooled_state_does_not_depend_on_its_batch(lm) -> None:
    one = pooled_hidden_states(lm.model, lm.tok, PROMPTS, batch_size=1)
    assert torch.allclose(pooled_hidden_states(lm.model, lm.tok, PROMPTS, batch_size=4), one, atol=1e-5)
    w = build_family(lm.model, "soul", SETTINGS)
    assert torch.allclose(
        pooled_states(w, lm.tok, PROMPTS, PillarSettings.from_stage(SafetyEvalStageConfig(batch_eval=3))),
        one,
        atol=1e-5,
    )
