"""Generation with a causal LM: greedy replies, and ``respond``, which answers under the safety policy letting out
only the final part (the quad lexer it reads with is ``so8t_core.think``).

Explained in notebooks/00_base_model.ipynb.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from so8t_core.batching import device_of, encode_documents
from so8t_core.think import (
    DECISIONS,
    ESCALATE_MESSAGE,
    REFUSE_MESSAGE,
    build_prompt,
    chat_turn,
    decode_raw,
    extract_final,
    stop_ids,
    thinking_hash,
)


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


@dataclass(frozen=True)
class Response:
    """What ``respond`` hands to a user: the answer, the policy decision, and a hash of any thinking.

    ``thinking_hash`` is ``None`` when nothing was generated (REFUSE / ESCALATE).
    """

    final: str
    decision: str
    thinking_hash: str | None


def generate_raw(
    model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 128, max_time: float | None = None
) -> str:
    """Greedy generation of the quad layout for ``prompt`` (``build_prompt``); returns only the new text.

    ``max_time`` (seconds) stops generating once that much time has passed (transformers' ``MaxTimeCriteria``,
    checked after each new token); an output cut short has no closed final part, so ``extract_final`` falls back.
    """
    return generate_text(model, tokenizer, build_prompt(prompt), max_new_tokens, max_time)


def generate_text(
    model: Any,
    tokenizer: Any,
    text: str,
    max_new_tokens: int = 128,
    max_time: float | None = None,
    add_special_tokens: bool = True,
) -> str:
    """Greedy continuation of an already built chat prompt ``text``, stopping at ``stop_ids``; the new text only.

    Decoded with special tokens kept (``decode_raw``), so a fine-tuned model whose think tags are special tokens
    cannot lose its tags (and so leak its thinking); the tokenizer's other special tokens are then removed.

    Args:
        model, tokenizer: a causal LM and its tokenizer.
        text: the whole prompt, chat layout included.
        max_new_tokens, max_time: generation budget in tokens and seconds (None: no time limit).
        add_special_tokens: False for a prompt from a chat template, which writes its own special tokens.
    Returns:
        The newly generated text.
    """
    import torch

    enc = tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens)
    device = next(model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items()}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            max_time=max_time,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=stop_ids(tokenizer),
        )
    new = out[0, enc["input_ids"].shape[1] :]  # (new tokens,)
    return decode_raw(tokenizer, new)


def respond(
    model: Any,
    tokenizer: Any,
    prompt: str,
    decide: Callable[[str], str],
    max_new_tokens: int = 128,
    max_time: float | None = None,
    generate: Callable[[Any, Any, str, int, float | None], str] | None = None,
    final: Callable[[str], str] = extract_final,
) -> Response:
    """Answer one prompt under the safety policy, letting out only the final part.

    The decision comes from ``decide`` (prompt -> ``ALLOW``/``ESCALATE``/``REFUSE``): a baseline, safety heads
    (``so8t_core.safety.heads.heads_decider``) or any combination; this module knows none of them. REFUSE and
    ESCALATE return their fixed messages without calling ``generate``; ALLOW generates greedily and passes the
    new text through ``extract_final``.

    Args:
        model, tokenizer: a causal LM and its tokenizer.
        prompt: the user's message.
        decide: the decision source.
        max_new_tokens: generation budget for ALLOW.
        max_time: wall-clock budget of that generation in seconds (None: no limit).
        generate: ``(model, tokenizer, prompt, max_new_tokens, max_time) -> raw text``; None: ``generate_raw``
            (the quad layout). A model served under another answer policy passes its own.
        final: raw text -> what leaves (``extract_final`` for the quad layout).
    Returns:
        ``Response(final, decision, thinking_hash)``.

    Explained in notebooks/06_safety_eval.ipynb.
    """
    decision = decide(prompt)
    if decision not in DECISIONS:
        raise ValueError(f"decision={decision!r}: must be one of {DECISIONS}")
    if decision == "REFUSE":
        return Response(REFUSE_MESSAGE, decision, None)
    if decision == "ESCALATE":
        return Response(ESCALATE_MESSAGE, decision, None)
    raw = (generate or generate_raw)(model, tokenizer, prompt, max_new_tokens, max_time)
    return Response(final(raw), decision, thinking_hash(raw))
