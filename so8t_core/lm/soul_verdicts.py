"""The findings of notebook 03's soul study, computed from per-seed, per-item answer-token NLL.

A comparison ``a - b`` is paired: the same test items under the same seeds. Its interval and p-value come from
one test, ``stats.crossed_test``: a bootstrap that draws the templates once for every seed and the seeds on top
(crossed), read against Student's t. p-values of the comparisons passed to ``add_holm`` are Holm-corrected
together. A comparison counts as a win (or a loss) only when its Holm-adjusted p-value is below ``ALPHA``, its
interval excludes 0 on that side and the difference is at least the ``min_effect`` named before the run. A task is
*valid* only if LoRA beats the untouched base there; no verdict is drawn from an invalid task.

Explained in notebooks/03_soul_injection.ipynb.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from so8t_core.stats import ALPHA, crossed_test, holm, quadratic_argmin_bootstrap, significant
from so8t_core.verdicts import need


def compare(
    a: np.ndarray,
    b: np.ndarray,
    templates: Sequence[Any],
    n_boot: int = 1000,
    seed: int = 0,
    min_effect: float = 0.0,
) -> dict:
    """Paired difference ``a - b`` of two (n_seeds, n_items) NLL arrays (negative: ``a`` is better).

    Args:
        a, b: per-seed, per-item NLL of the two variants on the same test items.
        templates: the items' template ids (the cluster every seed shares).
        n_boot, seed: resampling of ``stats.crossed_test``.
        min_effect: the smallest NLL difference that counts as a win or a loss.
    Returns:
        ``mean`` (= ``estimate``) and ``stats.crossed_test``'s fields: ``lo``, ``hi``, ``p``, ``per_seed``,
        ``n_seeds``, ``n_clusters``, ``min_effect``, ``degenerate``.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)  # (S, I)
    t = crossed_test(d, templates, n_boot=n_boot, seed=seed, min_effect=min_effect)
    return {"mean": t["estimate"], **t}


def add_holm(rows: Mapping[str, dict]) -> dict[str, dict]:
    """Each row with ``p_holm``: its p-value Holm-adjusted across all ``rows`` (one family per notebook)."""
    adjusted = holm({k: float(r["p"]) for k, r in rows.items()})
    return {k: {**r, "p_holm": adjusted[k]} for k, r in rows.items()}


def outcome(row: Mapping[str, Any]) -> str:
    """``"better"`` / ``"worse"`` (lower / higher NLL) when ``stats.significant`` says so at ``p_holm``, else
    ``"no clear difference"``."""
    need(row, "p_holm", "outcome")
    return {-1: "better", 1: "worse", 0: "no clear difference"}[significant(dict(row), ALPHA, "p_holm")]


def validity(lora_minus_base: Mapping[str, Mapping[str, Any]]) -> dict[str, bool]:
    """Task -> valid: LoRA's answer-token NLL is below the base's with the crossed interval below 0 (a degenerate
    comparison, seeds that agree exactly, has no interval and is not valid).

    Args:
        lora_minus_base: task -> a ``compare`` row of LoRA against the untouched base.
    """
    return {task: bool(r["hi"] < 0 and r["mean"] < 0) for task, r in lora_minus_base.items()}


def wins(rows: Mapping[str, Mapping[str, Any]], key: str, valid: Mapping[str, bool]) -> list[str]:
    """Valid tasks on which the comparison ``<task>/<key>`` came out ``better``."""
    return [t for t, ok in valid.items() if ok and outcome(need(rows, f"{t}/{key}", "wins")) == "better"]


def losses(rows: Mapping[str, Mapping[str, Any]], key: str, valid: Mapping[str, bool]) -> list[str]:
    """Valid tasks on which the comparison ``<task>/<key>`` came out ``worse``."""
    return [t for t, ok in valid.items() if ok and outcome(need(rows, f"{t}/{key}", "losses")) == "worse"]


def phi_special(
    rows: Mapping[str, Mapping[str, Any]],
    valid: Mapping[str, bool],
    phi: str,
    rivals: Sequence[str],
    min_tasks: int = 2,
) -> dict[str, Any]:
    """ "phi is special" holds only if the soul at phi beats every rival alpha (1.5 and 1.75) on ``min_tasks``
    valid tasks, each comparison a win by ``outcome``.

    Args:
        rows: Holm-adjusted comparison rows named ``<task>/<phi> - <rival>``.
        valid: task -> valid.
        phi: the variant name at phi; rivals: the variant names at the neighbouring alphas.
        min_tasks: how many valid tasks it must hold on.
    Returns:
        ``{"phi_special": bool, "phi_beats_neighbours_on": [tasks]}``.
    """
    on = [
        t
        for t, ok in valid.items()
        if ok and all(outcome(need(rows, f"{t}/{phi} - {r}", "phi_special")) == "better" for r in rivals)
    ]
    return {"phi_special": len(on) >= min_tasks, "phi_beats_neighbours_on": on}


