"""Safety heads on a real model's frozen pooled states: the probe, the soul + pillars, the routed soul.

A real model (``lm.real_models``: SmolLM2-135M-Instruct, Gemma 3 270M) is too slow on two cores to train inside,
so its pooled prompt states are computed once per layer (``lm.feature_cache``) and every family trains on them:

==============  ==================================================================================================
family          what reads the pooled state h (N, H)
==============  ==================================================================================================
probe           the four pillar heads on h (standardised)
soul            the heads on the mixed state ``h + sigmoid(alpha) R h``, R = R_cmd R_safe (block SO(8)), trained
                jointly with the heads on the pillar losses
soul_routed     the same, R_safe learning only from the safety and dual losses and R_cmd only from the task loss
==============  ==================================================================================================

The gate is linear and pooling is a mean, so pooling the mixed states equals mixing the pooled state, and the
trained soul folds into heads on h (``pillars.fuse_heads``): what the served decision reads.

Every family trains with one recipe (``Recipe``: minibatch AdamW, the same steps, batch and weight decay, the state
with the lowest dev loss kept); only the learning rate is tuned per family on dev (``stats.choose_interior``).

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from so8t_core.config import check, stage_cores
from so8t_core.gate.rotation import ComposedSO8Rotation
from so8t_core.gate.soul import mix
from so8t_core.lm.feature_cache import cached, digest, model_fingerprint
from so8t_core.safety.heads import SafetyHeads, pooled_hidden_states
from so8t_core.safety.labels import LabeledSet
from so8t_core.safety.pillars import head_loss, mix_matrix, targets
from so8t_core.stats import choose_interior

REAL_FAMILIES = ("probe", "soul", "soul_routed")
POOLED_KIND = "pooled"


def model_folder(name: str | Path) -> Path:
    """The folder of a real model's name (``lm.real_models``), or ``name`` itself when it is a folder."""
    from so8t_core.lm.loading import is_real_model
    from so8t_core.lm.real_models import real_model_dir

    return real_model_dir(str(name)) if is_real_model(name) else Path(name)


def layer_indices(n_layers: int, fractions: Sequence[float]) -> list[int]:
    """Indices into ``hidden_states`` (0 = embeddings, ``n_layers`` = after the final norm) at fractions of depth.

    Args:
        n_layers: the model's ``num_hidden_layers``.
        fractions: in (0, 1]; 0.5 is the middle layer, 1.0 the last.
    Returns:
        Sorted distinct indices in ``[1, n_layers]``.
    """
    check(len(fractions) > 0 and all(0 < f <= 1 for f in fractions), "fractions", list(fractions), "need (0, 1]")
    return sorted({min(n_layers, max(1, round(f * n_layers))) for f in fractions})


@dataclass
class RealFeatures:
    """Pooled states of one model: ``feats[split][layer]`` (N, H) float32, and what they were taken with."""

    name: str
    fingerprint: str
    layers: list[int]
    max_length: int
    feats: dict[str, dict[int, Tensor]]
    hits: dict[str, bool]


def real_features(
    name: str | Path,
    splits: Mapping[str, LabeledSet],
    fractions: Sequence[float],
    max_length: int,
    batch_size: int = 16,
    root: str | Path | None = None,
) -> RealFeatures:
    """Masked-mean pooled states (``heads.pooled_hidden_states``) of every split at a few layers, cached on disk.

    The model is loaded by name only when some split is not cached, and freed before returning (two real models
    never share the memory).

    Args:
        name: a real model's name or a model folder.
        splits: split -> prompts.
        fractions: layer depths (``layer_indices``).
        max_length: tokens kept per prompt.
        batch_size: prompts per forward pass.
        root: feature cache folder (default ``feature_cache.cache_dir()``).
    Returns:
        ``RealFeatures``; ``hits[split]`` says whether it came from the cache.
    """
    from transformers import AutoConfig

    folder = model_folder(name)
    fp = model_fingerprint(folder)
    layers = layer_indices(int(AutoConfig.from_pretrained(folder).num_hidden_layers), fractions)
    loaded: dict[str, Any] = {}

    def compute(prompts: Sequence[str]) -> Callable[[], dict[str, Tensor]]:
        def run() -> dict[str, Tensor]:
            if not loaded:
                from so8t_core.lm.loading import load_model_and_tokenizer

                loaded["model"], loaded["tok"] = load_model_and_tokenizer(str(name), dtype=torch.float32)
            # a real model's forward pass is large enough to use every core the stage may use, whatever it pinned
            # for the tiny model's many small steps (where a second thread costs more than it brings); beside other
            # stages the pipeline says how many that is (more threads than cores would stall both stages)
            pinned = torch.get_num_threads()
            torch.set_num_threads(stage_cores() or pinned)
            try:
                x = pooled_hidden_states(loaded["model"], loaded["tok"], prompts, batch_size, max_length, layers)
            finally:
                torch.set_num_threads(pinned)
            return {str(L): t for L, t in zip(layers, x.chunk(len(layers), dim=1))}  # (N, H) per layer

        return run

    feats, hits = {}, {}
    try:
        for split, data in splits.items():
            key = {"model": fp, "prompts": digest(list(data.prompts)), "layers": layers, "max_length": max_length}
            got, hits[split] = cached(POOLED_KIND, key | {"pooling": "masked_mean"}, compute(data.prompts), root)
            feats[split] = {L: got[str(L)].float() for L in layers}
    finally:
        loaded.clear()
        gc.collect()
    return RealFeatures(str(name), fp, layers, max_length, feats, hits)


