"""Quad-thinking answer format: four thinking parts, then the only part that ever leaves the system.

Layout of an assistant turn::

    <think-observation>…</think-observation><think-deduction>…</think-deduction>
    <think-abduction>…</think-abduction><think-integration>…</think-integration><final>…</final>

``extract_final`` is a two-stage parser, a lexer over tags and a small state machine, rather than one regex,
so every odd input has a defined outcome. Tags are read leniently (any case, spaces inside the brackets,
``_`` for ``-``, a missing ``>``), because a lenient reader sees more thinking and so hides more of it.

A raw output is **well-formed** when it has exactly one final part, and that part

1. opens and closes at top level, i.e. outside every think part (final tags inside a think part are thinking);
2. contains no think tag (a think part inside the final means thinking mixed into the answer);
3. is non-empty after stripping whitespace.

Anything else (no final, an unclosed final, a nested or second final, a stray ``</final>``, a think tag inside
the final) gives ``FALLBACK_MESSAGE``: with two finals we cannot tell which is the answer, and the fallback is
the choice that can never leak. Text outside the final part is dropped, so a stray ``</think-x>`` before the
final (a model that forgot the opening tag) is harmless and ignored. A think close only closes the innermost
open think part of the same name; a mismatched close leaves the text inside thinking. Chat control tokens
(``<|end|>`` and the like) are removed before parsing, so a tag split by one (``<fi<|end|>nal>``) is still a
tag and the answer can never re-form one; other angle-bracket text (``a < b``, ``<div>``) stays.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

THINK_PARTS = ("observation", "deduction", "abduction", "integration")
FINAL_TAG = "final"
DECISIONS = ("ALLOW", "ESCALATE", "REFUSE")  # the policy's three answers, in this order everywhere
END_OF_TURN = "<|end|>"  # Phi-3's end of a chat turn (``chat_turn``), where generation stops (``stop_ids``)

FALLBACK_MESSAGE = (
    "Sorry, I could not produce an answer this time. Please try again.\n"
    "申し訳ありません。今回は回答を作成できませんでした。もう一度お試しください。"
)
REFUSE_MESSAGE = "I can't help with this request.\n申し訳ありませんが、このご依頼にはお応えできません。"
ESCALATE_MESSAGE = (
    "This question needs a qualified person (for example a doctor, pharmacist, lawyer or your security team), "
    "so I have not answered it automatically. If you or someone else is in danger, or you are thinking about "
    "harming yourself, please contact your local emergency number or a crisis line now.\n"
    "このご質問は専門家（医師・薬剤師・弁護士・セキュリティ担当者など）の確認が必要なため、自動では回答していません。"
    "あなたや周りの方に危険が迫っている場合や、自分を傷つけたい気持ちがある場合は、すぐに緊急通報（119・110）"
    "や相談窓口に連絡してください。"
)
QUAD_SYSTEM = (
    "Think in four tagged parts, then answer: "
    + "".join(f"<think-{p}>…</think-{p}>" for p in THINK_PARTS)
    + f"<{FINAL_TAG}>…</{FINAL_TAG}>. Only the {FINAL_TAG} part is shown to the user; "
    "write it in the user's language."
)

# A tag name: letters/digits/underscores, with optional spaces around '-' or '_' joints ("think - observation").
_TAG_HEAD = re.compile(r"<\s*(/?)\s*([A-Za-z][A-Za-z0-9_]*(?:\s*[-_]\s*[A-Za-z0-9]+)*)")


@dataclass(frozen=True)
class Tok:
    """One lexer token: ``kind`` is ``text``, ``open`` or ``close``; ``name`` is set for tags."""

    kind: str
    text: str
    name: str = ""


def _tag_kind(name: str) -> str | None:
    if name == FINAL_TAG:
        return "final"
    return "think" if name.startswith("think") else None


def strip_control(text: str) -> str:
    """Remove chat control tokens (``<|``, text without ``<``, ``|`` or ``>``, then ``|>``: ``<|end|>``…),
    repeatedly, since a removal can join a new one.

    One pass in linear time: a nested input like ``<|<|<|…|>|>|>`` would need one regex pass per level (minutes
    for a 200 kB prompt). Two control tokens never overlap (their inner text holds no ``<``, ``|`` or ``>``), so
    removing each one as soon as it ends, left to right, reaches the same result as removing them all repeatedly.
    """
    out: list[str] = []  # the text so far, with no control token left in it
    marks: list[int] = []  # positions in ``out`` of its '<', '|' and '>' characters
    for ch in text:
        if ch == ">" and len(marks) >= 3 and out[-1] == "|":
            k = marks[-3]  # a token is '<' '|' inner '|' '>', and its inner text holds no mark
            if out[k] == "<" and marks[-2] == k + 1 and out[k + 1] == "|":
                del out[k:]
                del marks[-3:]
                continue
        if ch in "<|>":
            marks.append(len(out))
        out.append(ch)
    return "".join(out)


def lex(raw: str) -> Iterator[Tok]:
    """Split ``raw`` into text and think/final tags.

    A think or final tag ends at its ``>``, or, if a ``<`` or the end of the text comes first, right there:
    an unterminated ``<think-x`` still opens a think part. Other ``<…>`` spans are ordinary text.

    Args:
        raw: model output.
    Returns:
        An iterator of ``Tok``; joining their ``text`` gives ``raw`` back.
    """
    i, n = 0, len(raw)
    while i < n:
        j = raw.find("<", i)
        if j < 0:
            yield Tok("text", raw[i:])
            return
        if j > i:
            yield Tok("text", raw[i:j])
        head = _TAG_HEAD.match(raw, j)
        name = re.sub(r"\s+", "", head.group(2)).lower().replace("_", "-") if head else ""
        if head and _tag_kind(name):
            gt, lt = raw.find(">", head.end()), raw.find("<", head.end())
            end = n if gt < 0 and lt < 0 else (gt + 1 if gt >= 0 and (lt < 0 or gt < lt) else lt)
            yield Tok("close" if head.group(1) else "open", raw[j:end], name)
            i = end
        else:
            yield Tok("text", "<")
            i = j + 1


def leaks_thinking(text: str) -> bool:
    """True when ``text`` holds anything the lexer reads as a think tag (``<think-x>``, ``</ think``, ``<think``).

    The one leak test of the package: the audit log refuses such a final text, the safety evaluation counts
    them. It uses the same lexer as ``extract_final``, so a spelling that would open a think part is a leak.
    """
    return any(t.kind != "text" and t.name.startswith("think") for t in lex(text))


class _Malformed(Exception):
    """The output breaks the well-formedness rules of the module docstring."""


def _final_text(tokens: Iterator[Tok]) -> str:
    stack: list[str] = []  # open think parts, innermost last
    state = "before"  # before -> in_final -> after
    parts: list[str] = []
    for t in tokens:
        think = t.kind in ("open", "close") and _tag_kind(t.name) == "think"
        if stack:  # inside thinking only think tags matter; everything else is thinking text
            if think and t.kind == "open":
                stack.append(t.name)
            elif think and t.name == stack[-1]:
                stack.pop()
        elif think and t.kind == "open":
            if state == "in_final":
                raise _Malformed("think part inside the final part")
            stack.append(t.name)
        elif think:  # stray close at top level: fatal inside the final, harmless outside it
            if state == "in_final":
                raise _Malformed("think close inside the final part")
        elif t.kind == "open":
            if state != "before":
                raise _Malformed("nested or second final part")
            state = "in_final"
        elif t.kind == "close":
            if state != "in_final":
                raise _Malformed("final close without an open final")
            state = "after"
        elif state == "in_final":  # text
            parts.append(t.text)
    if state != "after":
        raise _Malformed("no closed final part")
    return "".join(parts).strip()


def extract_final(raw: str) -> str:
    """The text of the final part of a quad-thinking output, or ``FALLBACK_MESSAGE``.

    Never returns text from a think part, nor the raw output: see the module docstring for what
    "well-formed" means and why each malformed case falls back.

    Args:
        raw: the model's generated text (new tokens only).
    Returns:
        The stripped final text without tags or control tokens, or ``FALLBACK_MESSAGE``.

    Explained in notebooks/06_safety_eval.ipynb.
    """
    try:
        text = _final_text(lex(strip_control(raw)))
    except _Malformed:
        return FALLBACK_MESSAGE
    return text if text else FALLBACK_MESSAGE


def thinking_parts(raw: str) -> list[tuple[str, str]]:
    """The outermost think parts as ``(name, content)``, content stripped, nested tags normalised.

    An unclosed think part runs to the end of the text. Used only to hash the thinking.
    """
    parts: list[tuple[str, str]] = []
    stack: list[str] = []
    buf: list[str] = []
    for t in lex(strip_control(raw)):
        think = t.kind in ("open", "close") and _tag_kind(t.name) == "think"
        if not stack:
            if think and t.kind == "open":
                stack, buf = [t.name], []
            continue
        if think and t.kind == "close" and t.name == stack[-1]:
            stack.pop()
            if not stack:
                parts.append((t.name, "".join(buf).strip()))
                continue
        elif think and t.kind == "open":
            stack.append(t.name)
        if t.kind in ("open", "close"):
            buf.append(f"<{'/' if t.kind == 'close' else ''}{t.name}>")
        else:
            buf.append(t.text)
    if stack:
        parts.append((stack[0], "".join(buf).strip()))
    return parts


@dataclass(frozen=True)
class Part:
    """One top-level part of a raw output (``top_level_parts``): tag name, inner text, closed or not, and whether
    any think/final tag occurs inside it."""

    name: str
    content: str
    closed: bool
    nested: bool


def top_level_parts(raw: str) -> list[Part]:
    """The think and final parts at top level, in the order they open: the outline a layout reward grades.

    Same lexer as ``extract_final``. Inside a part every think/final tag is nested (it marks ``nested`` and, if it
    opens, must be closed before the part can close); a part closes at the close tag of its own name once nothing
    inside is open. An unclosed part runs to the end. Stray closes and text at top level are skipped.

    Args:
        raw: model output.
    Returns:
        ``Part`` per top-level part (``name`` like ``think-observation`` or ``final``), content stripped.
    """
    parts: list[Part] = []
    stack: list[str] = []
    buf: list[str] = []
    nested = False
    for t in lex(strip_control(raw)):
        tag = t.kind in ("open", "close")
        if not stack:
            if tag and t.kind == "open":
                stack, buf, nested = [t.name], [], False
            continue
        if tag and t.kind == "close" and t.name == stack[-1]:
            stack.pop()
            if not stack:
                parts.append(Part(t.name, "".join(buf).strip(), True, nested))
                continue
        elif tag and t.kind == "open":
            stack.append(t.name)
        nested = nested or tag
        buf.append(t.text)
    if stack:
        parts.append(Part(stack[0], "".join(buf).strip(), False, nested))
    return parts


def thinking_hash(raw: str) -> str:
    """SHA-256 hex digest of the thinking, so an audit can match thinking without storing it.

    Canonical form: the JSON list ``[[name, content], …]`` of the outermost think parts in order (names
    lower-cased, content stripped), compact separators, UTF-8. Tag spelling (case, spaces) and everything
    outside think parts, the final included, do not change the hash; any change of thinking text does.

    Args:
        raw: the model's generated text.
    Returns:
        64 hex characters (the hash of ``[]`` when there is no thinking).

    Explained in notebooks/06_safety_eval.ipynb.
    """
    canon = json.dumps(thinking_parts(raw), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def format_quad(observation: str, deduction: str, abduction: str, integration: str, final: str) -> str:
    """Join the four thinking parts and the final answer into the tagged layout.

    Args:
        observation, deduction, abduction, integration: thinking texts (never shown to a user).
        final: the answer text, the only part ``extract_final`` lets out.
    Returns:
        The tagged string.
    """
    parts = dict(zip(THINK_PARTS, (observation, deduction, abduction, integration)))
    body = "".join(f"<think-{k}>{v}</think-{k}>" for k, v in parts.items())
    return f"{body}<{FINAL_TAG}>{final}</{FINAL_TAG}>"


_QUAD_LAYOUT = re.compile(
    "".join(rf"<think-{p}>[^<]*</think-{p}>" for p in THINK_PARTS) + rf"<{FINAL_TAG}>[^<]*</{FINAL_TAG}>"
)


def in_quad_layout(raw: str) -> bool:
    """True when ``raw`` begins (after white space) with exactly ``format_quad``'s form: the four think parts in
    order, then one final part, with no tag inside any of them. What follows the final part is not judged."""
    return _QUAD_LAYOUT.match(raw.strip()) is not None


def chat_turn(user: str, assistant: str | None = None, system: str = "") -> str:
    """One Phi-3 chat turn, the layout the project's models are trained on and prompted with.

    The text goes in as given: ``build_prompt`` first removes chat control tokens from untrusted text.

    Args:
        user: the user's message.
        assistant: the assistant's reply, or None for the prompt a model should continue.
        system: a system message; ``""`` leaves the system turn out.
    Returns:
        ``[<|system|>\\n{system}<|end|>\\n]<|user|>\\n{user}<|end|>\\n<|assistant|>\\n[{assistant}<|end|>]``.
    """
    head = f"<|system|>\n{system}<|end|>\n" if system else ""
    prompt = f"{head}<|user|>\n{user}<|end|>\n<|assistant|>\n"
    return prompt if assistant is None else f"{prompt}{assistant}<|end|>"


def build_prompt(user_text: str, system: str | None = None) -> str:
    """A Phi-3 chat prompt asking for the quad layout.

    Chat control tokens are removed from the user text so a user cannot close their own turn and write
    an assistant turn (``<|end|>\\n<|assistant|>``).

    Args:
        user_text: the user's message (non-empty).
        system: system message; ``QUAD_SYSTEM`` when ``None``; ``""`` leaves the system turn out (the layout
            the project's own models are trained on).
    Returns:
        ``<|system|>\\n…<|end|>\\n<|user|>\\n…<|end|>\\n<|assistant|>\\n``.

    Explained in notebooks/06_safety_eval.ipynb.
    """
    user = strip_control(user_text).strip()
    if not user:
        raise ValueError(f"user_text={user_text!r}: empty after removing chat control tokens")
    sys_text = QUAD_SYSTEM if system is None else strip_control(system).strip()
    return chat_turn(user, system=sys_text)


def _strip_special(text: str, tokenizer: Any) -> str:
    """Drop the tokenizer's special tokens (``</s>``…), except ones that read as think/final tags."""
    for tok in getattr(tokenizer, "all_special_tokens", []):
        if tok and not any(t.kind in ("open", "close") for t in lex(tok)):
            text = text.replace(tok, "")
    return text


def decode_raw(tokenizer: Any, ids: Any) -> str:
    """Generated token ids as raw text: special tokens kept while decoding (think tags that are special tokens
    survive), then the tokenizer's other special tokens removed. What ``extract_final`` and the rewards read."""
    return _strip_special(tokenizer.decode(ids, skip_special_tokens=False), tokenizer)


def stop_ids(tokenizer: Any) -> list[int]:
    """End of sequence, plus Phi-3's end-of-turn ``<|end|>`` when the vocabulary has it."""
    stops = [tokenizer.eos_token_id]
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        stops.append(end)
    return [s for s in stops if s is not None]
