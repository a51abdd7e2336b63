"""The hash chain of the audit log as pure functions: canonical encoding, row hashes, OCR commitments, document
diffs and chain verification. No SQLite here; ``so8t_core.serving.audit`` stores the rows and explains the design
(no notebook covers the log).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64  # prev_hash of the first row
DOC_TABLES = ("policy_state", "identity_contract")
TABLES = ("decisions", *DOC_TABLES)
_DOC_HASHED = ("id", "ts", "version", "doc", "diff", "prev_hash")
# ocr_summary and ocr_nonce are not here: ocr_digest stands for them, so purge can blank them
HASHED_COLUMNS = {
    "decisions": (
        "id",
        "ts",
        "request_id",
        "decision",
        "reason",
        "input_hash",
        "thinking_hash",
        "final_text",
        "policy_version",
        "contract_version",
        "model_id",
        "image_sha256",
        "ocr_digest",
        "prev_hash",
    ),
    "policy_state": _DOC_HASHED,
    "identity_contract": _DOC_HASHED,
}


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of ``AuditLog.verify``: ``first_bad`` is ``(table, id)`` of the first row that fails."""

    ok: bool
    rows_checked: int
    first_bad: tuple[str, int] | None = None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


def canonical_json(obj: Any) -> str:
    """The one JSON encoding that is hashed: sorted keys, no spaces, UTF-8 kept, NaN refused."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def row_hash(table: str, row: Mapping[str, Any]) -> str:
    """SHA-256 hex of ``table`` and the row's hashed columns (``HASHED_COLUMNS[table]``, ``prev_hash`` included)."""
    fields = {c: row[c] for c in HASHED_COLUMNS[table]}
    fields["table"] = table
    return hashlib.sha256(canonical_json(fields).encode("utf-8")).hexdigest()


def ocr_commitment(nonce_hex: str, summary: str) -> str:
    """``sha256(nonce || summary)``: what stays in the chain after ``purge`` drops both."""
    return hashlib.sha256(bytes.fromhex(nonce_hex) + summary.encode("utf-8")).hexdigest()


def doc_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Difference between two JSON documents, recursing into nested objects.

    Args:
        old, new: JSON objects (dicts with string keys).
    Returns:
        ``{"added": {path: new}, "removed": {path: old}, "changed": {path: {"old": a, "new": b}}}`` where ``path``
        is an RFC 6901 JSON pointer (``/limits/max_tokens``). Lists and scalars are compared whole.
    """
    out: dict[str, dict[str, Any]] = {"added": {}, "removed": {}, "changed": {}}
    _diff_into(out, old, new, "")
    return out


def _diff_into(out: dict[str, dict[str, Any]], old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> None:
    for key in sorted(old.keys() | new.keys()):
        p = f"{path}/{key.replace('~', '~0').replace('/', '~1')}"
        if key not in old:
            out["added"][p] = new[key]
        elif key not in new:
            out["removed"][p] = old[key]
        elif isinstance(old[key], dict) and isinstance(new[key], dict):
            _diff_into(out, old[key], new[key], p)
        elif canonical_json(old[key]) != canonical_json(new[key]):  # JSON equality: 1 and true differ
            out["changed"][p] = {"old": old[key], "new": new[key]}


def verify_chain(
    rows: Iterable[tuple[str, Mapping[str, Any]]], head: tuple[int, str] | None, anchor: tuple[int, str] | None = None
) -> VerifyResult:
    """Check ``(table, row)`` pairs in id order against the hash chain, the chain head and an optional anchor.

    Args:
        rows: every row of every table, merged in ``id`` order.
        head: ``(seq, row_hash)`` from ``chain_head`` (None when it is empty).
        anchor: an earlier ``(id, row_hash)`` that must still be in the chain.
    Returns:
        The first failure, or ``ok=True`` with the number of rows checked.
    """
    prev_hash, n = GENESIS, 0
    docs: dict[str, tuple[int, dict[str, Any]]] = {t: (0, {}) for t in DOC_TABLES}
    for table, row in rows:
        n += 1
        why = _row_problem(table, row, n, prev_hash, docs)
        if why is None and anchor is not None and row["id"] == anchor[0] and row["row_hash"] != anchor[1]:
            why = f"row_hash differs from the anchor {anchor[1][:12]}...: the chain was rewritten up to here"
        if why:
            return VerifyResult(False, n, (table, row["id"]), why)
        prev_hash = row["row_hash"]
    head_seq, head_hash = head or (0, GENESIS)
    if (head_seq, head_hash) != (n, prev_hash):
        return VerifyResult(
            False,
            n,
            ("chain_head", head_seq),
            f"the chain ends at id {n} but chain_head records id "
            f"{head_seq}: rows were cut off the end, or added without updating the head",
        )
    if anchor is not None and anchor[0] > n:
        return VerifyResult(False, n, ("chain_head", head_seq), f"anchor id {anchor[0]} is past the end of the chain")
    return VerifyResult(True, n)


def _row_problem(
    table: str, row: Mapping[str, Any], n: int, prev_hash: str, docs: dict[str, tuple[int, dict[str, Any]]]
) -> str | None:
    if row["id"] != n:
        gap = "a row before it was deleted" if row["id"] > n else "a row was inserted or duplicated"
        return f"id {row['id']} where the chain expects {n}: {gap}"
    if row["prev_hash"] != prev_hash:
        return "prev_hash does not match the row before it: rows were inserted, deleted or reordered"
    if table == "decisions" and (why := _ocr_problem(row)):
        return why
    if row_hash(table, row) != row["row_hash"]:
        return "row_hash does not match the row's contents: the row was edited"
    if table in docs:
        return _doc_problem(table, row, docs)
    return None


def _ocr_problem(row: Mapping[str, Any]) -> str | None:
    summary, nonce, digest = row["ocr_summary"], row["ocr_nonce"], row["ocr_digest"]
    if summary is None and nonce is None:
        return None  # no OCR, or purged: the digest alone is in the hash
    if summary is None or nonce is None or digest is None:
        return "ocr_summary, ocr_nonce and ocr_digest are not all set: the OCR payload was edited"
    try:
        ok = ocr_commitment(nonce, summary) == digest
    except ValueError:  # nonce is not hex
        ok = False
    return None if ok else "ocr_summary does not match its digest: the OCR payload was edited"


def _doc_problem(table: str, row: Mapping[str, Any], docs: dict[str, tuple[int, dict[str, Any]]]) -> str | None:
    version, old = docs[table]
    if row["version"] != version + 1:
        return f"{table} version {row['version']} follows version {version}: versions must go up by 1"
    try:
        doc, diff = json.loads(row["doc"]), json.loads(row["diff"])
    except json.JSONDecodeError as e:
        return f"doc or diff is not JSON ({e})"
    if diff != doc_diff(old, doc):
        return f"the stored diff is not the difference from version {version}"
    docs[table] = (row["version"], doc)
    return None
