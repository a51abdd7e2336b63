"""Notebook 06's runs: every system's P(REFUSE) on dev and test, ready for ``systems.score_on_test``.

* ``baseline_scores``: keyword, TF-IDF and bags of token ids, fitted on generated train.
* ``probe_scores_of``: the four heads (``heads.train_heads``) on a frozen model's pooled states (the served model,
  the base, a random-init model of the same shape).
* ``family_runs``: the pillar families (``pillars.FAMILIES``) trained jointly with their heads, one run per seed.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from so8t_core.batching import encode_prompts
from so8t_core.config import SafetyEvalStageConfig
from so8t_core.gate.soul import SoulWrapper
from so8t_core.safety.baselines import make_baseline
from so8t_core.safety.heads import SafetyHeads, Thresholds, pooled_hidden_states, train_heads, tune_thresholds
from so8t_core.safety.labels import LABELS, LabeledSet, refuse_threshold
from so8t_core.safety.pillars import (
    PillarSettings,
    build_family,
    pillar_probs,
    pooled_states,
    train_pillars,
    trainable_count,
)

_R = LABELS.index("REFUSE")


def baseline_scores(
    splits: Mapping[str, LabeledSet], tokenizer: Any, names: Sequence[str] = ("keyword", "tfidf", "bow_ids")
) -> dict[str, dict[str, np.ndarray]]:
    """name -> ``{"dev", "test"}`` P(REFUSE) of each baseline fitted on the generated train split."""
    out = {}
    for name in names:
        base = make_baseline(name, tokenizer)
        out[name] = {s: base.predict_proba(list(splits[s].prompts))[:, _R] for s in ("dev", "test")}
    return out


@dataclass
class HeadsOnModel:
    """Heads trained on one frozen model: P(REFUSE) and P(escalate) on dev/test, and the tuned thresholds."""

    heads: SafetyHeads
    thresholds: Thresholds
    scores: dict[str, np.ndarray]  # split -> P(refuse)
    escalate: dict[str, np.ndarray]
    features: dict[str, torch.Tensor]  # split -> pooled h (N, H)


def probe_scores_of(
    model: Any,
    tokenizer: Any,
    splits: Mapping[str, LabeledSet],
    cfg: SafetyEvalStageConfig,
) -> HeadsOnModel:
    """The four heads on a frozen model's pooled states (the same heads the families train), thresholded by the
    shared rule on dev (refuse) and ``heads.tune_thresholds`` (escalate).

    Args:
        model: the frozen causal LM.
        tokenizer: its tokenizer.
        splits: ``train``, ``dev`` and ``test`` labelled sets (with a ``task`` column).
        cfg: notebook 06's config: ``head_steps`` full-batch steps, prompts cut at ``max_length`` tokens and
            pooled ``batch_eval`` at a time, ``seed``, and the dev rule's ``max_over_refusal``.
    Returns:
        The trained heads, their dev thresholds, and the dev/test probabilities and pooled states.
    """
    feats = {
        s: pooled_hidden_states(model, tokenizer, list(d.prompts), cfg.batch_eval, cfg.max_length)
        for s, d in splits.items()
    }
    train = splits["train"]
    tasks = [e["task"] for e in train.extra]
    heads = train_heads(feats["train"], train.labels, tasks, steps=cfg.head_steps, seed=cfg.seed)
    probs = {s: heads.probs(feats[s]) for s in ("dev", "test")}
    p = {s: probs[s]["p_refuse"].numpy() for s in probs}
    e = {s: probs[s]["p_escalate"].numpy() for s in probs}
    return HeadsOnModel(heads, _thresholds(p["dev"], e["dev"], splits["dev"], cfg.max_over_refusal), p, e, feats)


def _thresholds(p_dev: np.ndarray, e_dev: np.ndarray, dev: LabeledSet, cap: float) -> Thresholds:
    t = refuse_threshold(p_dev.tolist(), dev.labels, cap)
    esc = tune_thresholds(p_dev, e_dev, dev.labels, cap).escalate
    return Thresholds(min(1.0, float(t)), esc)


@dataclass
class FamilyRun:
    """One family trained with one seed: the trained wrapper and heads, scores, size and time."""

    family: str
    seed: int
    wrapper: SoulWrapper
    heads: SafetyHeads
    thresholds: Thresholds
    scores: dict[str, np.ndarray]
    escalate: dict[str, np.ndarray]
    pooled_dev: torch.Tensor
    trainable: int
    seconds: float
    timeline: list[dict[str, float]] = field(default_factory=list)


def family_runs(
    model: Any,
    tokenizer: Any,
    splits: Mapping[str, LabeledSet],
    families: Sequence[str],
    seeds: Sequence[int],
    settings: PillarSettings,
    frozen: Mapping[str, torch.Tensor],
    max_over_refusal: float,
) -> dict[str, list[FamilyRun]]:
    """Train every family with every seed on a copy of ``model``; score dev and test.

    Args:
        frozen: split -> pooled h of the frozen ``model`` (from ``probe_scores_of``): a soul leaves the body
            frozen, so its dev/test features are these, mixed; every family starts as the identity on the body,
            so the train features also give the heads' standardisation.
        max_over_refusal: the dev rule's cap on over-refusal (notebook 06's ``max_over_refusal``).
    Returns:
        family -> runs in seed order.
    """
    out: dict[str, list[FamilyRun]] = {}
    tokens = encode_prompts(tokenizer, splits["train"].prompts, settings.max_length)
    for family in families:
        out[family] = []
        for seed in seeds:
            start = time.perf_counter()
            torch.manual_seed(seed)
            w = build_family(model, family, settings)
            routed = family == "soul_routed"
            heads, timeline = train_pillars(
                w, tokenizer, splits["train"], settings, routed, seed, frozen["train"], tokens
            )
            if w.use_gate:  # the body did not move
                pooled = {s: frozen[s] for s in ("dev", "test")}
            else:
                pooled = {s: pooled_states(w, tokenizer, list(splits[s].prompts), settings) for s in ("dev", "test")}
            probs = {s: pillar_probs(w, heads, pooled[s]) for s in pooled}
            p = {s: probs[s]["p_refuse"] for s in probs}
            e = {s: probs[s]["p_escalate"] for s in probs}
            th = _thresholds(p["dev"], e["dev"], splits["dev"], max_over_refusal)
            run = FamilyRun(family, seed, w, heads, th, p, e, pooled["dev"], trainable_count(w), 0.0, timeline)
            run.seconds = time.perf_counter() - start
            out[family].append(run)
    return out
