"""Figures more than one notebook draws: alpha with its phase bands."""

from __future__ import annotations

import math

from .alpha import GOLDEN_RATIO, GOLDEN_TOL, STABLE_MAX_WEIGHT

PHASE_COLORS = {"stable": "#d8e8f8", "transitioning": "#f8f0d8", "golden": "#f8d8d8"}


def stable_alpha_max() -> float:
    """Largest alpha still in the ``stable`` phase: logit(STABLE_MAX_WEIGHT)."""
    return math.log(STABLE_MAX_WEIGHT / (1 - STABLE_MAX_WEIGHT))


def phase_bands(ax, lo: float = -6.0, hi: float = 4.0, weight: bool = False) -> None:
    """Shade the stable / transitioning / golden bands on an axis whose y is alpha (or sigmoid(alpha)).

    Args:
        ax: a matplotlib Axes.
        lo, hi: the alpha range to cover.
        weight: True when the y axis shows sigmoid(alpha) instead of alpha.
    """
    sig = (lambda a: 1 / (1 + math.exp(-a))) if weight else (lambda a: a)
    s_max, g_lo, g_hi = stable_alpha_max(), GOLDEN_RATIO - GOLDEN_TOL, GOLDEN_RATIO + GOLDEN_TOL
    for a0, a1, phase in [(lo, s_max, "stable"), (s_max, g_lo, "transitioning"), (g_lo, g_hi, "golden"),
                          (g_hi, hi, "transitioning")]:
        ax.axhspan(sig(a0), sig(a1), color=PHASE_COLORS[phase], zorder=0,
                   label=phase if phase != "transitioning" or a0 == s_max else None)
