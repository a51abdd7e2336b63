"""PET: a penalty on the curvature of hidden-state trajectories along the sequence.

For hidden states h[t] (t = token position) the second-order difference

    d2[t] = h[t+1] - 2 h[t] + h[t-1]

is zero wherever the trajectory is locally linear in t. PET is the mean of ``|d2|^2`` (or a Huber penalty,
less dominated by a few sharp turns) over the valid positions: a triple (t-1, t, t+1) counts only when all three
tokens are real, so no difference ever spans padding. Its weight lambda follows a three-phase schedule:
warmup (0 -> max), main (held at max), anneal (max -> 0).

Explained in notebooks/02_alpha_annealing.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from so8t_core.config import DESIGN_SCHEDULE, check

KINDS = ("l2", "huber")


def second_difference(h: Tensor) -> Tensor:
    """h[:, t+1] - 2 h[:, t] + h[:, t-1] for t = 1..T-2.

    Args:
        h: (B, T, D) hidden states.
    Returns:
        (B, T - 2, D).
    """
    return h[:, 2:] - 2 * h[:, 1:-1] + h[:, :-2]


def valid_triples(attention_mask: Tensor) -> Tensor:
    """(B, T - 2) bool: positions whose three neighbours (t-1, t, t+1) are all real tokens."""
    m = attention_mask.bool()
    return m[:, 2:] & m[:, 1:-1] & m[:, :-2]


def pet_loss(h: Tensor, attention_mask: Tensor | None = None, kind: str = "l2", delta: float = 1.0) -> Tensor:
    """Mean curvature penalty of hidden states along the sequence.

    Args:
        h: (B, T, D) hidden states.
        attention_mask: (B, T) 1 for real tokens, 0 for padding (any side); None means all real.
        kind: "l2" (squared differences) or "huber" (smooth L1 with threshold ``delta``).
        delta: Huber threshold, > 0.
    Returns:
        Scalar: mean over valid positions and features; 0 (with grad) when no triple is valid.
    """
    check(kind in KINDS, "kind", kind, f"must be one of {KINDS}")
    check(delta > 0, "delta", delta, "must be > 0")
    check(h.dim() == 3, "h.shape", tuple(h.shape), "expected (B, T, D)")
    if h.shape[1] < 3:
        return h.sum() * 0.0
    d2 = second_difference(h)  # (B, T-2, D)
    pen = d2.pow(2) if kind == "l2" else F.huber_loss(d2, torch.zeros_like(d2), reduction="none", delta=delta)
    if attention_mask is None:
        return pen.mean()
    check(
        attention_mask.shape == h.shape[:2],
        "attention_mask.shape",
        tuple(attention_mask.shape),
        f"must equal h.shape[:2]={tuple(h.shape[:2])}",
    )
    valid = valid_triples(attention_mask).unsqueeze(-1).to(pen.dtype)  # (B, T-2, 1)
    n = valid.sum() * h.shape[-1]
    return (pen * valid).sum() / n.clamp_min(1.0)


@dataclass(frozen=True)
class PETSchedule:
    """lambda(step): 0 -> max_lambda over ``warmup``, held for ``main``, max_lambda -> 0 over ``anneal``, then 0.

    Explained in notebooks/02_alpha_annealing.ipynb.
    """

    max_lambda: float = DESIGN_SCHEDULE.pet_max_lambda
    warmup: int = DESIGN_SCHEDULE.pet_warmup
    main: int = DESIGN_SCHEDULE.pet_main
    anneal: int = DESIGN_SCHEDULE.pet_anneal

    def __post_init__(self) -> None:
        check(self.max_lambda >= 0, "max_lambda", self.max_lambda, "must be >= 0")
        for name in ("warmup", "main", "anneal"):
            check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")

    @property
    def total(self) -> int:
        return self.warmup + self.main + self.anneal

    def phase(self, step: int) -> str:
        """ "warmup", "main", "anneal" or "done"."""
        if step < self.warmup:
            return "warmup"
        if step < self.warmup + self.main:
            return "main"
        return "anneal" if step < self.total else "done"

    def __call__(self, step: int) -> float:
        phase = self.phase(step)
        if phase == "warmup":
            return self.max_lambda * step / self.warmup
        if phase == "main":
            return self.max_lambda
        if phase == "anneal":
            return self.max_lambda * (1 - (step - self.warmup - self.main) / self.anneal)
        return 0.0
