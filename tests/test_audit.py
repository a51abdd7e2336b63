"""Tests of serving.audit: settings, hash chain, tamper detection, purge, versions, concurrency, crashes, inputs.

Tampering is done the way an attacker with the file would do it: raw sqlite3 on the closed log, after dropping the
append-only triggers. Expected ``first_bad`` rows are worked out by hand from the layout of ``_standard_log``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from so8t_core.serving.audit import (
    GENESIS,
    SCHEMA_VERSION,
    AuditConfig,
    AuditError,
    AuditLog,
    SchemaVersionError,
    canonical_json,
    doc_diff,
    row_hash,
)

ROOT = Path(__file__).resolve().parents[1]
H1 = hashlib.sha256(b"input").hexdigest()
H2 = hashlib.sha256(b"thinking").hexdigest()
DAY = 86400.0


def _decide(log: AuditLog, i: int, **kw) -> int:
    args = {
        "request_id": f"req-{i}",
        "decision": "ALLOW",
        "input_hash": H1,
        "thinking_hash": H2,
        "final_text": f"answer {i}",
        "model_id": "tiny-phi3",
    }
    return log.log_decision(**{**args, **kw})


def _standard_log(path: Path) -> Path:
    """ids: 1 policy v1, 2 contract v1, 3..7 decisions; id 6 carries an OCR summary."""
    with AuditLog(path) as log:
        assert log.set_policy({"refuse": ["weapons"]}) == 1
        assert log.set_identity_contract({"name": "so8t"}) == 1
        for i in range(3, 8):
            assert _decide(log, i, ocr_summary="invoice, total 12 EUR" if i == 6 else None) == i
    return path


def _raw(path: Path, *statements: str) -> None:
    """Edit the file as an attacker would: drop the append-only triggers, run the SQL, commit."""
    con = sqlite3.connect(path)
    for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        con.execute(f"DROP TRIGGER {name}")
    for s in statements:
        con.execute(s)
    con.commit()
    con.close()


def _verify(path: Path, **kw):
    with AuditLog(path) as log:
        return log.verify(**kw)


# ---- settings and the clean chain ----------------------------------------------------------------------------
def test_pragmas_are_read_back(tmp_path):
    path = tmp_path / "sub" / "audit.db"
    with AuditLog(path) as log:
        assert log.pragmas() == {"journal_mode": "wal", "synchronous": "FULL", "busy_timeout_ms": 10000}
    con = sqlite3.connect(path)  # WAL and the schema version live in the file, so a fresh connection sees them
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    with AuditLog(path, AuditConfig(synchronous="NORMAL")) as log:
        assert log.pragmas()["synchronous"] == "NORMAL"


def test_memory_database_refuses_wal():
    with pytest.raises(AuditError, match="refused WAL"):
        AuditLog(":memory:")


def test_clean_chain_verifies_and_reopens(tmp_path):
    path = _standard_log(tmp_path / "a.db")
    with AuditLog(path) as log:
        result = log.verify()
        assert result.ok
        assert bool(result)
        assert result.rows_checked == 7
        assert result.first_bad is None
        assert _decide(log, 8) == 8  # the chain goes on after a reopen
        assert log.verify().rows_checked == 8


def test_row_hash_follows_the_documented_encoding(tmp_path):
    # Recomputed here with hashlib + json from the spec (sorted keys, compact, UTF-8 kept), not with row_hash.
    with AuditLog(tmp_path / "a.db", clock=lambda: 0.5) as log:
        _decide(log, 1, final_text="こんにちは", reason="r1")
        row = log.decision(1)
    fields = {
        k: row[k]
        for k in (
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
        )
    }
    fields["table"] = "decisions"
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert "こんにちは" in text
    assert row["ts"] == "1970-01-01T00:00:00.500000Z"
    assert row["prev_hash"] == GENESIS
    assert row["row_hash"] == hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---- tampering -----------------------------------------------------------------------------------------------
_COPY_COLS = (
    "ts, request_id, decision, reason, input_hash, thinking_hash, final_text, policy_version, "
    "contract_version, model_id, image_sha256, ocr_digest, ocr_summary, ocr_nonce, ocr_purged_at, "
    "prev_hash, row_hash"
)


def _copy_row(src: int, dst: int) -> str:
    return f"INSERT INTO decisions (id, {_COPY_COLS}) SELECT {dst}, {_COPY_COLS} FROM decisions WHERE id = {src}"


TAMPER = {
    "edited": (["UPDATE decisions SET final_text = 'edited' WHERE id = 5"], ("decisions", 5), "edited"),
    "deleted": (["DELETE FROM decisions WHERE id = 4"], ("decisions", 5), "before it was deleted"),
    # a replayed copy of row 4 appended as id 8: its prev_hash points at row 3, not row 7
    "inserted_at_end": ([_copy_row(4, 8)], ("decisions", 8), "prev_hash"),
    # rows 5.. moved up by one and a copy of row 3 put in at id 5: the copy links to row 2, not row 4
    "inserted_in_middle": (
        [
            "UPDATE decisions SET id = -id WHERE id >= 5",
            "UPDATE decisions SET id = 1 - id WHERE id < 0",
            _copy_row(3, 5),
        ],
        ("decisions", 5),
        "prev_hash",
    ),
    "reordered_pair": (
        [
            "UPDATE decisions SET id = -1 WHERE id = 4",
            "UPDATE decisions SET id = 4 WHERE id = 5",
            "UPDATE decisions SET id = 5 WHERE id = -1",
        ],
        ("decisions", 4),
        "reordered",
    ),
    "policy_edited": (["UPDATE policy_state SET doc = '{\"refuse\":[]}' WHERE id = 1"], ("policy_state", 1), "edited"),
    "ocr_summary_edited": (
        ["UPDATE decisions SET ocr_summary = 'invoice, total 99 EUR' WHERE id = 6"],
        ("decisions", 6),
        "digest",
    ),
    "tail_cut": (["DELETE FROM decisions WHERE id = 7"], ("chain_head", 7), "cut off"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_verify_names_the_first_bad_row(tmp_path, case):
    statements, first_bad, why = TAMPER[case]
    path = _standard_log(tmp_path / "a.db")
    _raw(path, *statements)
    result = _verify(path)
    assert not result.ok, result
    assert result.first_bad == first_bad, result
    assert why in result.reason, result


def test_edit_with_recomputed_hash_is_caught_at_the_next_row(tmp_path):
    path = _standard_log(tmp_path / "a.db")
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    row = dict(con.execute("SELECT * FROM decisions WHERE id = 5").fetchone())
    con.close()
    row["decision"] = "REFUSE"
    _raw(path, f"UPDATE decisions SET decision = 'REFUSE', row_hash = '{row_hash('decisions', row)}' WHERE id = 5")
    result = _verify(path)
    assert result.first_bad == ("decisions", 6)
    assert "prev_hash" in result.reason


def test_anchor_catches_a_fully_rewritten_chain(tmp_path):
    path = _standard_log(tmp_path / "a.db")
    with AuditLog(path) as log:
        anchor = log.head()
    assert anchor[0] == 7
    # The attacker edits row 4 and rebuilds every later hash, so the chain alone verifies again.
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM decisions WHERE id >= 4 ORDER BY id")]
    con.close()
    prev, updates = None, []
    for row in rows:
        row["final_text"] = "rewritten" if row["id"] == 4 else row["final_text"]
        row["prev_hash"] = prev or row["prev_hash"]
        prev = row_hash("decisions", row)
        updates.append(
            f"UPDATE decisions SET final_text = '{row['final_text']}', prev_hash = '{row['prev_hash']}', "
            f"row_hash = '{prev}' WHERE id = {row['id']}"
        )
    _raw(path, *updates, f"UPDATE chain_head SET row_hash = '{prev}'")
    assert _verify(path).ok  # what a keyless chain cannot see...
    result = _verify(path, anchor=anchor)  # ...and what a copy of an old head does
    assert not result.ok
    assert result.first_bad == ("decisions", 7)
    assert "anchor" in result.reason


def test_triggers_refuse_plain_edits(tmp_path):
    path = _standard_log(tmp_path / "a.db")
    con = sqlite3.connect(path)
    for sql in (
        "UPDATE decisions SET final_text = 'x' WHERE id = 3",
        "DELETE FROM decisions WHERE id = 3",
        "UPDATE decisions SET ocr_summary = 'x' WHERE id = 6",
        "DELETE FROM policy_state",
        "UPDATE identity_contract SET doc = '{}'",
    ):
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute(sql)
    con.close()


# ---- purge ---------------------------------------------------------------------------------------------------
def test_purge_drops_old_payloads_and_keeps_the_chain(tmp_path):
    now = [1_700_000_000.0]
    with AuditLog(tmp_path / "a.db", clock=lambda: now[0]) as log:
        old = _decide(log, 1, ocr_summary="receipt 12 EUR", image_sha256=H1)
        now[0] += 6 * DAY
        young = _decide(log, 2, ocr_summary="ticket to Kyoto")
        plain = _decide(log, 3)
        now[0] += 2 * DAY  # old is 8 days old, young 2
        before = log.decision(old)
        committed = hashlib.sha256(bytes.fromhex(before["ocr_nonce"]) + b"receipt 12 EUR").hexdigest()
        assert before["ocr_digest"] == committed
        assert log.purge(older_than_days=7) == 1
        after = log.decision(old)
        assert after["ocr_summary"] is None
        assert after["ocr_nonce"] is None
        assert after["ocr_purged_at"] is not None
        assert after["ocr_digest"] == before["ocr_digest"]
        assert after["image_sha256"] == H1
        assert log.decision(young)["ocr_summary"] == "ticket to Kyoto"
        assert log.decision(plain)["ocr_digest"] is None
        assert log.verify().ok
        assert log.purge(7) == 0
        assert log.purge(0) == 1
        assert log.verify().ok
    _raw(tmp_path / "a.db", f"UPDATE decisions SET final_text = 'edited' WHERE id = {old}")
    assert _verify(tmp_path / "a.db").first_bad == ("decisions", old)  # a blank payload hides no other edit


# ---- versions ------------------------------------------------------------------------------------------------
def test_policy_versions_and_hand_made_diffs(tmp_path):
    v1 = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1], "flag": 1}
    v2 = {"a": 1, "b": {"c": 5}, "e": [1, 2], "f/g": "x", "flag": True}
    with AuditLog(tmp_path / "a.db") as log:
        assert log.policy() is None
        assert log.policy_history() == []
        assert log.set_policy(v1) == 1
        assert log.set_policy(v2) == 2
        assert log.set_policy(dict(v2)) == 2  # unchanged: no new version
        assert log.set_identity_contract({"name": "so8t"}) == 1  # its own numbering
        hist = log.policy_history()
        assert [h.version for h in hist] == [1, 2]
        assert log.policy().doc == v2
        assert hist[0].diff == {
            "added": {"/a": 1, "/b": {"c": 2, "d": 3}, "/e": [1], "/flag": 1},
            "removed": {},
            "changed": {},
        }
        assert hist[1].diff == {
            "added": {"/f~1g": "x"},
            "removed": {"/b/d": 3},
            "changed": {
                "/b/c": {"old": 2, "new": 5},
                "/e": {"old": [1], "new": [1, 2]},
                "/flag": {"old": 1, "new": True},
            },
        }
        row = log.decision(_decide(log, 0))
        assert (row["policy_version"], row["contract_version"]) == (2, 1)  # defaults: the versions in force
        assert log.decision(_decide(log, 1, policy_version=1))["policy_version"] == 1
        assert log.identity_contract_history()[0].doc == {"name": "so8t"}
        assert log.verify().rows_checked == 5


def _apply(doc: dict, diff: dict) -> dict:
    """Apply a diff by following its JSON pointers (RFC 6901), independently of how doc_diff finds them."""
    out = copy.deepcopy(doc)
    for kind in ("removed", "changed", "added"):
        for pointer, value in diff[kind].items():
            *parents, last = [k.replace("~1", "/").replace("~0", "~") for k in pointer.split("/")[1:]]
            node = functools.reduce(lambda d, k: d[k], parents, out)
            if kind == "removed":
                del node[last]
            else:
                node[last] = value["new"] if kind == "changed" else value
    return out


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text("ab/~", max_size=2), inner, max_size=3),
    max_leaves=8,
)
_docs = st.dictionaries(st.text("ab/~", max_size=2), _json, max_size=4)


@settings(max_examples=100, deadline=None)
@given(_docs, _docs)
def test_diff_applied_to_the_old_doc_gives_the_new_one(old, new):
    diff = doc_diff(old, new)
    assert canonical_json(_apply(old, diff)) == canonical_json(new)
    assert doc_diff(new, new) == {"added": {}, "removed": {}, "changed": {}}


# ---- concurrency and crashes ---------------------------------------------------------------------------------
WRITER = r"""
import hashlib, sys
from so8t_core.serving.audit import AuditLog
path, n, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
h = hashlib.sha256(tag.encode()).hexdigest()
with AuditLog(path) as log:
    print("ready", flush=True)
    sys.stdin.readline()
    i = 0
    while n == 0 or i < n:
        rid = log.log_decision(request_id=f"{tag}-{i}", decision="ALLOW", input_hash=h, thinking_hash=h,
                               final_text=f"answer {i}", model_id="tiny-phi3")
        print(rid, f"{tag}-{i}", flush=True)
        i += 1
