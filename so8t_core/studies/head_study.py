"""Tier A of notebook 03's soul study: the body frozen, only what sits on the final hidden state trained.

The base runs once per task; the hidden states *before* its final norm are cached at every position that predicts
an answer token. Every variant is then a small module ``x -> logits`` on those cached states, trained in seconds:

    base            W norm(x)                                  (nothing trained)
    temperature     W norm(x) / tau                            (1)
    ln              W norm_g(x), the final norm's gain g        (H)
    ia3             peft IA3 on lm_head: W (l * h)              (H)
    oft             peft OFT on lm_head, 8-wide blocks: W R h   (H/8 * 28)
    boft            peft BOFT on lm_head, 8-wide blocks, 2 butterfly factors
    lora_r1         peft LoRA r=1 on lm_head                    (H + V)
    lora_temp       LoRA r=1 on lm_head and a learned temperature (H + V + 1): a scale the soul's norm gain could mimic
    soul            W (h + sigmoid(alpha) R h), one block rotation R; alpha fixed or learned
    soul_composed   the same with R = R_cmd R_safe (twice the generators)
    soul_normed     W (h + sigmoid(alpha) R h) / (1 + sigmoid(alpha)): the soul without its norm gain

``oft`` is the soul without its residual and its scale, the closest established method and the reference.

Each family's learning rate is chosen on dev (seed 0) by ``stats.choose_interior``: a choice at an end of the grid
extends the grid; a family still at an end is marked ``edge`` and no verdict rests on it. Seeds are replicates: a
seed sets the initialisation (where a family's is random: LoRA's A), the minibatch order and the dropout on the
cached states.

Explained in notebooks/03_soul_injection.ipynb.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from so8t_core.config import GOLDEN_RATIO, SoulStageConfig, check, stage_fields
from so8t_core.gate.rotation import BlockSO8Rotation, ComposedSO8Rotation
from so8t_core.gate.soul import mix
from so8t_core.stats import choose_interior

ALPHA_GRID = (-2.0, 0.0, 1.0, 1.5, GOLDEN_RATIO, 1.75, 2.0, 3.0)
FAMILIES = (
    "temperature", "ln", "ia3", "oft", "boft", "lora_r1", "lora_temp", "soul", "soul_composed", "soul_normed",
)  # fmt: skip


@dataclass
class Cached:
    """Pre-norm hidden states at answer-predicting positions of one split.

    Attributes:
        x: (P, H) states.
        y: (P,) the answer token each position predicts.
        item: (P,) the item each position belongs to (items are numbered 0..n_items-1).
        n_items: number of items.
    """

    x: Tensor
    y: Tensor
    item: Tensor
    n_items: int


@torch.no_grad()
def cache_states(model, enc: dict[str, Tensor], batch_size: int = 64) -> Cached:
    """Run the frozen base over encoded items and keep the final norm's input where an answer token is next.

    Args:
        model: a transformers causal LM whose ``model.norm`` is the final norm (Llama/Phi-3 layout).
        enc: ``so8t_core.data.tasks.encode_items`` output.
        batch_size: items per forward pass.
    Returns:
        The cache (float32, on the CPU).
    """
    norm_in: list[Tensor] = []
    hook = model.model.norm.register_forward_hook(lambda m, inp, out: norm_in.append(inp[0].detach()))
    xs, ys, items = [], [], []
    try:
        for s in range(0, len(enc["input_ids"]), batch_size):
            ids, mask, lab = (enc[k][s : s + batch_size] for k in ("input_ids", "attention_mask", "labels"))
            model(input_ids=ids, attention_mask=mask)
            h = norm_in.pop()  # (B, T, H)
            pos = lab[:, 1:] != -100  # (B, T-1): position t predicts token t+1
            xs.append(h[:, :-1][pos].float())
            ys.append(lab[:, 1:][pos])
            items.append((torch.arange(len(ids)) + s)[:, None].expand_as(pos)[pos])
    finally:
        hook.remove()
    return Cached(torch.cat(xs), torch.cat(ys), torch.cat(items), len(enc["input_ids"]))


class Head(nn.Module):
    """``x -> W norm(x)`` with the base's final norm and lm_head copied (frozen unless a family trains them)."""

    def __init__(self, norm: nn.Module, lm_head: nn.Linear) -> None:
        super().__init__()
        self.norm, self.lm_head = copy.deepcopy(norm).float(), copy.deepcopy(lm_head).float()
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.lm_head(self.norm(x))


