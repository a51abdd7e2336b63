"""Tier B of notebook 03's soul study: the body trained (LoRA or OFT in the blocks), with or without the soul.

    lora            LoRA r in every block, no gate, no PET                 (the reference)
    lora_pet        the same with PET on its schedule
    soul            LoRA + soul, alpha scheduled toward phi, no PET
    soul_pet        LoRA + soul + PET: the original design (with ``soul`` / ``lora`` / ``lora_pet`` a 2x2)
    soul_frozen_r   LoRA + soul with R frozen until sigmoid(alpha) > 0.05 (the gate is open)
    oft_all         peft OFT (8-wide blocks) on every linear map of every block, no gate
    lora_matched    LoRA at the smallest rank whose size is at least ``oft_all``'s, its rate tuned on its own

Every variant starts from the same base and sees the same items in the same order under a seed; the loss is the
answer tokens' cross entropy (plus PET and the orthogonality guard where on). Each family's learning rate (LoRA,
soul, OFT, matched LoRA) is chosen on dev by ``stats.choose_interior``; one still at an end of its extended grid is
marked ``edge`` and no verdict rests on it.

Explained in notebooks/03_soul_injection.ipynb.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from so8t_core.batching import masked_mean
from so8t_core.config import SoulStageConfig, check, stage_fields
from so8t_core.gate.alpha import STABLE_MAX_WEIGHT
from so8t_core.gate.soul import SoulConfig, SoulWrapper, describe
from so8t_core.lm.lora import PHI3_TARGETS, LoraSettings, apply_lora
from so8t_core.stats import choose_interior

VARIANTS = ("lora", "lora_pet", "soul", "soul_pet", "soul_frozen_r", "oft_all", "lora_matched")
FAMILY = {v: "soul" if v.startswith("soul") else {"oft_all": "oft", "lora_matched": "lora_matched"}.get(v, "lora")
          for v in VARIANTS}  # fmt: skip
TUNED = {"lora": "lora", "soul": "soul", "oft": "oft_all", "lora_matched": "lora_matched"}  # family -> variant tuned


@dataclass(frozen=True)
class TierB:
    """Sizes of a tier-B run.

    Args:
        lrs: learning rates tried on dev with seed 0 (the soul's generators and alpha train at ``soul_lr_ratio``
            times the rate).
        steps: optimizer steps per run.
        batch: items per step.
        seeds: test seeds.
        lora_r: the reference LoRA's rank.
        soul_lr_ratio: soul learning rate / LoRA learning rate.
        max_extensions: grid values added past an end of ``lrs`` at most (one geometric step each).
    """

    lrs: tuple[float, ...]
    steps: int
    batch: int
    seeds: tuple[int, ...]
    lora_r: int
    soul_lr_ratio: float = 10.0
    max_extensions: int = 2

    STAGE_NAMES: ClassVar[dict[str, str]] = {"lrs": "b_lrs", "steps": "b_steps", "batch": "b_batch"}

    @classmethod
    def from_stage(cls, cfg: SoulStageConfig) -> TierB:
        """Notebook 03's tier B (``b_lrs``, ``b_steps``, ``b_batch``, ``lora_r``; test seeds 1..``b_seeds``).

        Args:
            cfg: notebook 03's config.
        Returns:
            The ``TierB``.
        """
        return cls(**stage_fields(cls, cfg, seeds=tuple(range(1, cfg.b_seeds + 1))))

    def __post_init__(self) -> None:
        check(len(self.lrs) > 0 and min(self.lrs) > 0, "lrs", self.lrs, "need at least one positive rate")
        for n in ("steps", "batch", "lora_r", "soul_lr_ratio"):
            check(getattr(self, n) > 0, n, getattr(self, n), "must be > 0")
        check(len(self.seeds) >= 2, "seeds", self.seeds, "need at least 2 seeds for an interval")
        check(self.max_extensions >= 0, "max_extensions", self.max_extensions, "must be >= 0")


def soul_config(base: SoulConfig, steps: int, pet: bool) -> SoulConfig:
    """The stage's soul config with its alpha and PET schedules squeezed into ``steps`` (PET off unless ``pet``)."""
    return replace(
        base,
        alpha_mode="scheduled",
        alpha_warmup=max(steps // 10, 1),
        alpha_anneal=max(steps // 2, 1),
        pet_max_lambda=base.pet_max_lambda if pet else 0.0,
        pet_warmup=max(steps // 10, 1),
        pet_main=max(steps * 6 // 10, 1),
        pet_anneal=max(steps // 4, 1),
    )


def oft_params(model) -> int:
    """Trainable size of peft OFT (8-wide blocks) on every Phi-3 block linear map: 28 numbers per block of 8
    inputs (peft stores the upper triangle of each skew generator)."""
    return sum(
        m.in_features // 8 * 28
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in PHI3_TARGETS
    )


def matched_rank(model) -> int:
    """The smallest LoRA rank whose size over the same maps is at least ``oft_params``: the rival never has fewer
    trainable numbers than OFT."""
    per_rank = sum(
        m.in_features + m.out_features
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in PHI3_TARGETS
    )
    return max(1, math.ceil(oft_params(model) / per_rank))


def build(variant: str, model, soul: SoulConfig, run: TierB, seed: int) -> SoulWrapper:
    """A fresh tier-B variant around ``model`` (a freshly loaded base), adapters initialised from ``seed``."""
    check(variant in VARIANTS, "variant", variant, f"must be one of {VARIANTS}")
    torch.manual_seed(seed)
    if variant == "oft_all":
        import peft

        cfg = peft.OFTConfig(r=0, oft_block_size=8, target_modules=list(PHI3_TARGETS))
        body = peft.get_peft_model(model, cfg)
    else:
        r = matched_rank(model) if variant == "lora_matched" else run.lora_r
        body = apply_lora(model, LoraSettings(r=r, alpha=2 * r, dropout=0.0))
    cfg_soul = soul_config(soul, run.steps, pet=variant.endswith("_pet"))
    return SoulWrapper.build(body, cfg_soul, use_gate=variant.startswith("soul"))


def n_trainable(w: SoulWrapper) -> int:
    """Trainable numbers of a variant: its adapters, plus the soul's generators and alpha when the gate is on."""
    counts = describe(w)
    return counts["lora_params"] + counts["soul_params"]


def _optimizer(w: SoulWrapper, lr: float, ratio: float) -> torch.optim.Optimizer:
    soul_ids = {id(p) for p in w.soul_parameters()}
    body = [p for p in w.parameters() if p.requires_grad and id(p) not in soul_ids]
    groups = [{"params": body, "lr": lr}]
    if w.use_gate:
        groups.append({"params": w.soul_parameters(), "lr": lr * ratio})
    return torch.optim.AdamW(groups, weight_decay=0.0)


def train(
    w: SoulWrapper, enc: dict[str, Tensor], lr: float, run: TierB, seed: int, freeze_r: bool = False
) -> list[dict[str, float]]:
    """Train ``w`` on encoded items; returns per-step ``{"step", "lm_loss", "pet_loss", "alpha"}``.

    Args:
        w: a ``build`` result.
        enc: ``tasks.encode_items`` of the training items.
        lr: body learning rate.
        run: sizes.
        seed: draws the items of each step.
        freeze_r: keep R fixed while ``sigmoid(alpha) <= STABLE_MAX_WEIGHT``.
    """
    opt = _optimizer(w, lr, run.soul_lr_ratio)
    g = torch.Generator().manual_seed(seed)
    curve = []
    w.train()
    for step in range(run.steps):
        w.set_step(step)
        if freeze_r:
            w.rotation.requires_grad_(bool(w.alpha.weight.item() > STABLE_MAX_WEIGHT))
        idx = torch.randint(0, len(enc["input_ids"]), (run.batch,), generator=g)
        width = int(enc["attention_mask"][idx].sum(1).max())  # trim the batch to its longest row
        out = w(*(enc[k][idx, :width] for k in ("input_ids", "attention_mask", "labels")))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        curve.append({"step": step, "lm_loss": out.lm_loss.item(), "pet_loss": out.pet_loss.item(),
                      "alpha": w.alpha.alpha.item()})  # fmt: skip
    w.rotation.requires_grad_(True)
    w.eval()
    return curve


@torch.no_grad()
def score(w, enc: dict[str, Tensor], batch: int = 64) -> dict[str, np.ndarray]:
    """Per-item answer-token NLL and teacher-forced exact match of a causal LM or soul wrapper.

    Returns:
        ``{"nll": (N,), "em": (N,)}``.
    """
    nll, em = [], []
    for s in range(0, len(enc["input_ids"]), batch):
        ids, mask, lab = (enc[k][s : s + batch] for k in ("input_ids", "attention_mask", "labels"))
        logits = w(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
        y = lab[:, 1:]  # (B, T-1)
        on = (y != -100).float()
        tok = torch.nn.functional.cross_entropy(logits.transpose(1, 2), y.clamp(min=0), reduction="none")  # (B, T-1)
        hit = (logits.argmax(-1) == y).float() * on
        nll.append(masked_mean(tok, on))
        em.append((hit.sum(1) == on.sum(1)).float())
    return {"nll": torch.cat(nll).numpy(), "em": torch.cat(em).numpy()}


def run_variant(
    variant: str, load, soul: SoulConfig, run: TierB, enc_train, enc_eval, lr: float, seed: int, retention=None
) -> dict[str, Any]:
    """Build, train and score one tier-B variant.

    Args:
        variant: one of ``VARIANTS``.
        load: a function returning a fresh base model.
        soul: the stage's soul config.
        run: sizes.
        enc_train, enc_eval: encoded training and evaluation items.
        lr: body learning rate.
        seed: adapter init and item order.
        retention: ``callable(wrapper) -> held-out perplexity`` or None.
    Returns:
        ``{"nll", "em", "params", "curve", "seconds"}`` (+ ``"retention_ppl"``).
    """
    t0 = time.time()
    w = build(variant, load(), soul, run, seed)
    curve = train(w, enc_train, lr, run, seed, freeze_r=variant == "soul_frozen_r")
    out: dict[str, Any] = {**score(w, enc_eval), "curve": curve}
    out["params"] = n_trainable(w)
    if retention is not None:
        out["retention_ppl"] = float(retention(w))
    out["seconds"] = time.time() - t0
    return out


def tune_lr(variant: str, load, soul: SoulConfig, run: TierB, enc: dict[str, dict[str, Tensor]]) -> dict[str, Any]:
    """A family's learning rate: dev NLL of ``variant`` after ``run.steps`` steps (seed 0), the grid extended until
    the choice is interior.

    Returns:
        ``stats.choose_interior``'s fields; with one rate in ``run.lrs`` nothing is chosen or run: ``edge`` True,
        ``side`` ``"untuned"``, score NaN.
    """
    if len(run.lrs) == 1:
        return {"choice": run.lrs[0], "edge": True, "side": "untuned", "grid": list(run.lrs), "scores": [math.nan],
                "extensions": 0}  # fmt: skip

    def dev_nll(lr: float) -> float:
        return float(run_variant(variant, load, soul, run, enc["train"], enc["dev"], lr, 0)["nll"].mean())

    return choose_interior(run.lrs, dev_nll, max_extensions=run.max_extensions, limits=(0.0, 1.0))


def run_task(load, soul: SoulConfig, run: TierB, enc: dict[str, dict[str, Tensor]], retention=None) -> dict[str, Any]:
    """Tier B on one task: each family's learning rate chosen on dev with seed 0, then every variant per test seed.

    Args:
        load: returns a fresh base model.
        soul: the stage's soul config.
        run: sizes.
        enc: split -> encoded items.
        retention: ``callable(wrapper) -> held-out perplexity`` (scored on the test runs) or None.
    Returns:
        ``{"lr", "dev_nll", "tuning": {family: tune_lr()}, "edge_variants", "matched": {"rank", "oft_all",
        "lora_matched"} (trainable counts), "params", "nll": {v: (S, I)}, "em": {v: (S, I)}, "retention_ppl":
        {v: [per seed]}, "curves": {v: first seed's curve}}``.
    """
    tuning = {f: tune_lr(v, load, soul, run, enc) for f, v in TUNED.items()}
    lr = {f: t["choice"] for f, t in tuning.items()}
    out: dict[str, Any] = {
        "lr": lr,
        "dev_nll": {f: dict(zip(t["grid"], t["scores"], strict=True)) for f, t in tuning.items()},
        "tuning": tuning,
        "edge_variants": [v for v in VARIANTS if tuning[FAMILY[v]]["edge"]],
        "params": {},
        "nll": {},
        "em": {},
        "retention_ppl": {},
        "curves": {},
    }
    for v in VARIANTS:
        fam_lr = lr[FAMILY[v]]
        rs = [run_variant(v, load, soul, run, enc["train"], enc["test"], fam_lr, s, retention) for s in run.seeds]
        out["params"][v] = rs[0]["params"]
        out["nll"][v], out["em"][v] = np.stack([r["nll"] for r in rs]), np.stack([r["em"] for r in rs])
        out["retention_ppl"][v] = [r.get("retention_ppl") for r in rs]
        out["curves"][v] = rs[0]["curve"]
    out["matched"] = {"rank": matched_rank(load()), "oft_all": out["params"]["oft_all"],
                      "lora_matched": out["params"]["lora_matched"]}  # fmt: skip
    return out
