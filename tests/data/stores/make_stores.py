"""Builds the fixture stores of the earlier schema versions: store_v1.db, store_v2.db, store_v3.db.

    python tests/data/stores/make_stores.py

Each is built from that version's own schema text (below: migrations 1-4 exactly as state/schema.py
held them as SQL before the migrations moved to sqlite-utils) and holds a few rows in every table
that version has, telling one small story: opt-outs from HubSpot and a CSV list, one applied to
SendGrid, one failed there, one lifted and removed, one staged, a rejected CSV row, two runs and a
clean-up snapshot. The files are committed; tests/test_schema_migrations.py checks that they are
what this script makes and that each migrates to the current version with every row kept.

OLD_MIGRATIONS is kept only here, as the reference the new migrations are compared against.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS = (1, 2, 3)
# Small pages keep each file at a few KB (the program's own stores use 16 KB pages).
PAGE_SIZE = 512

OLD_MIGRATIONS: list[str] = [
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
    # 5: what the webhook receiver accepted: vendor event ids and signature nonces.
    """
    CREATE TABLE webhook_receipts (
        adapter     TEXT NOT NULL,
        key         TEXT NOT NULL,
        received_at TEXT NOT NULL,
        PRIMARY KEY (adapter, key)
    ) WITHOUT ROWID;
    CREATE INDEX webhook_receipts_by_time ON webhook_receipts (received_at);
    """,
]

T = "2024-03-01T10:00:00.000000+00:00"  # a fixed time: the files come out the same on every run


def _ts(minute: int) -> str:
    return T.replace("10:00:00", f"10:{minute:02d}:00")


# Rows per table: (the version that created the table, the columns, the rows).
ROWS: dict[str, tuple[int, tuple[str, ...], list[tuple]]] = {
    "suppressions": (1, ("address", "scope", "reason", "origin", "source", "occurred_at", "recorded_at",
                         "details", "seq"), [
        ("ann@example.com", "*", "unsubscribed", "recipient", "hubspot", "2024-02-28T09:00:00.000000+00:00",
         _ts(1), None, 1),
        ("bob@example.com", "*", "manual", "user", "csv", None, _ts(2), '{"row": 2}', 2),
        ("cat@example.com", "newsletter", "hard_bounce", "system", "sendgrid", _ts(3), _ts(4), None, 5),
    ]),
    "events": (1, ("seq", "recorded_at", "kind", "address", "scope", "reason", "origin", "source", "target",
                   "ref_seq", "occurred_at", "legal_basis", "explanation", "message", "details"), [
        (1, _ts(1), "suppressed", "ann@example.com", "*", "unsubscribed", "recipient", "hubspot", None, None,
         "2024-02-28T09:00:00.000000+00:00", None, None, None, None),
        (2, _ts(2), "suppressed", "bob@example.com", "*", "manual", "user", "csv", None, None, None, None,
         None, None, '{"row": 2}'),
        (3, _ts(3), "suppressed", "dan@example.com", "*", "manual", "user", "csv", None, None, None, None,
         None, None, None),
        (4, _ts(3), "applied", "ann@example.com", "*", "unsubscribed", "recipient", None, "sendgrid", 1, None,
         None, None, "", '{"outcome": "applied"}'),
        (5, _ts(4), "suppressed", "cat@example.com", "newsletter", "hard_bounce", "system", "sendgrid", None,
         None, _ts(3), None, None, None, None),
        (6, _ts(5), "failed", "bob@example.com", "*", "manual", "user", None, "sendgrid", 2, None, None, None,
         "rejected: invalid email", '{"outcome": "rejected"}'),
        (7, _ts(6), "applied", "dan@example.com", "*", "manual", "user", None, "sendgrid", 3, None, None,
         None, "", '{"outcome": "applied"}'),
        (8, _ts(7), "lifted", "dan@example.com", "*", "manual", "user", "csv", None, None, None, "consent",
         "re-subscribed by phone, ticket 1234", "lifted by ops", '{"by": "ops"}'),
        (9, _ts(8), "removed", "dan@example.com", "*", None, None, None, "sendgrid", None, None, None, None,
         "removed from the global unsubscribes", None),
    ]),
    "checkpoints": (1, ("adapter", "read_cursor", "cursor_at", "applied_seq", "last_reconcile_at",
                        "last_success_at", "reconcile_requested", "paused", "paused_at"), [
        ("hubspot", "1709287200000", _ts(1), 9, None, _ts(8), 0, 0, None),
        ("csv", '{"size": 120, "mtime": 1709287200}', _ts(2), 9, _ts(2), _ts(8), 1, 1, _ts(9)),
        ("sendgrid", None, None, 7, _ts(6), _ts(8), 0, 0, None),
    ]),
    "staged": (1, ("adapter", "address", "scope", "reason", "origin", "occurred_at", "details", "staged_at"), [
        ("hubspot", "eve@example.com", "*", "unsubscribed", "recipient", _ts(9), None, _ts(9)),
    ]),
    "lifts": (1, ("address", "scope", "lifted_at", "seq"), [
        ("dan@example.com", "*", _ts(7), 8),
    ]),
    "failures": (1, ("id", "adapter", "kind", "address", "scope", "ref_seq", "location", "message", "first_at",
                     "last_at", "attempts", "resolved_at"), [
        (1, "sendgrid", "rejected", "bob@example.com", "*", 2, None, "invalid email", _ts(5), _ts(6), 2, None),
        (2, "csv", "invalid", None, None, None, "optouts.csv row 4", "not an email address", _ts(2), _ts(2), 1,
         None),
        (3, "sendgrid", "transient", "ann@example.com", "*", 1, None, "429 Too Many Requests", _ts(2), _ts(2), 1,
         _ts(3)),
    ]),
    "runs": (1, ("id", "adapter", "phase", "started_at", "finished_at", "duration_ms", "pulled", "staged",
                 "pushed", "failed", "rejected", "paused", "error_class", "error"), [
        (1, "hubspot", "pull", _ts(0), _ts(1), 812, 1, 1, 0, 0, 0, 0, None, None),
        (2, "sendgrid", "push", _ts(5), _ts(6), 1503, 0, 0, 2, 1, 0, 0, "VendorTransientError",
         "429 Too Many Requests"),
    ]),
    "snapshots": (2, ("name", "adapter", "reason", "since", "until", "categories", "state", "created_at",
                      "finished_at", "without_contact"), [
        ("bounced-2024-03", "hubspot", "hard_bounce", "2024-02-01", None, '["invalid"]', "ready", _ts(10),
         _ts(11), 1),
    ]),
    "snapshot_contacts": (2, ("snapshot", "contact_id", "address", "occurred_at", "bounce_category", "outcome",
                              "message", "decided_at"), [
        ("bounced-2024-03", "101", "cat@example.com", _ts(3), "invalid", "deleted", None, _ts(12)),
        ("bounced-2024-03", "102", "fay@example.com", _ts(3), "invalid", None, None, None),
    ]),
}


def build(version: int, path: Path) -> None:
    """Write a store of schema `version` to `path` from that version's schema text, with its rows."""
    path.unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = DELETE")
        apply_old_migrations(conn, version)
        conn.execute("BEGIN")
        for table, (since, columns, rows) in ROWS.items():
            if since <= version:
                conn.executemany(f"INSERT INTO {table} ({', '.join(columns)}) "
                                 f"VALUES ({', '.join('?' * len(columns))})", rows)
        conn.execute("COMMIT")
        conn.execute("VACUUM")
    finally:
        conn.close()


def apply_old_migrations(conn: sqlite3.Connection, version: int) -> None:
    """Run the old SQL migrations 1..version, as the program of that version did."""
    for number in range(1, version + 1):
        conn.executescript(OLD_MIGRATIONS[number - 1])
        conn.execute(f"PRAGMA user_version = {number}")


def main(folder: Path = HERE) -> None:
    """Write store_v1.db ... store_v3.db into `folder`."""
    for version in VERSIONS:
        target = folder / f"store_v{version}.db"
        build(version, target)
        print(f"{target}: schema version {version}, {target.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
