"""Static clean-up snapshots: the contacts of bounced or spam-reporting addresses, frozen under a name.

Candidates come from the store's own events, never from a live vendor property,
so an address that was "un-bounced" elsewhere is not caught by an old bounce
reason. Deletion outcomes are kept per contact and written to the event log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import InputError
from .models import GLOBAL_SCOPE, utc_now
from .store import Store

CLEANUP_REASONS = ("hard_bounce", "spam_complaint")
BUILDING, READY, DELETED = "building", "ready", "deleted"


@dataclass(frozen=True, slots=True)
class Candidate:
    """An address whose latest matching event falls in the window, and what that event said."""

    address: str
    occurred_at: str | None
    bounce_category: str | None


@dataclass(frozen=True, slots=True)
class Member:
    """One contact of a snapshot and what happened to it."""

    contact_id: str
    address: str
    occurred_at: str | None
    bounce_category: str | None
    outcome: str | None
    message: str | None


def candidates(store: Store, reason: str, *, since: str | None = None, until: str | None = None,
               categories: list[str] | None = None, after: str = "", limit: int = 500) -> list[Candidate]:
    """Up to `limit` addresses after `after` (by address) that got `reason` in [since, until).

    Only addresses still suppressed from all email, by an event newer than any
    lift of it, so deleting the contact never loses the suppression.
    """
    if reason not in CLEANUP_REASONS:
        raise InputError(f"reason {reason!r} is not one of {', '.join(CLEANUP_REASONS)}")
    where = ["e.kind IN ('suppressed', 'changed')", "e.reason = ?", "e.address > ?",
             "EXISTS (SELECT 1 FROM suppressions s WHERE s.address = e.address AND s.scope = ?)",
             "NOT EXISTS (SELECT 1 FROM lifts l WHERE l.address = e.address AND l.scope = ?"
             " AND l.lifted_at >= e.recorded_at)"]
    params: list = [reason, after, GLOBAL_SCOPE, GLOBAL_SCOPE]
    if since:
        where.append("COALESCE(e.occurred_at, e.recorded_at) >= ?")
        params.append(since)
    if until:
        where.append("COALESCE(e.occurred_at, e.recorded_at) < ?")
        params.append(until)
    category = store.dialect.json_text("e.details", "bounce_category")
    if categories:
        where.append(f"{category} IN ({','.join('?' * len(categories))})")
        params += categories
    # The bounce category of the latest matching event of each address.
    rows = store.conn.execute(
        store.dialect.latest_per("e.address", "COALESCE(e.occurred_at, e.recorded_at)", category,
                                 "FROM events e WHERE " + " AND ".join(where)) + " LIMIT ?",
        (*params, limit)).fetchall()
    return [Candidate(r[0], r[1], r[2]) for r in rows]


def create(store: Store, name: str, adapter: str, reason: str, *, since: str | None, until: str | None,
           categories: list[str] | None) -> None:
    """Start a snapshot (state 'building' until `finish`); InputError if the name is taken."""
    with store.transaction():
        if store.conn.execute("SELECT 1 FROM snapshots WHERE name = ?", (name,)).fetchone():
            raise InputError(f"a snapshot named {name!r} exists already; choose another name")
        store.conn.execute(
            "INSERT INTO snapshots (name, adapter, reason, since, until, categories, state, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (name, adapter, reason, since, until, json.dumps(categories) if categories else None, BUILDING,
             utc_now()))


def add_members(store: Store, name: str, members: list[tuple[str, str, str | None, str | None]]) -> None:
    """Add (contact_id, address, occurred_at, bounce_category) rows to a building snapshot."""
    with store.transaction():
        store.conn.executemany(store.dialect.insert_or_ignore(
            "snapshot_contacts (snapshot, contact_id, address, occurred_at, bounce_category) VALUES (?, ?, ?, ?, ?)"),
            [(name, *member) for member in members])


def finish(store: Store, name: str, without_contact: int) -> None:
    """Mark a snapshot complete and ready for review and deletion."""
    with store.transaction():
        store.conn.execute("UPDATE snapshots SET state = ?, finished_at = ?, without_contact = ? WHERE name = ?",
                           (READY, utc_now(), without_contact, name))


def load(store: Store, name: str) -> dict | None:
    """A snapshot's row (with `count` and `pending`), or None."""
    # Named columns: a PostgreSQL store has row_order besides (SQLite's rowid).
    cursor = store.conn.execute("SELECT name, adapter, reason, since, until, categories, state, created_at,"
                                " finished_at, without_contact FROM snapshots WHERE name = ?", (name,))
    row = cursor.fetchone()
    if row is None:
        return None
    snapshot = dict(zip([c[0] for c in cursor.description], row))
    snapshot["categories"] = json.loads(snapshot["categories"]) if snapshot["categories"] else None
    snapshot["count"], snapshot["pending"] = store.conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE outcome IS NULL OR outcome != 'deleted')"
        " FROM snapshot_contacts WHERE snapshot = ?", (name,)).fetchone()
    return snapshot


