"""The store's schema, created and migrated by numbered migrations.

`PRAGMA user_version` holds the number of the last migration applied; each
migration runs once, in order, inside one transaction.
"""

import sqlite3

from .errors import StoreError

MIGRATIONS: list[str] = [
    # 1: the initial schema.
    """
    CREATE TABLE suppressions (
        address     TEXT NOT NULL,
        scope       TEXT NOT NULL,
        reason      TEXT NOT NULL,
        origin      TEXT NOT NULL,
        source      TEXT NOT NULL,
        occurred_at TEXT,
        recorded_at TEXT NOT NULL,
        details     TEXT,
        seq         INTEGER NOT NULL,
        PRIMARY KEY (address, scope)
    ) WITHOUT ROWID;
    CREATE UNIQUE INDEX suppressions_by_seq ON suppressions (seq);
    CREATE INDEX suppressions_by_occurred ON suppressions (occurred_at);

    -- Append-only: rows are inserted, never updated or deleted.
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        recorded_at TEXT NOT NULL,
        kind        TEXT NOT NULL,
        address     TEXT NOT NULL,
        scope       TEXT NOT NULL,
        reason      TEXT,
        origin      TEXT,
        source      TEXT,
        target      TEXT,
        ref_seq     INTEGER,
        occurred_at TEXT,
        legal_basis TEXT,
        explanation TEXT,
        message     TEXT,
        details     TEXT
    );
    CREATE INDEX events_by_address ON events (address, seq);
    CREATE INDEX events_suppressed ON events (seq) WHERE kind = 'suppressed';
    CREATE INDEX events_by_ref ON events (ref_seq, target) WHERE ref_seq IS NOT NULL;

    CREATE TABLE checkpoints (
        adapter           TEXT PRIMARY KEY,
        read_cursor       TEXT,
        cursor_at         TEXT,
        applied_seq       INTEGER NOT NULL DEFAULT 0,
        last_reconcile_at TEXT,
        last_success_at   TEXT,
        reconcile_requested INTEGER NOT NULL DEFAULT 0,
        paused            INTEGER NOT NULL DEFAULT 0,
        paused_at         TEXT
    );

    -- New opt-outs read in the current cycle, held back until the cycle ends
    -- within the adapter's mass-change limit or a person approves the count.
    CREATE TABLE staged (
        adapter     TEXT NOT NULL,
        address     TEXT NOT NULL,
        scope       TEXT NOT NULL,
        reason      TEXT NOT NULL,
        origin      TEXT NOT NULL,
        occurred_at TEXT,
        details     TEXT,
        staged_at   TEXT NOT NULL,
        PRIMARY KEY (adapter, address, scope)
    );

    CREATE TABLE lifts (
        address   TEXT NOT NULL,
        scope     TEXT NOT NULL,
        lifted_at TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        PRIMARY KEY (address, scope)
    ) WITHOUT ROWID;

    CREATE TABLE failures (
        id          INTEGER PRIMARY KEY,
        adapter     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        address     TEXT,
        scope       TEXT,
        ref_seq     INTEGER,
        location    TEXT,
        message     TEXT NOT NULL,
        first_at    TEXT NOT NULL,
        last_at     TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 1,
        resolved_at TEXT
    );
    CREATE UNIQUE INDEX failures_by_event ON failures (adapter, ref_seq) WHERE ref_seq IS NOT NULL;
    CREATE INDEX failures_open ON failures (adapter, resolved_at);

    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        adapter     TEXT NOT NULL,
        phase       TEXT NOT NULL,
        started_at  TEXT NOT NULL,
        finished_at TEXT NOT NULL,
        duration_ms INTEGER NOT NULL,
        pulled      INTEGER NOT NULL DEFAULT 0,
        staged      INTEGER NOT NULL DEFAULT 0,
        pushed      INTEGER NOT NULL DEFAULT 0,
        failed      INTEGER NOT NULL DEFAULT 0,
        rejected    INTEGER NOT NULL DEFAULT 0,
        paused      INTEGER NOT NULL DEFAULT 0,
        error_class TEXT,
        error       TEXT
    );
    CREATE INDEX runs_by_adapter ON runs (adapter, id);
    """,
    # 2: clean-up snapshots: the contacts of bounced or spam-reporting addresses, frozen for review.
    """
    CREATE TABLE snapshots (
        name            TEXT PRIMARY KEY,
        adapter         TEXT NOT NULL,
        reason          TEXT NOT NULL,
        since           TEXT,
        until           TEXT,
        categories      TEXT,
        state           TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        finished_at     TEXT,
        without_contact INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX snapshots_by_adapter ON snapshots (adapter, reason, created_at);

    CREATE TABLE snapshot_contacts (
        snapshot        TEXT NOT NULL REFERENCES snapshots (name),
        contact_id      TEXT NOT NULL,
        address         TEXT NOT NULL,
        occurred_at     TEXT,
        bounce_category TEXT,
        outcome         TEXT,
        message         TEXT,
        decided_at      TEXT,
        PRIMARY KEY (snapshot, contact_id)
    ) WITHOUT ROWID;
    """,
    # 3: suppressions_by_occurred served no query (export filters on COALESCE(occurred_at,
    # recorded_at), which it cannot use) yet every suppression written paid for it: in a
    # 1,000,000-row import about 0.5 s and 63 MB of the store's 460 MB.
    """
    DROP INDEX IF EXISTS suppressions_by_occurred;
    """,
    # 4: hardening. The store's identity (so a daemon notices its file was deleted or replaced),
    # an in-flight mark per pushed event (written before the vendor call, so a re-send after a
    # crash that the vendor answers "already held" still counts as this daemon's apply), what an
    # adapter learnt about its vendor that outlives the process (HubSpot's batch endpoints), and
    # for failures the rejected value and an audited dismissal.
    """
    CREATE TABLE store_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO store_meta (key, value) VALUES
        ('store_id', lower(hex(randomblob(16)))),
        ('created_at', strftime('%Y-%m-%dT%H:%M:%S', 'now') || '.000000+00:00');

    CREATE TABLE inflight (
        adapter   TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        marked_at TEXT NOT NULL,
        PRIMARY KEY (adapter, seq)
    ) WITHOUT ROWID;

    CREATE TABLE adapter_memory (
        adapter    TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (adapter, key)
    ) WITHOUT ROWID;

    ALTER TABLE failures ADD COLUMN value TEXT;
    ALTER TABLE failures ADD COLUMN dismissed_reason TEXT;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the database's user_version; return the new version."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"the store has schema version {current}, newer than this program's {SCHEMA_VERSION}; "
            "upgrade optout-sync"
        )
    for number in range(current + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(MIGRATIONS[number - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return SCHEMA_VERSION


def _statements(script: str) -> list[str]:
    # executescript() would commit on its own; split so a migration stays one transaction.
    parts, buffer = [], ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--"):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            parts.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        parts.append(buffer.strip())
    return parts
