"""Notebook 03's tier A on a real model's cached final states: the states, the shortlist, the findings, the soul.

The real model runs once per task and split; the input of its final norm at every position that predicts an answer
token is kept with ``feature_cache`` (keyed by the model's weights, the items and this recipe), with the base's
full-vocabulary scores there (NLL, greedy hit, its top tokens). Every ``head_study`` family then trains on those
states exactly as on the tiny model.

**A shortlist, not the full vocabulary, in training and scoring.** SmolLM2's head has 49,152 rows; a full softmax
costs about 0.1 s a step on two busy cores, a hundred times what the rest of tier A costs, and would take the
section far past its budget. Every variant therefore predicts over the same shortlist: every answer token of the
task (all splits) and the base's ``top_k`` tokens at every cached position. The base's greedy token is always on
it, so the base's exact match is the same on the shortlist as on the full vocabulary; ``shortlist_mass`` reports
how much of the base's probability the shortlist holds. The soul's parameters do not depend on the vocabulary, so
the saved soul runs on the full head; ``full_head`` gives that head for the parity check.

**Declared before the run**: ``MIN_EFFECT`` and the primary family ``PRIMARY`` (each on every measurable task);
Holm corrects those and nothing else; the rest is exploratory. A task is *valid* when the best rival (a family
other than the soul's) beats the untouched base on dev by at least ``MIN_EFFECT``; a comparison whose family's
learning rate stayed at an end of its grid is *edge*; neither makes a verdict.

**The soul notebook 04 fuses** (``train_and_save_soul``): ``artifacts/03_soul_injection/real/<model>/soul/``, a
``SoulWrapper`` folder (``soul.safetensors``: R_cmd and R_safe generators and alpha; ``soul_config.json``: alpha
fixed at its trained value) of the ``soul_composed`` head, seed 0; ``real/<model>/model_ref.json`` names the base
(``loading.read_model_ref``). ``loading.load_soul_folder(real_model_dir(model), folder)`` reproduces the tier-A
head's logits on the full vocabulary (notebook 03 asserts it, float32, 1e-4).

Explained in notebooks/03_soul_injection.ipynb.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from so8t_core.config import check
from so8t_core.data.real_tasks import RealItem, encode_chat
from so8t_core.gate.soul import SoulConfig, SoulWrapper
from so8t_core.lm.feature_cache import cached, digest, model_fingerprint
from so8t_core.studies import head_study as hs
from so8t_core.studies import soul_verdicts as sv
from so8t_core.verdicts import need

MIN_EFFECT = 0.02  # answer-token NLL (nats) on the shortlist: a smaller difference is never a win or a loss
PRIMARY: dict[str, tuple[str, str]] = {  # name -> (a, b), each on every measurable task: a - b, lower NLL: a better
    "soul_vs_oft": ("soul_learned", "oft"),
    "soul_vs_lora_r1": ("soul_learned", "lora_r1"),
    "composed_vs_single": ("soul_composed_learned", "soul_learned"),
    "learned_vs_phi": ("soul_learned", sv.PHI),
}
CLAIMS = {
    "soul_vs_oft": "The learned soul vs OFT on lm_head",
    "soul_vs_lora_r1": "The learned soul vs LoRA r=1 on lm_head",
    "composed_vs_single": "R_cmd R_safe vs one rotation",
    "learned_vs_phi": "alpha learned vs alpha fixed at phi",
}
REFERENCE = "oft"
RIVALS = ("temperature", "ln", "ia3", "oft", "boft", "lora_r1", "lora_temp")  # the validity gate's families
TOP_K = 8
KIND = "real_answer_states"


class _Body:
    """The causal LM without its head: ``cache_states`` hooks the final norm, and 49,152 logits at every position
    would cost more than the body."""

    def __init__(self, lm: nn.Module) -> None:
        self.model = lm.model

    def __call__(self, input_ids: Tensor, attention_mask: Tensor) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


@torch.no_grad()
def base_scores(norm: nn.Module, lm_head: nn.Module, x: Tensor, y: Tensor, top_k: int, chunk: int = 256) -> dict:
    """The base head's full-vocabulary NLL, greedy hit and ``top_k`` tokens at each cached position (P rows)."""
    nll, hit, top = [], [], []
    for s in range(0, len(x), chunk):
        logits = lm_head(norm(x[s : s + chunk])).float()  # (p, V)
        nll.append(nn.functional.cross_entropy(logits, y[s : s + chunk], reduction="none"))
        top.append(logits.topk(top_k, dim=-1).indices)  # (p, k), the greedy token first
        hit.append((top[-1][:, 0] == y[s : s + chunk]).float())
    return {"nll": torch.cat(nll), "hit": torch.cat(hit), "top": torch.cat(top)}


