"""Count-confirmed import of an opt-out list into the store.

Addresses are staged in a temp table (bounded memory), counted against the
store, and applied in the same transaction only when the person's count
matches the number of new opt-outs at that moment.

On both backends: what differs (the staging table, how it is filled, SQLite's page
cache; PostgreSQL loads with COPY) is in _SqliteStaging and _PgStaging.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from sqlite3 import Connection

from .errors import RefusedError, StoreError
from .models import Rejected, utc_now
from .store import Store  # or state.pg_store.PgStore: the same methods, the same meaning

CHUNK = 10_000
STAGING_CACHE_KIB = 64 * 1024  # the temp table's page cache while an import stages


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

    `addresses` must not use the store's connection: a thread writes through it
    while they are read.
    """
    return run_import_batches(store, _batches(addresses), scope=scope, reason=reason, confirm=confirm, source=source,
                              legal_basis=legal_basis, explanation=explanation, details=details,
                              on_rejected=on_rejected, sample_size=sample_size)


def run_import_batches(store: Store, batches: Iterable[list[str | Rejected]], *, scope: str, reason: str,
                       confirm: int | None, source: str, legal_basis: str | None = None,
                       explanation: str | None = None, details: dict | None = None,
                       on_rejected=None, sample_size: int = 20) -> ImportPreview:
    """run_import of addresses that come in lists (of any length), each in file order.

    For a reader that has whole lists at hand: no Python code per address between it and the stager.
    """
    store._ensure_temp_tables()
    staging = _STAGING[store.dialect.name]
    with staging.cache(store):
        return _import(store, batches, staging, scope=scope, reason=reason, confirm=confirm, source=source,
                       legal_basis=legal_basis, explanation=explanation, details=details,
                       on_rejected=on_rejected, sample_size=sample_size)


def _import(store: Store, batches: Iterable[list[str | Rejected]], staging: type[_SqliteStaging | _PgStaging], *,
            scope: str, reason: str, confirm: int | None, source: str, legal_basis: str | None,
            explanation: str | None, details: dict | None, on_rejected, sample_size: int) -> ImportPreview:
    preview = ImportPreview()
    with store.transaction():
        conn = store.conn
        for ddl in staging.CREATE:
            conn.execute(ddl)
        sample = preview.rejected_sample
        with staging.stager(store) as stager:
            for batch in batches:
                valid = [item for item in batch if not isinstance(item, Rejected)]
                if len(valid) < len(batch):
                    for item in batch:
                        if isinstance(item, Rejected):
                            preview.rejected_count += 1
                            if len(sample) < sample_size:
                                sample.append(item)
                            if on_rejected is not None:
                                on_rejected(item)
                preview.rows_read += len(batch)
                preview.valid += len(valid)
                if valid:
                    stager.stage(valid)
        preview.unique = stager.staged
        preview.duplicates = preview.valid - preview.unique
        if confirm is None:
            preview.already_suppressed = conn.execute(
                "SELECT count(*) FROM import_rows i JOIN suppressions s ON s.address = i.address AND s.scope = ?",
                (scope,)).fetchone()[0]
            preview.new = preview.unique - preview.already_suppressed
            conn.execute(staging.DROP)
            return preview
        # Applied first and counted by the insert itself, which saves a pass over a large store;
        # a count that does not match is refused and the transaction undoes the insert.
        now = utc_now()
        preview.new = store.suppress_selected(
            store.dialect.placeholders(_NEW_OPTOUTS),
            (now, scope, reason, source, now, legal_basis, explanation,
             json.dumps(details, sort_keys=True) if details else None, scope))
        preview.already_suppressed = preview.unique - preview.new
        if confirm != preview.new:
            raise RefusedError(f"the import would add {preview.new} new opt-outs, not {confirm}; nothing was changed")
        conn.execute(staging.DROP)
        preview.applied = True
    return preview


# The new opt-outs of import_rows, as suppress_selected's SELECT (`?` placeholders; the dialect's own when run).
_NEW_OPTOUTS = ("SELECT ?, 'suppressed', i.address, ?, ?, 'user', ?, ?, ?, ?, ? FROM import_rows i"
                " WHERE NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.address = i.address AND s.scope = ?)"
                " ORDER BY i.address")


class _SqliteStaging:
    """import_rows on SQLite: a temp b-tree the _Stager thread fills, under a larger page cache."""

    CREATE = ("DROP TABLE IF EXISTS temp.import_rows",
              "CREATE TEMP TABLE import_rows (address TEXT PRIMARY KEY) WITHOUT ROWID")
    DROP = "DROP TABLE temp.import_rows"

    @staticmethod
    @contextmanager
    def cache(store: Store) -> Iterator[None]:
        conn = store.conn
        previous = conn.execute("PRAGMA temp.cache_size").fetchone()[0]
        # The staged addresses arrive in file order, so each insert lands somewhere in the temp
        # table's b-tree; with SQLite's default 2 MB cache most of those pages are written out and
        # read back. STAGING_CACHE_KIB holds the table of a million addresses (a shuffled 1M list
        # stages in 2.4-2.8 s of CPU instead of 5.9 s; 64 MB rather than 32 MB took a 900,000-new
        # import from 5.8-6.6 s to 5.4-5.8 s, peak RSS unchanged at 77 MB); pages are taken only
        # as the table grows.
        conn.execute(f"PRAGMA temp.cache_size = -{STAGING_CACHE_KIB}")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA temp.cache_size = {int(previous)}")

    @staticmethod
    def stager(store: Store) -> _Stager:
        return _Stager(store.conn)


