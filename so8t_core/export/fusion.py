"""Fusion: fold LoRA and the soul gate into a plain transformers model that runs the base's own graph.

The soul computes ``logits = W (h + s R h) + b`` with ``s = sigmoid(alpha)`` and R block-diagonal, so

    logits = (W + s W R) h + b,     W' = W + s W R   (V, H)

and replacing ``lm_head.weight`` by W' gives the same logits with no extra module. W' is computed in float32
(the soul computes its gate in float32 too, see ``SoulWrapper.mix``), block by block: W viewed as (V, H/8, 8)
meets the (H/8, 8, 8) rotation blocks in one einsum, never a dense H x H matrix. LoRA is merged first with peft's
``merge_and_unload``. When ``lm_head`` shares its weight with the input embeddings, W' becomes a new Parameter
(the embeddings stay as they were) and the config says ``tie_word_embeddings=False``, which transformers 5 reads
both when saving (tied tensors are found by shared storage) and when loading (no tying unless the flag is set).

Every fusion works on a copy, checks that all tensors are finite and that the fused logits equal the wrapper's
on given prompts, and raises ``FusionError`` otherwise; ``save_fused`` writes into a temporary folder, reloads it,
checks it again, and only then moves it into place.

Explained in notebooks/04_fusion_and_gguf.ipynb.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from so8t_core.config import check
from so8t_core.gate.soul import SoulWrapper, _causal_lm, fused_head_weight
from so8t_core.lm.loading import load_soul_folder

# fused_head_weight (gate.soul) and load_soul_folder (lm.loading) live lower, where notebook 07 trains with them too;
# they stay importable from here.

FP32_ATOL = 1e-4  # fused vs wrapper, float32: the parity contract notebook 04 checks
LOW_PRECISION_RTOL = 1e-2  # 16-bit weights: relative to the largest |logit| (W' is rounded once more)
CARD = "README.md"


class FusionError(RuntimeError):
    """A fusion or a fused folder whose result would be wrong; nothing was written."""


def is_tied(model: nn.Module) -> bool:
    """True when the model's lm_head weight is its input embedding weight (same storage)."""
    lm = _causal_lm(model)
    head, emb = lm.get_output_embeddings(), lm.get_input_embeddings()
    return head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr()


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain transformers model with LoRA merged in (peft ``merge_and_unload``, checked for NaN).

    Modifies a peft ``model`` in place (call it on a copy); a plain model is returned as it is.
    Raises FusionError when the merged weights hold NaN.
    """
    if not hasattr(model, "merge_and_unload"):
        return model
    try:
        return model.merge_and_unload(safe_merge=True)
    except ValueError as exc:  # peft's safe_merge found NaN in a merged weight
        raise FusionError(f"merging LoRA failed: {exc}") from exc


def _untie_config(model: nn.Module) -> None:
    # transformers 5 ties at load time iff the (text) config says so; the cached mapping drives save-time checks
    for cfg in {id(c): c for c in (model.config, model.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False
    model.all_tied_weights_keys = model.get_expanded_tied_weights_keys(all_submodels=True)


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of floating-point parameters and buffers holding NaN or inf."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return [n for n, t in named if t.is_floating_point() and not bool(torch.isfinite(t).all())]


@torch.no_grad()
def causal_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """float32 logits (B, T, V) of a transformers model or a SoulWrapper, on the model's device."""
    device = next(model.parameters()).device
    mask = None if attention_mask is None else attention_mask.to(device)
    return model(input_ids=input_ids.to(device), attention_mask=mask).logits.float()


