"""Token rows to right-padded batches (prompts, documents, packed LM rows), and the masked-mean pooling every
safety head reads.

One home for both, because heads trained in one room (notebook 06) and served in another (the server, the
``eval`` command line) only match when they see the same feature: each prompt tokenised alone (no chat template),
cut to ``max_length``, right-padded (mask 0 on padding, so with a causal model a prompt's states do not depend on
what it is batched with), and averaged over its real tokens.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

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


def encode_documents(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each document framed as ``<s> … <|endoftext|>`` (a tokenizer without bos/eos skips it)."""
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    head = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    tail = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return [[*head, *x, *tail] for x in ids]


def device_of(model: Any) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless callable)."""
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def pack_rows(docs: Sequence[Sequence[int]], seq_len: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate documents and cut the stream into rows of ``seq_len`` (the last one padded).

    Packing wastes no compute on padding; a row may start mid-document, as in usual LM pretraining.

    Args:
        docs: token ids per document.
        seq_len: row length.
        pad_id: id used to fill the last row.
    Returns:
        ``(input_ids, attention_mask)``, both ``(rows, seq_len)``.
    """
    check(seq_len >= 2, "seq_len", seq_len, "must be >= 2 (one input and one target)")
    stream = torch.tensor([t for d in docs for t in d], dtype=torch.long)
    check(stream.numel() >= 2, "docs", len(docs), "hold fewer than 2 tokens")
    rows = math.ceil(stream.numel() / seq_len)
    ids = torch.full((rows * seq_len,), pad_id, dtype=torch.long)
    mask = torch.zeros(rows * seq_len, dtype=torch.long)
    ids[: stream.numel()], mask[: stream.numel()] = stream, 1
    return ids.view(rows, seq_len), mask.view(rows, seq_len)  # (rows, T)


def token_batches(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], seq_len: int, batch_size: int
) -> list[dict[str, torch.Tensor]]:
    """Evaluation batches, one document per row, right-padded; long documents become overlapping windows.

    Windows overlap by one token, so every token after a document's ``<s>`` is a prediction target exactly once.

    Args:
        tokenizer: the tokenizer.
        texts: documents.
        seq_len: longest row.
        batch_size: rows per batch.
    Returns:
        Batches with ``input_ids`` and ``attention_mask`` of shape ``(B, T)``, ``T <= seq_len``.
    Explained in notebooks/00_base_model.ipynb.
    """
    check(seq_len >= 2, "seq_len", seq_len, "must be >= 2")
    check(batch_size > 0, "batch_size", batch_size, "must be > 0")
    rows = [d[s : s + seq_len] for d in encode_documents(tokenizer, texts) for s in range(0, len(d) - 1, seq_len - 1)]
    batches = []
    for i in range(0, len(rows), batch_size):
        ids, mask = right_pad(rows[i : i + batch_size], tokenizer.pad_token_id)  # (B, T) each
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches
