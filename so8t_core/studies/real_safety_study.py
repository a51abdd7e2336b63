"""Notebook 06's real-model runs end to end: pooled features (cached), every family tuned and trained on them, the
servable heads fused and saved with the record binding them to the real model's weights.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from so8t_core.config import SafetyEvalStageConfig
from so8t_core.safety.heads import Thresholds, tune_thresholds
from so8t_core.safety.labels import LabeledSet, refuse_threshold, subsample
from so8t_core.safety.real_heads import (
    REAL_FAMILIES,
    RealFeatures,
    RealModelHeads,
    Recipe,
    heads_on_model,
    model_folder,
    real_features,
)
from so8t_core.safety.registry import save_heads_for_model
from so8t_core.safety.systems import dev_summary
from so8t_core.studies.real_safety_eval import best_seed

SERVABLE = ("probe", "soul")  # a routed soul folds into heads the same way; measured, not served


def source_name(model: str, family: str) -> str:
    """The decision source name of ``family``'s heads on real model ``model``."""
    return f"{model}/{'soul_heads' if family == 'soul' else family}"


def real_splits(splits: Mapping[str, LabeledSet], cfg: SafetyEvalStageConfig) -> dict[str, LabeledSet]:
    """Generated train/dev cut to ``real_train``/``real_dev`` seeded rows (the forward pass is the cost); the
    hand-written test whole."""
    cut = {"train": cfg.real_train, "dev": cfg.real_dev}
    return {s: subsample(d, cut[s], cfg.seed) if cut.get(s) else d for s, d in splits.items()}


@dataclass
class RealResult:
    """One real model: its features, trained families, and per family per seed ``{"dev", "test"}`` scores."""

    features: RealFeatures
    heads: RealModelHeads
    scores: dict[str, list[dict[str, np.ndarray]]]  # family -> seed -> split -> P(refuse)
    escalate: dict[str, list[dict[str, np.ndarray]]]

    def edge(self) -> dict[str, bool]:
        """family -> whether its learning rate is still at an end of the extended grid."""
        return {f: bool(t["edge"]) for f, t in self.heads.tuning.items()}


def run_real_model(
    name: str, splits: Mapping[str, LabeledSet], cfg: SafetyEvalStageConfig, root: str | Path | None = None
) -> RealResult:
    """Features of ``name`` on ``splits`` (cached), then every family of ``real_heads`` with the stage's recipe.

    Args:
        name: a real model's name (or a model folder, in tests).
        splits: ``real_splits`` of the stage's splits.
        cfg: notebook 06's config (``real_*`` knobs, ``seed``, ``alpha``, ``weight_decay``).
        root: feature cache folder (default: ``feature_cache.cache_dir()``).
    Returns:
        The ``RealResult``.
    """
    feats = real_features(name, splits, cfg.real_layers, cfg.real_max_length, root=root)
    return families_on(feats, splits, cfg)


def recipe_of(cfg: SafetyEvalStageConfig) -> Recipe:
    """The one recipe of notebook 06's families on frozen states (``real_steps``, ``real_batch``,
    ``weight_decay``, ``real_eval_every``, the gate logit ``alpha``)."""
    return Recipe(cfg.real_steps, cfg.real_batch, cfg.weight_decay, cfg.real_eval_every, cfg.alpha)


def families_on(feats: RealFeatures, splits: Mapping[str, LabeledSet], cfg: SafetyEvalStageConfig) -> RealResult:
    """Every family of ``real_heads`` on already pooled states (a real model's, or the tiny served model's),
    with the stage's recipe, learning-rate grid and ``real_seeds`` seeds; their dev and test scores.

    Args:
        feats: pooled states per split and layer.
        splits: the labelled splits the states were taken on.
        cfg: notebook 06's config.
    Returns:
        The ``RealResult``.
    """
    seeds = [cfg.seed + i for i in range(cfg.real_seeds)]
    heads = heads_on_model(feats, splits, cfg.real_lrs, seeds, recipe_of(cfg), REAL_FAMILIES)
    scores, escalate = {}, {}
    for fam, runs in heads.runs.items():
        probs = [{s: r.module.probs(heads.x[s]) for s in ("dev", "test")} for r in runs]
        scores[fam] = [{s: p[s]["p_refuse"] for s in p} for p in probs]
        escalate[fam] = [{s: p[s]["p_escalate"] for s in p} for p in probs]
    return RealResult(feats, heads, scores, escalate)


def save_servable(
    result: RealResult, dev: LabeledSet, stage_dir: str | Path, cap: float
) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """Fuse and save the servable families' heads (the seed chosen on dev) with their binding record.

    The fused heads must give the trained module's probabilities on the test states within 1e-5.

    Args:
        result: from ``run_real_model``.
        dev: the dev split the scores were taken on (its labels set the thresholds).
        stage_dir: notebook 06's stage folder (heads go to ``real/<model>/<family>``).
        cap: the dev rule's ``max_over_refusal``.
    Returns:
        ``(sources, parity)``: source name -> ``decision.save_decision`` spec (with the seed and dev summary),
        and source name -> max |fused - module| over the test probabilities.
    """
    name, layer = result.heads.name, result.heads.layer
    sources, parity = {}, {}
    for fam in SERVABLE:
        dev_sums = [dev_summary(dev, s["dev"].tolist(), cap) for s in result.scores[fam]]
        k = best_seed(dev_sums)
        run = result.heads.runs[fam][k]
        fused = run.module.fused()
        x = result.heads.x["test"]
        want, got = run.module.probs(x), {a: b.numpy() for a, b in fused.probs(x).items()}
        src = source_name(Path(name).name, fam)
        parity[src] = max(float(np.abs(want[a] - got[a]).max()) for a in want)
        if parity[src] >= 1e-5:
            raise ValueError(f"{src}: fused heads differ from the trained ones by {parity[src]:.2e}")
        p_dev, e_dev = result.scores[fam][k]["dev"], result.escalate[fam][k]["dev"]
        t = float(refuse_threshold(p_dev.tolist(), dev.labels, cap))
        th = Thresholds(min(1.0, t), tune_thresholds(p_dev, e_dev, dev.labels, cap).escalate)
        heads_dir = f"real/{src.replace('/', '_')}"
        save_heads_for_model(fused, th, Path(stage_dir) / heads_dir, model_folder(name))
        sources[src] = {
            "threshold": t,
            "heads_dir": heads_dir,
            "model": str(name),
            "layer": layer,
            "max_length": result.features.max_length,
            "seed": run.seed,
            "lr": run.lr,
        }
    return sources, parity
