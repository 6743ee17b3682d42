"""Count-confirmed import of an opt-out list into the store.

Addresses are staged in a temp table (bounded memory), counted against the
store, and applied in the same transaction only when the person's count
matches the number of new opt-outs at that moment.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import RefusedError
from .models import Rejected, utc_now
from .store import Store

CHUNK = 10_000


@dataclass
class ImportPreview:
    """What an import would do (or did)."""

    rows_read: int = 0
    valid: int = 0
    unique: int = 0
    duplicates: int = 0
    already_suppressed: int = 0
    new: int = 0
    rejected_count: int = 0
    rejected_sample: list[Rejected] = field(default_factory=list)
    applied: bool = False


def run_import(store: Store, addresses: Iterable[str | Rejected], *, scope: str, reason: str,
               confirm: int | None, source: str, legal_basis: str | None = None,
               explanation: str | None = None, details: dict | None = None,
               on_rejected=None, sample_size: int = 20) -> ImportPreview:
    """Stage normalised addresses (or Rejected rows), count them, and apply if `confirm` matches.

    Without `confirm` nothing is changed. With a `confirm` that is not the number
    of new opt-outs, RefusedError and nothing is changed. Otherwise every new
    opt-out is stored with origin `user` in one transaction.
    """
    preview = ImportPreview()
    store._ensure_temp_tables()
    with store.transaction():
        conn = store.conn
        conn.execute("DROP TABLE IF EXISTS temp.import_rows")
        conn.execute("CREATE TEMP TABLE import_rows (address TEXT PRIMARY KEY) WITHOUT ROWID")
        chunk: list[tuple[str]] = []

        def flush() -> None:
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO import_rows VALUES (?)", chunk)
            preview.unique += conn.total_changes - before
            chunk.clear()

        for item in addresses:
            preview.rows_read += 1
            if isinstance(item, Rejected):
                preview.rejected_count += 1
                if len(preview.rejected_sample) < sample_size:
                    preview.rejected_sample.append(item)
                if on_rejected is not None:
                    on_rejected(item)
                continue
            preview.valid += 1
            chunk.append((item,))
            if len(chunk) >= CHUNK:
                flush()
        flush()
        preview.duplicates = preview.valid - preview.unique
        preview.already_suppressed = conn.execute(
            "SELECT count(*) FROM import_rows i JOIN suppressions s ON s.address = i.address AND s.scope = ?",
            (scope,)).fetchone()[0]
        preview.new = preview.unique - preview.already_suppressed
        if confirm is None:
            store.conn.execute("DROP TABLE temp.import_rows")
            return preview
        if confirm != preview.new:
            raise RefusedError(f"the import would add {preview.new} new opt-outs, not {confirm}; nothing was changed")
        now = utc_now()
        store.suppress_selected(
            "SELECT ?, 'suppressed', i.address, ?, ?, 'user', ?, ?, ?, ?, ? FROM import_rows i"
            " WHERE NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.address = i.address AND s.scope = ?)"
            " ORDER BY i.address",
            (now, scope, reason, source, now, legal_basis, explanation,
             json.dumps(details, sort_keys=True) if details else None, scope))
        conn.execute("DROP TABLE temp.import_rows")
        preview.applied = True
    return preview