def answer_states(
    model: nn.Module, tokenizer: Any, items: Sequence[RealItem], model_dir: str | Path, batch_size: int = 16,
    top_k: int = TOP_K,
) -> tuple[dict[str, Tensor], bool]:  # fmt: skip
    """The final norm's input at each answer-predicting position, with the base's scores there, computed once.

    Args:
        model: the real causal LM (Llama layout: ``model.model.norm``), float32, eval mode.
        tokenizer: its tokenizer (with a chat template).
        items: one split of a task.
        model_dir: the model's folder (its weights' fingerprint keys the cache).
        batch_size: items per forward pass.
        top_k: base tokens kept per position for the shortlist.
    Returns:
        ``(features, hit)``: ``x`` (P, H), ``y`` (P,), ``item`` (P,), ``n_items`` (), ``top`` (P, k),
        ``base_nll`` / ``base_hit`` (P,), ``known_hit`` (N,): the base's greedy first answer token is the first
        token of the item's ``known`` answer; ``hit`` True when read from the cache.
    """
    enc = encode_chat(tokenizer, items)
    recipe = {"states": "final-norm input at answer-predicting positions", "batch": batch_size, "top_k": top_k,
              "chat_template": digest(tokenizer.chat_template), "dtype": "float32", "version": 1}  # fmt: skip
    key = {"model": model_fingerprint(model_dir), "items": digest([asdict(it) for it in items]), "recipe": recipe}

    def compute() -> dict[str, Tensor]:
        c = hs.cache_states(_Body(model), enc, batch_size)
        base = base_scores(model.model.norm, model.get_output_embeddings(), c.x, c.y, top_k)
        first = first_positions(c.item, c.n_items)
        known = (base["top"][first, 0] == enc["known_first"]).float()
        return {"x": c.x, "y": c.y, "item": c.item, "n_items": torch.tensor(c.n_items), "top": base["top"],
                "base_nll": base["nll"], "base_hit": base["hit"], "known_hit": known}  # fmt: skip

    return cached(KIND, key, compute)


def first_positions(item: Tensor, n_items: int) -> Tensor:
    """Index of each item's first answer position in a cache whose positions are grouped by item, (N,)."""
    counts = torch.bincount(item, minlength=n_items)
    check(bool((counts > 0).all()), "item", counts.tolist(), "every item needs at least one answer position")
    return torch.cumsum(counts, 0) - counts


def item_means(values: Tensor, item: Tensor, n_items: int) -> np.ndarray:
    """Mean of per-position ``values`` within each item, (N,)."""
    n = torch.bincount(item, minlength=n_items).clamp(min=1).float()
    return (torch.zeros(n_items).index_add_(0, item, values.float()) / n).numpy()


def base_summary(feats: Mapping[str, Tensor]) -> dict[str, float]:
    """The base on one split, full vocabulary: exact match (every answer token greedy), answer NLL, and the share
    of items whose first greedy token is the known answer's."""
    n = int(feats["n_items"])
    em = item_means(feats["base_hit"], feats["item"], n) == 1.0
    return {"exact_match": float(em.mean()), "nll": float(item_means(feats["base_nll"], feats["item"], n).mean()),
            "known_first": float(feats["known_hit"].mean())}  # fmt: skip


def shortlist(splits: Mapping[str, Mapping[str, Tensor]], top_k: int = TOP_K) -> Tensor:
    """Sorted token ids: every answer token of every split and the base's ``top_k`` at every position."""
    ids = [torch.cat([f["y"], f["top"][:, :top_k].reshape(-1)]) for f in splits.values()]
    return torch.unique(torch.cat(ids))  # sorted


def to_cached(feats: Mapping[str, Tensor], ids: Tensor) -> hs.Cached:
    """``head_study.Cached`` with each answer token renumbered to its place in the shortlist ``ids``."""
    y = torch.searchsorted(ids, feats["y"])
    check(bool((ids[y.clamp(max=len(ids) - 1)] == feats["y"]).all()), "ids", len(ids), "misses an answer token")
    return hs.Cached(feats["x"], y, feats["item"], int(feats["n_items"]))


