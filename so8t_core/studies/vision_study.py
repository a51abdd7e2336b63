"""Notebook 05's findings over seeds: each fusion variant against its text-only rival, the pretrained tower
against random ones (under the adapter, and in caption retrieval), by the crossed test over seeds x held-out images,
Holm over the declared family; plus the frozen-model hash every check of "nothing else trained" compares.

A seed is a replicate of the adapter training: the adapter's and fusion layer's initialisation and the batch
order (and, for a random tower, its weights). The held-out images are the same for every seed, so one bootstrap draw
of them applies to every seed (all questions about an image move together). A variant that has no seed (the
zero-shot text model, the OCR path, the pretrained tower) is the same run paired with every seed of the other side.

Explained in notebooks/05_visual_adapter.ipynb.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import nn

from so8t_core.config import check
from so8t_core.stats import ALPHA, crossed_test, holm, significant
from so8t_core.verdicts import need

MIN_EFFECT = 0.02  # exact match (share of held-out questions) or retrieval top-1: a smaller gap is no difference
TOWER = "pretrained_vs_random_tower"  # the adapter on the pretrained tower against one on random towers
RETRIEVAL = "retrieval_pretrained_vs_random"  # caption retrieval: the pretrained tower against random ones


def primary(methods: Sequence[str]) -> tuple[str, ...]:
    """The declared family: every fusion method against its text-only rival, and the two tower comparisons."""
    return (*(f"{m}_vs_text_only" for m in methods), TOWER, RETRIEVAL)


def state_hash(module: nn.Module) -> str:
    """sha256 over every tensor of ``module``'s state dict (names sorted, values as float32 bytes).

    Args:
        module: e.g. the frozen soul LM, hashed before and after training the adapter around it.
    Returns:
        The hex digest; equal digests mean no weight, buffer or adapter changed.
    """
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def exact(scores: Sequence[Mapping[str, Any]], keep: Sequence[int]) -> np.ndarray:
    """(len(keep),) 1.0 where the ``score_rows`` entry at each kept index is an exact match."""
    return np.array([float(scores[i]["exact"]) for i in keep])


def difference(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    images: Sequence[Any],
    n_boot: int = 1000,
    seed: int = 0,
    min_effect: float = MIN_EFFECT,
) -> dict[str, Any]:
    """``a - b`` per item under each seed (a single run on either side pairs with every seed), crossed over seeds
    and the items' images (``stats.crossed_test``).

    Args:
        a, b: one (n_items,) array per seed (or one array for a run without seeds).
        images: the image of each item (the resampling unit).
        n_boot, seed, min_effect: as in ``crossed_test``.
    Returns:
        ``crossed_test``'s row plus ``mean_a`` / ``mean_b`` (per seed).
    """
    n = max(len(a), len(b))
    check(len(a) in (1, n) and len(b) in (1, n), "seeds", (len(a), len(b)), "must match or be 1")
    d = np.stack([a[s % len(a)] - b[s % len(b)] for s in range(n)])  # (S, items)
    row = crossed_test(d, list(images), n_boot, seed, min_effect=min_effect)
    return row | {"mean_a": [float(x.mean()) for x in a], "mean_b": [float(x.mean()) for x in b]}


def compare(
    scores: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
    rows: Sequence[tuple[int, str, str, str]],
    rivals: Mapping[str, str],
    best: str,
    retrieval: Mapping[str, Sequence[Sequence[bool]]],
    n_boot: int = 1000,
    seed: int = 0,
    ocr: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every comparison of notebook 05; Holm over ``primary(methods)`` only, the rest exploratory.

    Args:
        scores: variant -> one ``score_rows`` list per seed (``visual_<m>``, the rivals, ``random_tower_<best>``).
        rows: the held-out rows the scores are on (image index first, kind last).
        rivals: method -> its text-only rival's variant name (``train.text_only_baselines``).
        best: the fusion method the random-tower ablation used.
        retrieval: ``pretrained`` -> [hits] (one run), ``random`` -> hits per random-tower seed.
        n_boot, seed: as in ``crossed_test``.
        ocr: ``train.ocr_answers`` output (word rows in order), for the exploratory comparison with OCR.
    Returns:
        name -> row with ``primary`` and ``p_holm`` (None when exploratory).
    """
    what = "vision.study.compare"
    qa = [i for i, r in enumerate(rows) if r[3] != "caption"]
    words = [i for i, r in enumerate(rows) if r[3] == "word"]
    ex = lambda name, keep: [exact(s, keep) for s in need(scores, name, what)]
    img = lambda keep: [rows[i][0] for i in keep]
    out: dict[str, dict[str, Any]] = {}
    for m, rival in rivals.items():
        out[f"{m}_vs_text_only"] = difference(ex(f"visual_{m}", qa), ex(rival, qa), img(qa), n_boot, seed)
        if len(set(img(words))) >= 2:
            w = difference(ex(f"visual_{m}", words), ex(rival, words), img(words), n_boot, seed)
            out[f"{m}_vs_text_only_on_words"] = w
            if ocr is not None:
                o = [np.array([float(r["exact"]) for r in ocr])]
                out[f"{m}_vs_ocr_on_words"] = difference(ex(f"visual_{m}", words), o, img(words), n_boot, seed)
    out[TOWER] = difference(ex(f"visual_{best}", qa), ex(f"random_tower_{best}", qa), img(qa), n_boot, seed)
    hits = lambda k: [np.asarray(h, dtype=float) for h in need(retrieval, k, what)]
    pre = hits("pretrained")
    out[RETRIEVAL] = difference(pre, hits("random"), list(range(len(pre[0]))), n_boot, seed)
    family = primary(list(rivals))
    adjusted = holm({k: out[k]["p"] for k in family})
    return {k: r | {"primary": k in adjusted, "p_holm": adjusted.get(k)} for k, r in out.items()}


