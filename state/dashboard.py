"""Reads for the status page's pictures, each bounded so a page stays fast on a large store.

Nothing here scans the event log or the suppressions per request: new opt-outs per day are
counted once over the last days' range of the event log (found by a binary search over its
primary key, since `recorded_at` grows with `seq`) and then only over the events appended since
the previous page; failures and the last events are read through indexes with a LIMIT.

The functions take a store's `conn` (or the store): their SQL runs on both backends (state/pg_store.py).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

# The status page shows this many days of new opt-outs, today included.
DAYS = 30
# At most this many open failures and last events are listed.
LIST_LIMIT = 50


def first_seq_at_or_after(conn: sqlite3.Connection, moment: str) -> int:
    """The smallest event seq recorded at or after `moment` (store time text); past the end if none.

    A binary search over seq: about 23 primary-key look-ups on a log of 5,000,000 events.
    Seqs may have gaps, so each probe reads the first event at or after the probed seq.
    """
    low, high = conn.execute("SELECT COALESCE(min(seq), 1), COALESCE(max(seq), 0) + 1 FROM events").fetchone()
    while low < high:
        middle = (low + high) // 2
        row = conn.execute("SELECT seq, recorded_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1",
                           (middle,)).fetchone()
        if row is None or row[1] >= moment:
            high = middle
        else:
            low = row[0] + 1
    return low


@dataclass(frozen=True, slots=True)
class DailyOptOuts:
    """New opt-outs ('suppressed' events) per UTC day, by reason and by source, oldest day first."""

    days: list[str]
    by_reason: dict[str, list[int]]
    by_source: dict[str, list[int]]

    @property
    def total(self) -> int:
        return sum(sum(counts) for counts in self.by_reason.values())


class DailyOptOutCounter:
    """Counts new opt-outs per day, reading each event of the log at most once.

    The event log is append-only and a reader sees a prefix of it by seq, so the counts of
    the events up to the last seq read stay true: each refresh counts only the events after
    it. The first refresh counts the window's range, found by `first_seq_at_or_after`.
    One counter serves one store; safe to share between threads.
    """

    def __init__(self, days: int = DAYS):
        self.days = days
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._last_seq: int | None = None
        self._store_id: str | None = None

    def refresh(self, conn: sqlite3.Connection, now: datetime | None = None) -> DailyOptOuts:
        """Count the events appended since the last refresh and return the window's counts."""
        now = now or datetime.now(timezone.utc)
        first_day = (now - timedelta(days=self.days - 1)).date()
        days = [(first_day + timedelta(days=n)).isoformat() for n in range(self.days)]
        with self._lock:
            store_id = conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()
            end = conn.execute("SELECT COALESCE(max(seq), 0) FROM events").fetchone()[0]
            if self._store_id != (store_id and store_id[0]) or self._last_seq is None or end < self._last_seq:
                # A new or replaced store: count the window's range afresh.
                self._counts.clear()
                self._store_id = store_id and store_id[0]
                self._last_seq = first_seq_at_or_after(conn, f"{days[0]}T00:00:00") - 1
            rows = conn.execute(
                "SELECT substr(recorded_at, 1, 10), reason, source, count(*) FROM events"
                " WHERE seq > ? AND seq <= ? AND kind = 'suppressed' GROUP BY 1, 2, 3",
                (self._last_seq, end)).fetchall()
            for day, reason, source, count in rows:
                key = (day, reason or "?", source or "?")
                self._counts[key] = self._counts.get(key, 0) + count
            self._last_seq = end
            for key in [key for key in self._counts if key[0] < days[0]]:
                del self._counts[key]  # a day that left the window
            index = {day: n for n, day in enumerate(days)}
            by_reason: dict[str, list[int]] = {}
            by_source: dict[str, list[int]] = {}
            for (day, reason, source), count in self._counts.items():
                if day in index:
                    by_reason.setdefault(reason, [0] * self.days)[index[day]] += count
                    by_source.setdefault(source, [0] * self.days)[index[day]] += count
        return DailyOptOuts(days, by_reason, by_source)


def open_failures(conn: sqlite3.Connection, adapters: list[str],
                  limit: int = LIST_LIMIT) -> tuple[list[dict], int]:
    """The newest open failures of these adapters (newest first, at most `limit`) and how many are open.

    Each adapter's are read through the failures_open index (adapter, resolved_at), which
    keeps equal keys in id order, so neither the count nor the newest ones scan the table.
    """
    total, rows = 0, []
    for adapter in adapters:
        total += conn.execute("SELECT count(*) FROM failures WHERE adapter = ? AND resolved_at IS NULL",
                              (adapter,)).fetchone()[0]
        cursor = conn.execute(
            "SELECT id, adapter, kind, address, scope, location, value, message, first_at, last_at, attempts"
            " FROM failures WHERE adapter = ? AND resolved_at IS NULL ORDER BY id DESC LIMIT ?", (adapter, limit))
        names = [c[0] for c in cursor.description]
        rows += [dict(zip(names, row)) for row in cursor]
    rows.sort(key=lambda row: row["id"], reverse=True)
    return rows[:limit], total


def last_events(conn: sqlite3.Connection, limit: int = LIST_LIMIT) -> list[dict]:
    """The last `limit` events of the log, newest first (a primary-key read)."""
    cursor = conn.execute(
        "SELECT seq, recorded_at, kind, address, scope, reason, origin, source, target, message"
        " FROM events ORDER BY seq DESC LIMIT ?", (limit,))
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor]


def apply_latencies(store, after: int, end: int, limit: int) -> list[tuple[int, str, float | None]]:
    """Applies recorded with seq in (after, end], oldest first, at most `limit`: (seq, sink, seconds).

    The seconds run from when the source says the opt-out happened (else when it was stored) to
    the apply. An 'already held' outcome is left out: the sink had the opt-out before we applied it.
    `store` is either backend (its `dialect` spells the time difference and the JSON access).
    """
    d = store.dialect
    return store.conn.execute(
        f"SELECT a.seq, a.target, {d.seconds_between('a.recorded_at', 'COALESCE(s.occurred_at, s.recorded_at)')}"
        " FROM events a JOIN events s ON s.seq = a.ref_seq"
        " WHERE a.seq > ? AND a.seq <= ? AND a.kind = 'applied'"
        f" AND COALESCE({d.json_text('a.details', 'outcome')}, '') != 'already'"
        " ORDER BY a.seq LIMIT ?",
        (after, end, limit),
    ).fetchall()
