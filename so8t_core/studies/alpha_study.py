"""Notebook 02's experiment over seeds: learned against scheduled alpha on each teacher, tested by the crossed
bootstrap (seeds x held-out inputs), Holm over the declared family, and the verdicts and conclusion from it.

A seed is one replicate of a training run: the student's initial rotation and its stream of training inputs. The
teacher (the task) and the held-out inputs the runs are scored on are the same for every seed, so the held-out
inputs are the shared items of ``stats.crossed_test`` and one draw of them applies to every seed.

Explained in notebooks/02_alpha_annealing.ipynb.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from so8t_core.gate.alpha import LinearSchedule
from so8t_core.stats import ALPHA, crossed_test, holm, significant
from so8t_core.studies.gate_studies import MODES_2, TEACHERS, alpha_experiment
from so8t_core.verdicts import need

# The declared primary family: on each teacher, learned alpha minus scheduled alpha (held-out relative MSE).
PRIMARY = tuple(f"learned - scheduled, teacher {t}" for t in TEACHERS)
MIN_EFFECT = 0.01  # relative MSE (share of the teacher's output power): a smaller gap is not a difference


def eval_inputs(hidden: int, n: int, seed: int) -> torch.Tensor:
    """(n, hidden) held-out inputs shared by every run (drawn apart from any training stream)."""
    return torch.randn(n, hidden, generator=torch.Generator().manual_seed(10_000 + seed))


def run_seeds(
    seeds: Sequence[int],
    hidden: int,
    steps: int,
    batch: int,
    lr: float,
    schedule: LinearSchedule,
    teacher_seed: int,
    n_eval: int = 256,
    map: str = "cayley",
    init_std: float = 0.05,
) -> dict[tuple[str, str, int], list[dict]]:
    """Every (teacher, mode, seed) run of ``studies.alpha_experiment``, scored on the same held-out inputs.

    Args:
        seeds: the run seeds (student init and input stream).
        hidden, steps, batch, lr, schedule, map: as in ``alpha_experiment``.
        teacher_seed: every run's teacher and held-out inputs.
        n_eval: held-out inputs.
        init_std: spread of the student's initial generators, so seeds vary the initialisation.
    Returns:
        (teacher, mode, seed) -> the run's records (the last has ``eval_item_loss``).
    """
    x = eval_inputs(hidden, n_eval, teacher_seed)
    return {
        (t, m, s): alpha_experiment(
            m, t, hidden, steps, batch, lr, schedule, s, map, init_std, teacher_seed=teacher_seed, eval_inputs=x
        )
        for t in TEACHERS
        for m in MODES_2
        for s in seeds
    }


def compare(
    runs: Mapping[tuple[str, str, int], list[dict]], n_boot: int = 1000, seed: int = 0, min_effect: float = MIN_EFFECT
) -> dict[str, dict[str, Any]]:
    """Learned minus scheduled held-out relative MSE per teacher: ``crossed_test`` over seeds x held-out inputs,
    Holm over ``PRIMARY``.

    Args:
        runs: ``run_seeds`` output.
        n_boot, seed: as in ``stats.crossed_test``.
        min_effect: the smallest difference that counts, named before the run.
    Returns:
        comparison -> the crossed test's row plus ``p_holm``, ``teacher``, ``learned_alpha`` (each seed's final
        alpha) and ``loss_learned`` / ``loss_scheduled`` (each seed's held-out relative MSE).
    """
    seeds = sorted({s for _, _, s in runs})
    out = {}
    for t, name in zip(TEACHERS, PRIMARY):
        loss = {m: np.array([need(runs, (t, m, s), "compare")[-1]["eval_item_loss"] for s in seeds]) for m in MODES_2}
        d = loss["learned"] - loss["scheduled"]  # (S, N)
        row = crossed_test(d, list(range(d.shape[1])), n_boot, seed, min_effect=min_effect)
        row |= {
            "teacher": t,
            "learned_alpha": [runs[(t, "learned", s)][-1]["alpha"] for s in seeds],
            **{f"loss_{m}": loss[m].mean(1).tolist() for m in MODES_2},
        }
        out[name] = row
    adjusted = holm({k: r["p"] for k, r in out.items()})
    return {k: r | {"p_holm": adjusted[k]} for k, r in out.items()}


def alpha_verdicts(rows: Mapping[str, Mapping[str, Any]], target: float, alpha: float = ALPHA) -> dict[str, Any]:
    """Notebook 02's findings from ``compare``: on which teachers does the learned alpha win or lose, significantly?

    Args:
        rows: ``compare`` output (every ``PRIMARY`` comparison).
        target: the alpha the schedule anneals toward (quoted, with where the learned alpha ended per seed).
        alpha: family-wise error rate.
    Returns:
        ``learned_wins_for_teachers`` / ``schedule_wins_for_teachers`` (Holm p < alpha, interval on that side of
        0, at least ``min_effect``; lower relative MSE wins) and a one-line ``conclusion``.
    Raises:
        KeyError: a comparison is missing.
    """
    got = {k: need(rows, k, "alpha_verdicts") for k in PRIMARY}
    sign = {r["teacher"]: significant(dict(r), alpha, "p_holm") for r in got.values()}
    out: dict[str, Any] = {
        "learned_wins_for_teachers": [t for t, s in sign.items() if s == -1],
        "schedule_wins_for_teachers": [t for t, s in sign.items() if s == 1],
    }
    parts = []
    for r in got.values():
        seeds = ", ".join(f"{v:+.3f}" for v in r["per_seed"])
        ends = ", ".join(f"{a:.2f}" for a in r["learned_alpha"])
        parts.append(
            f"teacher {r['teacher']}: learned - scheduled {r['estimate']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] "
            f"(Holm p {r['p_holm']:.3g}; per seed {seeds}; learned alpha ends at {ends})"
        )
    out["conclusion"] = (
        f"Relative MSE on held-out inputs, {got[PRIMARY[0]]['n_seeds']} seeds, minimum effect {MIN_EFFECT}: the "
        f"learned alpha wins for {out['learned_wins_for_teachers'] or 'no teacher'} and the schedule toward "
        f"{target:.3f} for {out['schedule_wins_for_teachers'] or 'no teacher'}; " + "; ".join(parts) + "."
    )
    return out