def sliced_head(lm_head: nn.Module, ids: Tensor) -> nn.Linear:
    """A bias-free head holding the shortlist's rows of ``lm_head`` (float32 copies)."""
    W = lm_head.weight.detach()[ids].float().clone()  # (V', H)
    head = nn.Linear(W.shape[1], W.shape[0], bias=False)
    head.weight = nn.Parameter(W, requires_grad=False)
    return head


@torch.no_grad()
def shortlist_mass(norm: nn.Module, lm_head: nn.Module, x: Tensor, ids: Tensor) -> float:
    """Mean base probability that falls on the shortlist at the given positions (1.0: nothing left outside)."""
    p = torch.softmax(lm_head(norm(x)).float(), dim=-1)  # (P, V)
    return float(p[:, ids].sum(-1).mean())


def valid_on_dev(result: Mapping[str, Any], base_dev_nll: float, min_effect: float = MIN_EFFECT) -> dict[str, Any]:
    """Whether the best rival family beats the untouched base on dev (seed 0, at its chosen rate) by ``min_effect``.

    Args:
        result: ``head_study.run_task`` output.
        base_dev_nll: the base's mean dev answer NLL on the same shortlist.
        min_effect: the margin.
    Returns:
        ``{"valid": bool, "best_rival": family, "best_rival_dev_nll": float, "base_dev_nll": float}``.
    """
    tuning = need(result, "tuning", "valid_on_dev")
    dev = {f: t["scores"][t["grid"].index(t["choice"])] for f, t in tuning.items() if f in RIVALS}
    best = min(dev, key=dev.__getitem__)
    return {"valid": bool(dev[best] < base_dev_nll - min_effect), "best_rival": best,
            "best_rival_dev_nll": float(dev[best]), "base_dev_nll": float(base_dev_nll)}  # fmt: skip


def primary_keys(tasks: Sequence[str]) -> list[str]:
    """The row keys ``"<task>/<a> - <b>"`` of the primary family on ``tasks``."""
    return [f"{t}/{a} - {b}" for t in tasks for a, b in PRIMARY.values()]


def real_rows(
    results: Mapping[str, Mapping[str, Any]], templates: Mapping[str, Sequence[Any]], n_boot: int = 1000,
    min_effect: float = MIN_EFFECT,
) -> dict[str, dict]:  # fmt: skip
    """Every variant against OFT and the primary pairs per task (``stats.crossed_test``), Holm over ``PRIMARY``
    only, each row marked ``primary`` and ``edge``."""
    extra = [(a, b) for a, b in PRIMARY.values() if b != REFERENCE]
    raw = sv.tier_rows(results, templates, REFERENCE, extra, n_boot, min_effect)
    edges = {t: r.get("edge_variants", []) for t, r in results.items()}
    return sv.mark_edges(sv.add_holm(raw, primary_keys(list(results))), edges)


def real_verdicts(rows: Mapping[str, dict], valid: Mapping[str, bool]) -> dict[str, Any]:
    """The primary comparisons' findings on valid tasks: ``<name>_better_on`` / ``<name>_worse_on``,
    ``valid_tasks`` / ``invalid_tasks`` and ``no_verdict_edge`` (``"<task>/<name>"``)."""
    out: dict[str, Any] = {"valid_tasks": [t for t, ok in valid.items() if ok],
                           "invalid_tasks": [t for t, ok in valid.items() if not ok]}  # fmt: skip
    for name, (a, b) in PRIMARY.items():
        out[f"{name}_better_on"] = sv.wins(rows, f"{a} - {b}", valid)
        out[f"{name}_worse_on"] = sv.losses(rows, f"{a} - {b}", valid)
    out["no_verdict_edge"] = [f"{t}/{n}" for n, (a, b) in PRIMARY.items() for t in valid
                              if rows.get(f"{t}/{a} - {b}", {}).get("edge")]  # fmt: skip
    return out


