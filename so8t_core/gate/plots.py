"""Figures more than one notebook draws: alpha with its phase bands."""

from __future__ import annotations

import math

from so8t_core.config import GOLDEN_RATIO
from so8t_core.gate.alpha import GOLDEN_TOL, STABLE_MAX_WEIGHT

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
    for a0, a1, phase in [
        (lo, s_max, "stable"),
        (s_max, g_lo, "transitioning"),
        (g_lo, g_hi, "golden"),
        (g_hi, hi, "transitioning"),
    ]:
        ax.axhspan(
            sig(a0),
            sig(a1),
            color=PHASE_COLORS[phase],
            zorder=0,
            label=phase if phase != "transitioning" or a0 == s_max else None,
        )


def plot_soul_timeline(timeline: list[dict]):
    """The phase-transition report of a soul run: alpha with phase bands, loss parts, orthogonality, angles.

    Args:
        timeline: records from ``so8t_core.lm.inject.inject`` / ``read_timeline``.
    Returns:
        A matplotlib Figure with four panels.
    """
    import matplotlib.pyplot as plt

    step = [r["step"] for r in timeline]
    col = lambda k: [r[k] for r in timeline]
    fig, ax = plt.subplots(2, 2, figsize=(13, 7), sharex=True)
    a = ax[0, 0]
    phase_bands(a, min(col("alpha")) - 0.5, max(col("alpha")) + 0.8)
    a.plot(step, col("alpha"), "k", label="alpha")
    a2 = a.twinx()
    a2.plot(step, col("sigmoid_alpha"), "C1", label="sigmoid(alpha)")
    a.set_ylabel("alpha"), a2.set_ylabel("sigmoid(alpha)"), a.legend(loc="upper left"), a2.legend(loc="lower right")
    for k in ("lm_loss", "pet_loss", "ortho_loss"):
        ax[0, 1].semilogy(step, [max(v, 1e-16) for v in col(k)], label=k)
    ax[0, 1].plot(step, col("pet_lambda"), "k:", label="PET lambda")
    ax[0, 1].legend(), ax[0, 1].set_title("loss parts")
    ax[1, 0].semilogy(step, [max(v, 1e-16) for v in col("orth_error")], label="max |R^T R - I|")
    ax[1, 0].semilogy(step, [max(v, 1e-16) for v in col("commutator")], label="||[R_cmd, R_safe]||_F")
    ax[1, 0].legend(), ax[1, 0].set_xlabel("step")
    for name in ("r_safe", "r_cmd", "r_total"):
        ax[1, 1].plot(step, col(f"{name}_angle_mean"), label=f"{name} mean angle")
    ax[1, 1].plot(step, col("r_total_angle_max"), "k--", lw=0.8, label="r_total max angle")
    ax[1, 1].set_ylabel("eigen-angle (rad)"), ax[1, 1].legend(), ax[1, 1].set_xlabel("step")
    fig.tight_layout()
    return fig
