"""Notebook 03's main run: the base, its corpus, and LoRA + soul variants trained by ``inject`` on the corpus and
scored by held-out perplexity (the soul study on shifted tasks lives in ``head_study`` and ``body_study``).

Explained in notebooks/03_soul_injection.ipynb.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from so8t_core.batching import encode_documents, pack_rows, token_batches
from so8t_core.config import check
from so8t_core.data.corpus import Corpus
from so8t_core.gate.soul import SoulConfig, SoulWrapper, describe
from so8t_core.lm.inject import InjectConfig, inject
from so8t_core.lm.loading import load_base
from so8t_core.lm.lora import LoraSettings, apply_lora
from so8t_core.lm.pretrain import perplexity


def corpus_tensors(stage00: Path, tokenizer, seq_len: int, batch_size: int, max_eval_docs: int):
    """Packed training rows and held-out evaluation batches from notebook 00's corpus."""
    corpus = Corpus.load(stage00 / "corpus")
    train = pack_rows(encode_documents(tokenizer, corpus.train), seq_len, tokenizer.pad_token_id)
    heldout = token_batches(tokenizer, corpus.heldout[:max_eval_docs], seq_len, batch_size)
    return train, heldout


def build_variant(variant: str, stage00: Path, lora: LoraSettings, soul: SoulConfig, seed: int) -> SoulWrapper:
    """A fresh base + LoRA (+ soul unless ``variant == "lora_only"``), initialised identically for every variant.

    ``scale_only`` keeps the rotation frozen at the identity, so its gate is the pure norm gain 1 + sigmoid(alpha):
    the control that tells a rotation's effect from a softmax-temperature effect.
    """
    model, _, _ = load_base(stage00)
    return wrap_variant(model, variant, lora, soul, seed)


def wrap_variant(model, variant: str, lora: LoraSettings, soul: SoulConfig, seed: int) -> SoulWrapper:
    """LoRA (initialised from ``seed``) and, unless ``variant == "lora_only"``, the soul around a loaded base."""
    torch.manual_seed(seed)  # same LoRA init in every variant
    model = apply_lora(model, lora)
    w = SoulWrapper.build(model, soul, use_gate=variant != "lora_only")
    device = model.get_input_embeddings().weight.device
    w.rotation.to(device)  # the soul is built on the CPU; move only it, as a 4-bit base refuses .to()
    w.alpha.to(device)
    if variant == "scale_only":
        w.rotation.requires_grad_(False)
    return w


def variant_configs(soul: SoulConfig, targets: list[float]) -> dict[str, SoulConfig]:
    """Name -> soul config: lora_only, soul_scheduled (the design's target), scale_only (same schedule, identity
    rotation), soul_learned, and target_<x> ablations."""
    out = {
        "lora_only": soul,
        "soul_scheduled": replace(soul, alpha_mode="scheduled"),
        "scale_only": replace(soul, alpha_mode="scheduled", init_std=0.0),
        "soul_learned": replace(soul, alpha_mode="learned"),
    }
    for t in targets:
        if abs(t - soul.alpha_target) > 1e-9:
            out[f"target_{t:g}"] = replace(soul, alpha_mode="scheduled", alpha_target=float(t))
    return out


@torch.no_grad()
def heldout_ppl(model, batches) -> float:
    device = next(model.parameters()).device
    moved = [{k: v.to(device) for k, v in b.items()} for b in batches]
    return perplexity(model, moved)


def run_variant(
    name: str,
    stage00: Path,
    lora: LoraSettings,
    soul: SoulConfig,
    cfg: InjectConfig,
    train_data,
    heldout,
    out_dir: Path | None = None,
) -> tuple[SoulWrapper, dict[str, Any]]:
    """Train one variant and score it; returns the trained wrapper and a result row."""
    t0 = time.time()
    w = build_variant(name, stage00, lora, soul, cfg.seed)
    recs = inject(w, train_data, cfg, out_dir=out_dir)
    return w, score_variant(w, name, soul, cfg.seed, recs, heldout, t0)


def score_variant(
    w: SoulWrapper, name: str, soul: SoulConfig, seed: int, recs: list[dict[str, Any]], heldout, t0: float
) -> dict[str, Any]:
    """The result row of a trained variant: parameter counts, held-out perplexity, final alpha and phase.

    Args:
        w: the trained wrapper (switched to eval mode here).
        name: the variant's name.
        soul: its soul config.
        seed: the run's seed.
        recs: the timeline records ``inject`` returned (at least one).
        heldout: evaluation batches from ``corpus_tensors``.
        t0: ``time.time()`` when the variant started (for ``seconds``).
    Returns:
        The row.
    """
    w.eval()
    return {
        **describe(w),
        "variant": name,
        "heldout_ppl": heldout_ppl(w, heldout),
        "alpha_mode": soul.alpha_mode if w.use_gate else "-",
        "alpha_target": soul.alpha_target if w.use_gate and soul.alpha_mode == "scheduled" else None,
        "final_alpha": recs[-1]["alpha"] if w.use_gate else None,
        "final_phase": recs[-1]["phase"] if w.use_gate else None,
        "final_train_lm_loss": sum(r["lm_loss"] for r in recs[-10:]) / len(recs[-10:]),
        "seconds": round(time.time() - t0, 1),
        "seed": seed,
    }


def still_improving(curve: Sequence[float], rel_tol: float = 1e-3) -> bool:
    """True when the last value of a held-out perplexity curve is lower than the one before it by more than
    ``rel_tol`` (relative): the model was still learning when training stopped.

    Raises:
        ValueError: fewer than two points.
    """
    check(len(curve) >= 2, "curve", len(curve), "need at least two evaluations")
    return curve[-1] < curve[-2] * (1 - rel_tol)
