"""The answer logic behind ``/think``: validate a request, read an image by OCR, decide, answer, audit.

No HTTP here (that is ``ops.server``) and no model loading (``ops.models``): ``think`` takes an ``AppState`` that
holds the model, the decision source and the audit log, so it runs the same in tests, benchmarks and the server.

An image is read locally by ``ocr.ocr_summary`` and only its summary is appended to the prompt (``model_text``);
decision and answer both see that text. When OCR warns (marks it could not read, or a low-confidence reading),
the warning is appended too and returned as ``ocr_warnings``, so an unread image is never passed off as empty.
The answer comes only from ``policy.respond_under`` under the model's answer policy (``extract_final`` for the
project's quad models, ``policy.final_text`` for chat models without thinking tags, or a fixed message). Every
answered request is one ``AuditLog.log_decision`` row (see ``ops.server``).

The work one request causes is bounded (``ops.limits``): a prompt over the token limit is refused (413) before
the decision source or the model sees it; a request that needs the model waits in a bounded queue or is refused
(503, ``Retry-After``); its turn with the model (a heads decision and generation) ends at ``deadline_s``.

Explained in notebooks/06_safety_eval.ipynb.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from so8t_core.config import check
from so8t_core.lm.generate import Response
from so8t_core.serving.audit import AuditLog
from so8t_core.serving.audit_chain import canonical_json
from so8t_core.serving.limits import Admission, Busy, PromptLimit, chars_per_token, prompt_token_limit
from so8t_core.serving.ocr import (
    ImageTooLargeError,
    InvalidImageError,
    OCRResult,
    TesseractFailedError,
    TesseractMissingError,
    ocr_summary,
)
from so8t_core.serving.policy import POLICIES, answer_policy, respond_under
from so8t_core.think import strip_control, thinking_hash

FIELDS = ("prompt", "image_base64")
NO_THINKING_HASH = thinking_hash("")  # logged for REFUSE/ESCALATE: nothing was generated
OCR_NOTE = "[Text read from the attached image by OCR: {summary}]"
OCR_EMPTY_NOTE = "[The attached image has no readable text.]"
OCR_WARNING_NOTE = "[OCR warning: {warning}.]"


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx/5xx) and a message safe to send back."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


@dataclass(frozen=True)
class ThinkRequest:
    """A validated ``/think`` body: the prompt and the decoded image bytes (``None`` without an image)."""

    prompt: str
    image: bytes | None


def _default_ocr(image: bytes, lang: str) -> OCRResult:
    return ocr_summary(image, lang=lang)


@dataclass(frozen=True)
class AppState:
    """Everything a request needs, with one decision source ``decide``.

    Args:
        model, tokenizer: the causal LM and its tokenizer.
        audit: the open audit log.
        model_id: identifier written to every audit row (at most 200 chars).
        decision_source: name of the policy shown by ``/healthz`` and logged as the reason.
        decide: text -> ALLOW/ESCALATE/REFUSE (a baseline, heads via ``safety.heads.heads_decider``, ...).
        decide_uses_model: ``decide`` runs the model (heads), so it must hold the model lock.
        decide_max_tokens: the most tokens of a prompt ``decide`` reads (heads), or None.
        max_new_tokens, max_body, read_timeout_s: generation budget, body limit (bytes), socket timeout.
        max_prompt_tokens: prompt limit in tokens (``limits.prompt_token_limit``; None: derived from the model's
            context and ``decide_max_tokens``; no limit without a tokenizer).
        deadline_s: the longest one request holds the model (a heads decision and ``generate``'s ``max_time``).
        max_queue: requests that may wait for the model while one uses it; a wait ends after
            ``max_queue * deadline_s``, when every turn ahead would have used its whole deadline.
        ocr_lang, ocr_fn: Tesseract languages and the OCR function ``(bytes, lang) -> OCRResult``.
        answer_policy: ``quad`` or ``final_only`` (``ops.policy``); None reads it from the tokenizer
            (``policy.answer_policy``), so it follows the model.
        contract_version: the audit log's identity-contract version naming this model and decision source
            (``models.serving_contract``), written into every row; None takes the newest stored one.
    """

    model: Any
    tokenizer: Any
    audit: AuditLog
    model_id: str
    decision_source: str
    decide: Callable[[str], str]
    decide_uses_model: bool = False
    decide_max_tokens: int | None = None
    max_new_tokens: int = 128
    max_body: int = 2 << 20
    read_timeout_s: float = 30.0
    max_prompt_tokens: int | None = None
    deadline_s: float = 30.0
    max_queue: int = 8
    ocr_lang: str = "jpn+eng"
    ocr_fn: Callable[[bytes, str], OCRResult] = _default_ocr
    answer_policy: str | None = None
    contract_version: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    limit: PromptLimit | None = field(init=False, repr=False, compare=False)
    admission: Admission = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check(callable(self.decide), "decide", self.decide, "must be a callable text -> decision")
        for name in ("model_id", "decision_source"):  # both go into every audit row
            v = getattr(self, name)
            check(isinstance(v, str) and 0 < len(v) <= 200, name, v, "must be a non-empty string of at most 200 chars")
        for name in ("max_new_tokens", "max_body", "read_timeout_s", "deadline_s"):
            check(getattr(self, name) > 0, name, getattr(self, name), "must be > 0")
        policy = answer_policy(self.tokenizer) if self.answer_policy is None else self.answer_policy
        check(policy in POLICIES, "answer_policy", policy, f"must be one of {POLICIES}")
        object.__setattr__(self, "answer_policy", policy)  # frozen: derived once, here
        limit = None
        if self.tokenizer is not None:
            config = getattr(self.model, "config", None)
            tokens = prompt_token_limit(config, self.max_new_tokens, self.decide_max_tokens, self.max_prompt_tokens)
            limit = PromptLimit(tokens, chars_per_token(self.tokenizer), policy) if tokens is not None else None
        object.__setattr__(self, "limit", limit)  # frozen: derived once, here
        object.__setattr__(self, "admission", Admission(self.lock, self.max_queue, self.max_queue * self.deadline_s))


# ---------------------------------------------------------------------------------------------- request logic
def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    dup = sorted(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)  # linear: bodies may hold many keys
    if dup:
        raise ValueError(f"duplicate key(s) {[k[:40] for k in dup[:5]]}")
    return dict(pairs)


def parse_think_request(body: bytes) -> ThinkRequest:
    """Validate a ``/think`` body.

    Args:
        body: the raw request body.
    Returns:
        ``ThinkRequest``. Raises ``RequestError(400, ...)`` naming what is wrong.
    """
    try:
        obj = json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise RequestError(400, "body is not UTF-8 text") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; deep nesting recurses
        raise RequestError(400, f"body is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(obj, dict):
        raise RequestError(400, 'body must be a JSON object like {"prompt": "..."}')
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise RequestError(400, f"unknown field(s) {[k[:40] for k in unknown[:5]]}: allowed are {list(FIELDS)}")
    prompt, image = obj.get("prompt"), obj.get("image_base64")
    if not isinstance(prompt, str):
        raise RequestError(400, f"field 'prompt' is required and must be a string (got {type(prompt).__name__})")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(400, "field 'prompt' holds invalid Unicode (a lone surrogate)") from None
    if not strip_control(prompt).strip():
        raise RequestError(400, "field 'prompt' is empty (after removing chat control tokens)")
    if image is not None and not isinstance(image, str):
        raise RequestError(400, f"field 'image_base64' must be a base64 string (got {type(image).__name__})")
    return ThinkRequest(prompt, None if image is None else _decode_base64(image))


def _decode_base64(text: str) -> bytes:
    try:
        data = base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, "field 'image_base64' is not valid base64 (standard alphabet, padded)") from None
    if not data:
        raise RequestError(400, "field 'image_base64' is empty")
    return data


def model_text(prompt: str, ocr_summary_text: str | None, ocr_warnings: tuple[str, ...] = ()) -> str:
    """The text the decision and the model see: the prompt, plus the OCR summary and OCR's warnings when an image
    came with it. An empty summary with a warning is not called "no readable text": the warning says why.

    Args:
        prompt: the request's prompt.
        ocr_summary_text: ``OCRResult.summary``, or None without an image.
        ocr_warnings: ``OCRResult.warnings``.
    Returns:
        The prompt, a blank line and the notes, one per line.
    """
    if ocr_summary_text is None:
        return prompt
    notes = [OCR_WARNING_NOTE.format(warning=w) for w in ocr_warnings]
    if ocr_summary_text.strip():
        notes.insert(0, OCR_NOTE.format(summary=ocr_summary_text))
    elif not notes:
        notes = [OCR_EMPTY_NOTE]
    return f"{prompt}\n\n" + "\n".join(notes)


def input_hash(prompt: str, image_sha256: str | None) -> str:
    """SHA-256 of the canonical JSON ``{"image_sha256": ..., "prompt": ...}``: whoever holds the request can
    recompute it, while the audit log keeps neither the prompt nor the image."""
    canon = canonical_json({"image_sha256": image_sha256, "prompt": prompt})
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def _run_ocr(state: AppState, image: bytes) -> OCRResult:
    try:
        return state.ocr_fn(image, state.ocr_lang)
    except ImageTooLargeError as e:
        raise RequestError(413, f"image too large: {e}") from None
    except InvalidImageError as e:
        raise RequestError(400, f"field 'image_base64' is not a readable image: {e}") from None
    except TesseractFailedError:
        raise RequestError(422, "OCR failed on this image (Tesseract error or timeout)") from None
    except TesseractMissingError as e:  # the server's installation, not the client's image
        raise RequestError(503, f"OCR is not available on this server: {e}") from None


def _check_length(state: AppState, text: str) -> None:
    why = state.limit.refusal(state.tokenizer, text) if state.limit is not None else None
    if why is not None:
        raise RequestError(413, why)


def _answer(state: AppState, text: str) -> Response:
    policy = str(state.answer_policy)
    label = None if state.decide_uses_model else state.decide(text)  # a baseline does not touch the model
    if label is not None and label != "ALLOW":
        return respond_under(policy, state.model, state.tokenizer, text, lambda _: label)
    try:
        with state.admission.turn() as started:  # the heads' forward pass and generate share the model
            decision = label or state.decide(text)
            left = max(state.deadline_s - (time.monotonic() - started), 0.0)  # the decision used part of the turn
            return respond_under(
                policy, state.model, state.tokenizer, text, lambda _: decision, state.max_new_tokens, left
            )
    except Busy as e:
        raise RequestError(503, e.message, {"Retry-After": str(e.retry_after_s)}) from None


def think(state: AppState, req: ThinkRequest, request_id: str) -> dict[str, Any]:
    """Answer one validated request and append its audit row; the response holds only the final answer (and, for
    a request with an image, OCR's warnings: never the text OCR read).

    Args:
        state: the server's ``AppState``.
        req: from ``parse_think_request``.
        request_id: a fresh id (the handler uses ``uuid4().hex``).
    Returns:
        ``{"request_id", "decision", "final"}``, plus ``"ocr_warnings"`` (a list, often empty) with an image.
        Raises ``RequestError`` for an image OCR refuses, a prompt over the limit (413) or a full queue (503).
    """
    _check_length(state, req.prompt)  # before OCR: a prompt too long alone is refused at once
    ocr = _run_ocr(state, req.image) if req.image is not None else None
    text = model_text(req.prompt, ocr.summary if ocr else None, ocr.warnings if ocr else ())
    if ocr is not None:
        _check_length(state, text)
    r = _answer(state, text)
    state.audit.log_decision(
        request_id=request_id,
        decision=r.decision,
        reason=state.decision_source,
        input_hash=input_hash(req.prompt, ocr.image_sha256 if ocr else None),
        thinking_hash=r.thinking_hash or NO_THINKING_HASH,
        final_text=r.final,
        model_id=state.model_id,
        contract_version=state.contract_version,
        ocr_summary=ocr.summary if ocr else None,
        image_sha256=ocr.image_sha256 if ocr else None,
    )
    out: dict[str, Any] = {"request_id": request_id, "decision": r.decision, "final": r.final}
    if ocr is not None:
        out["ocr_warnings"] = list(ocr.warnings)
    return out


def health(state: AppState) -> dict[str, Any]:
    """What ``GET /healthz`` returns: model id, decision source, audit log path, the model's queue and the limits.
    It never takes the model lock, so it answers while a generation runs."""
    return {
        "status": "ok",
        "model_id": state.model_id,
        "decision_source": state.decision_source,
        "answer_policy": state.answer_policy,
        "audit_path": str(state.audit.path),
        "queue": state.admission.depth(),
        "limits": {
            "max_prompt_tokens": state.limit.max_tokens if state.limit is not None else None,
            "max_new_tokens": state.max_new_tokens,
            "deadline_s": state.deadline_s,
        },
    }
