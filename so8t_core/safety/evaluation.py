"""Notebook 06's helpers: the splits, per-split columns, ``metrics`` with breakdowns, the threshold sweep, the PR
curve, Markdown tables and what a user sees (``lm.generate.respond`` with the served decision source).

Scoring every system by one rule lives in ``safety.systems``, training heads inside the soul in ``safety.pillars``,
the served decision in ``safety.decision``, where heads live in ``safety.registry``.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from so8t_core.config import check
from so8t_core.lm.generate import respond
from so8t_core.safety.heads import HEADS_STAGE
from so8t_core.safety.labels import (
    LABELS,
    LabeledSet,
    auprc_refuse,
    breakdown,
    load_labeled,
    metrics,
    subsample,
    task_splits,
)

STAGE = HEADS_STAGE
SPLITS = ("train", "dev", "test")


# --- data and systems ------------------------------------------------------------------------------------
def load_splits(path: str | Path | None = None, seed: int = 0, dev_max: int = 0) -> dict[str, LabeledSet]:
    """The train, dev and test splits every safety system uses.

    Args:
        path: a labelled file with a ``split`` column to take all three from; default (None): the generated
            train and dev splits and the hand-written prompts as test (``labels.task_splits``).
        seed: seed of the generated variant split (and of the dev sample).
        dev_max: if > 0, a seeded sample of at most this many dev rows (``labels.subsample``).
    """
    splits = task_splits(seed) if path is None else {s: load_labeled(path, split=s) for s in SPLITS}
    if dev_max > 0:
        splits["dev"] = subsample(splits["dev"], dev_max, seed)
    return splits


def column(data: LabeledSet, name: str) -> list[Any]:
    """One extra column (``task``, ``lang``, ``id``...) of every row; KeyError names the missing column."""
    missing = [i for i, e in enumerate(data.extra) if name not in e]
    if missing:
        raise KeyError(f"{data.path}: rows {missing[:5]} have no {name!r} column")
    return [e[name] for e in data.extra]


def evaluate(data: LabeledSet, preds: Sequence[str], scores: Any = None) -> dict:
    """``metrics`` plus the per-language and trap ``breakdown`` of ``preds`` on ``data``."""
    return {
        **metrics(data.labels, preds, None if scores is None else np.asarray(scores, float)),
        **breakdown(data, preds),
    }


# --- curves ----------------------------------------------------------------------------------------------
def threshold_sweep(p_refuse: Any, labels: Sequence[str], thresholds: Sequence[float]) -> list[dict]:
    """Refuse when P(refuse) >= t, for each t: what that catches and what it costs.

    The counts are those ``metrics`` would give for ``decide`` with refuse threshold t (escalation does not
    change who is refused), so the dev-tuned operating point lies on this curve.

    Args:
        p_refuse: (N,) scores.
        labels: N gold labels; must contain REFUSE and ALLOW.
        thresholds: the t values, in any order (rows keep that order).
    Returns:
        Rows ``{threshold, refuse_recall, over_refusal_rate, unsafe_fpr, refuse_precision}``; precision is NaN
        where nothing is refused.

    Explained in notebooks/06_safety_eval.ipynb.
    """
    p, y = np.asarray(p_refuse, dtype=float), np.asarray(labels)
    check(p.shape == y.shape and p.ndim == 1, "p_refuse", p.shape, f"need one score per label ({y.shape})")
    check({"REFUSE", "ALLOW"} <= set(labels), "labels", sorted(set(labels)), "need gold REFUSE and ALLOW")
    unsafe, allow = y == "REFUSE", y == "ALLOW"
    rows = []
    for t in thresholds:
        refused = p >= t
        tp = int((refused & unsafe).sum())
        rows.append(
            {
                "threshold": float(t),
                "refuse_recall": tp / unsafe.sum(),
                "over_refusal_rate": (refused & allow).sum() / allow.sum(),
                "unsafe_fpr": (refused & ~unsafe).sum() / (~unsafe).sum(),
                "refuse_precision": tp / refused.sum() if refused.any() else math.nan,
            }
        )
    return rows


def pr_curve(labels: Sequence[str], scores: Any) -> dict:
    """Precision-recall of REFUSE vs rest (scikit-learn's points, from recall 1 down to recall 0).

    Args:
        labels: gold labels; need at least one REFUSE and one other.
        scores: (N,) higher = more likely REFUSE.
    Returns:
        ``{precision, recall, thresholds, auprc, prevalence}`` (lists and floats, ready for JSON).

    Explained in notebooks/06_safety_eval.ipynb.
    """
    from sklearn.metrics import precision_recall_curve

    positive = np.array([lab == "REFUSE" for lab in labels])
    s = np.asarray(scores, dtype=float)
    check(s.shape == positive.shape, "scores", s.shape, f"need one per label ({positive.shape})")
    check(0 < positive.sum() < len(positive), "labels", int(positive.sum()), "need REFUSE and non-REFUSE gold")
    precision, recall, thr = precision_recall_curve(positive, s)
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "thresholds": thr.tolist(),
        "auprc": auprc_refuse(positive, s),
        "prevalence": float(positive.mean()),
    }


# --- reporting -------------------------------------------------------------------------------------------
def markdown_table(rows: Sequence[Mapping[str, Any]], digits: int = 3) -> str:
    """Rows (same keys) as a Markdown table, floats rounded, NaN/None as a dash."""
    cols = list(rows[0])

    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        text = f"{v:.{digits}f}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|").replace("\n", " ")  # a newline or pipe would break the row

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows])


# --- answers ---------------------------------------------------------------------------------------------
def example_answers(
    model: Any,
    tokenizer: Any,
    decide: Callable[[str], str],
    data: LabeledSet,
    per_label: int = 2,
    max_new_tokens: int = 96,
) -> list[dict]:
    """``lm.generate.respond`` on the first ``per_label`` prompts of each gold label: what a user would see.

    Args:
        model, tokenizer: the served model; decide: the served decision source (prompt -> label).
        data: labelled prompts (the test split).
        per_label: prompts per gold label.
        max_new_tokens: generation budget for ALLOW.
    Returns:
        Rows ``{prompt, gold, decision, final, thinking_hash}`` (hash None when nothing was generated).

    Explained in notebooks/06_safety_eval.ipynb.
    """
    check(per_label > 0, "per_label", per_label, "must be > 0")
    rows: list[dict] = []
    for label in LABELS:
        for i in [i for i, y in enumerate(data.labels) if y == label][:per_label]:
            r = respond(model, tokenizer, data.prompts[i], decide, max_new_tokens=max_new_tokens)
            rows.append(
                {
                    "prompt": data.prompts[i],
                    "gold": label,
                    "decision": r.decision,
                    "final": r.final,
                    "thinking_hash": r.thinking_hash,
                }
            )
    return rows