# --- the families ----------------------------------------------------------------------------------------
class GatedHeads(nn.Module):
    """The pillar heads on ``h`` (``gate=False``: the probe) or on the mixed state ``h + s R_cmd R_safe h``.

    Args:
        hidden_size: H (a multiple of 8 with a gate).
        gate: whether the soul's rotation mixes h before the heads.
        alpha: the fixed gate logit; ``s = sigmoid(alpha)``.
        routed: gradients routed (R_safe from safety/dual, R_cmd from task); the forward values are unchanged.
    """

    def __init__(self, hidden_size: int, gate: bool, alpha: float = 0.0, routed: bool = False) -> None:
        super().__init__()
        self.heads = SafetyHeads(hidden_size)
        self.rotation = ComposedSO8Rotation(hidden_size) if gate else None
        self.s, self.routed = float(torch.sigmoid(torch.tensor(alpha))), routed

    def views(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """(task view, safety view) of the mixed state, equal in value; h itself without a gate."""
        if self.rotation is None:
            return h, h
        Rc, Rs = self.rotation.r_cmd.matrices(), self.rotation.r_safe.matrices()  # (blocks, 8, 8) each
        if not self.routed:
            m = mix(h, Rc @ Rs, self.s)
            return m, m
        return mix(h, Rc @ Rs.detach(), self.s), mix(h, Rc.detach() @ Rs, self.s)

    def loss(self, h: Tensor, y: Mapping[str, Tensor]) -> Tensor:
        """The pillar loss (``pillars.head_loss``): task from the task view, the rest from the safety view."""
        m_task, m_safe = self.views(h)
        return head_loss(self.heads(m_safe), self.heads(m_task)["task"], dict(y))

    @torch.no_grad()
    def probs(self, h: Tensor) -> dict[str, np.ndarray]:
        """Head probabilities on the (mixed) pooled states (N, H)."""
        return {k: v.numpy() for k, v in self.heads.probs(self.views(h)[1]).items()}

    @torch.no_grad()
    def fused(self) -> SafetyHeads:
        """Heads on the plain h equal to these on the mixed state (``pillars.fuse_heads``)."""
        from so8t_core.safety.pillars import fuse_heads

        H = self.heads.hidden_size
        R = self.rotation.matrices() if self.rotation is not None else torch.eye(8).expand(H // 8, 8, 8)
        s = self.s if self.rotation is not None else 0.0
        return fuse_heads(self.heads, mix_matrix(R, s, H))


@dataclass(frozen=True)
class Recipe:
    """How every family trains: ``steps`` AdamW minibatch steps of ``batch_size`` with ``weight_decay``; the dev
    loss is read every ``eval_every`` steps and the state with the lowest kept (early stopping on dev)."""

    steps: int = 300
    batch_size: int = 64
    weight_decay: float = 1e-2
    eval_every: int = 25
    alpha: float = 0.0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every"):
            check(getattr(self, name) > 0, name, getattr(self, name), "must be > 0")
        check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "must be >= 0")


@dataclass
class RealRun:
    """One family trained with one seed at one learning rate: the module, its best dev loss and the curve."""

    family: str
    seed: int
    lr: float
    module: GatedHeads
    dev_loss: float
    best_step: int
    curve: list[dict[str, float]] = field(default_factory=list)


def train_family(
    family: str,
    x: Mapping[str, Tensor],
    data: Mapping[str, LabeledSet],
    lr: float,
    seed: int,
    recipe: Recipe,
) -> RealRun:
    """Train one family on frozen pooled states with the shared recipe.

    Args:
        family: one of ``REAL_FAMILIES``.
        x: ``{"train", "dev"}`` pooled states (N, H).
        data: the same splits' labelled sets (with a ``task`` column).
        lr: AdamW learning rate of every trainable number of the family.
        seed: initialisation and minibatch order.
        recipe: the shared recipe.
    Returns:
        The ``RealRun`` holding the state with the lowest dev loss.
    """
    check(family in REAL_FAMILIES, "family", family, f"must be one of {REAL_FAMILIES}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = GatedHeads(x["train"].shape[1], family != "probe", recipe.alpha, family == "soul_routed")
    ys = {s: targets(data[s]) for s in ("train", "dev")}
    with torch.no_grad():  # standardise what the heads read at the start (the gate starts as 1 + s)
        z = module.views(x["train"].float())[1]
        module.heads.mu.copy_(z.mean(0))
        module.heads.sigma.copy_(z.std(0, unbiased=False).clamp_min(1e-6))
    opt = torch.optim.AdamW(
        [p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=recipe.weight_decay
    )
    gen = torch.Generator().manual_seed(seed)
    best, best_step, best_state, curve = float("inf"), 0, copy.deepcopy(module.state_dict()), []
    n = len(x["train"])
    for step in range(1, recipe.steps + 1):
        idx = torch.randint(n, (min(recipe.batch_size, n),), generator=gen)
        loss = module.loss(x["train"][idx], {k: v[idx] for k, v in ys["train"].items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % recipe.eval_every == 0 or step == recipe.steps:
            with torch.no_grad():
                dev = float(module.loss(x["dev"], ys["dev"]))
            curve.append({"step": step, "train": float(loss.detach()), "dev": dev})
            if dev < best:
                best, best_step, best_state = dev, step, copy.deepcopy(module.state_dict())
    module.load_state_dict(best_state)
    return RealRun(family, seed, lr, module.eval(), best, best_step, curve)


def tune_and_train(
    family: str,
    x: Mapping[str, Tensor],
    data: Mapping[str, LabeledSet],
    grid: Sequence[float],
    seeds: Sequence[int],
    recipe: Recipe,
) -> tuple[dict[str, Any], list[RealRun]]:
    """The learning rate chosen on dev (seed ``seeds[0]``'s best dev loss, grid extended until interior), then
    one run per seed at that rate.

    Returns:
        ``(choice, runs)``: ``stats.choose_interior``'s record (``edge`` True: excluded from verdicts) and the runs.
    """
    tried: dict[float, RealRun] = {}

    def dev_loss(lr: float) -> float:
        tried[lr] = train_family(family, x, data, lr, seeds[0], recipe)
        return tried[lr].dev_loss

    choice = choose_interior(grid, dev_loss, minimize=True, limits=(0.0, 1.0))
    lr = float(choice["choice"])
    runs = [tried[lr]] + [train_family(family, x, data, lr, s, recipe) for s in seeds[1:]]
    return choice, runs


@dataclass
class RealModelHeads:
    """Every family on one real model: the layer chosen on dev, each family's learning-rate choice and runs."""

    name: str
    layer: int
    layer_dev_loss: dict[int, float]
    tuning: dict[str, dict[str, Any]]
    runs: dict[str, list[RealRun]]
    x: dict[str, Tensor]  # split -> pooled states at ``layer``


def heads_on_model(
    feats: RealFeatures,
    data: Mapping[str, LabeledSet],
    grid: Sequence[float],
    seeds: Sequence[int],
    recipe: Recipe,
    families: Sequence[str] = REAL_FAMILIES,
) -> RealModelHeads:
    """Choose the layer on dev (the tuned probe's lowest dev loss), then tune and train every family there."""
    check(len(seeds) > 0, "seeds", list(seeds), "need at least one")
    by_layer = {}
    for L in feats.layers:
        x = {s: feats.feats[s][L] for s in ("train", "dev")}
        by_layer[L] = tune_and_train("probe", x, data, grid, seeds[:1], recipe)
    layer = min(by_layer, key=lambda L: by_layer[L][1][0].dev_loss)
    x = {s: feats.feats[s][layer] for s in ("train", "dev")}
    tuning, runs = {}, {}
    for fam in families:
        tuning[fam], runs[fam] = tune_and_train(fam, x, data, grid, seeds, recipe)
    return RealModelHeads(
        feats.name,
        layer,
        {L: r[1][0].dev_loss for L, r in by_layer.items()},
        tuning,
        runs,
        {s: feats.feats[s][layer] for s in feats.feats},
    )
