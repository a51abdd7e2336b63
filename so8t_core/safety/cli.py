"""The ``eval`` command line behind ``python -m so8t_core.safety eval ...``.

Exit code 2 and a one-line message for bad input; nothing is written to --out on failure::

    python -m so8t_core.safety eval --data FILE [--label-map safe=ALLOW,unsafe=REFUSE] [--prompt-col prompt]
        [--label-col label] [--split test] [--model DIR | --baseline tfidf|keyword] [--decision-source NAME] --out DIR

``--decision-source`` decides with a source notebook 06 measured (``safety.decision``: its dev-rule threshold, the
same ``Decider`` the server uses; ``default`` = the one it chose on dev); heads sources need ``--model``.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from so8t_core.artifacts import write_json_atomic, write_jsonl_atomic
from so8t_core.safety.baselines import BASELINES, make_baseline
from so8t_core.safety.labels import LABELS, breakdown, load_labeled, metrics

_R = LABELS.index("REFUSE")


def parse_label_map(text: str | None) -> dict[str, str]:
    """``"safe=ALLOW,unsafe=REFUSE"`` -> dict; raises ValueError on a malformed pair."""
    out: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip() or value.strip().upper() not in LABELS:
            raise ValueError(f"--label-map entry {pair!r}: expected name=LABEL with LABEL in {LABELS}")
        out[key.strip()] = value.strip().upper()
    return out


def _predict_model(model_dir: Path, prompts: Sequence[str]) -> tuple[list[str], list[dict], list[float], dict]:
    from so8t_core.safety.heads import predict_with_heads
    from so8t_core.safety.registry import load_heads_for_model

    if not model_dir.is_dir():
        raise ValueError(f"--model {model_dir}: no such folder")
    heads, thresholds, _ = load_heads_for_model(model_dir)  # fails fast, naming the notebook, before loading the model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    preds, probs = predict_with_heads(model, tok, heads, prompts, thresholds)
    keys = ("p_unsafe", "p_refuse", "p_escalate")
    scores = [{k: float(probs[k][i]) for k in keys} for i in range(len(prompts))]
    source = {"model": str(model_dir), "thresholds": vars(thresholds)}
    return preds, scores, [s["p_refuse"] for s in scores], source


def _predict_baseline(name: str, prompts: Sequence[str]) -> tuple[list[str], list[dict], list[float], dict]:
    base = make_baseline(name)
    proba = base.predict_proba(prompts)
    scores = [dict(zip(LABELS, map(float, row))) for row in proba]
    return base.predict(prompts), scores, proba[:, _R].tolist(), {"baseline": name, "trained_on": "shipped train"}


def _predict_source(
    name: str, model_dir: Path | None, prompts: Sequence[str]
) -> tuple[list[str], list[dict], list[float], dict]:
    from so8t_core.safety.decision import build_decider, read_decision

    decision = read_decision()
    if decision is None:
        raise ValueError("--decision-source: no decision.json; run notebooks/06_safety_eval.ipynb first")
    chosen = decision["default"] if name == "default" else name
    needs_model = any(part not in BASELINES for part in chosen.split("|"))
    model = tok = None
    if model_dir is not None or needs_model:
        if model_dir is None or not model_dir.is_dir():
            raise ValueError(f"--decision-source {chosen!r} runs heads on a model: pass --model DIR")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    decider = build_decider(decision, chosen, model, tok, model_dir)
    preds, s = decider.predict(prompts)
    source = {"decision_source": decider.name, "threshold": decider.threshold, "default": decision["default"]}
    return preds, [{"p_refuse": float(v)} for v in s], [float(v) for v in s], source


def _write_outputs(out_dir: Path, rows: list[dict], summary: dict) -> None:
    write_jsonl_atomic(out_dir / "predictions.jsonl", rows)
    write_json_atomic(out_dir / "metrics.json", summary)  # written last: marks a complete run


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m so8t_core.safety", description="Safety evaluation.")
    sub = p.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="evaluate a baseline or model+heads on a labelled CSV/JSONL file")
    ev.add_argument("--data", required=True, type=Path, help="labelled .csv or .jsonl file")
    ev.add_argument("--label-map", default=None, help="e.g. safe=ALLOW,unsafe=REFUSE")
    ev.add_argument("--prompt-col", default="prompt")
    ev.add_argument("--label-col", default="label")
    ev.add_argument("--split", default=None, help="only rows whose 'split' column equals this (e.g. test)")
    who = ev.add_mutually_exclusive_group()
    who.add_argument("--model", type=Path, default=None, help="causal LM folder with safety_heads.* in it")
    who.add_argument("--baseline", choices=("tfidf", "keyword"), default="tfidf")
    ev.add_argument("--decision-source", default=None, help="a source notebook 06 measured, or 'default'")
    ev.add_argument("--out", required=True, type=Path, help="folder for predictions.jsonl and metrics.json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m so8t_core.safety``; returns the exit code (2 for bad input)."""
    args = _parser().parse_args(argv)
    try:
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out}: exists and is not a folder")
        label_map = parse_label_map(args.label_map)
        data = load_labeled(args.data, args.prompt_col, args.label_col, label_map, args.split)
        if args.decision_source:
            run = _predict_source(args.decision_source, args.model, data.prompts)
        elif args.model:
            run = _predict_model(args.model, data.prompts)
        else:
            run = _predict_baseline(args.baseline, data.prompts)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    preds, scores, p_refuse, source = run
    rows = [
        {"prompt": p, "gold": g, "pred": y, "scores": s} for p, g, y, s in zip(data.prompts, data.labels, preds, scores)
    ]
    summary = {
        **metrics(data.labels, preds, p_refuse),
        **breakdown(data, preds),
        "data": str(args.data),
        "split": args.split,
        **source,
    }
    _write_outputs(args.out, rows, summary)
    print(json.dumps({k: summary[k] for k in ("n", "accuracy", "macro_f1", "safety_f1", "over_refusal_rate")}))
    return 0