def alpha_argmin(grid: Sequence[float], nll: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Bootstrap interval (over seeds) of the argmin of a parabola fitted to mean test NLL over the alpha grid.

    Args:
        grid: the fixed alphas.
        nll: (n_seeds, len(grid)) mean test NLL of each fixed-alpha soul.
    Returns:
        ``quadratic_argmin_bootstrap``'s fields and the ``grid``.
    """
    return {**quadratic_argmin_bootstrap(list(grid), nll, n_boot=n_boot, seed=seed), "grid": [float(a) for a in grid]}


TIER_A_EXTRA = (("soul_composed_learned", "soul_learned"), ("soul_normed_learned", "soul_learned"))
TIER_B_EXTRA = (("soul_frozen_r", "soul"), ("soul_pet", "soul"), ("oft_all", "lora_matched"))


def tier_rows(
    results: Mapping[str, Mapping[str, Any]],
    templates: Mapping[str, Sequence[Any]],
    ref: str,
    extra: Sequence[tuple[str, str]] = (),
    n_boot: int = 1000,
    min_effect: float = 0.0,
) -> dict[str, dict]:
    """Every comparison of one tier: each variant against ``ref``, plus ``extra`` pairs, per task.

    Args:
        results: task -> a tier's ``run_task`` result (``nll``: variant -> (S, I)).
        templates: task -> the test items' template ids.
        ref: the reference variant.
        extra: further ``(a, b)`` pairs.
        min_effect: passed to ``compare``.
    Returns:
        ``"<task>/<a> - <b>"`` -> ``compare`` row (not yet Holm-adjusted).
    """
    rows = {}
    for task, res in results.items():
        nll = need(res, "nll", "tier_rows")
        pairs = [(v, ref) for v in nll if v not in (ref, "base")] + list(extra)
        for a, b in pairs:
            rows[f"{task}/{a} - {b}"] = compare(
                need(nll, a, "tier_rows"), need(nll, b, "tier_rows"), templates[task], n_boot, min_effect=min_effect
            )
    return rows


def gate_rows(
    results: Mapping[str, Mapping[str, Any]], templates: Mapping[str, Sequence[Any]], lora: str, base_nll, n_boot: int
) -> dict[str, dict]:
    """Task -> the validity comparison ``lora - base`` (the base broadcast over seeds; outside the Holm family)."""
    return {
        t: compare(r["nll"][lora], np.broadcast_to(base_nll[t], r["nll"][lora].shape), templates[t], n_boot)
        for t, r in results.items()
    }


def table(
    results: Mapping[str, Mapping[str, Any]], rows: Mapping[str, dict], ref: str, valid: Mapping[str, bool]
) -> list[dict[str, Any]]:
    """One row per task and variant: trainable parameters, seeds, mean test NLL and exact match, and the paired
    comparison with ``ref`` (intervals, p, Holm-adjusted p, outcome) where there is one.

    Args:
        results: task -> a tier's ``run_task`` result.
        rows: Holm-adjusted comparison rows of that tier.
        ref: the tier's reference variant.
        valid: task -> valid.
    """
    out = []
    for task, res in results.items():
        for v, nll in need(res, "nll", "table").items():
            row: dict[str, Any] = {
                "task": task,
                "variant": v,
                "params": int(res["params"][v]),
                "seeds": int(nll.shape[0]),
                "test_nll": float(nll.mean()),
                "exact_match": float(res["em"][v].mean()),
                "valid": bool(valid[task]),
            }
            cmp = rows.get(f"{task}/{v} - {ref}")
            if cmp is not None:
                row |= {f"vs_{ref}": dict(cmp), "outcome": outcome(cmp)}
            out.append(row)
    return out


def study_verdicts(
    rows_a: Mapping[str, dict],
    rows_b: Mapping[str, dict],
    valid_a: Mapping[str, bool],
    valid_b: Mapping[str, bool],
    phi: str,
    rivals: Sequence[str],
) -> dict[str, Any]:
    """Notebook 03's findings from Holm-adjusted rows of both tiers (one Holm family over both).

    Args:
        rows_a, rows_b: Holm-adjusted tier A / tier B rows.
        valid_a, valid_b: task -> valid, per tier.
        phi: the fixed-alpha soul variant at phi; rivals: those at 1.5 and 1.75.
    Returns:
        Lists of valid tasks per claim (``*_on``), ``phi_special``, and the valid / invalid task lists.
    """
    out: dict[str, Any] = {
        "valid_tasks_A": [t for t, ok in valid_a.items() if ok],
        "invalid_tasks_A": [t for t, ok in valid_a.items() if not ok],
        "valid_tasks_B": [t for t, ok in valid_b.items() if ok],
        "invalid_tasks_B": [t for t, ok in valid_b.items() if not ok],
        "soul_beats_oft_on": wins(rows_a, "soul_learned - oft", valid_a),
        "soul_loses_to_oft_on": losses(rows_a, "soul_learned - oft", valid_a),
        "composed_beats_single_on": wins(rows_a, "soul_composed_learned - soul_learned", valid_a),
        "normed_beats_soul_on": wins(rows_a, "soul_normed_learned - soul_learned", valid_a),
        "soul_beats_lora_on": wins(rows_b, "soul - lora", valid_b),
        "soul_loses_to_lora_on": losses(rows_b, "soul - lora", valid_b),
        "frozen_r_beats_soul_on": wins(rows_b, "soul_frozen_r - soul", valid_b),
        "pet_helps_lora_on": wins(rows_b, "lora_pet - lora", valid_b),
        "pet_hurts_lora_on": losses(rows_b, "lora_pet - lora", valid_b),
        "pet_helps_soul_on": wins(rows_b, "soul_pet - soul", valid_b),
        "oft_beats_matched_lora_on": wins(rows_b, "oft_all - lora_matched", valid_b),
        "oft_loses_to_matched_lora_on": losses(rows_b, "oft_all - lora_matched", valid_b),
    }
    return out | phi_special(rows_a, valid_a, phi, rivals)


def reading(verdicts: Mapping[str, Any]) -> list[str]:
    """Plain sentences from the verdicts (what holds and what does not), for the notebook's reading cells."""
    v = verdicts
    say = []
    for tier in ("A", "B"):
        valid = need(v, f"valid_tasks_{tier}", "reading")
        invalid = need(v, f"invalid_tasks_{tier}", "reading")
        say.append(
            f"Tier {tier}: LoRA beats the base on {_list(valid)}"
            + (f"; {_list(invalid)} invalid (no verdict drawn there)." if invalid else ".")
        )
    for key, claim in (
        ("soul_beats_oft_on", "The learned soul beats OFT on lm_head (same rotation, no residual)"),
        ("soul_loses_to_oft_on", "The learned soul loses to OFT on lm_head"),
        ("composed_beats_single_on", "R_cmd R_safe beats one rotation"),
        ("normed_beats_soul_on", "The norm-matched soul beats the soul"),
        ("soul_beats_lora_on", "Tier B: LoRA + soul beats LoRA"),
        ("soul_loses_to_lora_on", "Tier B: LoRA + soul loses to LoRA"),
        ("frozen_r_beats_soul_on", "Tier B: freezing R until the gate opens beats the plain LoRA + soul"),
        ("pet_helps_lora_on", "Tier B: PET helps LoRA"),
        ("pet_hurts_lora_on", "Tier B: PET hurts LoRA"),
        ("pet_helps_soul_on", "Tier B: PET helps LoRA + soul"),
        ("oft_beats_matched_lora_on", "Tier B: OFT in all blocks beats LoRA at matched size"),
        ("oft_loses_to_matched_lora_on", "Tier B: OFT in all blocks loses to LoRA at matched size"),
    ):
        if key in v:
            say.append(f"{claim}: {_list(v[key]) if v[key] else 'on no valid task'}.")
    if "phi_special" in v:
        on = v["phi_beats_neighbours_on"]
        say.append(
            f"phi is special: {'yes' if v['phi_special'] else 'no'} (the soul at phi beats both 1.5 and 1.75 on "
            f"{_list(on) if on else 'no valid task'}; at least 2 needed)."
        )
    for task, r in v.get("alpha_argmin", {}).items():
        grid = r.get("grid", [])
        outside = bool(grid) and not min(grid) <= r["estimate"] <= max(grid)
        say.append(
            f"Best alpha by a parabola over the grid on {task}: {r['estimate']:.2f} "
            f"(95% seed bootstrap {r['lo']:.2f} to {r['hi']:.2f}, {r['n_dropped']} of {r['n_boot']} resamples "
            "without a minimum)" + (", outside the grid: the parabola extrapolates." if outside else ".")
        )
    return say


def _list(tasks: Sequence[str]) -> str:
    return ", ".join(tasks) if tasks else "no task"