class Temperature(Head):
    """``W norm(x) / tau`` with ``tau = exp(log_tau)`` learned."""

    def __init__(self, norm: nn.Module, lm_head: nn.Linear) -> None:
        super().__init__(norm, lm_head)
        self.log_tau = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * torch.exp(-self.log_tau)


class SoulGateHead(Head):
    """The base's final norm and head with the soul gate between them: ``W (h + s R h) / d``.

    ``s = sigmoid(alpha)``, ``d = 1 + s`` when ``normed`` else 1.

    Args:
        norm, lm_head: the base's final norm and head.
        alpha: the fixed value, or the start of a learned one.
        learned: whether alpha is trained.
        composed: R = R_cmd R_safe (two generator sets) instead of one block rotation.
        normed: divide by 1 + s, so the gate rotates without scaling the logits.
    """

    def __init__(
        self, norm: nn.Module, lm_head: nn.Linear, alpha: float, learned: bool, composed: bool, normed: bool
    ) -> None:
        super().__init__(norm, lm_head)
        H = lm_head.in_features
        self.rotation = ComposedSO8Rotation(H) if composed else BlockSO8Rotation(H)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)), requires_grad=learned)
        self.normed = normed

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm(x)  # (P, H)
        s = torch.sigmoid(self.alpha)
        mixed = mix(h, self.rotation.matrices(), s)  # (P, H)
        return self.lm_head(mixed / (1 + s) if self.normed else mixed)


def build(family: str, norm: nn.Module, lm_head: nn.Linear, alpha: float = 0.0, learned: bool = True) -> nn.Module:
    """A fresh tier-A variant of ``family`` around copies of the base's final norm and head.

    Args:
        family: one of ``FAMILIES`` or ``"base"``.
        norm: the base's final norm.
        lm_head: the base's output projection.
        alpha: soul families: the fixed alpha, or where a learned one starts.
        learned: soul families: train alpha.
    Returns:
        A module ``x (P, H) -> logits (P, V)`` whose trainable parameters are the family's.
    """
    check(family in (*FAMILIES, "base"), "family", family, f"must be 'base' or one of {FAMILIES}")
    if family.startswith("soul"):
        return SoulGateHead(norm, lm_head, alpha, learned, family == "soul_composed", family == "soul_normed")
    if family == "temperature":
        return Temperature(norm, lm_head)
    if family == "lora_temp":
        lora = _peft("lora_r1", Temperature(norm, lm_head))
        next(p for n, p in lora.named_parameters() if n.endswith("log_tau")).requires_grad_(True)  # peft froze it
        return lora
    head = Head(norm, lm_head)
    if family == "ln":
        head.norm.requires_grad_(True)  # RMSNorm: its gain only
    elif family not in ("base", "ln"):
        head = _peft(family, head)
    return head


def _peft(family: str, head: nn.Module) -> nn.Module:
    import peft

    configs = {
        "ia3": lambda: peft.IA3Config(target_modules=["lm_head"], feedforward_modules=["lm_head"]),
        "oft": lambda: peft.OFTConfig(r=0, oft_block_size=8, target_modules=["lm_head"]),
        "boft": lambda: peft.BOFTConfig(boft_block_size=8, boft_n_butterfly_factor=2, target_modules=["lm_head"]),
        "lora_r1": lambda: peft.LoraConfig(r=1, lora_alpha=1, target_modules=["lm_head"]),
    }
    with warnings.catch_warnings():  # BOFT's CUDA kernel is absent on a CPU; peft then builds its own on torch
        warnings.filterwarnings("ignore", message="Failed to load the CUDA extension")
        warnings.filterwarnings("ignore", message="Setting boft_n_butterfly_factor to 1")
        return peft.get_peft_model(head, configs[family]())


