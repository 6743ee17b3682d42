"""The columns of the events table that code appends to, and the check every append makes.

SQLite reads column names without regard to letter case; PostgreSQL's appends (pg_events) pick the
values of these exact names from each event and would write NULL for a name spelt otherwise. So
both stores refuse a name that is not one of these, exactly: an event is never written with a
value silently dropped on one backend and kept on the other.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import StoreError

# In the order PostgreSQL's appends write them (seq is the store's own).
EVENT_COLUMNS = ("recorded_at", "kind", "address", "scope", "reason", "origin", "source", "target",
                 "ref_seq", "occurred_at", "legal_basis", "explanation", "message", "details")
_KNOWN = frozenset(EVENT_COLUMNS)


def checked_event_columns(columns: Iterable[str]) -> tuple[str, ...]:
    """`columns` as a tuple, once each is known to be an events column, spelt exactly.

    Raises StoreError naming the first that is not (a bug in the calling code, caught before any
    row is written).
    """
    columns = tuple(columns)
    for column in columns:
        if column not in _KNOWN:
            raise StoreError(f"the events table has no column {column!r} (known: {', '.join(EVENT_COLUMNS)})")
    return columns
