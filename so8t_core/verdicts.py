"""What every verdict function shares: look a measured value up by name and fail loudly when it is not there.

A notebook's findings (the booleans and one-line conclusions it logs) are computed by package functions, never in
cells. Those functions read their inputs through ``need``, so a variant that was not run raises ``KeyError``
naming it, instead of a silent sentinel that makes a comparison come out False.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def need(values: Mapping[Any, Any], key: Any, what: str) -> Any:
    """``values[key]``, or ``KeyError`` naming ``what`` needed it and which keys there are."""
    if key not in values:
        raise KeyError(f"{what}: no {key!r} among {sorted(values)} (was it run?)")
    return values[key]


def lower(values: Mapping[str, float], a: str, b: str, what: str) -> bool:
    """True when ``values[a] < values[b]`` (e.g. a perplexity); both must be there."""
    return bool(need(values, a, what) < need(values, b, what))


def higher(values: Mapping[str, float], a: str, b: str, what: str) -> bool:
    """True when ``values[a] > values[b]`` (e.g. an accuracy); both must be there."""
    return bool(need(values, a, what) > need(values, b, what))


def precondition(stage00_dir: str | Path) -> dict[str, Any]:
    """Notebook 00's precondition, read back from its ``metrics.json``: does the pretrained base's pooled state
    carry more safety signal (AUPRC of REFUSE) than the same probe on random-init models of its shape?

    Args:
        stage00_dir: notebook 00's artifact folder.
    Returns:
        ``{"status", "holds", "estimate", "lo", "hi", "p_holm", "per_seed", "n_seeds", "n_clusters",
        "min_effect", "meaning"}``. ``status``: ``holds``, ``fails``, ``edge`` (a probe's ``C`` was at the end of
        its grid: no verdict) or ``not_run`` (no probe, or no random-init rival, e.g. a loaded checkpoint);
        ``holds`` is True only for ``holds``. The numbers are None when the comparison was not run.
    Raises:
        FileNotFoundError: notebook 00 has not written its metrics (run it first).
    """
    path = Path(stage00_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run notebooks/00_base_model.ipynb first")
    metrics = json.loads(path.read_text())
    verdict = metrics.get("pretraining_beats_random_init")
    row = metrics.get("probe_differences", {}).get("probe_vs_random", {}).get("auprc_refuse")
    if verdict is None or row is None:
        status = "not_run"
    else:
        status = "edge" if verdict == "edge" else "holds" if verdict is True else "fails"
    keys = ("estimate", "lo", "hi", "p_holm", "per_seed", "n_seeds", "n_clusters", "min_effect")
    out: dict[str, Any] = {"status": status, "holds": status == "holds"}
    out |= {k: (row or {}).get(k) for k in keys}
    out["meaning"] = PRECONDITION_MEANING[status]
    return out


PRECONDITION_MEANING = {
    "holds": "the base's states carry safety signal beyond the architecture: a downstream effect can build on "
    "what pretraining learnt",
    "fails": "the base's states do not carry safety signal beyond the architecture (not shown at the named "
    "minimum effect): a downstream effect may come from the added weights alone, not from the base",
    "edge": "no verdict: a probe's C sits at the end of its grid, so whether the base's states carry safety signal "
    "beyond the architecture is not known; read downstream effects as not resting on the base",
    "not_run": "not measured (no random-init rival in notebook 00): whether the base's states carry safety signal "
    "beyond the architecture is unknown",
}


def precondition_line(pre: Mapping[str, Any]) -> str:
    """One line for the top of a downstream notebook, quoting ``precondition``'s values.

    Args:
        pre: ``precondition(stage00_dir)``.
    Returns:
        e.g. ``Precondition (notebook 00) holds: pretrained - random-init probe AUPRC +0.134 [...]; ...``.
    """
    head = f"Precondition (notebook 00, pretrained vs random-init probe) {pre['status'].replace('_', ' ')}"
    if pre["estimate"] is None:
        return f"{head}: {pre['meaning']}."
    seeds = ", ".join(f"{v:+.3f}" for v in pre["per_seed"] or [])
    p = "n/a" if pre["p_holm"] is None else f"{pre['p_holm']:.3g}"
    return (
        f"{head}: AUPRC difference {pre['estimate']:+.3f} (95 % interval {pre['lo']:+.3f} to {pre['hi']:+.3f}, "
        f"Holm p {p}, minimum effect {pre['min_effect']}, {pre['n_seeds']} init seeds: {seeds}); {pre['meaning']}."
    )
