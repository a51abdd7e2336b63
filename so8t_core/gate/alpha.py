"""The alpha gate: ``mixed = h + sigmoid(alpha) * R h`` (computed by ``soul.mix``), its schedules and phases.

alpha is a single scalar. The original design anneals it linearly from -5.0 (gate nearly shut,
sigmoid = 0.0067) toward the golden ratio 1.618 (sigmoid = 0.835) after a warmup, and names three phases.
Here the phases are defined by what the gate does, so they can be checked:

- ``stable``: sigmoid(alpha) <= STABLE_MAX_WEIGHT (0.05): the rotated path adds under 5 % of R h, the model
  is essentially the base model (alpha <= -2.944).
- ``golden``: |alpha - GOLDEN_RATIO| <= GOLDEN_TOL (0.05): at the design's target.
- ``transitioning``: anywhere else (including past the target, which a learned alpha can reach).

Whether 1.618 is a good target is a hypothesis the notebooks measure, not a fact this module assumes.
Explained in notebooks/02_alpha_annealing.ipynb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from so8t_core.config import DESIGN_SCHEDULE, GOLDEN_RATIO, check

STABLE_MAX_WEIGHT = 0.05
GOLDEN_TOL = 0.05
PHASES = ("stable", "transitioning", "golden")
MODES = ("fixed", "scheduled", "learned")


def phase_status(alpha: float) -> str:
    """``"stable"``, ``"transitioning"`` or ``"golden"`` for a value of alpha (see the module docstring)."""
    alpha = float(alpha)
    check(math.isfinite(alpha), "alpha", alpha, "must be finite")
    if abs(alpha - GOLDEN_RATIO) <= GOLDEN_TOL:
        return "golden"
    if 1 / (1 + math.exp(-alpha)) <= STABLE_MAX_WEIGHT:
        return "stable"
    return "transitioning"


@dataclass(frozen=True)
class LinearSchedule:
    """alpha = start for ``warmup`` steps, then linear to ``target`` over ``anneal`` steps, then held.

    The original design's schedule: start -5.0, target 1.618, warmup 50, anneal 400.
    """

    start: float = DESIGN_SCHEDULE.alpha_start
    target: float = DESIGN_SCHEDULE.alpha_target
    warmup: int = DESIGN_SCHEDULE.alpha_warmup
    anneal: int = DESIGN_SCHEDULE.alpha_anneal

    def __post_init__(self) -> None:
        check(self.warmup >= 0, "warmup", self.warmup, "must be >= 0")
        check(self.anneal > 0, "anneal", self.anneal, "must be > 0")

    def __call__(self, step: int) -> float:
        frac = min(max((step - self.warmup) / self.anneal, 0.0), 1.0)
        return self.start + frac * (self.target - self.start)


@dataclass(frozen=True)
class SigmoidSchedule:
    """A smooth S-curve from ``start`` to ``target`` centred on ``midpoint`` with time scale ``width`` steps.

    Rescaled so that step 0 gives exactly ``start`` and the curve tends to ``target``.
    """

    start: float = -5.0
    target: float = GOLDEN_RATIO
    midpoint: int = 250
    width: float = 50.0

    def __post_init__(self) -> None:
        check(self.width > 0, "width", self.width, "must be > 0")
        check(self.midpoint >= 0, "midpoint", self.midpoint, "must be >= 0")

    def __call__(self, step: int) -> float:
        s = lambda t: 1 / (1 + math.exp(-(t - self.midpoint) / self.width))
        frac = (s(step) - s(0)) / (1 - s(0))
        return self.start + frac * (self.target - self.start)


class AlphaGate(nn.Module):
    """The gate's alpha: its value, schedule and phase; ``weight`` = sigmoid(alpha) is the ``s`` of ``soul.mix``.

    Args:
        mode: "fixed" (alpha stays at ``init``), "scheduled" (alpha follows ``schedule`` via ``set_step``)
            or "learned" (alpha is a trainable parameter starting at ``init``).
        init: starting alpha (defaults to the schedule's start, else -5.0).
        schedule: a callable step -> alpha, required for mode "scheduled".

    Explained in notebooks/02_alpha_annealing.ipynb.
    """

    def __init__(self, mode: str = "scheduled", init: float | None = None, schedule=None) -> None:
        super().__init__()
        check(mode in MODES, "mode", mode, f"must be one of {MODES}")
        check(mode != "scheduled" or schedule is not None, "schedule", schedule, "needed when mode='scheduled'")
        if init is None:
            init = schedule(0) if schedule is not None else -5.0
        self.mode, self.schedule = mode, schedule
        self.alpha = nn.Parameter(torch.tensor(float(init)), requires_grad=(mode == "learned"))

    def set_step(self, step: int) -> None:
        """Move a scheduled alpha to its value at ``step`` (no-op for fixed and learned)."""
        if self.mode == "scheduled":
            with torch.no_grad():
                self.alpha.fill_(self.schedule(step))

    @property
    def weight(self) -> Tensor:
        """sigmoid(alpha), the share of R h added to h."""
        return torch.sigmoid(self.alpha)

    def phase(self) -> str:
        return phase_status(self.alpha.item())

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, alpha={self.alpha.item():.4f}"
