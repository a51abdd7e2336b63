"""The embedded default base model: a SentencePiece tokenizer and a tiny Phi-3, pretrained on the small corpus.

The tokenizer is a SentencePiece BPE model with byte fallback (so no text is ever ``<unk>``) loaded as a
transformers ``LlamaTokenizer`` (the class real Phi-3 checkpoints use). The Phi-3 chat tokens and the quad-thinking
tags are user-defined symbols of the SentencePiece model, so each is one id both in transformers and in tools that
read ``tokenizer.model`` directly (llama.cpp's GGUF converter refuses a phi3 vocab without ``<|endoftext|>``).

Losses and perplexities are computed here from ``.logits`` with the same one-position shift as transformers, so
any model whose output has ``.logits`` (e.g. the soul wrapper of notebook 03) is evaluated the same way.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import LlamaTokenizer, Phi3Config, Phi3ForCausalLM, PreTrainedTokenizerBase

from so8t_core.artifacts import atomic_path
from so8t_core.batching import right_pad
from so8t_core.config import check
from so8t_core.lm.tokenizer import exact_fast_tokenizer
from so8t_core.think import FINAL_TAG, THINK_PARTS, chat_turn, stop_ids

SPM_FILE = "tokenizer.model"
CHAT_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
QUAD_TAGS = tuple(t for p in (*(f"think-{p}" for p in THINK_PARTS), FINAL_TAG) for t in (f"<{p}>", f"</{p}>"))
UNK, BOS = "<unk>", "<s>"
EOS = PAD = "<|endoftext|>"  # as in Phi-3: documents end with <|endoftext|>, which also pads
# 256 byte pieces + 3 control pieces + the user-defined symbols, and room for some merges
MIN_VOCAB = 256 + 3 + len(CHAT_TOKENS) + len(QUAD_TAGS) + 64
PHI3_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


# --- tokenizer ---


def train_tokenizer(
    texts: Sequence[str], out_dir: str | Path, vocab_size: int = 2000, character_coverage: float = 0.9995
) -> PreTrainedTokenizerBase:
    """Train a SentencePiece BPE tokenizer on ``texts`` and save it as a transformers tokenizer folder.

    Args:
        texts: training documents (newlines inside a document are kept as characters).
        out_dir: folder to write ``tokenizer.model``, ``tokenizer.json`` and ``tokenizer_config.json`` into.
        vocab_size: target vocabulary size (a soft limit: a small corpus may give fewer pieces).
    Returns:
        The tokenizer, loaded back from ``out_dir``.
    Explained in notebooks/00_base_model.ipynb.
    """
    import sentencepiece as spm

    check(vocab_size >= MIN_VOCAB, "vocab_size", vocab_size, f"must be >= {MIN_VOCAB} (bytes + special tokens)")
    docs = [t for t in texts if t.strip()]
    check(bool(docs), "texts", len(texts), "no non-blank text to train a tokenizer on")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()  # in memory: a file prefix would be recorded in the model and change its bytes
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(docs),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=character_coverage,
        normalization_rule_name="identity",  # transformers' LlamaTokenizer does not normalise either
        remove_extra_whitespaces=False,
        split_digits=True,  # one token per digit helps a small model with arithmetic
        user_defined_symbols=list(CHAT_TOKENS + QUAD_TAGS),
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        max_sentence_length=1 << 16,
        num_threads=1,  # single-threaded, so the pieces do not depend on the machine
        minloglevel=2,
    )
    with atomic_path(out_dir / SPM_FILE) as tmp:  # a reader never sees half a model
        tmp.write_bytes(model.getvalue())
    with atomic_path(out_dir / "tokenizer.json") as tmp:
        exact_fast_tokenizer(model.getvalue()).save(str(tmp))
    tokenizer = load_spm_tokenizer(out_dir)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def load_spm_tokenizer(folder: str | Path) -> PreTrainedTokenizerBase:
    """A ``LlamaTokenizer`` built from ``folder/tokenizer.model`` with the Phi-3 special tokens and chat template.

    Args:
        folder: a folder holding ``tokenizer.model`` (passing ``vocab_file=`` alone gives a 3-token vocabulary).
    Returns:
        The tokenizer (adds ``<s>`` in front of encodings, pads with ``<|endoftext|>``).
    """
    check((Path(folder) / SPM_FILE).is_file(), "folder", str(folder), f"holds no {SPM_FILE}")
    tokenizer = LlamaTokenizer.from_pretrained(
        str(folder), unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD, add_bos_token=True
    )
    tokenizer.chat_template = PHI3_CHAT_TEMPLATE
    return tokenizer


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """``bos_token_id``, ``eos_token_id`` and ``pad_token_id`` of a tokenizer, for ``tiny_phi3_config``."""
    return {k: getattr(tokenizer, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}


# --- model ---


def tiny_phi3_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    bos_token_id: int = 1,
    eos_token_id: int = 3,
    pad_token_id: int = 3,
) -> Phi3Config:
    """A small Phi-3 configuration with untied embeddings, as in the real Phi-3.

    Args:
        vocab_size: number of token ids (``len(tokenizer)``).
        hidden_size: model width; a multiple of 8 so the SO(8) blocks of notebook 03 tile it.
        num_layers, num_heads: depth and attention heads (head size must be even for rotary embeddings).
        intermediate_size: MLP width (default ``3 * hidden_size``, close to Phi-3's 8192 / 3072).
        max_positions: longest sequence.
        bos_token_id, eos_token_id, pad_token_id: from the tokenizer (see ``special_ids``).
    Returns:
        ``Phi3Config``.
    Explained in notebooks/00_base_model.ipynb.
    """
    check(hidden_size > 0 and hidden_size % 8 == 0, "hidden_size", hidden_size, "must be a positive multiple of 8")
    check(num_heads > 0 and hidden_size % num_heads == 0, "num_heads", num_heads, "must divide hidden_size")
    check((hidden_size // num_heads) % 2 == 0, "num_heads", num_heads, "head size must be even (rotary)")
    check(num_layers > 0, "num_layers", num_layers, "must be > 0")
    for name, tid in (("bos_token_id", bos_token_id), ("eos_token_id", eos_token_id), ("pad_token_id", pad_token_id)):
        check(0 <= tid < vocab_size, name, tid, f"must be a token id inside the vocabulary (0..{vocab_size - 1})")
    return Phi3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 3 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        original_max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def build_model(config: Phi3Config, seed: int = 0, stop_ids: Sequence[int] = ()) -> Phi3ForCausalLM:
    """Randomly initialised ``Phi3ForCausalLM`` (same seed, same weights), in eval mode.

    Args:
        config: from ``tiny_phi3_config``.
        seed: seed of the initialisation.
        stop_ids: extra ids that end generation besides ``eos`` (e.g. ``<|end|>``).
    Returns:
        The model.
    """
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(config).eval()
    model.generation_config.eos_token_id = [config.eos_token_id, *stop_ids]
    model.generation_config.pad_token_id = config.pad_token_id
    return model


# --- data ---


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


# --- loss, training, evaluation ---


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


@torch.no_grad()
def greedy_chat(model: Any, tokenizer: PreTrainedTokenizerBase, user: str, max_new_tokens: int = 64) -> str:
    """Greedy reply of ``model`` to one Phi-3 user turn, stopping at ``<|end|>`` or ``<|endoftext|>``.

    Args:
        model: a transformers causal LM.
        tokenizer: its tokenizer.
        user: the user's message.
        max_new_tokens: longest reply.
    Returns:
        The generated text (special tokens kept, so the quad tags show).
    """
    framed = encode_documents(tokenizer, [chat_turn(user)])[0]
    prompt = torch.tensor([framed[:-1] if framed[-1] == tokenizer.eos_token_id else framed], device=device_of(model))
    out = model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=stop_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    return tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=False)
