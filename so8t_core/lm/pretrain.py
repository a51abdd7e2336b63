"""Pretraining the embedded base, and the losses and perplexities every stage reports.

Losses and perplexities are computed here from ``.logits`` with the same one-position shift as transformers, so
any model whose output has ``.logits`` (e.g. the soul wrapper of notebook 03) is evaluated the same way.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from so8t_core.batching import device_of, encode_documents, pack_rows
from so8t_core.config import check


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over real targets and their count (transformers' shift: logits[t] predicts ids[t+1]).

    Args:
        logits: ``(B, T, V)``.
        input_ids, attention_mask: ``(B, T)``; a target counts only where its mask is 1.
    Returns:
        ``(sum of -log p(target), number of targets)``.
    """
    pred = logits[:, :-1].float()  # (B, T-1, V)
    target = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)  # (B, T-1)
    nll = F.cross_entropy(pred.reshape(-1, pred.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum")
    return nll, int((target != -100).sum())


def lr_at(step: int, steps: int, lr: float, warmup: int, min_ratio: float = 0.1) -> float:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``min_ratio * lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    steps: int,
    batch_size: int = 16,
    seq_len: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    warmup_steps: int | None = None,
    weight_decay: float = 0.01,
    grad_clip: float = 1.0,
    eval_batches: Sequence[dict[str, torch.Tensor]] | None = None,
    eval_every: int = 0,
) -> list[dict[str, float]]:
    """Pretrain a causal LM on packed rows of ``texts`` with AdamW and warmup + cosine decay.

    Switches the model to train mode itself (``from_pretrained`` returns eval mode) and leaves it in eval mode.

    Args:
        model: a causal LM whose output has ``.logits``.
        tokenizer: the tokenizer of ``model``.
        texts: training documents (the corpus' ``train`` split).
        steps, batch_size, seq_len, lr: the schedule.
        seed: seed of the row order (the run is deterministic given it).
        warmup_steps: default 5% of ``steps``.
        weight_decay, grad_clip: AdamW decay (matrices only) and gradient-norm clip.
        eval_batches, eval_every: held-out batches whose perplexity is measured every ``eval_every`` steps and
            after the last step (0: never), so a curve shows whether held-out perplexity still falls at the end.
    Returns:
        One record per step: ``{"step", "loss", "lr"}``, plus ``heldout_ppl`` on evaluated steps.
    Explained in notebooks/00_base_model.ipynb.
    """
    check(steps > 0, "steps", steps, "must be > 0")
    ids, mask = pack_rows(encode_documents(tokenizer, texts), seq_len, tokenizer.pad_token_id)
    ids, mask = ids.to(device_of(model)), mask.to(device_of(model))
    gen = torch.Generator().manual_seed(seed)
    epochs = math.ceil(steps * batch_size / len(ids))
    order = torch.cat([torch.randperm(len(ids), generator=gen) for _ in range(epochs)])  # each row once per epoch
    warmup = max(1, steps // 20) if warmup_steps is None else warmup_steps
    matrices = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    others = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": matrices, "weight_decay": weight_decay}, {"params": others, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups)
    torch.manual_seed(seed)  # dropout, if the config has any
    model.train()
    records = []
    for step in tqdm(range(steps), desc="pretrain"):
        rate = lr_at(step, steps, lr, warmup)
        for group in opt.param_groups:
            group["lr"] = rate
        idx = order[step * batch_size : (step + 1) * batch_size].to(ids.device)
        nll, n = token_nll(model(input_ids=ids[idx], attention_mask=mask[idx]).logits, ids[idx], mask[idx])
        loss = nll / max(n, 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        record = {"step": step, "loss": loss.item(), "lr": rate}
        if eval_batches is not None and eval_every > 0 and ((step + 1) % eval_every == 0 or step + 1 == steps):
            record["heldout_ppl"] = perplexity(model, eval_batches)
        records.append(record)
    model.eval()
    return records


@torch.no_grad()
def perplexity(model: Any, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    """exp of the token-weighted mean next-token NLL over the non-padded targets of ``batches``.

    Args:
        model: any callable ``model(input_ids=, attention_mask=)`` whose output has ``.logits``.
        batches: from ``token_batches``.
    Returns:
        The perplexity.
    Explained in notebooks/00_base_model.ipynb.
    """
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    total, count, device = 0.0, 0, device_of(model)
    try:
        for b in batches:
            b = {k: b[k].to(device) for k in ("input_ids", "attention_mask")}
            nll, n = token_nll(model(**b).logits, **b)
            total, count = total + nll.item(), count + n
    finally:
        if was_training:
            model.train()
    check(count > 0, "batches", len(batches), "hold no prediction targets")
    return math.exp(total / count)


def unigram_perplexity(
    tokenizer: PreTrainedTokenizerBase, train_texts: Sequence[str], batches: Sequence[dict[str, torch.Tensor]]
) -> float:
    """Perplexity of an add-one-smoothed unigram model fitted on ``train_texts``: the bar a real LM must clear.

    Args:
        tokenizer: the tokenizer.
        train_texts: documents the unigram counts come from.
        batches: the same held-out batches given to ``perplexity`` (same targets).
    Returns:
        The perplexity.
    """
    # a document's first token is never a target, so it is not counted either
    counts = Counter(t for d in encode_documents(tokenizer, train_texts) for t in d[1:])
    total, vocab = sum(counts.values()), len(tokenizer)
    nll, n = 0.0, 0
    for b in batches:
        targets = b["input_ids"][:, 1:][b["attention_mask"][:, 1:] == 1]
        nll -= sum(math.log((counts[int(t)] + 1) / (total + vocab)) for t in targets)
        n += targets.numel()
    return math.exp(nll / n)
