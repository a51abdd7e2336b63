"""The soul's three pillars: safety, task and dual (refuse / escalate) heads read the pooled *mixed* state
``h + sigmoid(alpha) R h`` and train jointly with the LM loss, ``LM + lam * (safety + task + dual)``.

Families at matched trainable parameters, all on the same frozen body and the same heads:

==============  ==================================================================================================
family          what trains besides the heads
==============  ==================================================================================================
soul            R_cmd and R_safe (the soul); every loss reaches both factors
soul_routed     the soul with routed gradients: R_safe learns only from the safety and dual losses, R_cmd only
                from the LM and task losses (the one way the two factors can come to mean different things)
lora            peft LoRA on ``o_proj`` (rank chosen so the count is close to the soul's), no gate
oft             peft OFT (8-wide blocks, like the soul's) on ``o_proj`` of the last layers, no gate
==============  ==================================================================================================

Routing keeps the forward values: ``R_cmd @ sg(R_safe)`` and ``sg(R_cmd) @ R_safe`` are the same matrix, only the
gradients differ (``sg`` = stop-gradient).

Pooling is a masked mean and the gate is linear per token, so pooling the mixed state equals mixing the pooled
state: a head ``W`` on standardised mixed features becomes ``W diag(1/sigma) (I + sR)`` on the plain hidden state
(``fuse_heads``), exactly the move notebook 04 makes for ``lm_head``.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from so8t_core.batching import encode_prompts, masked_mean, pool_prompts
from so8t_core.config import SafetyEvalStageConfig, check, stage_fields
from so8t_core.gate.rotation import commutator_norm, eigen_angles
from so8t_core.gate.soul import SoulConfig, SoulWrapper, causal_lm_loss, mix
from so8t_core.safety.heads import TASKS, SafetyHeads
from so8t_core.safety.labels import LABELS, LabeledSet

FAMILIES = ("soul", "soul_routed", "lora", "oft")


@dataclass(frozen=True)
class PillarSettings:
    """How every family trains (the same for all, so only the adapter differs).

    Every field is a knob of notebook 06 (``SafetyEvalStageConfig``, which documents them and holds their
    defaults): build it with ``PillarSettings.from_stage(cfg)``.
    """

    steps: int
    batch_size: int
    lr: float  # LoRA / OFT
    soul_lr: float
    head_lr: float
    lam: float  # weight of the head losses against the LM loss
    alpha: float  # fixed gate logit: sigmoid(0) = 0.5
    max_length: int  # tokens kept per prompt, as the server cuts them
    batch_eval: int

    @classmethod
    def from_stage(cls, cfg: SafetyEvalStageConfig) -> PillarSettings:
        """The families' training settings of notebook 06.

        Args:
            cfg: notebook 06's config.
        Returns:
            The ``PillarSettings``.
        """
        return cls(**stage_fields(cls, cfg))

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "lr", "soul_lr", "head_lr", "max_length", "batch_eval"):
            check(getattr(self, name) > 0, name, getattr(self, name), "must be > 0")
        check(self.lam >= 0, "lam", self.lam, "must be >= 0")


# --- tensors ---------------------------------------------------------------------------------------------
def mixed_views(wrapper: SoulWrapper, h: Tensor, routed: bool) -> tuple[Tensor, Tensor]:
    """The mixed state as the LM/task losses see it and as the safety/dual losses see it (equal values).

    Routed: ``R_cmd @ sg(R_safe)`` for LM/task, ``sg(R_cmd) @ R_safe`` for safety/dual. Without a gate both are h.
    """
    h = h.float()
    if not wrapper.use_gate:
        return h, h
    s = wrapper.alpha.weight
    Rc, Rs = wrapper.rotation.r_cmd.matrices(), wrapper.rotation.r_safe.matrices()  # (blocks, 8, 8) each
    if not routed:
        m = mix(h, Rc @ Rs, s)
        return m, m
    return mix(h, Rc @ Rs.detach(), s), mix(h, Rc.detach() @ Rs, s)


def head_loss(out: dict[str, Tensor], task_logits: Tensor, y: dict[str, Tensor]) -> Tensor:
    """CE(safety) + CE(task) + BCE(refuse) + BCE(escalate): the loss of ``heads.train_heads``."""
    return (
        F.cross_entropy(out["safety"], y["refuse"].long())
        + F.cross_entropy(task_logits, y["task"])
        + F.binary_cross_entropy_with_logits(out["refuse"], y["refuse"])
        + F.binary_cross_entropy_with_logits(out["escalate"], y["escalate"])
    )


def targets(data: LabeledSet) -> dict[str, Tensor]:
    """Head targets of a labelled set with a ``task`` column."""
    bad = sorted({str(e.get("task")) for e in data.extra if e.get("task") not in TASKS})
    check(not bad, "task", bad, f"every row needs a task in {TASKS}")
    return {
        "refuse": torch.tensor([lab == "REFUSE" for lab in data.labels], dtype=torch.float32),
        "escalate": torch.tensor([lab != "ALLOW" for lab in data.labels], dtype=torch.float32),
        "task": torch.tensor([TASKS.index(e["task"]) for e in data.extra]),
    }


# --- families --------------------------------------------------------------------------------------------
def soul_size(hidden_size: int) -> int:
    """Trainable numbers of the soul with a fixed gate: two so(8) generators (28 each) per 8-wide block."""
    return 2 * (hidden_size // 8) * 28


def build_family(model: nn.Module, family: str, settings: PillarSettings) -> SoulWrapper:
    """A copy of ``model`` (frozen) with the family's trainable part, wrapped so every family shares one code path.

    Args:
        model: a transformers causal LM (left untouched; the family gets a deep copy).
        family: one of ``FAMILIES``.
        settings: gate logit.
    Returns:
        A ``SoulWrapper`` (``use_gate=False`` for LoRA and OFT) whose trainable parameters are the family's.
    """
    check(family in FAMILIES, "family", family, f"must be one of {FAMILIES}")
    body = copy.deepcopy(model).float()
    for p in body.parameters():
        p.requires_grad_(False)
    H, L = int(body.config.hidden_size), int(body.config.num_hidden_layers)
    target = soul_size(H)
    if family == "lora":
        from peft import LoraConfig, get_peft_model

        r = max(1, round(target / (L * 2 * H)))  # o_proj is H x H: r (H + H) numbers per layer
        body = get_peft_model(body, LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=["o_proj"]))
    elif family == "oft":
        from peft import OFTConfig, get_peft_model

        per_layer = (H // 8) * 28  # one 8x8 skew block per 8 inputs of o_proj
        n = min(L, max(1, round(target / per_layer)))
        layers = list(range(L - n, L))
        cfg = OFTConfig(r=0, oft_block_size=8, target_modules=["o_proj"], layers_to_transform=layers)
        body = get_peft_model(body, cfg)
    soul = SoulConfig(hidden_size=H, alpha_mode="fixed", alpha_start=settings.alpha, pet_max_lambda=0.0)
    wrapper = SoulWrapper.build(body, soul, use_gate=family.startswith("soul"))
    if not wrapper.use_gate:
        for p in wrapper.rotation.parameters():
            p.requires_grad_(False)
    return wrapper


def trainable_count(wrapper: SoulWrapper) -> int:
    """Trainable numbers besides the heads: the soul's generators or the adapter's weights."""
    return sum(p.numel() for p in wrapper.parameters() if p.requires_grad)


# --- training --------------------------------------------------------------------------------------------
@torch.no_grad()
def pooled_states(wrapper: SoulWrapper, tokenizer: Any, prompts: Sequence[str], settings: PillarSettings) -> Tensor:
    """Masked mean of the final (post-norm) hidden state h, (N, H) float32; the gate is *not* applied.

    The same ``lm.batching.pool_prompts`` as ``heads.pooled_hidden_states`` (the server's and the CLI's feature).
    """

    def states(ids: Tensor, mask: Tensor) -> list[Tensor]:
        return [wrapper.hidden(ids, mask)]  # (B, T, H)

    H = wrapper.rotation.hidden_size
    return pool_prompts(wrapper, states, tokenizer, prompts, H, settings.batch_eval, settings.max_length)


@torch.no_grad()
def mix_pooled(wrapper: SoulWrapper, pooled: Tensor) -> Tensor:
    """The gate applied to pooled states (equal to pooling the mixed states: both maps are linear)."""
    return mixed_views(wrapper, pooled, routed=False)[0]


def train_pillars(
    wrapper: SoulWrapper,
    tokenizer: Any,
    train: LabeledSet,
    settings: PillarSettings,
    routed: bool = False,
    seed: int = 0,
    init_pooled: Tensor | None = None,
    tokens: tuple[Tensor, Tensor] | None = None,
) -> tuple[SafetyHeads, list[dict[str, float]]]:
    """Train the family's part and fresh heads jointly: ``LM + lam * (safety + task + dual)`` on train prompts.

    The LM loss is next-token cross entropy on the prompts themselves through the gate (``lm_head(mixed)``);
    the heads' standardisation is fixed from the untrained model's pooled mixed states.

    Args:
        wrapper: from ``build_family`` (modified in place).
        tokenizer: its tokenizer.
        train: generated train prompts with a ``task`` column.
        settings: ``PillarSettings``.
        routed: route the soul's gradients (``soul_routed``).
        seed: heads init and batch order.
        init_pooled: pooled h of train prompts under the untrained family (for the standardisation; every
            family starts as the identity on the body, so the frozen model's features serve); default: pooled here.
        tokens: ``batching.encode_prompts(tokenizer, train.prompts, settings.max_length)`` if already done.
    Returns:
        ``(heads, timeline)``; timeline rows hold the step's ``lm`` and ``heads`` losses.
    """
    torch.manual_seed(seed)
    ids, mask = tokens if tokens is not None else encode_prompts(tokenizer, train.prompts, settings.max_length)
    y = targets(train)
    pooled = (
        init_pooled if init_pooled is not None else pooled_states(wrapper, tokenizer, train.prompts[:512], settings)
    )
    feats = mix_pooled(wrapper, pooled)
    heads = SafetyHeads(feats.shape[1])
    heads.mu.copy_(feats.mean(0))
    heads.sigma.copy_(feats.std(0, unbiased=False).clamp_min(1e-6))
    soul = [p for p in wrapper.rotation.parameters() if p.requires_grad]
    soul_ids = {id(p) for p in soul}
    adapter = [p for p in wrapper.parameters() if p.requires_grad and id(p) not in soul_ids]
    groups = [{"params": list(heads.parameters()), "lr": settings.head_lr}]
    groups += [{"params": g, "lr": lr} for g, lr in ((soul, settings.soul_lr), (adapter, settings.lr)) if g]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    head_out = _lm_head(wrapper)
    wrapper.train()
    timeline = []
    for step in range(settings.steps):
        idx = torch.randint(len(ids), (settings.batch_size,), generator=gen)
        T = int(mask[idx].sum(1).max())
        b_ids, b_mask = ids[idx, :T], mask[idx, :T]  # (B, T) trimmed to the longest prompt in the batch
        m_lm, m_safe = mixed_views(wrapper, wrapper.hidden(b_ids, b_mask), routed)
        lm = causal_lm_loss(head_out(m_lm), b_ids.masked_fill(b_mask == 0, -100))
        task_logits = heads(masked_mean(m_lm, b_mask))["task"]
        hl = head_loss(heads(masked_mean(m_safe, b_mask)), task_logits, {k: v[idx] for k, v in y.items()})
        loss = lm + settings.lam * hl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        timeline.append({"step": step, "lm": lm.item(), "heads": hl.item()})
    wrapper.eval()
    return heads.eval(), timeline


def _lm_head(wrapper: SoulWrapper) -> nn.Module:
    lm = wrapper.model.get_base_model() if hasattr(wrapper.model, "get_base_model") else wrapper.model
    return lm.get_output_embeddings()


@torch.no_grad()
def pillar_probs(wrapper: SoulWrapper, heads: SafetyHeads, pooled: Tensor) -> dict[str, np.ndarray]:
    """Head probabilities on the mixed pooled states of ``pooled`` (N, H)."""
    return {k: v.numpy() for k, v in heads.probs(mix_pooled(wrapper, pooled)).items()}


# --- fusion ----------------------------------------------------------------------------------------------
@torch.no_grad()
def gate_matrix(wrapper: SoulWrapper) -> Tensor:
    """(H, H) float64 ``I + sigmoid(alpha) R_total`` (the identity without a gate).

    Built by passing the identity's rows through ``mix`` (row k becomes column k of the gate), so the fused heads
    follow the gate's one definition.
    """
    H = wrapper.rotation.hidden_size
    if not wrapper.use_gate:
        return torch.eye(H, dtype=torch.float64)
    return mix_matrix(wrapper.rotation.matrices(), wrapper.alpha.weight, H)


@torch.no_grad()
def mix_matrix(R: Tensor, s: Tensor | float, hidden_size: int) -> Tensor:
    """(H, H) float64 matrix of the gate ``h -> h + s R h`` (``soul.mix``), R (blocks, 8, 8) the rotation blocks."""
    eye = torch.eye(hidden_size, dtype=torch.float64)
    return mix(eye, R.double(), torch.as_tensor(s, dtype=torch.float64)).T  # (H, H): row k of mix(I) is column k


@torch.no_grad()
def fuse_heads(heads: SafetyHeads, M: Tensor) -> SafetyHeads:
    """Heads on the plain hidden state h that equal ``heads`` on the mixed state ``M h``.

    ``W z + b`` with ``z = (M h - mu) / sigma`` is ``(W diag(1/sigma) M) h + (b - W diag(1/sigma) mu)``; the fused
    heads keep ``mu = 0`` and ``sigma = 1``. Computed in float64, stored in float32.

    Args:
        heads: heads trained on mixed states.
        M: (H, H) gate matrix from ``gate_matrix``.
    Returns:
        New ``SafetyHeads`` in eval mode.
    """
    H = heads.hidden_size
    check(tuple(M.shape) == (H, H), "M.shape", tuple(M.shape), f"needs ({H}, {H})")
    mu, inv_sigma = heads.mu.double(), 1.0 / heads.sigma.double()
    fused = SafetyHeads(H, heads.n_tasks)
    for name in ("safety", "task", "refuse", "escalate"):
        src, dst = getattr(heads, name), getattr(fused, name)
        Ws = src.weight.double() * inv_sigma  # (out, H): W diag(1/sigma)
        dst.weight.copy_((Ws @ M.double()).float())
        dst.bias.copy_((src.bias.double() - Ws @ mu).float())
    return fused.eval()


# --- what the two factors mean ---------------------------------------------------------------------------
@torch.no_grad()
def factor_report(wrapper: SoulWrapper, heads: SafetyHeads, pooled: Tensor, labels: Sequence[str]) -> dict[str, Any]:
    """Angle spectra of R_safe and R_cmd, their commutator, and the refuse head's dev margin under each factor.

    Margin = mean refuse logit on gold REFUSE minus mean on the rest, with the gate using R_cmd @ R_safe (both),
    R_safe only, R_cmd only, or no rotation (h + s h): how much of the head's separation each factor carries.

    Returns:
        ``{"angles_safe", "angles_cmd"}`` (sorted, all blocks), ``commutator``, ``margins`` per variant.
    """
    check(wrapper.use_gate, "wrapper", "no gate", "only a soul has factors")
    y = torch.tensor([lab == "REFUSE" for lab in labels])
    check(bool(y.any()) and not bool(y.all()), "labels", int(y.sum()), "need REFUSE and other prompts")
    s = wrapper.alpha.weight
    Rc, Rs = wrapper.rotation.r_cmd.matrices(), wrapper.rotation.r_safe.matrices()
    eye = torch.eye(8).expand_as(Rc)
    margins = {}
    for name, R in (("both", Rc @ Rs), ("safe_only", Rs), ("cmd_only", Rc), ("none", eye)):
        logit = heads(mix(pooled, R, s))["refuse"]
        margins[name] = float(logit[y].mean() - logit[~y].mean())
    return {
        "angles_safe": sorted(eigen_angles(Rs).flatten().tolist()),
        "angles_cmd": sorted(eigen_angles(Rc).flatten().tolist()),
        "commutator": float(commutator_norm(Rc, Rs)),
        "margins": margins,
    }


__all__ = ["FAMILIES", "LABELS", "PillarSettings", "build_family", "fuse_heads", "gate_matrix", "train_pillars"]