def visual_verdicts(
    comparisons: Mapping[str, Mapping[str, Any]], methods: Sequence[str], alpha: float = ALPHA
) -> dict[str, Any]:
    """Notebook 05's verdicts from ``compare``: the primary rows, Holm-adjusted, at least the minimum effect.

    Args:
        comparisons: ``compare`` output.
        methods: the fusion methods.
        alpha: family-wise error rate.
    Returns:
        ``<m>_beats_text_only``, ``pretrained_tower_beats_random`` (under the adapter) and
        ``pretraining_beats_random_tower_retrieval``: True when ``stats.significant`` is +1 on ``p_holm``.
    Raises:
        KeyError: a primary comparison is missing.
    """
    sig = {k: significant(dict(need(comparisons, k, "visual_verdicts")), alpha, "p_holm") for k in primary(methods)}
    out: dict[str, Any] = {f"{m}_beats_text_only": sig[f"{m}_vs_text_only"] == 1 for m in methods}
    out["pretrained_tower_beats_random"] = sig[TOWER] == 1
    out["pretraining_beats_random_tower_retrieval"] = sig[RETRIEVAL] == 1
    return out


def better_fusion(results: Mapping[str, Sequence[Mapping[str, float]]], methods: Sequence[str]) -> str:
    """The method with the higher mean (over seeds) held-out ``em_all``: a name for the ablation, not a verdict."""
    return max(methods, key=lambda m: float(np.mean([r["em_all"] for r in need(results, f"visual_{m}", "better")])))


def reading(verdicts: Mapping[str, Any], comparisons: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Sentences for the reading cell, quoting each comparison's estimate, interval, p and per-seed values.

    Args:
        verdicts: ``visual_verdicts`` output.
        comparisons: ``compare`` output.
    Returns:
        One sentence per comparison, the primary family first.
    """

    def say(k: str, r: Mapping[str, Any]) -> str:
        seeds = ", ".join(f"{v:+.3f}" for v in r["per_seed"])
        p = f"Holm p {r['p_holm']:.3g}" if r["primary"] else f"p {r['p']:.3g}, exploratory: no verdict"
        return (
            f"{k}: {r['estimate']:+.3f} (95 % interval {r['lo']:+.3f} to {r['hi']:+.3f}, {p}; "
            f"{r['n_seeds']} seeds x {r['n_clusters']} images; per seed {seeds})"
        )

    won = [k for k, v in verdicts.items() if v is True]
    lost = [k for k, v in verdicts.items() if v is False]
    out = [f"Shown (minimum effect {MIN_EFFECT}, Holm over the primary family): {', '.join(won) or 'nothing'}."]
    out.append(f"Not shown: {', '.join(lost) or 'nothing'}; a negative here is a result, not a missing run.")
    ordered = sorted(comparisons.items(), key=lambda kv: not kv[1]["primary"])
    return out + [say(k, r) + "." for k, r in ordered]