def reading(model: str, verdicts: Mapping[str, Any], rows: Mapping[str, dict], summary: Mapping[str, Any]) -> list:
    """Plain sentences quoting the real-model section's numbers and verdicts.

    Args:
        model: the real model's name.
        verdicts: ``real_verdicts`` output.
        rows: ``real_rows`` output.
        summary: task -> ``{"base": base_summary(test), "measurable": {...}, "test_nll": {variant: mean}}``.
    """
    say = [f"{model} (weights 4-bit GGUF quantized, dequantized to float32), base on test: " + "; ".join(
        f"{t} exact match {s['base']['exact_match']:.2f}, knows the true answer's first token on "
        f"{s['base']['known_first']:.2f}" for t, s in summary.items()) + "."]  # fmt: skip
    dropped = {t: s["measurable"]["reason"] for t, s in summary.items() if not s["measurable"]["measurable"]}
    if dropped:
        say.append("Not measured: " + "; ".join(f"{t} ({why})" for t, why in dropped.items()) + ".")
    for t, s in summary.items():
        if "test_nll" in s:
            best = min(s["test_nll"], key=s["test_nll"].__getitem__)
            say.append(f"{t}: lowest test NLL {best} ({s['test_nll'][best]:.3f}; base {s['test_nll']['base']:.3f}).")
    valid, invalid = need(verdicts, "valid_tasks", "reading"), verdicts.get("invalid_tasks", [])
    say.append(f"Valid (a rival beats the base on dev): {sv._list(valid)}"
               + (f"; invalid: {sv._list(invalid)} (no verdict there)." if invalid else "."))  # fmt: skip
    for name, (a, b) in PRIMARY.items():
        parts = [f"{t} {r['mean']:+.3f} [{r['lo']:+.3f}, {r['hi']:+.3f}] p_holm {r['p_holm']:.3f}"
                 + (" (edge)" if r.get("edge") else "")
                 for t in valid if (r := rows.get(f"{t}/{a} - {b}")) is not None]  # fmt: skip
        better, worse = sv._list(verdicts[f"{name}_better_on"]), sv._list(verdicts[f"{name}_worse_on"])
        say.append(
            f"{CLAIMS[name]}: better on {better}, worse on {worse}" + (f" ({'; '.join(parts)})." if parts else ".")
        )
    if verdicts.get("no_verdict_edge"):
        say.append(
            "No verdict (a learning rate stayed at an end of its grid): " + ", ".join(verdicts["no_verdict_edge"])
        )
    return say


def save_soul(head: nn.Module, model: nn.Module, out_dir: str | Path) -> Path:
    """A trained tier-A ``soul_composed`` head as a ``SoulWrapper`` folder around ``model`` (alpha fixed at its
    trained value), loadable with ``loading.load_soul_folder(base, out_dir)`` and fusable into the tied head.

    Args:
        head: a ``head_study.SoulGateHead`` with R = R_cmd R_safe.
        model: the real causal LM the head's states came from (its norm and head are the tier-A head's).
        out_dir: the folder (``soul.safetensors`` + ``soul_config.json``).
    Returns:
        ``out_dir``.
    """
    rot: Any = getattr(head, "rotation", None)
    check(hasattr(rot, "r_cmd"), "head", type(head).__name__, "needs a composed rotation (family soul_composed)")
    config = SoulConfig(
        hidden_size=rot.hidden_size, map=rot.map, alpha_mode="fixed", alpha_start=float(head.alpha.detach())
    )
    wrapper = SoulWrapper.build(model, config)
    wrapper.load_soul_state({"r_cmd.generators": rot.r_cmd.generators.detach(),
                             "r_safe.generators": rot.r_safe.generators.detach(),
                             "alpha": head.alpha.detach().reshape(1)})  # fmt: skip
    return wrapper.save(out_dir)


def full_head(head: nn.Module, lm_head: nn.Module) -> nn.Module:
    """A copy of a tier-A head whose (frozen) output rows are the whole of ``lm_head``: the soul on the full
    vocabulary, which the saved wrapper must reproduce."""
    out = copy.deepcopy(head)
    out.lm_head = copy.deepcopy(lm_head).float().requires_grad_(False)
    return out


@torch.no_grad()
def wrapper_answer_logits(wrapper: SoulWrapper, enc: Mapping[str, Tensor], n: int) -> Tensor:
    """The wrapper's full-vocabulary logits at the answer-predicting positions of the first ``n`` items, (P, V),
    in the order ``head_study.cache_states`` keeps them."""
    ids, mask, lab = (enc[k][:n] for k in ("input_ids", "attention_mask", "labels"))
    logits = wrapper(ids, mask).logits  # (n, T, V)
    return logits[:, :-1][lab[:, 1:] != -100].float()  # (P, V)


