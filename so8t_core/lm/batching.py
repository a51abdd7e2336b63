"""Token rows to right-padded batches.

One home, because heads trained in one room (notebook 06) and served in another (the server, the ``eval`` command
line) only match when they see the same input: each prompt tokenised alone (no chat template), cut to
``max_length``, right-padded (mask 0 on padding, so with a causal model a prompt's states do not depend on what it
is batched with).

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from so8t_core.config import check


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
