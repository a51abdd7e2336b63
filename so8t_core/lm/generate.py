"""Generation with a causal LM: a greedy reply to one chat turn.

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from so8t_core.batching import device_of, encode_documents
from so8t_core.think import chat_turn, stop_ids


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
