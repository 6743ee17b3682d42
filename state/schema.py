"""The store's schema, created and migrated by numbered migrations.

`PRAGMA user_version` holds the number of the last migration applied. Each migration is a function
of a sqlite-utils `Database` over the store's own connection; `migrate` runs each one once, in
order, inside one BEGIN IMMEDIATE transaction together with its new user_version, so a migration
that fails leaves the store as it was. To add migration N, write `mN_...` and append it to
MIGRATIONS.

sqlite-utils builds the tables (`Table.create`), their indexes (`create_index`), added columns
(`add_column`), and rebuilds a table for a change SQLite's ALTER TABLE cannot make (`transform`).
It cannot express WITHOUT ROWID, AUTOINCREMENT or partial indexes: those go through `db.execute`,
each with the reason beside it. It is imported only when a migration is due: a store at the
current version never loads it (start-up time). The hot paths in state/store.py use plain sqlite3.

`transform` recreates a table as a rowid table without AUTOINCREMENT (sqlite-utils has no option
for either), so it must not be used on the WITHOUT ROWID tables nor on `events`: rebuild those
with db.execute.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import StoreError

if TYPE_CHECKING:
    from sqlite_utils import Database


def _create_without_rowid(db: Database, name: str, columns: dict, **options) -> None:
    # sqlite-utils' Table.create has no WITHOUT ROWID option: it builds the statement
    # (create_table_sql takes Table.create's column options), the clause is added here.
    create = db.create_table_sql(name, columns, **options).strip()
    if not create.endswith(");"):
        raise StoreError(f"unexpected CREATE TABLE from sqlite-utils for {name}: {create!r}")
    db.execute(create[:-1] + " WITHOUT ROWID")


def m1_initial(db: Database) -> None:
    """1: the initial schema."""
    _create_without_rowid(db, "suppressions", {
        "address": str, "scope": str, "reason": str, "origin": str, "source": str, "occurred_at": str,
        "recorded_at": str, "details": str, "seq": int,
    }, pk=("address", "scope"), not_null={"address", "scope", "reason", "origin", "source", "recorded_at", "seq"})
    db["suppressions"].create_index(["seq"], index_name="suppressions_by_seq", unique=True)
    db["suppressions"].create_index(["occurred_at"], index_name="suppressions_by_occurred")

    # Append-only: rows are inserted, never updated or deleted. sqlite-utils has no public
    # AUTOINCREMENT option, and a seq must never be handed out twice (sinks' watermarks count on it).
    db.execute("""
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
    )""")
    db["events"].create_index(["address", "seq"], index_name="events_by_address")
    # Partial indexes: create_index has no WHERE.
    db.execute("CREATE INDEX events_suppressed ON events (seq) WHERE kind = 'suppressed'")
    db.execute("CREATE INDEX events_by_ref ON events (ref_seq, target) WHERE ref_seq IS NOT NULL")

    db["checkpoints"].create({
        "adapter": str, "read_cursor": str, "cursor_at": str, "applied_seq": int, "last_reconcile_at": str,
        "last_success_at": str, "reconcile_requested": int, "paused": int, "paused_at": str,
    }, pk="adapter", not_null={"applied_seq", "reconcile_requested", "paused"},
        defaults={"applied_seq": 0, "reconcile_requested": 0, "paused": 0})

    # New opt-outs read in the current cycle, held back until the cycle ends
    # within the adapter's mass-change limit or a person approves the count.
    db["staged"].create({
        "adapter": str, "address": str, "scope": str, "reason": str, "origin": str, "occurred_at": str,
        "details": str, "staged_at": str,
    }, pk=("adapter", "address", "scope"),
        not_null={"adapter", "address", "scope", "reason", "origin", "staged_at"})

    _create_without_rowid(db, "lifts", {"address": str, "scope": str, "lifted_at": str, "seq": int},
                          pk=("address", "scope"), not_null={"address", "scope", "lifted_at", "seq"})

    db["failures"].create({
        "id": int, "adapter": str, "kind": str, "address": str, "scope": str, "ref_seq": int, "location": str,
        "message": str, "first_at": str, "last_at": str, "attempts": int, "resolved_at": str,
    }, pk="id", not_null={"adapter", "kind", "message", "first_at", "last_at", "attempts"},
        defaults={"attempts": 1})
    # Partial unique index: create_index has no WHERE.
    db.execute("CREATE UNIQUE INDEX failures_by_event ON failures (adapter, ref_seq) WHERE ref_seq IS NOT NULL")
    db["failures"].create_index(["adapter", "resolved_at"], index_name="failures_open")

    db["runs"].create({
        "id": int, "adapter": str, "phase": str, "started_at": str, "finished_at": str, "duration_ms": int,
        "pulled": int, "staged": int, "pushed": int, "failed": int, "rejected": int, "paused": int,
        "error_class": str, "error": str,
    }, pk="id", not_null={"adapter", "phase", "started_at", "finished_at", "duration_ms", "pulled", "staged",
                          "pushed", "failed", "rejected", "paused"},
        defaults={"pulled": 0, "staged": 0, "pushed": 0, "failed": 0, "rejected": 0, "paused": 0})
    db["runs"].create_index(["adapter", "id"], index_name="runs_by_adapter")


def m2_snapshots(db: Database) -> None:
    """2: clean-up snapshots: the contacts of bounced or spam-reporting addresses, frozen for review."""
    db["snapshots"].create({
        "name": str, "adapter": str, "reason": str, "since": str, "until": str, "categories": str, "state": str,
        "created_at": str, "finished_at": str, "without_contact": int,
    }, pk="name", not_null={"adapter", "reason", "state", "created_at", "without_contact"},
        defaults={"without_contact": 0})
    db["snapshots"].create_index(["adapter", "reason", "created_at"], index_name="snapshots_by_adapter")

    _create_without_rowid(db, "snapshot_contacts", {
        "snapshot": str, "contact_id": str, "address": str, "occurred_at": str, "bounce_category": str,
        "outcome": str, "message": str, "decided_at": str,
    }, pk=("snapshot", "contact_id"), not_null={"snapshot", "contact_id", "address"},
        foreign_keys=[("snapshot", "snapshots", "name")])


def m3_drop_suppressions_by_occurred(db: Database) -> None:
    """3: suppressions_by_occurred served no query, yet every suppression written paid for it.

    Export filters on COALESCE(occurred_at, recorded_at), which it cannot use; in a
    1,000,000-row import it cost about 0.5 s and 63 MB of the store's 460 MB.
    """
    # sqlite-utils has no call that drops an index.
    db.execute("DROP INDEX IF EXISTS suppressions_by_occurred")


def m4_hardening(db: Database) -> None:
    """4: hardening.

    The store's identity (so a daemon notices its file was deleted or replaced), an in-flight mark
    per pushed event (written before the vendor call, so a re-send after a crash that the vendor
    answers "already held" still counts as this daemon's apply), what an adapter learnt about its
    vendor that outlives the process (HubSpot's batch endpoints), and for failures the rejected
    value and an audited dismissal.
    """
    _create_without_rowid(db, "store_meta", {"key": str, "value": str}, pk="key", not_null={"value"})
    # Row data, not schema: SQLite draws the identity, as it always has.
    db.execute("INSERT INTO store_meta (key, value) VALUES"
               " ('store_id', lower(hex(randomblob(16)))),"
               " ('created_at', strftime('%Y-%m-%dT%H:%M:%S', 'now') || '.000000+00:00')")

    _create_without_rowid(db, "inflight", {"adapter": str, "seq": int, "marked_at": str},
                          pk=("adapter", "seq"), not_null={"adapter", "seq", "marked_at"})
    _create_without_rowid(db, "adapter_memory", {"adapter": str, "key": str, "value": str, "updated_at": str},
                          pk=("adapter", "key"), not_null={"adapter", "key", "value", "updated_at"})

    db["failures"].add_column("value", str)
    db["failures"].add_column("dismissed_reason", str)


def m5_releases(db: Database) -> None:
    """5: a recipient's own re-subscribe.

    `releases`: an opt-out released at one adapter because the recipient re-subscribed there (push
    and reconcile leave it out there). `removals_due`: the sinks a lift made by a re-subscribe (policy
    `everywhere`) still has to be removed from; each sink's push takes its own rows.
    """
    _create_without_rowid(db, "releases", {
        "address": str, "scope": str, "adapter": str, "resubscribed_at": str, "released_at": str, "seq": int,
    }, pk=("address", "scope", "adapter"),
        not_null={"address", "scope", "adapter", "resubscribed_at", "released_at", "seq"})
    _create_without_rowid(db, "removals_due", {"adapter": str, "lift_seq": int, "due_at": str},
                          pk=("adapter", "lift_seq"), not_null={"adapter", "lift_seq", "due_at"})


def m6_webhook_receipts(db: Database) -> None:
    """6: what the webhook receiver has accepted.

    One row per (adapter, key): a vendor's event id (a retried event changes nothing) or a
    signature's nonce (a replayed request is refused), written in the same transaction as the
    opt-outs the request carried, and pruned once older than any retry or replay window.
    """
    _create_without_rowid(db, "webhook_receipts", {"adapter": str, "key": str, "received_at": str},
                          pk=("adapter", "key"), not_null={"adapter", "key", "received_at"})
    db["webhook_receipts"].create_index(["received_at"], index_name="webhook_receipts_by_time")


MIGRATIONS: list[Callable[[Database], None]] = [
    m1_initial,
    m2_snapshots,
    m3_drop_suppressions_by_occurred,
    m4_hardening,
    m5_releases,
    m6_webhook_receipts,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every migration newer than the database's user_version; return the new version."""
    current = _user_version(conn)
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"the store has schema version {current}, newer than this program's {SCHEMA_VERSION}; "
            "upgrade optout-sync"
        )
    if current == SCHEMA_VERSION:
        return SCHEMA_VERSION  # the common case: sqlite-utils is never imported
    db = _database(conn)
    # SQLite's procedure for rebuilding a table (what transform does): foreign keys off while the
    # old table is dropped, checked before COMMIT. The pragma is a no-op inside a transaction.
    foreign_keys = conn.execute("PRAGMA foreign_keys").fetchone()[0]
    conn.execute("PRAGMA foreign_keys = OFF")
    try:
        for number in range(current + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Another process may have migrated while this one waited for the write lock.
                if _user_version(conn) < number:
                    MIGRATIONS[number - 1](db)
                    if conn.execute("PRAGMA foreign_key_check").fetchone():
                        raise StoreError(f"migration {number} would break a foreign key; the store is unchanged")
                    conn.execute(f"PRAGMA user_version = {number}")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
    finally:
        conn.execute("PRAGMA foreign_keys = ON" if foreign_keys else "PRAGMA foreign_keys = OFF")
    return SCHEMA_VERSION


def _user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


class _NestedConnection:
    """The store's connection as sqlite-utils sees it: its `with conn:` blocks become savepoints.

    sqlite-utils 3.x wraps writes such as `transform` in `with conn:`, and sqlite3 commits an open
    transaction on leaving that block, which would end a migration's transaction half-way. 4.x
    nests its own savepoint when a transaction is open; this keeps both inside the migration's.
    """

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def __enter__(self) -> "_NestedConnection":
        self._conn.execute("SAVEPOINT sqlite_utils_block")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._conn.in_transaction:
            self._conn.execute("ROLLBACK TO sqlite_utils_block")
        if self._conn.in_transaction:
            self._conn.execute("RELEASE sqlite_utils_block")

    def commit(self) -> None:
        """Never commits: only `migrate` ends a migration's transaction."""

    def rollback(self) -> None:
        """Never rolls back on its own: `migrate` does, for the whole migration."""


def _database(conn: sqlite3.Connection) -> Database:
    # Imported here, not at the top: only a store that needs a migration pays for the import.
    try:
        import sqlite_utils
    except ImportError as exc:
        raise StoreError(f"the store needs a migration to schema version {SCHEMA_VERSION} and sqlite-utils "
                         f"cannot be imported ({exc}); reinstall optout-sync with its dependencies") from exc

    # No plugins and no recursive_triggers pragma: sqlite-utils must not change the store's connection.
    return sqlite_utils.Database(_NestedConnection(conn), recursive_triggers=False, execute_plugins=False)