def compare_logits(reference: Tensor, other: Tensor, attention_mask: Tensor | None = None) -> dict[str, float]:
    """Max |Δlogit| and top-1 agreement over the real (unmasked) positions.

    Args:
        reference, other: (B, T, V) logits.
        attention_mask: (B, T), 1 where the position is real; None means all.
    Returns:
        ``{"max_abs_diff", "top1_agreement", "positions", "max_abs_logit"}``.
    """
    check(reference.shape == other.shape, "logits.shape", tuple(other.shape), f"expected {tuple(reference.shape)}")
    keep = torch.ones(reference.shape[:2], dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    keep = keep.to(reference.device)
    a, b = reference.float()[keep], other.float().to(reference.device)[keep]  # (N, V)
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item() if a.numel() else 1.0
    return {
        "max_abs_diff": diff,
        "top1_agreement": top1,
        "positions": int(keep.sum()),
        "max_abs_logit": a.abs().max().item() if a.numel() else 0.0,
    }


def parity_tolerance(dtype: torch.dtype, max_abs_logit: float) -> float:
    """Allowed max |Δlogit| between fused and wrapper: 1e-4 in float32, 1e-2 of the logit scale in 16-bit."""
    return FP32_ATOL if dtype == torch.float32 else LOW_PRECISION_RTOL * max(1.0, max_abs_logit)


def fuse_soul_into_lm_head(
    model: nn.Module, soul: SoulWrapper, check_ids: Tensor, check_mask: Tensor | None = None, atol: float | None = None
) -> nn.Module:
    """A plain transformers CausalLM whose logits equal those of ``soul``'s gate applied to ``model``.

    ``model`` is left untouched: the fusion works on a deep copy. LoRA (if ``model`` is a peft model) is merged,
    then ``lm_head.weight`` becomes W + sigmoid(alpha) W R, cast back to the model's dtype; a tied lm_head is
    untied first. A bias is kept as it is.

    Args:
        model: the model to fuse into (plain or peft), usually ``soul.model``; for a 4-bit soul, a
            higher-precision reload carrying the same adapter (see ``fuse_soul_folder``).
        soul: the SoulWrapper whose rotation and alpha are fused.
        check_ids: (B, T) held-out token ids on which fused and wrapper logits must agree.
        check_mask: (B, T) attention mask of ``check_ids`` (None: all ones).
        atol: allowed max |Δlogit| (default ``parity_tolerance``: 1e-4 for float32).
    Returns:
        The fused model (eval mode, ``tie_word_embeddings=False``).
    Raises:
        FusionError: a non-finite tensor, or fused logits that differ from the wrapper's beyond ``atol``.
        ValueError: the soul's hidden size differs from the model's.
    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    H, H_soul = int(_causal_lm(model).config.hidden_size), soul.rotation.hidden_size
    check(H_soul == H, "soul hidden_size", H_soul, f"model hidden size is {H}")
    work = copy.deepcopy(model).eval()
    reference = causal_logits(SoulWrapper(work, soul.rotation, soul.alpha, soul.config).eval(), check_ids, check_mask)
    plain = merge_lora(work).eval()
    head = plain.get_output_embeddings()
    with torch.no_grad():
        W_fused = fused_head_weight(head.weight, soul.rotation.matrices(), soul.alpha.weight)
    head.weight = nn.Parameter(W_fused.to(head.weight.dtype), requires_grad=False)  # new tensor: unties
    _untie_config(plain)
    bad = non_finite_tensors(plain) + ([] if bool(torch.isfinite(reference).all()) else ["wrapper logits"])
    if bad:
        raise FusionError(f"non-finite values in {bad} (alpha={soul.alpha.alpha.item()!r}): refusing to fuse")
    got = compare_logits(reference, causal_logits(plain, check_ids, check_mask), check_mask)
    limit = parity_tolerance(head.weight.dtype, got["max_abs_logit"]) if atol is None else atol
    if not got["max_abs_diff"] <= limit:
        raise FusionError(f"fused logits differ from the wrapper's by {got['max_abs_diff']:.3g} > {limit:.3g}")
    return plain


def tiny_tied_llama(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    init_range: float = 0.02,
    **special_ids: int,
) -> nn.Module:
    """A random ``LlamaForCausalLM`` whose lm_head is tied to its input embeddings, the case fusion must untie.

    Args:
        vocab_size: number of token ids.
        hidden_size, num_layers, num_heads: shape (head size hidden/heads must be even, and one llama.cpp runs).
        seed: seed of the initialisation.
        init_range: std of the weight init (transformers' default 0.02 gives small logits).
        special_ids: ``bos_token_id``, ``eos_token_id``, ``pad_token_id`` (inside the vocabulary).
    Returns:
        The model in eval mode.
    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    for name, tid in special_ids.items():
        check(0 <= tid < vocab_size, name, tid, f"must be inside the vocabulary (0..{vocab_size - 1})")
    check(
        hidden_size % 8 == 0 and hidden_size % num_heads == 0 and (hidden_size // num_heads) % 2 == 0,
        "hidden_size",
        hidden_size,
        f"must be a multiple of 8 and of num_heads={num_heads}, with an even head size",
    )
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        initializer_range=init_range,
        tie_word_embeddings=True,
        **special_ids,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


# --- soul folders, the 4-bit path, saving ---


def fuse_soul_folder(
    base_model: str | Path,
    soul_dir: str | Path,
    check_ids: Tensor,
    check_mask: Tensor | None = None,
    *,
    load_in_4bit: bool = False,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Load notebook 03's soul around its base and fuse it; a 4-bit base is fused on a higher-precision reload.

    4-bit weights cannot hold W' (and merging LoRA into NF4 rounds it again), so the fusion runs on a ``dtype``
    reload of the base with the same adapter and soul, and the difference between the 4-bit wrapper (what was
    trained and evaluated) and the fused model is measured: the QLoRA merge gap.

    Args:
        base_model: the base's folder or hub id.
        soul_dir: the soul folder of notebook 03.
        check_ids, check_mask: held-out prompts for the parity checks.
        load_in_4bit: the soul was trained on a 4-bit base (needs CUDA).
        dtype: precision of the fused model.
    Returns:
        ``{"model": fused, "tokenizer", "wrapper": the wrapper that was fused, "parity": fused vs that wrapper,
        "qlora_gap": 4-bit wrapper vs fused (None for a full-precision base)}``.
    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    gap_reference, device_map = None, None
    if load_in_4bit:
        w4, _ = load_soul_folder(base_model, soul_dir, load_in_4bit=True)
        gap_reference = causal_logits(w4, check_ids, check_mask).cpu()
        device_map = {"": str(next(w4.parameters()).device)}  # reload where the 4-bit model ran (the GPU)
        del w4
    wrapper, tok = load_soul_folder(base_model, soul_dir, dtype=dtype, device_map=device_map)
    fused = fuse_soul_into_lm_head(wrapper.model, wrapper, check_ids, check_mask)
    fused_logits = causal_logits(fused, check_ids, check_mask).cpu()
    parity = compare_logits(causal_logits(wrapper, check_ids, check_mask).cpu(), fused_logits, check_mask)
    gap = None if gap_reference is None else compare_logits(gap_reference, fused_logits, check_mask)
    return {"model": fused, "tokenizer": tok, "wrapper": wrapper, "parity": parity, "qlora_gap": gap}


def card_info(
    soul: SoulWrapper,
    base_model: str,
    parity: dict[str, float],
    was_tied: bool,
    qlora_gap: dict[str, float] | None = None,
) -> dict[str, Any]:
    """What the model card states: base, alpha, rotation settings and parity figures."""
    return {
        "base_model": str(base_model),
        "alpha": soul.alpha.alpha.item(),
        "sigmoid_alpha": soul.alpha.weight.item(),
        "rotation_map": soul.config.map,
        "rotation_blocks": soul.rotation.n_blocks,
        "hidden_size": soul.rotation.hidden_size,
        "lm_head_was_tied": was_tied,
        "parity_max_abs_diff": parity["max_abs_diff"],
        "parity_top1_agreement": parity["top1_agreement"],
        "parity_positions": parity["positions"],
        "qlora_gap_max_abs_diff": None if qlora_gap is None else qlora_gap["max_abs_diff"],
    }


def model_card(info: dict[str, Any]) -> str:
    """README.md text of a fused folder from ``card_info``."""
    rows = "\n".join(f"| `{k}` | {v} |" for k, v in info.items())
    return (
        "# SO8T fused model\n\n"
        "A standard transformers checkpoint of the same architecture as its base: the LoRA adapter is merged and the\n"
        "soul gate is folded into the output head, `W' = W + sigmoid(alpha) W R` with R the block-diagonal SO(8)\n"
        "rotation R_cmd @ R_safe, so it runs the base's graph at the base's cost. Parity: max |logit difference|\n"
        "between this model and the soul wrapper on held-out prompts, and their top-1 agreement.\n"
        "Made by notebooks/04_fusion_and_gguf.ipynb.\n\n"
        f"| field | value |\n|---|---|\n{rows}\n"
    )


def verify_saved(folder: Path, model: nn.Module, check_ids: Tensor, check_mask: Tensor | None = None) -> dict:
    """Reload ``folder`` and check it is untied and gives ``model``'s logits; raises FusionError otherwise."""
    import json

    from transformers import AutoModelForCausalLM

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if config.get("tie_word_embeddings") is not False:
        raise FusionError(f"{folder}/config.json does not say tie_word_embeddings=false")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=model.dtype).eval()
    if is_tied(reloaded) and not is_tied(model):
        raise FusionError(f"{folder}: the reloaded model re-tied lm_head to the input embeddings")
    got = compare_logits(
        causal_logits(model, check_ids, check_mask).cpu(),
        causal_logits(reloaded, check_ids, check_mask).cpu(),
        check_mask,
    )
    if not got["max_abs_diff"] <= FP32_ATOL / 10:
        raise FusionError(f"{folder}: reloaded logits differ by {got['max_abs_diff']:.3g}")
    return got


def save_fused(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    info: dict[str, Any],
    check_ids: Tensor,
    check_mask: Tensor | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a fused model as a Hugging Face folder with a model card; all or nothing.

    The folder (safetensors, config, generation config, tokenizer files incl. ``tokenizer.model``, README.md) is
    written next to ``out_dir``, reloaded and checked (untied, same logits), then renamed into place.

    Args:
        model: from ``fuse_soul_into_lm_head``.
        tokenizer: the base's tokenizer (loaded from a folder holding ``tokenizer.model``).
        out_dir: destination folder.
        info: model card fields (``card_info``).
        check_ids, check_mask: prompts for the reload check.
        overwrite: replace an existing ``out_dir``.
    Returns:
        ``out_dir``.
    Raises:
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        FusionError: non-finite weights, or a saved folder that does not reload to the same model.
    Explained in notebooks/04_fusion_and_gguf.ipynb.
    """
    from so8t_core.lm.loading import save_model

    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists: refusing to overwrite it (pass overwrite=True)")
    if bad := non_finite_tensors(model):
        raise FusionError(f"non-finite values in {bad}: refusing to save")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        folder = save_model(model, tokenizer, tmp / "model")
        (folder / CARD).write_text(model_card(info), encoding="utf-8")
        verify_saved(folder, model, check_ids, check_mask)
        old = tmp / "old"
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(folder, out)
        except BaseException:
            if old.exists():
                os.replace(old, out)  # put the previous folder back
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def tied_case_checks(
    base: nn.Module,
    fused: nn.Module,
    reloaded: nn.Module,
    embeddings_before: Tensor,
    wrapper_parity: dict[str, float],
    reload_diff: dict[str, float],
    llama_cpp: dict[str, float],
) -> dict[str, bool]:
    """Notebook 04's findings on a tied-embedding model fused with a soul.

    Args:
        base: the tied model before fusion.
        fused: ``fuse_soul_into_lm_head``'s result.
        reloaded: the fused model saved and loaded back.
        embeddings_before: the base's input embeddings before fusion.
        wrapper_parity, reload_diff: ``compare_logits`` of fused vs the soul wrapper, and of reloaded vs fused.
        llama_cpp: the f32 GGUF's ``max_abs_diff`` and ``top1_agreement`` against transformers.
    Returns:
        One bool per check (the fused model untied cleanly, reloads untied with the same logits, parities hold).
    """
    return {
        "base_was_tied": is_tied(base),
        "fused_untied": not is_tied(fused),
        "config_untied": fused.config.tie_word_embeddings is False,
        "input_embeddings_unchanged": torch.equal(fused.get_input_embeddings().weight, embeddings_before),
        "reload_untied": not is_tied(reloaded),
        "reload_same_logits": reload_diff["max_abs_diff"] == 0.0,
        "wrapper_parity_le_1e-4": wrapper_parity["max_abs_diff"] <= 1e-4,
        "llama_cpp_f32_le_1e-3_top1_100": llama_cpp["max_abs_diff"] <= 1e-3 and llama_cpp["top1_agreement"] == 1.0,
    }