# pragma: no mutate start (PostgreSQL only: the mutation run's tests have no server, as for state/pg_*.py)
class _PgStaging:
    """import_rows on PostgreSQL: COPY loads the addresses as they come, import_rows keeps each once.

    PostgreSQL has no page-cache PRAGMA (its temp buffers are the server's setting). The temp
    tables are made inside the import's transaction, so a rollback takes them away too.
    """

    CREATE = ("DROP TABLE IF EXISTS pg_temp.import_rows, pg_temp.import_load",
              # COLLATE "C": i.address orders the new seqs as SQLite's BINARY order does.
              'CREATE TEMP TABLE import_rows (address text COLLATE "C" PRIMARY KEY)',
              'CREATE TEMP TABLE import_load (address text COLLATE "C" NOT NULL)')
    DROP = "DROP TABLE pg_temp.import_rows, pg_temp.import_load"

    @staticmethod
    def cache(store) -> AbstractContextManager[None]:
        return nullcontext()

    @staticmethod
    def stager(store) -> _CopyStager:
        return _CopyStager(store)
# pragma: no mutate end


_STAGING = {"sqlite": _SqliteStaging, "postgresql": _PgStaging}


def _batches(items: Iterable) -> Iterator[list]:
    iterator = iter(items)
    while batch := list(islice(iterator, CHUNK)):
        yield batch


# How long a put waits on a full queue before it checks that the stager thread still runs.
_PUT_WAIT = 0.5
_STAGER_STOPPED = "the import's staging thread stopped before the import ended; nothing was saved"


class _Stager:
    """Inserts batches of addresses into temp.import_rows on a thread of its own.

    SQLite runs without the GIL, so the inserts overlap with reading and checking the next rows.
    While the stager is open it alone uses the connection; leaving it waits for the last insert
    (also when an error ends the import, so that the rollback comes after it; batches still
    queued then are dropped) and raises the stager's own error, if any.
    """

    def __init__(self, conn: Connection):
        self._conn = conn
        self._batches: queue.Queue[list[str] | None] = queue.Queue(maxsize=2)  # bounds the memory held
        self._error: BaseException | None = None
        self._cancelled = False
        self._thread = threading.Thread(target=self._run, name="import-stager", daemon=True)
        self.staged = 0  # addresses new to import_rows, i.e. distinct

    def __enter__(self) -> _Stager:
        self._thread.start()
        return self

    def stage(self, addresses: list[str]) -> None:
        if self._error is not None:
            raise self._error
        if not self._put(addresses):
            raise self._error or StoreError(_STAGER_STOPPED)

    def __exit__(self, kind, error, traceback) -> None:
        self._cancelled = error is not None
        ended = self._put(None)
        self._thread.join()
        if self._error is not None and error is None:
            raise self._error
        if not ended and error is None:
            raise StoreError(_STAGER_STOPPED)

    def _put(self, item: list[str] | None) -> bool:
        """Queue `item`; False if the stager thread has stopped (a plain put() on a full queue would wait forever)."""
        while self._thread.is_alive():
            try:
                self._batches.put(item, timeout=_PUT_WAIT)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        while (addresses := self._batches.get()) is not None:
            if self._error is not None or self._cancelled:
                continue  # drain, so that a put() never blocks on a stager that stopped
            try:
                before = self._conn.total_changes
                batch = json.dumps(addresses, ensure_ascii=False)
                if "\\u0000" in batch:
                    # SQLite's JSON reader ends a string at an escaped NUL, so such a batch goes
                    # row by row (no normalised address holds one, but run_import takes any text).
                    self._conn.executemany("INSERT OR IGNORE INTO import_rows VALUES (?)",
                                           [(address,) for address in addresses])
                else:
                    # One statement per batch: json_each hands SQLite the whole batch at once,
                    # which costs far less than binding and stepping a statement per address.
                    self._conn.execute("INSERT OR IGNORE INTO import_rows SELECT value FROM json_each(?)", (batch,))
                self.staged += self._conn.total_changes - before
            except BaseException as exc:
                self._error = exc


# pragma: no mutate start (PostgreSQL only, as _PgStaging above)
class _CopyStager:
    """_Stager's part on PostgreSQL: each batch goes into import_load by COPY, on the calling thread.

    Leaving (without an error) keeps each address once in import_rows; `staged` is how many.
    """

    def __init__(self, store):
        self._store = store
        self.staged = 0  # addresses in import_rows, i.e. distinct

    def __enter__(self) -> _CopyStager:
        return self

    def stage(self, addresses: list[str]) -> None:
        self._store.copy_rows("import_load (address)", ((address,) for address in addresses))

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            self.staged = self._store.conn.execute(
                "INSERT INTO import_rows SELECT DISTINCT address FROM import_load").rowcount

# pragma: no mutate end


def saved_count(store: Store, *, source: str, details: dict, since: str) -> int:
    """How many suppressions an import with these `details`, begun at `since`, has saved.

    For an interrupted import: every row one import saves carries its source, its
    details and one recorded_at, so this tells whether its transaction committed.
    """
    return store.conn.execute(
        "SELECT count(*) FROM suppressions WHERE source = ? AND details = ? AND recorded_at >= ?",
        (source, json.dumps(details, sort_keys=True), since)).fetchone()[0]