def n_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def fit(
    module: nn.Module,
    data: Cached,
    lr: float,
    steps: int,
    batch: int,
    seed: int,
    dropout: float = 0.0,
    watch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:
    """AdamW on the mean answer-token cross entropy, minibatches of ``batch`` positions drawn by ``seed``.

    Args:
        module: a ``build`` result.
        data: the training cache.
        lr, steps, batch: the recipe.
        seed: draws the minibatches and the dropout masks.
        dropout: share of the cached states' features zeroed in training (the same for every family).
        watch: called as ``watch(step, module)`` after each step (e.g. to score dev: a learning curve).
    Returns:
        ``module``, trained and in eval mode.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        return module
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    module.train()
    for step in range(steps):
        idx = torch.randint(0, len(data.y), (min(batch, len(data.y)),), generator=g)
        x = data.x[idx]  # (b, H)
        if dropout > 0:
            keep = torch.rand(x.shape, generator=g) >= dropout
            x = x * keep / (1 - dropout)
        loss = nn.functional.cross_entropy(module(x), data.y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if watch is not None:
            module.eval()
            watch(step, module)
            module.train()
    module.eval()
    return module


@torch.no_grad()
def score(module: nn.Module, data: Cached) -> dict[str, np.ndarray]:
    """Per-item answer-token NLL (mean over the item's tokens) and teacher-forced exact match (every token argmax).

    Returns:
        ``{"nll": (n_items,), "em": (n_items,)}``.
    """
    logits = module(data.x)  # (P, V)
    nll = nn.functional.cross_entropy(logits, data.y, reduction="none")
    hit = (logits.argmax(-1) == data.y).float()
    n = torch.zeros(data.n_items).index_add_(0, data.item, torch.ones_like(nll))
    per_nll = torch.zeros(data.n_items).index_add_(0, data.item, nll) / n.clamp(min=1)
    per_hit = torch.zeros(data.n_items).index_add_(0, data.item, hit)
    return {"nll": per_nll.numpy(), "em": (per_hit == n).float().numpy()}


def variant_specs(alpha_grid: Sequence[float] = ALPHA_GRID) -> dict[str, dict[str, Any]]:
    """Name -> ``build`` keywords of every tier-A variant: the families, and the soul at each fixed alpha."""
    specs: dict[str, dict[str, Any]] = {"base": {"family": "base"}}
    for f in FAMILIES:
        specs[f if not f.startswith("soul") else f"{f}_learned"] = {"family": f}
    for a in alpha_grid:
        specs[alpha_name(a)] = {"family": "soul", "alpha": a, "learned": False}
    return specs


def alpha_name(a: float) -> str:
    """``soul_a1.618`` for the soul with alpha fixed at 1.618 (three decimals, so phi is told from 1.6)."""
    return f"soul_a{a:.3f}".rstrip("0").rstrip(".") if not math.isclose(a, round(a)) else f"soul_a{a:.0f}"


def lr_family(name: str, spec: dict[str, Any]) -> str:
    """The family whose dev-chosen learning rate a variant uses: its own (the soul at a fixed alpha shares the learned
    soul's; the composed and the norm-matched soul are tuned on their own)."""
    return spec["family"]


@dataclass(frozen=True)
class TierA:
    """Sizes of a tier-A run.

    Args:
        lrs: learning rates tried on dev with seed 0 (extended past an end while the best is there).
        steps: optimizer steps per run.
        batch: answer positions per step.
        seeds: test seeds.
        dropout: dropout on the cached states in training, so a seed also draws the masks.
        max_extensions: grid values added past an end of ``lrs`` at most (one geometric step each).
    """

    lrs: tuple[float, ...]
    steps: int
    batch: int
    seeds: tuple[int, ...]
    dropout: float = 0.1
    max_extensions: int = 2

    STAGE_NAMES: ClassVar[dict[str, str]] = {"lrs": "a_lrs", "steps": "a_steps", "batch": "a_batch"}

    @classmethod
    def from_stage(cls, cfg: SoulStageConfig) -> TierA:
        """Notebook 03's tier A (``a_lrs``, ``a_steps``, ``a_batch``; test seeds 1..``a_seeds``).

        Args:
            cfg: notebook 03's config.
        Returns:
            The ``TierA``.
        """
        return cls(**stage_fields(cls, cfg, seeds=tuple(range(1, cfg.a_seeds + 1))))

    @classmethod
    def for_real_models(cls, cfg: SoulStageConfig) -> TierA:
        """Tier A on a real model: as ``from_stage`` but over the real models' rate grid ``real_a_lrs``."""
        return dataclasses.replace(cls.from_stage(cfg), lrs=tuple(cfg.real_a_lrs))

    def __post_init__(self) -> None:
        check(len(self.lrs) > 0 and min(self.lrs) > 0, "lrs", self.lrs, "need at least one positive rate")
        check(self.steps > 0, "steps", self.steps, "must be > 0")
        check(self.batch > 0, "batch", self.batch, "must be > 0")
        check(len(self.seeds) >= 2, "seeds", self.seeds, "need at least 2 seeds for an interval")
        check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "must be in [0, 1)")
        check(self.max_extensions >= 0, "max_extensions", self.max_extensions, "must be >= 0")


def train_variant(
    spec: dict[str, Any], cache: dict[str, Cached], norm: nn.Module, lm_head: nn.Linear, lr: float, run: TierA,
    seed: int, watch: Callable[[int, nn.Module], None] | None = None,
) -> nn.Module:  # fmt: skip
    """One tier-A variant built and trained under ``seed`` (its random init, minibatches and dropout)."""
    torch.manual_seed(seed)  # LoRA's A; the other families start deterministically
    m = build(**spec, norm=norm, lm_head=lm_head)
    return fit(m, cache["train"], lr, run.steps, run.batch, seed, run.dropout, watch) if spec["family"] != "base" else m


def tune_lr(
    spec: dict[str, Any], cache: dict[str, Cached], norm: nn.Module, lm_head: nn.Linear, run: TierA
) -> dict[str, Any]:
    """The family's learning rate: dev NLL after ``run.steps`` steps (seed 0), the grid extended until interior.

    Returns:
        ``stats.choose_interior``'s fields (``side`` ``"untuned"`` when ``run.lrs`` has one rate: nothing was
        chosen, so it counts as an edge) and ``curves``: lr -> dev NLL every ``curve_every`` steps.
    """
    every = max(run.steps // 10, 1)
    curves: dict[float, list[float]] = {}

    def dev_nll(lr: float) -> float:
        curve = curves.setdefault(lr, [])

        def watch(step: int, m: nn.Module) -> None:
            if (step + 1) % every == 0 or step + 1 == run.steps:
                curve.append(float(score(m, cache["dev"])["nll"].mean()))

        train_variant(spec, cache, norm, lm_head, lr, run, 0, watch)
        return curve[-1]

    if len(run.lrs) == 1:
        nll = dev_nll(run.lrs[0])
        out = {"choice": run.lrs[0], "edge": True, "side": "untuned", "grid": list(run.lrs), "scores": [nll],
               "extensions": 0}  # fmt: skip
    else:
        out = choose_interior(run.lrs, dev_nll, max_extensions=run.max_extensions, limits=(0.0, 1.0))
    return out | {"curves": {str(k): v for k, v in sorted(curves.items())}, "curve_every": every}


def run_task(
    cache: dict[str, Cached], norm: nn.Module, lm_head: nn.Linear, run: TierA, specs: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Tier A on one task: each family's learning rate chosen on dev with seed 0, then every variant under each
    test seed.

    Args:
        cache: split -> cached states (``train``, ``dev``, ``test``).
        norm, lm_head: the base's final norm and head.
        run: sizes.
        specs: ``variant_specs()``.
    Returns:
        ``{"lr": {family: lr}, "dev_nll": {family: {lr: nll}}, "tuning": {family: tune_lr()}, "edge_variants":
        [variants whose family's rate is at an edge], "params": {variant: n}, "nll": {variant: (S, I)},
        "em": {variant: (S, I)}}``.
    """
    tuning: dict[str, dict[str, Any]] = {}
    for name, spec in specs.items():  # the learned soul comes before the fixed alphas, which share its rate
        if spec["family"] != "base" and lr_family(name, spec) not in tuning:
            tuning[lr_family(name, spec)] = tune_lr(spec, cache, norm, lm_head, run)
    lr = {f: t["choice"] for f, t in tuning.items()}
    nll: dict[str, np.ndarray] = {}
    em: dict[str, np.ndarray] = {}
    params: dict[str, int] = {}
    for name, spec in specs.items():
        rows = []
        for s in run.seeds:
            m = train_variant(spec, cache, norm, lm_head, lr.get(lr_family(name, spec), 0.0), run, s)
            params[name] = n_trainable(m)
            rows.append(score(m, cache["test"]))
        nll[name], em[name] = np.stack([r["nll"] for r in rows]), np.stack([r["em"] for r in rows])
    return {
        "lr": lr,
        "dev_nll": {f: dict(zip(t["grid"], t["scores"], strict=True)) for f, t in tuning.items()},
        "tuning": tuning,
        "edge_variants": [n for n, sp in specs.items() if tuning.get(lr_family(n, sp), {}).get("edge", False)],
        "params": params,
        "nll": nll,
        "em": em,
    }
