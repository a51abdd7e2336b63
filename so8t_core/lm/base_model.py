"""The embedded default base model: a tiny Phi-3 built from a config (its tokenizer is in ``lm.tokenizer``, its
pretraining in ``lm.pretrain``).

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import Phi3Config, Phi3ForCausalLM

from so8t_core.config import check


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
