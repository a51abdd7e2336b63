"""The findings of notebook 03's soul study, computed from per-seed, per-item answer-token NLL.

A comparison ``a - b`` is paired: the same test items under the same seeds. Its interval and p-value come from
one test, ``stats.crossed_test``: a bootstrap that draws the templates once for every seed and the seeds on top
(crossed), read against Student's t.

The comparisons the design claims are declared before the run in ``PRIMARY`` (each on every task); Holm corrects
their p-values together and nothing else. Every other row is *exploratory*: printed with its raw p-value, never
turned into a verdict. A primary comparison counts as a win (or a loss) only when its Holm-adjusted p-value is below
``ALPHA``, its interval excludes 0 on that side and the difference is at least ``MIN_EFFECT``. No verdict rests on a
variant whose learning rate stayed at an end of its extended grid (``edge``), nor on a task where LoRA does not beat
the untouched base (*invalid*).

Explained in notebooks/03_soul_injection.ipynb.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from so8t_core.stats import ALPHA, crossed_test, holm, quadratic_argmin_bootstrap, significant
from so8t_core.verdicts import need

PHI, NEIGHBOURS = "soul_a1.618", ("soul_a1.5", "soul_a1.75")  # head_study.alpha_name of phi, 1.5 and 1.75
MIN_EFFECT = 0.02  # answer-token NLL (nats): a smaller difference is never a win or a loss
# name -> (tier, a, b): the comparisons ``a - b`` the design claims, each on every task (lower NLL: a better)
PRIMARY: dict[str, tuple[str, str, str]] = {
    "soul_vs_oft": ("A", "soul_learned", "oft"),
    "soul_vs_boft": ("A", "soul_learned", "boft"),
    "soul_vs_ia3": ("A", "soul_learned", "ia3"),
    "soul_vs_lora_r1": ("A", "soul_learned", "lora_r1"),
    "soul_vs_lora_temp": ("A", "soul_learned", "lora_temp"),
    "composed_vs_single": ("A", "soul_composed_learned", "soul_learned"),
    "learned_vs_phi": ("A", "soul_learned", PHI),
    "phi_vs_1.5": ("A", PHI, NEIGHBOURS[0]),
    "phi_vs_1.75": ("A", PHI, NEIGHBOURS[1]),
    "lora_soul_vs_lora": ("B", "soul", "lora"),
    "pet_with_soul": ("B", "soul_pet", "soul"),
    "oft_all_vs_matched_lora": ("B", "oft_all", "lora_matched"),
}
CLAIMS = {  # name -> the sentence's subject (a: the first variant)
    "soul_vs_oft": "The learned soul vs OFT on lm_head (same rotation, no residual)",
    "soul_vs_boft": "The learned soul vs BOFT on lm_head",
    "soul_vs_ia3": "The learned soul vs IA3 on lm_head",
    "soul_vs_lora_r1": "The learned soul vs LoRA r=1 on lm_head",
    "soul_vs_lora_temp": "The learned soul vs LoRA r=1 + a learned temperature",
    "composed_vs_single": "R_cmd R_safe vs one rotation",
    "learned_vs_phi": "alpha learned vs alpha fixed at phi",
    "phi_vs_1.5": "alpha fixed at phi vs at 1.5",
    "phi_vs_1.75": "alpha fixed at phi vs at 1.75",
    "lora_soul_vs_lora": "Tier B: LoRA + soul vs LoRA",
    "pet_with_soul": "Tier B: LoRA + soul with PET vs without",
    "oft_all_vs_matched_lora": "Tier B: OFT in all blocks vs LoRA at matched size",
}


def primary_key(name: str, task: str) -> str:
    """The row key ``"<tier>:<task>/<a> - <b>"`` of the primary comparison ``name`` on ``task``."""
    tier, a, b = PRIMARY[name]
    return f"{tier}:{task}/{a} - {b}"


def extra_pairs(tier: str, ref: str) -> list[tuple[str, str]]:
    """The primary pairs of ``tier`` that are not ``<variant> - ref`` (which ``tier_rows`` makes anyway), then the
    exploratory extras."""
    extra = TIER_A_EXTRA if tier == "A" else TIER_B_EXTRA
    pairs = [(a, b) for t, a, b in PRIMARY.values() if t == tier and b != ref]
    return list(dict.fromkeys([*pairs, *extra]))


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


def add_holm(rows: Mapping[str, dict], family: Collection[str] | None = None) -> dict[str, dict]:
    """Each row with ``p_holm`` and ``primary``: Holm over the rows named in ``family`` only (all rows when None);
    the others are exploratory (``p_holm`` None, no verdict).

    Args:
        rows: comparison rows (``compare`` output).
        family: the keys of the declared primary family.
    """
    family = set(rows) if family is None else set(family) & set(rows)
    adjusted = holm({k: float(rows[k]["p"]) for k in family})
    return {k: {**r, "p_holm": adjusted.get(k), "primary": k in family} for k, r in rows.items()}


def mark_edges(rows: Mapping[str, dict], edges: Mapping[str, Collection[str]]) -> dict[str, dict]:
    """Each row with ``edge``: one of its two variants has a learning rate at an end of its grid.

    Args:
        rows: rows keyed ``"[<tier>:]<task>/<a> - <b>"``.
        edges: ``"[<tier>:]<task>"`` -> the variants whose family's rate is at an edge.
    """
    out = {}
    for k, r in rows.items():
        where, pair = k.split("/", 1)
        out[k] = {**r, "edge": any(v in edges.get(where, ()) for v in pair.split(" - "))}
    return out


def outcome(row: Mapping[str, Any]) -> str:
    """``"better"`` / ``"worse"`` (lower / higher NLL) when ``stats.significant`` says so at ``p_holm``, else
    ``"no clear difference"``; ``"exploratory"`` outside the primary family and ``"edge"`` (no verdict) when a
    learning rate stayed at an end of its grid."""
    if row.get("edge"):
        return "edge"
    if not row.get("primary", True):
        return "exploratory"
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


TIER_A_EXTRA = (("soul_normed_learned", "soul_learned"),)  # exploratory pairs beyond PRIMARY
TIER_B_EXTRA = (("soul_frozen_r", "soul"),)


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


def study_rows(
    tier_a: Mapping[str, Mapping[str, Any]],
    tier_b: Mapping[str, Mapping[str, Any]],
    templates: Mapping[str, Sequence[Any]],
    n_boot: int = 1000,
    min_effect: float = MIN_EFFECT,
) -> dict[str, dict]:
    """Every comparison of both tiers (``"A:<task>/<a> - <b>"``, ``"B:..."``), Holm over ``PRIMARY`` on every task
    only, each row marked ``primary`` and ``edge``.

    Args:
        tier_a, tier_b: task -> the tier's ``run_task`` result (``edge_variants`` optional).
        templates: task -> the test items' template ids.
        n_boot: resamples of each test.
        min_effect: the smallest NLL difference that counts.
    """
    raw: dict[str, dict] = {}
    edges: dict[str, Any] = {}
    for tier, results, ref in (("A", tier_a, "oft"), ("B", tier_b, "lora")):
        rows = tier_rows(results, templates, ref, extra_pairs(tier, ref), n_boot, min_effect)
        raw |= {f"{tier}:{k}": r for k, r in rows.items()}
        edges |= {f"{tier}:{t}": r.get("edge_variants", []) for t, r in results.items()}
    family = [primary_key(n, t) for n, (tier, _, _) in PRIMARY.items() for t in (tier_a if tier == "A" else tier_b)]
    return mark_edges(add_holm(raw, family), edges)


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
    phi: str = PHI,
    rivals: Sequence[str] = NEIGHBOURS,
) -> dict[str, Any]:
    """Notebook 03's findings: the primary comparisons only, from rows Holm-adjusted over ``PRIMARY``.

    Args:
        rows_a, rows_b: tier A / tier B rows (``study_rows`` without the tier prefix).
        valid_a, valid_b: task -> valid, per tier.
        phi: the fixed-alpha soul variant at phi; rivals: those at 1.5 and 1.75.
    Returns:
        ``valid_tasks_*`` / ``invalid_tasks_*``; per primary comparison ``<name>_better_on`` / ``<name>_worse_on``
        (valid tasks where ``a`` has the lower / higher NLL); ``phi_special`` (both ``phi_vs_*`` won on two valid
        tasks); ``no_verdict_edge``: primary comparisons withheld because a learning rate stayed at a grid's end.
    """
    out: dict[str, Any] = {}
    rows, valid = {"A": rows_a, "B": rows_b}, {"A": valid_a, "B": valid_b}
    for tier in ("A", "B"):
        out[f"valid_tasks_{tier}"] = [t for t, ok in valid[tier].items() if ok]
        out[f"invalid_tasks_{tier}"] = [t for t, ok in valid[tier].items() if not ok]
    for name, (tier, a, b) in PRIMARY.items():
        if name.startswith("phi_vs_"):
            continue
        out[f"{name}_better_on"] = wins(rows[tier], f"{a} - {b}", valid[tier])
        out[f"{name}_worse_on"] = losses(rows[tier], f"{a} - {b}", valid[tier])
    out["no_verdict_edge"] = [
        f"{tier}:{t}/{name}"
        for name, (tier, a, b) in PRIMARY.items()
        for t in valid[tier]
        if rows[tier].get(f"{t}/{a} - {b}", {}).get("edge")
    ]
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
    for name, claim in CLAIMS.items():
        if f"{name}_better_on" in v:
            better, worse = v[f"{name}_better_on"], v[f"{name}_worse_on"]
            say.append(f"{claim}: better on {_list(better)}, worse on {_list(worse)}.")
    if v.get("no_verdict_edge"):
        where: dict[str, list[str]] = {}
        for key in v["no_verdict_edge"]:  # "<tier>:<task>/<name>"
            task, name = key.split(":", 1)[1].split("/", 1)
            where.setdefault(name, []).append(task)
        say.append(
            "No verdict (a learning rate stayed at an end of its extended grid, so the grid, not the method, may "
            "decide): " + "; ".join(f"{n} on {_list(ts)}" for n, ts in where.items()) + "."
        )
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
            f"Best alpha by a parabola over the grid on {task} (exploratory): {r['estimate']:.2f} "
            f"(95% seed bootstrap {r['lo']:.2f} to {r['hi']:.2f}, {r['n_dropped']} of {r['n_boot']} resamples "
            "without a minimum)" + (", outside the grid: the parabola extrapolates." if outside else ".")
        )
    return say


def _list(tasks: Sequence[str]) -> str:
    return ", ".join(tasks) if tasks else "no task"


def report_lines(
    tables: Sequence[Mapping[str, Any]], rows: Mapping[str, Mapping[str, Any]], task_names: Sequence[str]
) -> list[str]:
    """The study's results as fixed-width text: one line per (task, variant), then the primary comparisons that are
    not against the reference, each with its per-seed values.

    Args:
        tables: ``table(...)`` rows of both tiers (``vs_oft`` / ``vs_lora`` hold the comparison with the reference).
        rows: ``study_rows(...)`` comparisons by key.
        task_names: the tasks, in order.
    Returns:
        Lines to print.
    """
    head = ("task", "variant", "params", "NLL", "EM", "diff", "interval", "p", "p_holm")
    widths = ("<7", "<24", ">8", ">8", ">7", ">9", ">20", ">8", ">8")
    out = ["".join(f"{h:{w}}" for h, w in zip(head, widths, strict=True)) + "  outcome"]
    for r in tables:
        line = f"{r['task']:<7}{r['variant']:<24}{r['params']:>8}{r['test_nll']:>8.3f}{r['exact_match']:>7.3f}"
        c = r.get("vs_oft") or r.get("vs_lora")
        if c:
            ci = f"[{c['lo']:+.3f}, {c['hi']:+.3f}]"
            holm = "-" if c["p_holm"] is None else format(c["p_holm"], ".3f")
            line += f"{c['mean']:>+9.3f}{ci:>20}{c['p']:>8.3f}{holm:>8}  {r['outcome']}"
        out.append(line)
    out.append("Primary comparisons not against the reference:")
    for k in (primary_key(n, t) for n in PRIMARY for t in task_names):
        if not k.endswith((" - oft", " - lora")):
            c = rows[k]
            seeds = [round(float(v), 3) for v in c["per_seed"]]
            out.append(
                f"  {k:<44}{c['mean']:>+9.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}] p_holm {c['p_holm']:.3f}  "
                f"{outcome(c)}  per seed {seeds}"
            )
    return out
