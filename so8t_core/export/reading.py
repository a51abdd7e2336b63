"""Notebook 04's reading: plain sentences computed from what the stage logged, never typed by hand.

Explained in notebooks/04_fusion_and_gguf.ipynb.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TARGET_WORDS = {
    "fused_vs_wrapper_max_abs_le_1e-4": "fused vs soul wrapper max |Δlogit| <= 1e-4",
    "f32_max_abs_le_1e-3_and_top1_100": "f32 GGUF max |Δlogit| <= 1e-3 with 100 % top-1",
    "f16_top1_ge_99": "f16 GGUF top-1 >= 99 %",
    "q8_0_ppl_within_1pct_of_f32": "q8_0 GGUF perplexity within 1 % of f32",
    "fused_vs_wrapper_le_fp32_rounding_bound": "fused vs soul wrapper within the head's float32 rounding bound",
    "fused_vs_exact_le_fp32_rounding_bound": "fused head within that bound of the exact (float64) soul logits",
}


def _targets(targets: Mapping[str, Any]) -> str:
    held = [TARGET_WORDS.get(k, k) for k, v in targets.items() if v is True]
    failed = [TARGET_WORDS.get(k, k) for k, v in targets.items() if v is False]
    parts = [f"holds: {'; '.join(held)}" if held else "no target holds"]
    if failed:
        parts.append(f"fails: {'; '.join(failed)}")
    if unmeasured := [TARGET_WORDS.get(k, k) for k, v in targets.items() if v is None]:
        parts.append(f"not measured: {'; '.join(unmeasured)}")
    return ". ".join(parts)


def real_reading(name: str, row: Mapping[str, Any]) -> list[str]:
    """Sentences on one real model's fusion and GGUF export, from its logged headline row (``real.headline``).

    Args:
        name: the real model's name.
        row: its ``{headline: value}`` row.
    Returns:
        Sentences for the reading cell.
    """
    targets = {k.removeprefix("target_"): v for k, v in row.items() if k.startswith("target_")}
    untied = all(row.get(k) for k in ("fused_untied", "config_untied", "input_embeddings_unchanged"))
    out = [
        f"{name}: the soul (alpha {row['alpha']:.3g}) fused into the tied head differs from the soul wrapper by "
        f"{row['parity_max_abs_diff']:.3g} at most (this head's float32 rounding alone is "
        f"{row['fp32_head_rounding']:.2g}; bound {row['parity_atol']:.2g}); the soul itself moves the logits by "
        f"{row['soul_shift_max_abs']:.3g} and changes the top-1 token at "
        f"{1 - row['soul_shift_top1']:.1%} of the positions.",
        f"The head was {'untied cleanly' if untied else 'NOT untied cleanly'} (input embeddings "
        f"{'unchanged' if row.get('input_embeddings_unchanged') else 'changed'}) and the folder "
        f"{'keeps' if row.get('chat_template_kept') else 'does NOT keep'} the base's chat template.",
    ]
    types = [k.removesuffix("_ppl") for k in row if k.endswith("_ppl") and not k.startswith("ppl")]
    per = [
        f"{t}: max |Δlogit| {row[f'{t}_max_abs_diff']:.2g}, top-1 {row[f'{t}_top1']:.2%}, perplexity "
        f"{row[f'{t}_ppl']:.4g}" + (f" ({row[f'{t}_ppl_vs_f32']:+.2%} vs f32)" if f"{t}_ppl_vs_f32" in row else "")
        for t in types
    ]
    if per:
        out.append("In llama.cpp against transformers: " + "; ".join(per) + ".")
    out.append(f"Targets on {name}: {_targets(targets)}.")
    return out


def stage_reading(metrics: Mapping[str, Any]) -> list[str]:
    """Sentences on what this run of notebook 04 found, from its metrics.

    Args:
        metrics: the stage's metrics (``targets``, ``tied_checks``, ``latency_ratio_*``, ``real``), any missing.
    Returns:
        Sentences for the reading cell.
    """
    out = []
    if "targets" in metrics:
        out.append(f"Tiny model: {_targets(metrics['targets'])}.")
    ratios = [
        f"{where} {metrics[f'latency_ratio_{key}']:.3g}"
        for where, key in (("transformers", "transformers"), ("llama.cpp", "llama_cpp"))
        if f"latency_ratio_{key}" in metrics
    ]
    if ratios:
        out.append(f"Fused / base decoding speed: {', '.join(ratios)} (1 means the same speed).")
    if checks := metrics.get("tied_checks"):
        failed = [k for k, v in checks.items() if v is False]
        out.append("Tied random Llama: " + ("every check holds." if not failed else f"fails {', '.join(failed)}."))
    real = metrics.get("real") or {}
    for name, row in real.items():
        out.extend(real_reading(name, row))
    if not real:
        out.append("No real model ran in this profile.")
    return out
