"""Which model the server answers with, its audit identity, and which decision source it uses.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from so8t_core.artifacts import fingerprint_id, model_fingerprint, notebook_for, require
from so8t_core.config import artifacts_dir, check

FUSED_STAGE, FUSED_DIR, BASE_STAGE = "04_fusion_and_gguf", "fused", "00_base_model"
SPEAKER = "smollm2-135m-instruct"  # the real chat model that speaks; notebook 04 fuses the soul into its head
REAL_FUSED_DIR = f"real/{SPEAKER}/{FUSED_DIR}"
# The soul may only speak if it keeps the speaker's language: on notebook 04's held-out text the fused model must
# pick the base's next token at least this often, or the server speaks with the plain real model (a soul trained
# on one narrow task can remap almost every token, which makes a fine study and a useless chat model)
MIN_SPEAKER_TOP1 = 0.9


def fused_keeps_the_speaker(metrics_path: Path, name: str = SPEAKER, floor: float = MIN_SPEAKER_TOP1) -> bool:
    """Whether notebook 04 measured that its fused ``name`` still picks the base's next token often enough.

    Args:
        metrics_path: notebook 04's ``metrics.json``.
        name: the real model.
        floor: least share of held-out positions where fused and base agree on the top-1 token.
    Returns:
        True when the share is at least ``floor``; False when it is lower or was not measured.
    """
    import json

    if not metrics_path.is_file():
        return False
    agree = json.loads(metrics_path.read_text(encoding="utf-8")).get("real", {}).get(name, {}).get("soul_shift_top1")
    return agree is not None and float(agree) >= floor


@dataclass(frozen=True)
class ModelChoice:
    """Which model to serve: ``source`` (a folder or hub id), ``label`` (fused/base/model), 4-bit flag, and
    ``name``, the model's name in its audit id (None: the folder's name)."""

    source: str
    label: str
    load_in_4bit: bool = False
    name: str | None = None


def resolve_model(override: str | Path | None = None) -> ModelChoice:
    """``--model DIR|NAME``, else notebook 04's fused real model (SmolLM2 with the soul in its head) when 04 measured
    that it keeps the base's next-token choices (``fused_keeps_the_speaker``; otherwise the plain SmolLM2), else its
    fused tiny model, else notebook 00's base model, else a clear error.

    Args:
        override: a model folder, or a real model's name (``lm.real_models``: its converted folder).
    Returns:
        ``ModelChoice``. Raises ``FileNotFoundError`` naming the folder or the notebook to run, or
        ``RealModelUnavailable`` (an ``OSError``) naming the package of a real model that is not installed.
    """
    from so8t_core.lm.loading import is_real_model, read_model_ref
    from so8t_core.lm.real_models import real_model_dir

    if override is not None:
        if is_real_model(override):
            return ModelChoice(str(real_model_dir(str(override))), "model", name=str(override))
        if not (Path(override) / "config.json").is_file():
            raise FileNotFoundError(f"--model {override}: not a model folder (no config.json) nor a real model's name")
        return ModelChoice(str(Path(override).resolve()), "model")
    if (artifacts_dir() / FUSED_STAGE / REAL_FUSED_DIR).exists():  # the real model speaks when 04 fused it
        folder = require(FUSED_STAGE, f"{REAL_FUSED_DIR}/config.json") / REAL_FUSED_DIR
        if fused_keeps_the_speaker(artifacts_dir() / FUSED_STAGE / "metrics.json"):
            return ModelChoice(str(folder), "fused", name=SPEAKER)
        return ModelChoice(str(real_model_dir(SPEAKER)), "base", name=SPEAKER)  # the soul would break its speech
    if (artifacts_dir() / FUSED_STAGE / FUSED_DIR).exists():  # half-written fusion: an error, not a silent fallback
        return ModelChoice(str(require(FUSED_STAGE, f"{FUSED_DIR}/config.json") / FUSED_DIR), "fused")
    try:
        ref = read_model_ref(require(BASE_STAGE))
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"no model to serve: run {notebook_for(BASE_STAGE)} (python -m so8t_core.pipeline "
            f"--only 00) or {notebook_for(FUSED_STAGE)}, or pass --model DIR ({e})"
        ) from e
    return ModelChoice(str(ref["base_model"]), "base", bool(ref.get("load_in_4bit", False)))


def model_identity(choice: ModelChoice) -> str:
    """``label:name@hash``: the hash is ``artifacts.model_fingerprint`` (config.json and the weight files, not
    safety heads saved beside them), so a changed model is a different id in the audit log; a hub id is used as
    it is. ``name`` is ``choice.name`` (a real model's name) or the folder's name."""
    folder = Path(choice.source)
    if not folder.is_dir():
        return f"{choice.label}:{choice.source}"[:200]
    name = choice.name or folder.name
    return f"{choice.label}:{name[:100]}@{fingerprint_id(model_fingerprint(folder))}"


def serving_contract(choice: ModelChoice, model_id: str, decision_source: str, answer_policy: str) -> dict[str, Any]:
    """The document the audit log stores as the identity contract while this server answers: the model (its id,
    name and the SHA-256 of its config and each weight file), the decision source and the answer policy. Every
    decision row names its version, so the chain ties each answer to the full weight hashes.

    Args:
        choice: the served ``ModelChoice``.
        model_id: ``model_identity(choice)``.
        decision_source: the ``decision_source`` of ``load_decider``.
        answer_policy: ``ops.policy.answer_policy`` of the model's tokenizer.
    Returns:
        A JSON document (for ``AuditLog.set_identity_contract``).
    """
    folder = Path(choice.source)
    weights = model_fingerprint(folder) if folder.is_dir() else {}
    model = {"id": model_id, "label": choice.label, "name": choice.name or folder.name, "sha256": weights}
    return {"model": model, "decision_source": decision_source, "answer_policy": answer_policy}


def find_heads(model_dir: str | Path) -> Path | None:
    """The folder holding ``safety_heads.safetensors``: the model folder or the folder around it, else None."""
    from so8t_core.safety.heads import HEADS_WEIGHTS

    folder = Path(model_dir)
    return next((d for d in (folder, folder.parent) if (d / HEADS_WEIGHTS).is_file()), None)


def load_decider(model: Any, tokenizer: Any, model_dir: str | Path, source: str | None = None) -> dict[str, Any]:
    """The decision source: ``source`` if given, else the default notebook 06 chose on dev (``decision.json``).

    A source may read another model than ``model`` (heads on a named real model's pooled state): its ``Decider``
    loads that model by name on first use and does not need the served model's lock (``decide_uses_model`` False).

    Without notebook 06's decision (it has not run), the documented fallback: heads next to the model (or recorded
    for its weights), else the TF-IDF baseline fitted on the generated train split, both at their own
    thresholds. Returns ``AppState`` keyword arguments: ``decision_source``, ``decide``, ``decide_uses_model`` and
    ``decide_max_tokens`` (the most tokens of a prompt the source reads: heads cut longer ones).

    Raises:
        ValueError: ``source`` is not one notebook 06 measured (names the choices), or its heads do not fit.
    """
    from so8t_core.safety.decision import build_decider, read_decision

    decision = read_decision()
    if decision is not None:
        decider = build_decider(decision, source, model, tokenizer, model_dir)
        return {
            "decision_source": decider.name,
            "decide": decider,
            "decide_uses_model": decider.uses_model,
            "decide_max_tokens": decider.max_tokens,
        }
    if source is not None:
        raise ValueError(
            f"--decision-source {source!r}: no decision.json yet; run {notebook_for('06_safety_eval')} "
            "(python -m so8t_core.pipeline --only 06), which measures every source on dev"
        )
    return _fallback_decider(model, tokenizer, model_dir)


def _fallback_decider(model: Any, tokenizer: Any, model_dir: str | Path) -> dict[str, Any]:
    from so8t_core.safety.baselines import make_baseline
    from so8t_core.safety.heads import HEADS_MAX_TOKENS, HEADS_NOTEBOOK, heads_decider, load_heads
    from so8t_core.safety.registry import find_heads_for_model

    # beside the model, else the heads notebook 06 recorded for these exact weights
    folder = (find_heads(model_dir) or find_heads_for_model(model_dir)) if Path(model_dir).is_dir() else None
    if folder is None:
        baseline = make_baseline("tfidf")
        return {
            "decision_source": "tfidf_baseline",
            "decide": lambda text: baseline.predict([text])[0],
            "decide_uses_model": False,
            "decide_max_tokens": None,
        }
    heads, thresholds = load_heads(folder)
    check(
        heads.hidden_size == model.config.hidden_size,
        "safety_heads.hidden_size",
        heads.hidden_size,
        f"the model has {model.config.hidden_size}: retrain the heads on this model ({HEADS_NOTEBOOK})",
    )
    return {
        "decision_source": "safety_heads",
        "decide": heads_decider(model, tokenizer, heads, thresholds),
        "decide_uses_model": True,
        "decide_max_tokens": HEADS_MAX_TOKENS,
    }
