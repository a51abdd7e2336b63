"""Token rows to right-padded batches, and the masked-mean pooling that every safety head reads.

One home for both, because heads trained in one room (notebook 06) and served in another (the server, the
``eval`` command line) only match when they see the same feature: each prompt tokenised alone (no chat template),
cut to ``max_length``, right-padded (mask 0 on padding, so with a causal model a prompt's states do not depend on
what it is batched with), and averaged over its real tokens.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from so8t_core.config import check

States = Callable[[Tensor, Tensor], Sequence[Tensor]]  # (ids, mask) (B, T) -> hidden states, each (B, T, H)


def right_pad(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[Tensor, Tensor]:
    """Rows of different lengths as one right-padded batch.

    Args:
        rows: token ids (or labels) per row; at least one row.
        pad_id: what fills the rows after their end (any id under the mask; -100 for labels).
    Returns:
        ``(ids, mask)``, both (B, T) long with T the longest row; mask is 1 on the rows' own entries.
    """
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), T), dtype=torch.long)  # (B, T)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r, dtype=torch.long), 1
    return ids, mask


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of the positions where ``mask`` is 1, in float32 or wider.

    Args:
        x: (B, T) or (B, T, ...) values per position.
        mask: (B, T), 1 on real positions.
    Returns:
        (B,) or (B, ...); a row without real positions gives 0.
    """
    m = mask.to(x.device).float()  # (B, T)
    m = m.reshape(*m.shape, *([1] * (x.dim() - m.dim())))  # (B, T, 1, ...): broadcast over the features
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def prompt_ids(tokenizer: Any, prompts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of each prompt tokenised alone (with the tokenizer's own special tokens), cut to ``max_length``.

    Raises:
        ValueError: a prompt is blank or has no tokens (there would be nothing to pool).
    """
    ids = [list(tokenizer(p)["input_ids"][:max_length]) for p in prompts]
    for p, x in zip(prompts, ids):
        check(len(x) > 0 and bool(p.strip()), "prompt", p, "empty prompt (no tokens to pool)")
    return ids


def encode_prompts(tokenizer: Any, prompts: Sequence[str], max_length: int) -> tuple[Tensor, Tensor]:
    """``right_pad(prompt_ids(...))``: (N, T) ids and mask of the prompts, each tokenised alone."""
    return right_pad(prompt_ids(tokenizer, prompts, max_length))


@torch.no_grad()
def pool_prompts(
    model: nn.Module,
    states: States,
    tokenizer: Any,
    prompts: Sequence[str],
    width: int,
    batch_size: int,
    max_length: int,
) -> Tensor:
    """Masked means of ``states`` for each prompt, side by side: the feature the safety heads read.

    Prompts are batched by token count (little padding; the mask keeps each feature independent of its batch).
    ``model`` is put in eval mode for the passes and restored.

    Args:
        model: the module ``states`` runs (for its train/eval mode).
        states: (ids, mask) -> the hidden states to pool, each (B, T, H_i); ids and mask are on the CPU.
        tokenizer: the model's tokenizer.
        prompts: non-blank strings.
        width: sum of the H_i (the feature width, also for an empty ``prompts``).
        batch_size: prompts per forward pass.
        max_length: tokens kept per prompt.
    Returns:
        Float32 CPU tensor (N, width).
    """
    check(batch_size > 0, "batch_size", batch_size, "must be > 0")
    ids = prompt_ids(tokenizer, prompts, max_length)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.zeros(len(ids), width)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x, mask = right_pad([ids[i] for i in idx])
            out[idx] = torch.cat([masked_mean(h.float(), mask) for h in states(x, mask)], dim=1).cpu()  # (B, width)
    finally:
        model.train(was_training)
    return out
