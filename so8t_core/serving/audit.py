"""Tamper-evident audit log of safety decisions, policy versions and identity-contract versions, in SQLite.

No notebook covers the log: this docstring is its design, the README's "Serving and evaluating" section shows it
in use, and ``tests/test_audit.py`` tests it. The schema is ``audit_schema.sql`` next to this file.

Durability and concurrency. One SQLite file in WAL mode with ``synchronous=FULL`` (each commit fsyncs the WAL),
both read back from PRAGMA when the log opens; a file system that refuses WAL is an error, not a silent
fallback. Every write is one ``BEGIN IMMEDIATE`` transaction, so reading the chain's last hash and inserting the
next row are atomic even with several processes writing; "database is locked" is first waited out by SQLite's
busy timeout, then retried a bounded number of times with jittered exponential backoff.

One chain for all tables. ``id`` is a global sequence number shared by ``decisions``, ``policy_state`` and
``identity_contract``, and each row holds ``prev_hash`` (the ``row_hash`` of row ``id - 1``) and ``row_hash``
(SHA-256 of the canonical JSON -- sorted keys, ``(",", ":")`` separators, ``ensure_ascii=False`` -- of the
table name and the row's hashed columns, ``prev_hash`` included). One chain rather than one per table because
it records the order *between* tables: it proves which policy and contract version were in force when a
decision was logged, and deleting a policy row breaks the same chain the decisions hang on. It costs nothing in
concurrency, since SQLite has one writer at a time anyway. ``chain_head`` stores the newest link, written in the
same transaction, so ``verify`` also notices rows cut off the end.

Purgeable OCR payloads. The OCR summary is not hashed directly. Each summary gets a random 32-byte nonce and the
row stores ``ocr_digest = sha256(nonce || summary)``; only the digest enters ``row_hash``. ``purge`` sets the
summary and the nonce to NULL and keeps the digest, so the chain still verifies, every other column is still
covered by ``row_hash`` (blanking a payload cannot hide an edit elsewhere), and a summary that is still there must
match its digest (editing it is caught). Dropping the nonce with the summary makes the kept digest a hiding
commitment: a short summary cannot be recovered by hashing guesses.

What it does not prove. Anyone who can write the file and knows this scheme can rebuild every hash after an
edit; a keyless chain only makes tampering evident to someone holding an earlier hash. Copy ``head()`` somewhere
else (a ticket, another host) and pass it back as ``verify(anchor=...)`` to get that guarantee. The log never
takes raw thinking, images or OCR text: ``thinking_hash``, ``input_hash`` and ``image_sha256`` must be 64-hex
SHA-256 digests, and OCR summaries are bounded in length and purged after ``RETENTION_DAYS``.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from so8t_core.config import check
from so8t_core.serving.audit_chain import (
    GENESIS,
    TABLES,
    VerifyResult,
    canonical_json,
    doc_diff,
    row_hash,
    verify_chain,
)
from so8t_core.serving.audit_fields import (
    _SYNC_LEVELS,
    AuditConfig,
    AuditError,
    SchemaVersionError,
    VersionedDoc,
    _check_version,
    _decision_fields,
    _doc_text,
    utc_stamp,
)

SCHEMA_VERSION = 1
RETENTION_DAYS = 7.0
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_NOTADB = 5, 6, 26
_MAX_BACKOFF_S = 1.0  # jitter spreads the retries of several waiting processes
T = TypeVar("T")


def _is_busy(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(e) or "busy" in str(e)


class AuditLog:
    """The audit log file. Use as ``with AuditLog(path) as log: ...`` or call ``close()``.

    Args:
        path: the SQLite file; its folder is created. ``":memory:"`` is refused (it cannot do WAL).
        config: SQLite settings (``AuditConfig``).
        clock: seconds since the epoch; tests pass a fake one to age rows for ``purge``.

    The design is in the module docstring.
    """

    def __init__(
        self, path: str | Path, config: AuditConfig = AuditConfig(), clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()  # one connection, shared by threads of this process
        self._conn = self._open()

    # ---- opening -------------------------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        if str(self.path) != ":memory:":
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise AuditError(f"cannot create the folder {self.path.parent} for audit log {self.path}: {e}") from e
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=self.config.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise AuditError(f"cannot open audit log {self.path}: {e}") from e
        conn.row_factory = sqlite3.Row
        try:
            self._retry(lambda: self._apply_pragmas(conn))  # switching to WAL takes the write lock once
            self._retry(lambda: self._ensure_schema(conn))
        except sqlite3.DatabaseError as e:
            conn.close()
            if getattr(e, "sqlite_errorcode", None) == _SQLITE_NOTADB:
                raise AuditError(
                    f"{self.path} is not an SQLite database ({e}): move it away or pick another path"
                ) from e
            raise AuditError(f"cannot open audit log {self.path}: {e}") from e
        except BaseException:
            conn.close()
            raise
        return conn

    def _apply_pragmas(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise AuditError(
                f"{self.path} refused WAL journal mode (got {mode!r}): put the audit log on a local "
                "file system that supports shared memory and file locks (not :memory:, not NFS)"
            )
        conn.execute(f"PRAGMA synchronous={self.config.synchronous}")
        conn.execute(f"PRAGMA busy_timeout={int(self.config.busy_timeout_s * 1000)}")
        got = self._read_pragmas(conn)
        want = {
            "journal_mode": "wal",
            "synchronous": self.config.synchronous,
            "busy_timeout_ms": int(self.config.busy_timeout_s * 1000),
        }
        if got != want:
            raise AuditError(f"{self.path}: SQLite did not keep the settings: asked {want}, read back {got}")

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        n_tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if version == 0 and n_tables == 0:
            sql = resources.files(__package__).joinpath("audit_schema.sql").read_text(encoding="utf-8")
            try:  # IF NOT EXISTS everywhere, so a second process creating it at the same time is harmless
                conn.executescript(f"BEGIN IMMEDIATE;\n{sql}\nPRAGMA user_version = {SCHEMA_VERSION};\nCOMMIT;")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            raise AuditError(
                f"{self.path} is an SQLite database but not an so8t audit log (it has tables and no "
                "schema version): pick another path"
            )
        if version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has audit schema version {version}, this so8t_core reads version "
                f"{SCHEMA_VERSION}: open it with the release that wrote it, or start a new file"
            )

    def pragmas(self) -> dict[str, Any]:
        """The connection's settings as SQLite reports them now (journal_mode, synchronous, busy_timeout_ms)."""
        with self._lock:
            return self._read_pragmas(self._conn)

    @staticmethod
    def _read_pragmas(conn: sqlite3.Connection) -> dict[str, Any]:
        sync = conn.execute("PRAGMA synchronous").fetchone()[0]
        return {
            "journal_mode": str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower(),
            "synchronous": {v: k for k, v in _SYNC_LEVELS.items()}[sync],
            "busy_timeout_ms": conn.execute("PRAGMA busy_timeout").fetchone()[0],
        }

    def close(self) -> None:
        """Close the connection (every returned write is already durable)."""
        self._conn.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing -------------------------------------------------------------------------------------------
    def _retry(self, fn: Callable[[], T]) -> T:
        for attempt in range(self.config.max_retries + 1):
            try:
                return fn()
            except sqlite3.OperationalError as e:
                if not _is_busy(e):
                    raise
                if attempt == self.config.max_retries:
                    raise AuditError(
                        f"{self.path} stayed locked after {attempt + 1} tries: another process holds "
                        "the write lock too long (raise AuditConfig.busy_timeout_s)"
                    ) from e
                time.sleep(min(self.config.backoff_s * 2**attempt, _MAX_BACKOFF_S) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def txn() -> T:
            self._conn.execute("BEGIN IMMEDIATE")  # take the write lock before reading the chain head
            try:
                out = fn(self._conn)
                self._conn.execute("COMMIT")
                return out
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

        with self._lock:
            return self._retry(txn)

    def _append(self, conn: sqlite3.Connection, table: str, fields: dict[str, Any]) -> int:
        head = conn.execute("SELECT seq, row_hash FROM chain_head").fetchone()
        seq, prev = (head["seq"], head["row_hash"]) if head else (0, GENESIS)
        row = {"id": seq + 1, **fields, "prev_hash": prev}
        row["row_hash"] = row_hash(table, row)
        marks = ", ".join("?" * len(row))
        conn.execute(f"INSERT INTO {table} ({', '.join(row)}) VALUES ({marks})", tuple(row.values()))
        conn.execute(
            "INSERT OR REPLACE INTO chain_head (one, seq, row_hash) VALUES (1, ?, ?)", (row["id"], row["row_hash"])
        )
        return row["id"]

    def log_decision(
        self,
        *,
        request_id: str,
        decision: str,
        input_hash: str,
        thinking_hash: str,
        final_text: str,
        model_id: str,
        reason: str = "",
        policy_version: int | None = None,
        contract_version: int | None = None,
        ocr_summary: str | None = None,
        image_sha256: str | None = None,
    ) -> int:
        """Append one decision; it is committed and fsynced when this returns.

        Args:
            request_id, model_id: identifiers (non-empty, at most 200 chars).
            decision: ``"ALLOW"``, ``"ESCALATE"`` or ``"REFUSE"``; reason: a short rule or reason code.
            input_hash, thinking_hash: SHA-256 hex digests of the input and of the thinking text (never the text).
            final_text: the answer that left the system (must not contain ``<think-*>`` parts).
            policy_version, contract_version: versions in force; None takes the newest stored ones.
            ocr_summary, image_sha256: optional OCR summary (purgeable) and the image's SHA-256.
        Returns:
            The row id (its place in the global chain). Raises ``ValueError`` naming a bad argument.
        """
        _check_version("policy_version", policy_version)
        _check_version("contract_version", contract_version)
        fields = _decision_fields(
            self.config,
            request_id=request_id,
            decision=decision,
            reason=reason,
            input_hash=input_hash,
            thinking_hash=thinking_hash,
            final_text=final_text,
            model_id=model_id,
            image_sha256=image_sha256,
            ocr_summary=ocr_summary,
        )

        def fn(conn: sqlite3.Connection) -> int:
            pv = self._latest(conn, "policy_state")[0] if policy_version is None else policy_version
            cv = self._latest(conn, "identity_contract")[0] if contract_version is None else contract_version
            row = {"ts": utc_stamp(self._clock()), **fields, "policy_version": pv, "contract_version": cv}
            return self._append(conn, "decisions", row)

        return self._write(fn)

    def _set_doc(self, table: str, doc: dict[str, Any]) -> int:
        text = _doc_text("doc", doc)

        def fn(conn: sqlite3.Connection) -> int:
            version, old_text = self._latest(conn, table)
            if text == old_text:  # unchanged: no new version, so re-applying a policy at startup is idempotent
                return version
            diff = doc_diff(json.loads(old_text) if old_text else {}, json.loads(text))
            row = {"ts": utc_stamp(self._clock()), "version": version + 1, "doc": text, "diff": canonical_json(diff)}
            self._append(conn, table, row)
            return version + 1

        return self._write(fn)

    def set_policy(self, doc: dict[str, Any]) -> int:
        """Store a new policy version (the whole JSON document plus its diff); returns its version (1, 2, ...)."""
        return self._set_doc("policy_state", doc)

    def set_identity_contract(self, doc: dict[str, Any]) -> int:
        """Store a new identity-contract version, like ``set_policy``; returns its version."""
        return self._set_doc("identity_contract", doc)

    def purge(self, older_than_days: float = RETENTION_DAYS) -> int:
        """Blank OCR summaries (and their nonces) of decisions older than the window; the chain stays verifiable.

        Args:
            older_than_days: retention window in days (``>= 0``; 0 purges every summary).
        Returns:
            How many rows lost their payload.
        """
        ok = isinstance(older_than_days, (int, float)) and math.isfinite(older_than_days) and older_than_days >= 0
        check(ok, "older_than_days", older_than_days, "must be a finite number >= 0")
        now = self._clock()
        cutoff = utc_stamp(now - older_than_days * 86400.0)
        sql = (
            "UPDATE decisions SET ocr_summary = NULL, ocr_nonce = NULL, ocr_purged_at = ? "
            "WHERE ocr_summary IS NOT NULL AND ts < ?"
        )
        return self._write(lambda conn: conn.execute(sql, (utc_stamp(now), cutoff)).rowcount)

    # ---- reading -------------------------------------------------------------------------------------------
    @staticmethod
    def _latest(conn: sqlite3.Connection, table: str) -> tuple[int, str | None]:
        r = conn.execute(f"SELECT version, doc FROM {table} ORDER BY version DESC LIMIT 1").fetchone()
        return (r["version"], r["doc"]) if r else (0, None)

    def _docs(self, table: str, newest_only: bool) -> list[VersionedDoc]:
        sql = f"SELECT version, ts, doc, diff FROM {table} ORDER BY version" + (" DESC LIMIT 1" if newest_only else "")
        with self._lock:
            rows = self._conn.execute(sql).fetchall()
        return [VersionedDoc(r["version"], r["ts"], json.loads(r["doc"]), json.loads(r["diff"])) for r in rows]

    def policy(self) -> VersionedDoc | None:
        """The newest policy version, or None before the first ``set_policy``."""
        return next(iter(self._docs("policy_state", True)), None)

    def policy_history(self) -> list[VersionedDoc]:
        """Every policy version, oldest first."""
        return self._docs("policy_state", False)

    def identity_contract(self) -> VersionedDoc | None:
        """The newest identity contract, or None before the first ``set_identity_contract``."""
        return next(iter(self._docs("identity_contract", True)), None)

    def identity_contract_history(self) -> list[VersionedDoc]:
        """Every identity-contract version, oldest first."""
        return self._docs("identity_contract", False)

    def decision(self, row_id: int) -> dict[str, Any] | None:
        """The stored columns of one decision row, or None if there is no such id in ``decisions``."""
        with self._lock:
            r = self._conn.execute("SELECT * FROM decisions WHERE id = ?", (row_id,)).fetchone()
        return dict(r) if r else None

    def decisions_for(self, request_id: str) -> list[dict[str, Any]]:
        """The stored columns of every decision row of one request, oldest first (one for an answered request)."""
        with self._lock:
            rows = self._conn.execute("SELECT * FROM decisions WHERE request_id = ? ORDER BY id", (request_id,))
            return [dict(r) for r in rows.fetchall()]

    def head(self) -> tuple[int, str]:
        """``(id, row_hash)`` of the newest row: keep it elsewhere and pass it to ``verify(anchor=...)`` later."""
        with self._lock:
            r = self._conn.execute("SELECT seq, row_hash FROM chain_head").fetchone()
        return (r["seq"], r["row_hash"]) if r else (0, GENESIS)

    def verify(self, anchor: tuple[int, str] | None = None) -> VerifyResult:
        """Recompute the whole chain and report the first row that fails.

        Args:
            anchor: an earlier ``head()``; the row it names must still carry that hash.
        Returns:
            ``VerifyResult(ok, rows_checked, first_bad=(table, id) or None, reason)``.
        """
        with self._lock:
            self._conn.execute("BEGIN")  # one snapshot across the three tables
            try:
                streams = [_table_rows(self._conn, t) for t in TABLES]
                head = self._conn.execute("SELECT seq, row_hash FROM chain_head").fetchone()
                rows = heapq.merge(*streams, key=lambda tr: tr[1]["id"])
                return verify_chain(rows, tuple(head) if head else None, anchor)
            finally:
                self._conn.execute("COMMIT")


def _table_rows(conn: sqlite3.Connection, table: str) -> Iterable[tuple[str, dict[str, Any]]]:
    return ((table, dict(r)) for r in conn.execute(f"SELECT * FROM {table} ORDER BY id"))
