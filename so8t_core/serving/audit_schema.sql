-- Schema of the so8t audit log (so8t_core/audit.py explains the design).
-- The schema version is not set here: AuditLog writes PRAGMA user_version = SCHEMA_VERSION in the same
-- transaction that runs this script, so the Python constant is the one source of truth.
--
-- Every row of every table is one link of a single hash chain: `id` is the global sequence number
-- (1, 2, 3, ... across all three tables), `prev_hash` is the row_hash of the row with id - 1 (64 zeros for
-- id 1) and `row_hash` is SHA-256 over the canonical JSON of the row's hashed columns.

CREATE TABLE IF NOT EXISTS decisions (
    id                INTEGER PRIMARY KEY,              -- global sequence number in the chain
    ts                TEXT    NOT NULL,                 -- UTC, 'YYYY-MM-DDTHH:MM:SS.ffffffZ'
    request_id        TEXT    NOT NULL,
    decision          TEXT    NOT NULL CHECK (decision IN ('ALLOW', 'ESCALATE', 'REFUSE')),
    reason            TEXT    NOT NULL,                 -- short reason code (the server: its decision source), never thinking text
    input_hash        TEXT    NOT NULL CHECK (length(input_hash) = 64),
    thinking_hash     TEXT    NOT NULL CHECK (length(thinking_hash) = 64),
    final_text        TEXT    NOT NULL,
    policy_version    INTEGER NOT NULL CHECK (policy_version >= 0),
    contract_version  INTEGER NOT NULL CHECK (contract_version >= 0),  -- the server: model hashes, source, policy
    model_id          TEXT    NOT NULL,                 -- the server: 'label:name@weights hash'
    image_sha256      TEXT    CHECK (image_sha256 IS NULL OR length(image_sha256) = 64),
    ocr_digest        TEXT    CHECK (ocr_digest IS NULL OR length(ocr_digest) = 64),  -- kept forever, hashed
    ocr_summary       TEXT,                             -- OCR-derived payload, NULL once purged
    ocr_nonce         TEXT,                             -- commitment nonce, NULL once purged
    ocr_purged_at     TEXT,                             -- not hashed: set by purge()
    prev_hash         TEXT    NOT NULL CHECK (length(prev_hash) = 64),
    row_hash          TEXT    NOT NULL CHECK (length(row_hash) = 64)
);
CREATE INDEX IF NOT EXISTS decisions_request_id ON decisions (request_id);
-- purge() scans only rows that still hold a payload
CREATE INDEX IF NOT EXISTS decisions_ocr_live ON decisions (ts) WHERE ocr_summary IS NOT NULL;

CREATE TABLE IF NOT EXISTS policy_state (
    id         INTEGER PRIMARY KEY,
    ts         TEXT    NOT NULL,
    version    INTEGER NOT NULL UNIQUE CHECK (version >= 1),
    doc        TEXT    NOT NULL,                        -- canonical JSON of the whole document
    diff       TEXT    NOT NULL,                        -- canonical JSON {added, removed, changed} vs version - 1
    prev_hash  TEXT    NOT NULL CHECK (length(prev_hash) = 64),
    row_hash   TEXT    NOT NULL CHECK (length(row_hash) = 64)
);

CREATE TABLE IF NOT EXISTS identity_contract (
    id         INTEGER PRIMARY KEY,
    ts         TEXT    NOT NULL,
    version    INTEGER NOT NULL UNIQUE CHECK (version >= 1),
    doc        TEXT    NOT NULL,
    diff       TEXT    NOT NULL,
    prev_hash  TEXT    NOT NULL CHECK (length(prev_hash) = 64),
    row_hash   TEXT    NOT NULL CHECK (length(row_hash) = 64)
);

-- The newest link, written in the same transaction as each row: lets an append find its predecessor in one
-- read, and lets verify() notice rows cut off the end of the chain.
CREATE TABLE IF NOT EXISTS chain_head (
    one       INTEGER PRIMARY KEY CHECK (one = 1),
    seq       INTEGER NOT NULL,
    row_hash  TEXT    NOT NULL
);

-- Append-only guards. They stop mistakes through the normal SQL path, not an attacker with the file (who can
-- drop them): that is what the hash chain is for.
CREATE TRIGGER IF NOT EXISTS decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: decisions rows cannot be deleted'); END;

CREATE TRIGGER IF NOT EXISTS decisions_no_update
BEFORE UPDATE OF id, ts, request_id, decision, reason, input_hash, thinking_hash, final_text, policy_version,
                 contract_version, model_id, image_sha256, ocr_digest, prev_hash, row_hash ON decisions
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: only purge() may blank OCR payloads'); END;

CREATE TRIGGER IF NOT EXISTS decisions_purge_only
BEFORE UPDATE OF ocr_summary, ocr_nonce ON decisions
WHEN NEW.ocr_summary IS NOT NULL OR NEW.ocr_nonce IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: OCR payloads can only be blanked'); END;

CREATE TRIGGER IF NOT EXISTS policy_state_no_delete BEFORE DELETE ON policy_state
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: policy_state rows cannot be deleted'); END;

CREATE TRIGGER IF NOT EXISTS policy_state_no_update BEFORE UPDATE ON policy_state
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: policy_state rows cannot be changed'); END;

CREATE TRIGGER IF NOT EXISTS identity_contract_no_delete BEFORE DELETE ON identity_contract
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: identity_contract rows cannot be deleted'); END;

CREATE TRIGGER IF NOT EXISTS identity_contract_no_update BEFORE UPDATE ON identity_contract
BEGIN SELECT RAISE(ABORT, 'audit log is append-only: identity_contract rows cannot be changed'); END;
