"""Where safety heads live: saved next to a model, or in notebook 06's stage folder with a record of the model
they were trained on, matched by the content of its weights (``artifacts.model_fingerprint``).

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import json
from pathlib import Path

from so8t_core.artifacts import MANIFEST, model_fingerprint, notebook_for, write_json_atomic
from so8t_core.config import artifacts_dir
from so8t_core.safety.heads import (
    HEADS_CONFIG,
    HEADS_STAGE,
    HEADS_WEIGHTS,
    SafetyHeads,
    Thresholds,
    load_heads,
    save_heads,
)

BINDING = "heads_model.json"  # which model folder the heads in the same folder were trained on


def save_heads_for_model(
    heads: SafetyHeads,
    thresholds: Thresholds,
    folder: str | Path,
    model_dir: str | Path,
    model_stage: str | None = None,
) -> Path:
    """Save heads into ``folder`` with ``heads_model.json`` naming (and fingerprinting) the model they belong to.

    The record is written last, so a crash never leaves a record pointing at heads that are not all there.

    Args:
        heads, thresholds: trained heads and their dev-tuned thresholds.
        folder: where to write (e.g. ``artifacts/06_safety_eval/heads``); the model is not copied.
        model_dir: the model folder the heads were trained on.
        model_stage: the stage that wrote the model (for people reading the record).
    Returns:
        The path of ``heads_model.json``.

    Explained in notebooks/06_safety_eval.ipynb.
    """
    model_dir = Path(model_dir).resolve()
    save_heads(heads, folder, thresholds)
    try:
        relative = str(model_dir.relative_to(artifacts_dir()))
    except ValueError:
        relative = None
    record = {
        "model_dir": str(model_dir),
        "model_dir_in_artifacts": relative,
        "model_stage": model_stage,
        "hidden_size": heads.hidden_size,
        "fingerprint": model_fingerprint(model_dir),
    }
    write_json_atomic(Path(folder) / BINDING, record)
    return Path(folder) / BINDING


def find_heads_for_model(model_dir: str | Path, stage_dir: str | Path | None = None) -> Path | None:
    """The folder of the safety heads trained on the model in ``model_dir``, or None.

    Looks first in ``model_dir`` itself (heads saved next to the model, as ``safety eval --model`` expects),
    then in each subfolder of notebook 06's stage folder holding a ``heads_model.json`` whose fingerprint equals
    the model folder's. Matching by content survives moving or copying the model folder or the artifacts, and
    never hands the base model's heads to the fused model. Costs one SHA-256 pass over the weights.

    Args:
        model_dir: a model folder (``config.json`` + ``*.safetensors``).
        stage_dir: where to look besides the model folder; default ``artifacts/06_safety_eval``, used only
            when that stage finished (its manifest exists).
    Returns:
        A folder holding ``safety_heads.safetensors`` and ``safety_heads.json``, or None.

    Explained in notebooks/06_safety_eval.ipynb.
    """
    folder = Path(model_dir)
    if (folder / HEADS_WEIGHTS).is_file() and (folder / HEADS_CONFIG).is_file():
        return folder
    root = Path(stage_dir) if stage_dir is not None else artifacts_dir() / HEADS_STAGE
    if stage_dir is None and not (root / MANIFEST).is_file():
        return None
    candidates = sorted(p.parent for p in root.glob(f"*/{BINDING}") if (p.parent / HEADS_WEIGHTS).is_file())
    if not candidates:
        return None
    fingerprint = model_fingerprint(folder)
    for c in candidates:
        if json.loads((c / BINDING).read_text(encoding="utf-8")).get("fingerprint") == fingerprint:
            return c
    return None


def load_heads_for_model(
    model_dir: str | Path, stage_dir: str | Path | None = None
) -> tuple[SafetyHeads, Thresholds, Path]:
    """``find_heads_for_model`` + ``load_heads``; FileNotFoundError naming the command when there are none.

    Returns:
        ``(heads, thresholds, heads_folder)``.

    Explained in notebooks/06_safety_eval.ipynb.
    """
    found = find_heads_for_model(model_dir, stage_dir)
    if found is None:
        where = stage_dir if stage_dir is not None else artifacts_dir() / HEADS_STAGE
        raise FileNotFoundError(
            f"no safety heads for the model in {model_dir}: none next to it and none in {where} "
            f"recorded for its weights; run {notebook_for(HEADS_STAGE)} "
            f"(python -m so8t_core.pipeline --only 06) on this model"
        )
    heads, thresholds = load_heads(found)
    return heads, thresholds, found