def latest(store: Store, adapter: str, reason: str) -> dict | None:
    """The newest ready (not yet fully deleted) snapshot of an adapter and reason, or None."""
    row = store.conn.execute(
        "SELECT name FROM snapshots WHERE adapter = ? AND reason = ? AND state = ?"
        f" ORDER BY created_at DESC, {store.dialect.insertion_order()} DESC LIMIT 1",
        (adapter, reason, READY)).fetchone()
    return load(store, row[0]) if row else None


def members(store: Store, name: str, *, pending_only: bool = False, batch: int = 500) -> Iterator[list[Member]]:
    """A snapshot's contacts in batches, by address (only those not yet deleted, if asked)."""
    last = ("", "")
    condition = " AND (outcome IS NULL OR outcome != 'deleted')" if pending_only else ""
    while True:
        rows = store.conn.execute(
            "SELECT contact_id, address, occurred_at, bounce_category, outcome, message FROM snapshot_contacts"
            f" WHERE snapshot = ? AND (address, contact_id) > (?, ?){condition}"
            " ORDER BY address, contact_id LIMIT ?", (name, *last, batch)).fetchall()
        if not rows:
            return
        last = (rows[-1][1], rows[-1][0])
        yield [Member(*row) for row in rows]


def record_deletions(store: Store, name: str, adapter: str, reason: str,
                     outcomes: list[tuple[Member, bool, str]]) -> None:
    """Record per-contact deletion outcomes in the snapshot and the event log, in one transaction."""
    now = utc_now()
    with store.transaction():
        store.conn.executemany(
            "UPDATE snapshot_contacts SET outcome = ?, message = ?, decided_at = ?"
            " WHERE snapshot = ? AND contact_id = ?",
            [("deleted" if ok else "failed", message, now, name, m.contact_id) for m, ok, message in outcomes])
        store._append_events(
            ("recorded_at", "kind", "address", "scope", "reason", "target", "message", "details"),
            [(now, "contact_deleted" if ok else "contact_delete_failed", m.address, GLOBAL_SCOPE, reason, adapter,
              (f"contact {m.contact_id} deleted (snapshot {name}); the suppression stays" if ok
               else f"contact {m.contact_id} not deleted (snapshot {name}): {message}"),
              json.dumps({"contact_id": m.contact_id, "snapshot": name}, sort_keys=True))
             for m, ok, message in outcomes])
        pending = store.conn.execute(
            "SELECT count(*) FROM snapshot_contacts WHERE snapshot = ? AND (outcome IS NULL OR outcome != 'deleted')",
            (name,)).fetchone()[0]
        if not pending:
            store.conn.execute("UPDATE snapshots SET state = ? WHERE name = ?", (DELETED, name))
