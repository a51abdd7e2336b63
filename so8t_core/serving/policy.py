"""Answer policies: what the served model is asked, and which part of what it writes may leave.

Two policies, each a property of the model (``answer_policy`` reads it from the tokenizer), never a server flag:

- ``quad``: the project's own models, whose tokenizer holds the quad tags as single pieces because they were
  trained on the layout. The prompt is ``think.build_prompt`` (Phi-3 turns, ``QUAD_SYSTEM``) and only the
  ``<final>`` part leaves (``think.extract_final``).
- ``final_only``: a chat model without thinking tags (SmolLM2-135M-Instruct, and its fused form from notebook
  04). Asked for the quad layout it mostly writes tags but rarely a right answer (``bench/quad_layout.py``), so it
  is asked plainly through its own chat template, and its whole reply is the answer once ``final_text`` has
  removed every think part with its content. A reply that is only thinking, or that still reads as thinking
  afterwards, gives ``FALLBACK_MESSAGE``. A reply cut short (``max_new_tokens``, the deadline) leaves as far as it
  got, as a chat API's answer would; an unclosed think part in it is dropped to the end.

Both go through the same lexer as ``extract_final``, so a spelling that would open a think part there is thinking
here too, and both log ``think.thinking_hash`` of the raw text, never the thinking itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from so8t_core.lm.generate import Response, generate_text, respond
from so8t_core.think import (
    FALLBACK_MESSAGE,
    FINAL_TAG,
    build_prompt,
    extract_final,
    leaks_thinking,
    lex,
    strip_control,
)

QUAD, FINAL_ONLY = "quad", "final_only"
POLICIES = (QUAD, FINAL_ONLY)


def answer_policy(tokenizer: Any) -> str:
    """The policy a model is served under, read from its tokenizer.

    ``quad`` when ``<final>`` is one token (the project's tokenizer, trained with the layout); else
    ``final_only`` when the tokenizer has a chat template; else ``quad``, whose strict ``extract_final`` is the
    answer that can never leak.

    Args:
        tokenizer: the served model's tokenizer, or None (no model: only fixed answers).
    Returns:
        ``"quad"`` or ``"final_only"``.
    """
    if tokenizer is None:
        return QUAD
    ids = tokenizer(f"<{FINAL_TAG}>", add_special_tokens=False)["input_ids"]
    if len(ids) == 1 and ids[0] != tokenizer.unk_token_id:
        return QUAD
    return FINAL_ONLY if getattr(tokenizer, "chat_template", None) else QUAD


def model_prompt(tokenizer: Any, policy: str, text: str) -> str:
    """The prompt the model reads for ``text`` under ``policy``.

    Chat control tokens are removed from the user's text first (as ``build_prompt`` does), so a user cannot close
    their own turn and write the assistant's (``<|im_end|>\\n<|im_start|>assistant``).

    Args:
        tokenizer: the model's tokenizer (its chat template for ``final_only``).
        policy: ``quad`` or ``final_only``.
        text: the user's message (with any OCR notes).
    Returns:
        The prompt text; for ``final_only`` it already holds the template's special tokens.
    """
    if policy == QUAD:
        return build_prompt(text)
    if policy != FINAL_ONLY:
        raise ValueError(f"policy={policy!r}: must be one of {POLICIES}")
    user = strip_control(text).strip()
    if not user:
        raise ValueError(f"text={text!r}: empty after removing chat control tokens")
    chat = [{"role": "user", "content": user}]
    return str(tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False))


def prompt_ids(tokenizer: Any, policy: str, text: str) -> list[int]:
    """Token ids of ``model_prompt``: what generation reads and the prompt limit counts."""
    add = policy == QUAD  # a chat template writes its own special tokens
    return list(tokenizer(model_prompt(tokenizer, policy, text), add_special_tokens=add)["input_ids"])


def final_text(raw: str) -> str:
    """The answer in a reply of a model without thinking tags: everything outside think parts.

    A reply with a final tag is read by ``extract_final`` (the quad rules). Otherwise a think part is dropped with
    its content; an unclosed one runs to the end; a think close with nothing open drops everything before it (the
    thinking began before the reply, e.g. in a template that opens ``<think>`` for the model).

    Args:
        raw: the model's generated text.
    Returns:
        The stripped answer, or ``FALLBACK_MESSAGE`` when nothing but thinking is left.
    """
    text = strip_control(raw)
    tokens = list(lex(text))
    if any(t.kind != "text" and t.name == FINAL_TAG for t in tokens):
        return extract_final(text)
    out: list[str] = []
    stack: list[str] = []  # open think parts, innermost last
    for t in tokens:
        think = t.kind != "text" and t.name.startswith("think")
        if think and t.kind == "open":
            stack.append(t.name)
        elif think and stack:
            if t.name == stack[-1]:
                stack.pop()
        elif think:
            out.clear()
        elif not stack:
            out.append(t.text)
    answer = "".join(out).strip()
    return answer if answer and not leaks_thinking(answer) else FALLBACK_MESSAGE


def generate_reply(
    model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 128, max_time: float | None = None
) -> str:
    """Greedy reply of a chat model to ``prompt`` through its chat template (``final_only``); new text only."""
    text = model_prompt(tokenizer, FINAL_ONLY, prompt)
    return generate_text(model, tokenizer, text, max_new_tokens, max_time, add_special_tokens=False)


def respond_under(
    policy: str,
    model: Any,
    tokenizer: Any,
    prompt: str,
    decide: Callable[[str], str],
    max_new_tokens: int = 128,
    max_time: float | None = None,
) -> Response:
    """``lm.generate.respond`` under ``policy``: REFUSE/ESCALATE get their fixed messages without generating; ALLOW
    generates and lets out only the answer (``extract_final`` for ``quad``, ``final_text`` for ``final_only``).

    Args:
        policy: ``answer_policy`` of the model.
        model, tokenizer, prompt, decide, max_new_tokens, max_time: as for ``lm.generate.respond``.
    Returns:
        ``Response(final, decision, thinking_hash)``.
    """
    if policy == QUAD:
        return respond(model, tokenizer, prompt, decide, max_new_tokens, max_time)
    if policy != FINAL_ONLY:
        raise ValueError(f"policy={policy!r}: must be one of {POLICIES}")
    return respond(
        model, tokenizer, prompt, decide, max_new_tokens, max_time, generate=generate_reply, final=final_text
    )