"""


def _writer(path: Path, n: int, tag: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(n), tag],
        env=env,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _stored(path: Path) -> dict[int, str]:
    con = sqlite3.connect(path)
    out = dict(con.execute("SELECT id, request_id FROM decisions").fetchall())
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    return out


def test_processes_write_at_once(tmp_path):
    path, procs, writes = tmp_path / "a.db", 4, 50
    workers = [_writer(path, writes, f"p{k}") for k in range(procs)]  # they race to create the schema too
    for w in workers:
        assert w.stdout.readline().strip() == "ready", w.stderr.read()
    for w in workers:  # all start writing together
        w.stdin.write("go\n")
        w.stdin.flush()
    printed = {}
    for w in workers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        printed.update((int(rid), req) for rid, req in (line.split() for line in out.splitlines()))
    assert len(printed) == procs * writes
    assert _stored(path) == printed
    result = _verify(path)
    assert result.ok
    assert result.rows_checked == procs * writes


def test_killed_writer_loses_no_returned_row(tmp_path):
    path = tmp_path / "a.db"
    w = _writer(path, 0, "k")
    assert w.stdout.readline().strip() == "ready", w.stderr.read()
    w.stdin.write("go\n")
    w.stdin.flush()
    printed = {}
    while len(printed) < 40:
        rid, req = w.stdout.readline().split()
        printed[int(rid)] = req
    os.kill(w.pid, signal.SIGKILL)  # mid-stream: it is writing all the time
    w.communicate(timeout=30)
    stored = _stored(path)
    assert all(stored.get(rid) == req for rid, req in printed.items())
    result = _verify(path)
    assert result.ok
    assert result.rows_checked == len(stored) >= 40


def test_lock_is_retried_then_reported(tmp_path):
    path = _standard_log(tmp_path / "a.db")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another writer holding the lock for 0.3 s
    threading.Timer(0.3, holder.execute, ("COMMIT",)).start()
    patient = AuditConfig(busy_timeout_s=0.02, max_retries=10, backoff_s=0.02)
    with AuditLog(path, patient) as log:
        assert _decide(log, 8) == 8  # waited through retries
    holder.execute("BEGIN IMMEDIATE")
    try:
        with (
            AuditLog(path, AuditConfig(busy_timeout_s=0.02, max_retries=1, backoff_s=0.01)) as log,
            pytest.raises(AuditError, match="locked after 2 tries"),
        ):
            _decide(log, 9)
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert _verify(path).rows_checked == 8


# ---- rejected inputs and clear errors ------------------------------------------------------------------------
BAD = {
    "decision": "allow",
    "thinking_hash": "the model thought about ...",
    "input_hash": H1.upper(),
    "image_sha256": H1[:63],
    "final_text": "<think-observation>secret</think-observation>ok",
    "request_id": " ",
    "model_id": None,
    "ocr_summary": "x" * 2001,
    "policy_version": -1,
    "contract_version": True,
    "reason": "r" * 201,
}


@pytest.mark.parametrize("field", sorted(BAD))
def test_log_decision_rejects_bad_field(tmp_path, field):
    with AuditLog(tmp_path / "a.db") as log:
        with pytest.raises(ValueError, match=f"^{field}=") as e:
            _decide(log, 1, **{field: BAD[field]})
        assert log.head() == (0, GENESIS)  # nothing written
    for secret in ("thought about", "secret", "xxxxxxxx"):  # error messages end up in logs: no thinking/OCR text
        assert secret not in str(e.value)


@pytest.mark.parametrize(
    ("call", "arg", "field"),
    [
        ("set_policy", [1], "doc"),
        ("set_identity_contract", {"x": float("nan")}, "doc"),
        ("purge", -1, "older_than_days"),
        ("purge", float("inf"), "older_than_days"),
    ],
)
def test_other_calls_reject_bad_input(tmp_path, call, arg, field):
    with AuditLog(tmp_path / "a.db") as log, pytest.raises(ValueError, match=f"^{field}"):
        getattr(log, call)(arg)


def test_clear_errors_for_bad_files(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    with pytest.raises(AuditError, match="cannot create the folder"):
        AuditLog(blocker / "sub" / "audit.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(AuditError, match="not an SQLite database"):
        AuditLog(junk)
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(AuditError, match="not an so8t audit log"):
        AuditLog(other)
    path = _standard_log(tmp_path / "a.db")
    _raw(path, f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(SchemaVersionError, match=f"version {SCHEMA_VERSION + 1}"):
        AuditLog(path)
    with pytest.raises(ValueError, match=r"^synchronous="):
        AuditConfig(synchronous="SOMETIMES")
