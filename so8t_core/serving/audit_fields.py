"""What may go into an audit row: the log's settings, its errors, and the checks every field passes first.

A field that fails its check raises ``ValueError`` naming it, and the row is not written. The log never takes raw
thinking, images or OCR text (see ``ops.audit``).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from so8t_core.config import check
from so8t_core.serving.audit_chain import canonical_json, ocr_commitment
from so8t_core.think import DECISIONS, leaks_thinking

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SYNC_LEVELS = {"OFF": 0, "NORMAL": 1, "FULL": 2, "EXTRA": 3}
_MAX_ID_CHARS = 200
__all__ = ["DECISIONS", "AuditConfig", "AuditError", "SchemaVersionError", "VersionedDoc", "utc_stamp"]


class AuditError(RuntimeError):
    """The audit log cannot be opened or written; the message names the file and what to do."""


class SchemaVersionError(AuditError):
    """The file was written with another audit schema version."""


@dataclass(frozen=True)
class AuditConfig:
    """How the log talks to SQLite. Defaults are the production settings.

    ``synchronous`` other than FULL exists only so ``bench/audit_bench.py`` can measure what FULL costs.
    """

    synchronous: str = "FULL"
    busy_timeout_s: float = 10.0  # SQLite waits this long for the write lock before reporting busy
    max_retries: int = 8  # then this many retries with backoff: about 1.3 s more patience in all
    backoff_s: float = 0.005
    max_summary_chars: int = 2000  # an OCR *summary*: raw page text does not fit

    def __post_init__(self) -> None:
        check(self.synchronous in _SYNC_LEVELS, "synchronous", self.synchronous, f"must be one of {list(_SYNC_LEVELS)}")
        check(self.busy_timeout_s > 0, "busy_timeout_s", self.busy_timeout_s, "must be > 0")
        check(self.max_retries >= 0, "max_retries", self.max_retries, "must be >= 0")
        check(self.backoff_s > 0, "backoff_s", self.backoff_s, "must be > 0")
        check(self.max_summary_chars > 0, "max_summary_chars", self.max_summary_chars, "must be > 0")


@dataclass(frozen=True)
class VersionedDoc:
    """One version of the policy or the identity contract, with its diff from the version before."""

    version: int
    ts: str
    doc: dict[str, Any]
    diff: dict[str, dict[str, Any]]


def utc_stamp(t: float) -> str:
    """Fixed-width UTC time, so that string order is time order (``purge`` compares strings)."""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_hex64(field: str, value: Any, optional: bool = False) -> None:
    if optional and value is None:
        return
    ok = isinstance(value, str) and _HEX64.fullmatch(value) is not None
    check(
        ok,
        field,
        _redacted(value),
        "must be a SHA-256 hex digest (64 lowercase hex chars), e.g. hashlib.sha256(data).hexdigest(); "
        "the audit log never takes the raw text or image",
    )


def _redacted(value: Any) -> str:
    """What an error message may say about a rejected value that could be thinking or OCR text: not its content."""
    return f"<{type(value).__name__} of length {len(value)}>" if isinstance(value, str) else f"<{type(value).__name__}>"


def _check_name(field: str, value: Any, allow_empty: bool = False) -> None:
    ok = isinstance(value, str) and (allow_empty or value.strip() != "") and len(value) <= _MAX_ID_CHARS
    check(ok, field, value, f"must be a {'' if allow_empty else 'non-empty '}string of at most {_MAX_ID_CHARS} chars")


def _check_version(field: str, value: Any) -> None:
    if value is not None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        check(ok, field, value, "must be an int >= 0")


def _decision_fields(cfg: AuditConfig, **f: Any) -> dict[str, Any]:
    """Validate ``log_decision``'s arguments; returns the columns except id, ts, versions and hashes."""
    _check_name("request_id", f["request_id"])
    check(f["decision"] in DECISIONS, "decision", f["decision"], f"must be one of {DECISIONS}")
    _check_name("reason", f["reason"], allow_empty=True)
    _check_hex64("input_hash", f["input_hash"])
    _check_hex64("thinking_hash", f["thinking_hash"])
    _check_hex64("image_sha256", f["image_sha256"], optional=True)
    check(isinstance(f["final_text"], str), "final_text", type(f["final_text"]).__name__, "must be a str")
    check(
        not leaks_thinking(f["final_text"]),
        "final_text",
        _redacted(f["final_text"]),
        "contains a <think-*> part: log only the final answer (think.extract_final), never thinking text",
    )
    _check_name("model_id", f["model_id"])
    summary = f.pop("ocr_summary")
    ok = summary is None or (isinstance(summary, str) and len(summary) <= cfg.max_summary_chars)
    check(
        ok,
        "ocr_summary",
        _redacted(summary),
        f"must be None or a summary of at most {cfg.max_summary_chars} chars (never the raw OCR text)",
    )
    nonce = digest = None
    if summary is not None:
        nonce = secrets.token_hex(32)
        digest = ocr_commitment(nonce, summary)
    return {**f, "ocr_summary": summary, "ocr_nonce": nonce, "ocr_digest": digest}


def _doc_text(field: str, doc: Any) -> str:
    check(isinstance(doc, dict), field, type(doc).__name__, "must be a dict (a JSON object)")
    try:
        return canonical_json(doc)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{field}: not a JSON document with string keys ({e})") from e
