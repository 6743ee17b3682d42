"""The event log on PostgreSQL: appends whose seq order is their commit order, and the pusher's read.

The ordering trap: on PostgreSQL several writers (daemons, webhook receivers, import, lift) take
sequence numbers and commit independently. Were writer A to take seq 10 and writer B seq 11, and
B to commit first, a pusher reading "seq > watermark" would read 11, move its watermark to 11, and
never read 10 once A commits. SQLite never meets this: it has one writer at a time.

The design: every append takes one transaction-level advisory lock (APPEND_LOCK_KEY) before its
INSERT or COPY takes a number, and holds it until its transaction ends. So at most one transaction
with unfinished appends exists at any moment, and numbers are taken in commit order. PostgreSQL
makes a commit visible before it releases the transaction's locks, so the next appender (and so
any later seq) becomes visible only after every smaller seq that will ever commit: a reader that
sees seq N sees every committed seq below N, and "seq > watermark" is safe. A rolled-back
transaction leaves a gap in the numbers, which a pusher passes without loss.

Conditions, each written where it matters:
- an append must run inside a transaction (in autocommit mode outside `conn.transaction()` the
  lock would end with its own statement): `append` refuses otherwise;
- the transaction must be READ COMMITTED (PostgreSQL's default; `take_append_lock` refuses
  another): the seq order holds at any level, but under REPEATABLE READ the statement that waits
  for the lock keeps a snapshot from before the previous holder committed, and what the
  transaction reads next (the log's end here, the Store's read-then-write SQL) would miss it;
- the pusher reads the primary, not a standby.

The lock is re-entrant within a transaction, so a caller (the Store port) may take it earlier, at
the start of a write transaction, to keep SQLite's one-writer meaning for its read-then-write SQL.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import StoreError
from .event_columns import EVENT_COLUMNS, checked_event_columns

if TYPE_CHECKING:
    import psycopg

# pg_advisory_xact_lock key of event appends: a fixed 64-bit number.
APPEND_LOCK_KEY = 0x6F70_7473_796E_6302

# The events table's columns an append writes, in order (seq is the identity's): EVENT_COLUMNS.
_COLUMN_LIST = ", ".join(EVENT_COLUMNS)
_INSERT = (f"INSERT INTO events ({_COLUMN_LIST}) VALUES ({', '.join(['%s'] * len(EVENT_COLUMNS))})"
           " RETURNING seq")


@dataclass(frozen=True)
class Appended:
    """The seqs a bulk append took: `count` rows, consecutive from `first` to `last` (0, 0 for none)."""

    count: int
    first: int
    last: int


def take_append_lock(conn: psycopg.Connection) -> None:
    """Take the append lock for the rest of the connection's transaction (StoreError outside one)."""
    import psycopg

    if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        raise StoreError("an event append must run inside a transaction (the append lock lasts until its commit)")
    # The isolation comes back with the lock, in the same round trip.
    isolation = conn.execute("SELECT current_setting('transaction_isolation') FROM pg_advisory_xact_lock(%s)",
                             (APPEND_LOCK_KEY,)).fetchone()[0]
    if isolation != "read committed":
        raise StoreError(f"an event append needs READ COMMITTED isolation, not {isolation.upper()}: what it reads "
                         "after the append lock must include the previous holder's commit")


def append(conn: psycopg.Connection, events: Iterable[Mapping[str, object]]) -> list[int]:
    """Append events (mappings of EVENT_COLUMNS; missing keys are NULL) in the caller's transaction.

    Returns their seqs, in order. They become visible when the caller commits.
    """
    rows = []
    for event in events:
        checked_event_columns(event)  # a name spelt otherwise would be written as NULL
        rows.append(tuple(event.get(column) for column in EVENT_COLUMNS))
    if not rows:
        return []
    take_append_lock(conn)
    seqs = []
    with conn.cursor() as cur:
        cur.executemany(_INSERT, rows, returning=True)
        while True:
            seqs.append(cur.fetchone()[0])
            if not cur.nextset():
                break
    return seqs


def append_selected(conn: psycopg.Connection, select_sql: str, params: Iterable = ()) -> Appended:
    """Append one event per row of a SELECT giving EVENT_COLUMNS in order (the Store's bulk writes)."""
    take_append_lock(conn)
    before = _last_seq(conn)
    conn.execute(f"INSERT INTO events ({_COLUMN_LIST}) {select_sql}", tuple(params))
    return _appended_after(conn, before)


def copy_append(conn: psycopg.Connection, rows: Iterable[tuple]) -> Appended:
    """Append many events with COPY (import's bulk load): tuples in EVENT_COLUMNS order.

    Takes the same lock as `append`; under it the new seqs are consecutive (`Appended`).
    """
    take_append_lock(conn)
    before = _last_seq(conn)
    with conn.cursor() as cur, cur.copy(f"COPY events ({_COLUMN_LIST}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    return _appended_after(conn, before)


def events_after(conn: psycopg.Connection, after_seq: int, limit: int) -> list[dict]:
    """At most `limit` committed events with seq > `after_seq`, oldest first, every column.

    Safe as a pusher's read after its watermark because appends commit in seq order (above).
    """
    with conn.cursor() as cur:
        cur.execute("SELECT * FROM events WHERE seq > %s ORDER BY seq LIMIT %s", (after_seq, limit))
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


def _last_seq(conn: psycopg.Connection) -> int:
    # Under the append lock every earlier append has committed: this is the log's true end.
    return conn.execute("SELECT COALESCE(max(seq), 0) FROM events").fetchone()[0]


def _appended_after(conn: psycopg.Connection, before: int) -> Appended:
    count, first, last = conn.execute(
        "SELECT count(*), COALESCE(min(seq), 0), COALESCE(max(seq), 0) FROM events WHERE seq > %s",
        (before,)).fetchone()
    return Appended(count, first, last)
