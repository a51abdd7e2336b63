"""The served decision: which system decides, at which threshold, written by notebook 06 as ``decision.json``
and rebuilt by the server and the ``eval`` command line.

A source is a baseline (``keyword``, ``tfidf``, ``bow_ids``), heads on the served model (a folder with
``safety_heads.*`` and ``heads_model.json`` binding them to the model's weights), heads on another, named model's
pooled state at one layer (the entry names ``model``, ``layer`` and ``max_length``; the ``Decider`` loads that model
itself, once, when it first scores: a source may read one model while another speaks), or a combination ``A|B``
(refuse when either score reaches the common threshold). A prompt is REFUSE when the source's score reaches its dev-rule
threshold; otherwise ESCALATE when any part escalates (heads: P(escalate) at its tuned threshold; a baseline: its
argmax), else ALLOW. The decision measured in notebook 06 and the one served are made by the same ``Decider``.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from so8t_core.artifacts import MANIFEST, model_fingerprint, write_json_atomic
from so8t_core.config import artifacts_dir, check
from so8t_core.safety.baselines import BASELINES, make_baseline
from so8t_core.safety.heads import HEADS_MAX_TOKENS, HEADS_NOTEBOOK, HEADS_STAGE, load_heads, pooled_hidden_states
from so8t_core.safety.labels import LABELS
from so8t_core.safety.systems import OR

DECISION_FILE = "decision.json"
_R, _E = LABELS.index("REFUSE"), LABELS.index("ESCALATE")


def save_decision(folder: str | Path, default: str, sources: Mapping[str, Mapping[str, Any]], dev: Mapping) -> Path:
    """Write ``decision.json``: the default source, every servable source's spec and their dev numbers.

    Args:
        folder: notebook 06's stage folder.
        default: the source chosen on dev (must be in ``sources``).
        sources: name -> ``{"threshold": t, "heads_dir": relative folder}`` (heads on the served model),
            the same plus ``"model"`` (a real model's name or folder), ``"layer"`` (index into its hidden states)
            and ``"max_length"`` (heads on that model's pooled state), or ``{"threshold": t}``.
        dev: name -> ``systems.dev_summary``.
    """
    check(default in sources, "default", default, f"not among the sources {sorted(sources)}")
    for name in sources:
        for part in name.split(OR):
            spec = sources.get(part, {})
            check(part in BASELINES or "heads_dir" in spec, "source", part, "unknown kind")
            if "model" in spec:
                check(
                    "layer" in spec and "max_length" in spec, "source", part, "a model's heads need layer, max_length"
                )
    rule = "best dev safety F1 with dev over-refusal <= cap (labels.refuse_threshold); ties: dev AUPRC"
    path = Path(folder) / DECISION_FILE
    write_json_atomic(path, {"default": default, "rule": rule, "sources": dict(sources), "dev": dict(dev)})
    return path


def read_decision(stage_dir: str | Path | None = None) -> dict[str, Any] | None:
    """Notebook 06's ``decision.json`` (only from a finished stage when ``stage_dir`` is not given), or None."""
    root = Path(stage_dir) if stage_dir is not None else artifacts_dir() / HEADS_STAGE
    if stage_dir is None and not (root / MANIFEST).is_file():
        return None
    path = root / DECISION_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@dataclass
class Decider:
    """Scores and decisions of one source. ``uses_model``: it runs the model (the server must hold its lock)."""

    name: str
    threshold: float
    parts: list[Any]  # _BaselinePart | _HeadsPart | _OtherModelPart
    uses_model: bool = field(default=False)

    def scores(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(N,) score (max over parts) and (N,) whether any part escalates."""
        outs = [p.score(prompts) for p in self.parts]
        return np.max([o[0] for o in outs], axis=0), np.any([o[1] for o in outs], axis=0)

    def predict(self, prompts: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Labels and scores of ``prompts``."""
        s, esc = self.scores(prompts)
        return ["REFUSE" if v >= self.threshold else "ESCALATE" if e else "ALLOW" for v, e in zip(s, esc)], s

    def __call__(self, text: str) -> str:
        return self.predict([text])[0][0]

    @property
    def max_tokens(self) -> int | None:
        """The most tokens of a prompt this source reads (heads cut longer prompts), or None for no limit."""
        limits = [HEADS_MAX_TOKENS] if self.uses_model else []
        limits += [p.max_length for p in self.parts if isinstance(p, _OtherModelPart)]
        return min(limits) if limits else None


@dataclass
class _BaselinePart:
    baseline: Any

    def score(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        p = self.baseline.predict_proba(prompts)
        return p[:, _R], p.argmax(1) == _E


@dataclass
class _HeadsPart:
    model: Any
    tokenizer: Any
    heads: Any
    escalate: float

    def score(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        probs = self.heads.probs(pooled_hidden_states(self.model, self.tokenizer, list(prompts)))
        return probs["p_refuse"].numpy(), probs["p_escalate"].numpy() >= self.escalate


class _ModelByName:
    """A model loaded by name on first use, once, checked against the fingerprint its heads were trained on."""

    def __init__(self, name: str, fingerprint: Any) -> None:
        self.name, self.fingerprint, self.model, self.tokenizer = name, fingerprint, None, None
        self.lock = threading.Lock()  # the server may call a baseline-like source from several threads

    def get(self) -> tuple[Any, Any]:
        with self.lock:
            if self.model is None:
                from so8t_core.lm.loading import load_model_and_tokenizer
                from so8t_core.safety.real_heads import model_folder

                if self.fingerprint is not None and model_fingerprint(model_folder(self.name)) != self.fingerprint:
                    raise ValueError(
                        f"model {self.name!r} is not the one its heads were trained on; rerun {HEADS_NOTEBOOK}"
                    )
                model, self.tokenizer = load_model_and_tokenizer(self.name, dtype="float32")
                self.model = model.eval()
        return self.model, self.tokenizer


@dataclass
class _OtherModelPart:
    """Heads on a named model's pooled state at one layer (not the served model's)."""

    loader: _ModelByName
    layer: int
    max_length: int
    heads: Any
    escalate: float

    def score(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        model, tok = self.loader.get()
        with self.loader.lock:
            h = pooled_hidden_states(model, tok, list(prompts), 16, self.max_length, (self.layer,))
        probs = self.heads.probs(h)
        return probs["p_refuse"].numpy(), probs["p_escalate"].numpy() >= self.escalate


def build_decider(
    decision: Mapping[str, Any],
    name: str | None,
    model: Any = None,
    tokenizer: Any = None,
    model_dir: str | Path | None = None,
    stage_dir: str | Path | None = None,
) -> Decider:
    """The ``Decider`` of source ``name`` (None: the default) from ``decision.json``.

    Heads sources are checked against the served model: same hidden size and, when ``model_dir`` is a folder,
    the fingerprint recorded with the heads (heads trained on other weights would decide nonsense). A source
    naming its own ``model`` needs no served model: that model is loaded by name when the source first scores
    (one load per model, shared by the parts that read it) and checked against the heads' record then.

    Args:
        decision: from ``read_decision``.
        name: a source in ``decision["sources"]`` or None.
        model, tokenizer: the served model (needed by heads sources and ``bow_ids``).
        model_dir: its folder, for the fingerprint check.
        stage_dir: the folder ``heads_dir`` is relative to (default: notebook 06's stage folder).
    Raises:
        ValueError naming the source and the choices, or why heads do not fit the model.
    """
    sources = decision["sources"]
    name = name or decision["default"]
    if name not in sources:
        raise ValueError(f"--decision-source {name!r}: choose one of {sorted(sources)}")
    root = Path(stage_dir) if stage_dir is not None else artifacts_dir() / HEADS_STAGE
    parts: list[Any] = []
    loaders: dict[str, _ModelByName] = {}
    for part in name.split(OR):
        if part in BASELINES:
            parts.append(_BaselinePart(make_baseline(part, tokenizer)))
            continue
        spec = sources[part]
        folder = root / spec["heads_dir"]
        if "model" in spec:
            heads, thresholds = load_heads(folder)
            bound = json.loads((folder / "heads_model.json").read_text(encoding="utf-8"))
            loader = loaders.setdefault(spec["model"], _ModelByName(spec["model"], bound.get("fingerprint")))
            layer, max_length = int(spec["layer"]), int(spec["max_length"])
            parts.append(_OtherModelPart(loader, layer, max_length, heads, thresholds.escalate))
            continue
        check(model is not None, "model", None, f"source {part!r} runs heads on the served model")
        heads, thresholds = load_heads(folder)
        bound = json.loads((folder / "heads_model.json").read_text(encoding="utf-8"))
        if (
            model_dir is not None
            and Path(model_dir).is_dir()
            and bound.get("fingerprint") != model_fingerprint(model_dir)
        ):
            raise ValueError(
                f"source {part!r}: heads in {folder} were trained on other weights; rerun {HEADS_NOTEBOOK}"
            )
        check(
            heads.hidden_size == model.config.hidden_size,
            "hidden_size",
            heads.hidden_size,
            f"the model has {model.config.hidden_size}",
        )
        parts.append(_HeadsPart(model, tokenizer, heads, thresholds.escalate))
    return Decider(name, float(sources[name]["threshold"]), parts, any(isinstance(p, _HeadsPart) for p in parts))