def run_tasks(
    model: nn.Module, tokenizer: Any, model_dir: str | Path, items: Mapping[str, Mapping[str, Sequence[RealItem]]],
    run: hs.TierA, specs: Mapping[str, dict[str, Any]], measurable: Any, batch_size: int = 16,
) -> dict[str, dict[str, Any]]:  # fmt: skip
    """Tier A on each task of a real model: cached states, the base, the shortlist, every family, the dev gate.

    Args:
        model, tokenizer, model_dir: the real model (``load_model_and_tokenizer(name)``, ``real_model_dir(name)``).
        items: task -> split -> ``make_real_task`` items.
        run: tier-A sizes; specs: ``head_study.variant_specs``.
        measurable: ``real_tasks.measurable``; a task it rejects is reported and not trained.
        batch_size: items per forward pass.
    Returns:
        task -> ``{"base": base_summary(test), "measurable": {...}}``, and for measured tasks also ``result``
        (``run_task``), ``cache``, ``ids`` (shortlist), ``head`` (sliced), ``feats``, ``shortlist_mass``,
        ``gate`` (``valid_on_dev``) and ``test_nll`` / ``test_em`` (variant -> mean over seeds and items).
    """
    norm, lm_head = model.model.norm, model.get_output_embeddings()
    out: dict[str, dict[str, Any]] = {}
    for task, split_items in items.items():
        feats = {s: answer_states(model, tokenizer, its, model_dir, batch_size)[0] for s, its in split_items.items()}
        base = base_summary(feats["test"])
        row: dict[str, Any] = {"base": base, "measurable": measurable(task, base["exact_match"], base["known_first"])}
        out[task] = row
        if not row["measurable"]["measurable"]:
            continue
        ids = shortlist(feats)
        cache = {s: to_cached(f, ids) for s, f in feats.items()}
        head = sliced_head(lm_head, ids)
        result = hs.run_task(cache, norm, head, run, dict(specs))
        base_dev = float(hs.score(hs.build("base", norm, head), cache["dev"])["nll"].mean())
        row |= {"feats": feats, "ids": ids, "cache": cache, "head": head, "result": result,
                "shortlist_mass": shortlist_mass(norm, lm_head, feats["test"]["x"], ids),
                "gate": valid_on_dev(result, base_dev),
                "test_nll": {v: float(n.mean()) for v, n in result["nll"].items()},
                "test_em": {v: float(e.mean()) for v, e in result["em"].items()}}  # fmt: skip
    return out


def train_and_save_soul(
    model: nn.Module, runs: Mapping[str, Mapping[str, Any]], run: hs.TierA, specs: Mapping[str, dict[str, Any]],
    out_dir: str | Path, n_check: int = 16,
) -> dict[str, Any] | None:  # fmt: skip
    """The soul notebook 04 fuses: ``soul_composed`` (R_cmd R_safe, alpha learned), seed 0, at its dev-chosen rate,
    on the first measured task, saved by ``save_soul`` into ``out_dir/soul``.

    Args:
        model: the real model (still loaded); runs: ``run_tasks`` output; run, specs: as for ``run_tasks``.
        out_dir: ``artifacts/03_soul_injection/real/<model>``.
        n_check: items of the test split whose full-vocabulary logits the saved folder must reproduce.
    Returns:
        None when no task was measured, else ``folder``, ``task``, ``alpha``, ``lr``, ``want`` (the tier-A head's
        full-vocabulary logits at the answer positions of the first ``n_check`` test items, (P, V)),
        ``shortlist_parity_max_abs`` (the trained head against the full head's shortlist columns) and the test
        answer NLL on the full vocabulary and on the shortlist.
    """
    measured = {t: r for t, r in runs.items() if "result" in r}
    if not measured:
        return None
    task, r = next(iter(measured.items()))
    lr = r["result"]["lr"]["soul_composed"]
    head = hs.train_variant(specs["soul_composed_learned"], r["cache"], model.model.norm, r["head"], lr, run, 0)
    folder = save_soul(head, model, Path(out_dir) / "soul")
    test = r["feats"]["test"]
    with torch.no_grad():
        full = full_head(head, model.get_output_embeddings())(test["x"])  # (P, V)
        short = head(test["x"])  # (P, V')
    return {"folder": folder, "task": task, "alpha": float(head.alpha.detach()), "lr": lr,
            "want": full[test["item"] < n_check], "n_check": n_check,
            "shortlist_parity_max_abs": float((short - full[:, r["ids"]]).abs().max()),
            "test_nll_full_vocab": float(nn.functional.cross_entropy(full, test["y"])),
            "test_nll_shortlist": float(nn.functional.cross_entropy(short, r["cache"]["test"].y))}  # fmt: skip
