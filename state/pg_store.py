"""The suppression store on PostgreSQL: the public methods of state/store.py's Store, same meaning.

Chosen by `[store] url` (connector/commands.py open_store). Every store method but SQLite's WAL
truncation, and the modules beside the store (lifts, imports, receipts, re-subscribes, snapshots,
dashboard), run on it; the contract tests (tests/test_store_contract*.py) run on both backends. See
docs/architecture.md, "The two stores, as built".

How the SQLite store's meaning is kept:
- Every write transaction takes the event log's append lock at BEGIN (state/pg_events.py), so
  write transactions run one at a time, as on SQLite: the store's read-then-write SQL
  (check-then-insert on suppressions, max(seq) before an insert) keeps its meaning. Reads run
  outside it, as SQLite's readers do beside its writer.
- Every event append goes through pg_events (the lock makes seq order commit order).
- Methods whose SQL is the same on both backends are Store's own functions, run over a
  connection that takes Store's `?` placeholders (_Connection); the echo rule and the few other
  expressions that differ are written once against state/sql_dialect.py.
- A page, and each page of a reconcile's full read, enters its temp table by COPY; big reads
  (iter_suppressions) stream through a held server-side cursor, keyset pages elsewhere.

psycopg is imported lazily: a SQLite user never loads it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from . import failpoint, pg_errors, pg_events, pg_schema, resubscribes
from .errors import ConfigError, OptOutSyncError, StoreError
from .models import OptOut, Page, utc_now
from .sql_dialect import POSTGRESQL
from .store import (
    _OPTOUT_COLUMNS,
    Checkpoint,  # noqa: F401  (the same records as Store's: callers import them from state.store)
    IngestCounts,
    PushOutcome,
    Store,
    _details_from,
    _echo_sql,
    _holds_nul,
    PUSH_EVENT_COLUMNS,
    _push_rows,
    _stronger_sql,
    _without_nul,
    canonical_time,
)

_SUPPRESSED_COLUMNS = ("recorded_at, kind, address, scope, reason, origin, source, occurred_at, legal_basis,"
                       " explanation, details")


# Names of the server-side cursors big reads stream through, unique within the process.
_CURSOR_NUMBERS = itertools.count(1)
# Rows a streamed read fetches per round trip.
STREAM_ROWS = 2000


def _page_details(details: dict | None) -> str | None:
    # The text SQLite's page load stores: the dict as compact JSON ({} included), None as NULL.
    return None if details is None else json.dumps(details, separators=(",", ":"))


class _Connection:
    """The psycopg connection as Store's shared methods use it: `?` placeholders, StoreError on failure."""

    def __init__(self, store: "PgStore"):
        self._store = store

    def execute(self, sql: str, params: Iterable = ()):
        return self._store._sql(_placeholders(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Iterable]) -> None:
        rows = [tuple(row) for row in rows]
        if rows:
            self._store._many(_placeholders(sql), rows)


def _placeholders(sql: str) -> str:
    # Store's shared SQL has no literal '?' or '%' (checked by the contract suite running it here).
    return POSTGRESQL.placeholders(sql)


class PgStore:
    """The suppression store on one PostgreSQL connection (a `postgresql://` URL); one per thread."""

    dialect = POSTGRESQL

    def __init__(self, url: str, *, connect_timeout: int = 10):
        """Connect to `url` and migrate the database to the current schema; StoreError if either fails."""
        if failpoint.ERROR:
            raise ConfigError(failpoint.ERROR)
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(f"a PostgreSQL store needs psycopg 3, which cannot be imported: {exc}") from exc
        self._psycopg = psycopg
        self._url = url
        try:
            raw = psycopg.connect(url, autocommit=True, connect_timeout=connect_timeout)
        except psycopg.ProgrammingError as exc:
            # libpq could not parse the URL, and its message quotes it whole, password and all.
            raise StoreError(pg_errors.BAD_URL) from exc
        except psycopg.Error as exc:
            raise StoreError(f"cannot open the store (PostgreSQL): {pg_errors.describe(exc, url)}") from exc
        except Exception as exc:  # a URL psycopg cannot parse
            raise StoreError(pg_errors.BAD_URL) from exc
        # Named by database and host only: the URL may hold a password.
        self.path = f"PostgreSQL database {raw.info.dbname} on {raw.info.host}"
        self.raw = raw
        self.conn = _Connection(self)
        self._depth = 0
        self._temp_ready = False
        # A daemon's worker sets this (connector/leases.py PgLeases.fence): called with the connection
        # at the start of every write transaction, it raises unless the worker still holds its lease.
        self.fence = None
        try:
            pg_schema.migrate(raw)
        except psycopg.Error as exc:
            raw.close()
            raise StoreError(f"cannot open the store {self.path}: {pg_errors.describe(exc, url)}") from exc

    def close(self) -> None:
        """Close the connection."""
        self.raw.close()

    # -- statements -------------------------------------------------------------

    def _sql(self, sql: str, params: tuple = ()):
        """Run one statement (`%s` placeholders); its cursor. A database error is a StoreError."""
        try:
            return self.raw.execute(sql, params)
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot use the store {self.path}: {pg_errors.describe(exc, self._url)}") from exc

    def _many(self, sql: str, rows: list[tuple]) -> None:
        try:
            with self.raw.cursor() as cur:
                cur.executemany(sql, rows)
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot write to the store {self.path}: {pg_errors.describe(exc, self._url)}") from exc

    def _write(self, sql: str, params: Iterable = ()):
        """Store's write helper, for its shared methods (`?` placeholders)."""
        return self.conn.execute(sql, params)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self._psycopg.Error as exc:
            raise StoreError(f"cannot write to the store {self.path}: {pg_errors.describe(exc, self._url)}") from exc

    def _append_events(self, columns: tuple[str, ...], rows: list[tuple]) -> None:
        """Append event rows (values of `columns`) through pg_events, in the current transaction."""
        with self._errors():
            pg_events.append(self.raw, [dict(zip(columns, row)) for row in rows])

    def append_event(self, event: Mapping[str, object]) -> int:
        """Append one event (column name -> value) through pg_events, in the current transaction; its seq."""
        with self._errors():
            return pg_events.append(self.raw, [event])[0]

    def copy_rows(self, target: str, rows: Iterable[tuple]) -> None:
        """Load rows into `target` ("table (columns)", a literal of the caller's) with COPY."""
        with self._errors(), self.raw.cursor() as cur, cur.copy(f"COPY {target} FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def _streamed(self, sql: str, params: Iterable = ()) -> Iterator[tuple]:
        """The rows of a big read (`?` placeholders) through a server-side cursor, STREAM_ROWS at a time.

        WITH HOLD: the cursor outlives the implicit transaction of its DECLARE, so no transaction
        stays open while the caller works through the rows (and may write between them); the
        server keeps the result (in a temporary file when large), the client a batch at a time.
        """
        with self._errors():
            cursor = self.raw.cursor(name=f"optout_stream_{next(_CURSOR_NUMBERS)}", withhold=True)
            cursor.itersize = STREAM_ROWS
            try:
                cursor.execute(_placeholders(sql), tuple(params))
                yield from cursor
            finally:
                try:
                    cursor.close()
                except self._psycopg.Error:
                    pass  # its transaction was rolled back, and the cursor with it

    # -- transactions -----------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction, holding the append lock from BEGIN; nested calls become savepoints."""
        depth = self._depth
        name = f"sp{depth}"
        try:
            if depth == 0:
                self.raw.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
                # One writer at a time, as on SQLite (module docstring); the lock ends with the transaction.
                pg_events.take_append_lock(self.raw)
                if self.fence is not None:
                    self.fence(self.raw)
            else:
                self.raw.execute(f"SAVEPOINT {name}")
        except self._psycopg.Error as exc:
            if depth == 0:
                self._quiet_rollback()
            raise StoreError(f"cannot write to the store {self.path}: {pg_errors.describe(exc, self._url)}") from exc
        except OptOutSyncError:  # the append lock's refusal, or the fence's
            self._quiet_rollback()
            raise
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth -= 1
            # Temp tables this transaction made go with it; the next use makes them again.
            self._temp_ready = False
            if depth == 0:
                self._quiet_rollback()
            else:
                self._quiet_rollback(f"ROLLBACK TO {name}", f"RELEASE {name}")
            raise
        self._depth -= 1
        # Test-only crash point (state/failpoint.py): off unless OPTOUT_SYNC_FAILPOINT is set.
        number = failpoint.before_commit() if failpoint.ARMED and depth == 0 else 0
        try:
            self.raw.execute("COMMIT" if depth == 0 else f"RELEASE {name}")
        except self._psycopg.Error as exc:
            if depth == 0:
                self._temp_ready = False
                self._quiet_rollback()
            raise StoreError(f"cannot write to the store {self.path}: {pg_errors.describe(exc, self._url)}") from exc
        if number:
            failpoint.after_commit(number)

    def _quiet_rollback(self, *statements: str) -> None:
        # After a lost connection there is nothing to roll back (an outer transaction that cannot
        # roll back to its savepoint is rolled back whole by its own exit); the error that got here
        # is the one to show.
        try:
            for statement in statements or ("ROLLBACK",):
                self.raw.execute(statement)
        except self._psycopg.Error:
            pass

    def _ensure_temp_tables(self) -> None:
        if self._temp_ready:
            return
        columns = ('address text COLLATE "C" NOT NULL, scope text COLLATE "C" NOT NULL,'
                   ' reason text COLLATE "C" NOT NULL, origin text COLLATE "C" NOT NULL,'
                   ' occurred_at text COLLATE "C", details text COLLATE "C"')
        # ord: where the key first came in the page. SQLite stages in rowid order, which an upsert keeps;
        # a PostgreSQL update moves the row in the heap, so the order is kept in a column.
        self._sql(f"CREATE TEMP TABLE IF NOT EXISTS incoming (ord bigint NOT NULL, {columns},"
                  " PRIMARY KEY (address, scope))")
        self._sql(f"CREATE TEMP TABLE IF NOT EXISTS source_set (ord bigint NOT NULL, {columns},"
                  " PRIMARY KEY (address, scope))")
        # What COPY loads, in page order (ord), before it is folded into incoming or source_set.
        self._sql(f"CREATE TEMP TABLE IF NOT EXISTS page_rows (ord bigint NOT NULL, {columns})")
        self._temp_ready = True

    def _ensure_checkpoint(self, adapter: str) -> None:
        self._sql("INSERT INTO checkpoints (adapter) VALUES (%s) ON CONFLICT DO NOTHING", (adapter,))

    # -- ingest -----------------------------------------------------------------

    def ingest_page(self, adapter: str, page: Page, *, save_cursor: bool = True,
                    resubscribe_policy: str = "local") -> IngestCounts:
        """Stage a page's new opt-outs, record stronger reasons, rejections and notices (Store.ingest_page).

        Re-subscribes and releases as on SQLite (state/resubscribes.py, the same SQL). An item whose
        address or scope holds NUL, which PostgreSQL text cannot, is a rejected row on both backends.
        """
        page = _without_nul(adapter, page)
        counts = IngestCounts(read=len(page.optouts), rejected=len(page.rejected))
        now = utc_now()
        with self.transaction():
            self._ensure_temp_tables()
            self._ensure_checkpoint(adapter)
            self._sql("DELETE FROM incoming")
            self._load_incoming(page.optouts)
            counts.ignored_lifted = self._drop_lifted("incoming")
            counts.ignored_echoes = self._sql(
                f"DELETE FROM incoming WHERE {_echo_sql('incoming', '%s::text', POSTGRESQL)}", (adapter,)).rowcount
            counts.held = self._sql(
                "SELECT count(*) FROM incoming i WHERE EXISTS"
                " (SELECT 1 FROM suppressions s WHERE s.address = i.address AND s.scope = i.scope)").fetchone()[0]
            counts.changed = self._record_stronger(now, "incoming", "%s::text", select_params=(adapter,))
            counts.staged = self._stage(
                "FROM incoming i WHERE NOT EXISTS"
                " (SELECT 1 FROM suppressions s WHERE s.address = i.address AND s.scope = i.scope) ORDER BY i.ord",
                (adapter, now))
            resubscribes.end_releases(self, "incoming", adapter, now)
            if page.resubscribes:
                done = resubscribes.record(self, adapter, page.resubscribes, resubscribe_policy, now, page.optouts)
                counts.released = done.released + done.lifted
            if page.rejected:
                self._many(
                    "INSERT INTO failures (adapter, kind, location, address, value, message, first_at, last_at)"
                    " VALUES (%s, 'rejected', %s, NULL, %s, %s, %s, %s)",
                    [(adapter, r.where, r.value, r.reason, now, now) for r in page.rejected])
            if page.notices:
                self._append_events(
                    ("recorded_at", "kind", "address", "scope", "reason", "origin", "source", "occurred_at",
                     "message", "details"),
                    [(now, "observed", n.address, n.scope, n.reason, n.origin, adapter, n.occurred_at,
                      (n.details or {}).get("message", "seen at source; no suppression removed"),
                      json.dumps(n.details, separators=(",", ":")) if n.details else None)
                     for n in page.notices])
            if save_cursor and page.cursor is not None:
                self._sql("UPDATE checkpoints SET read_cursor = %s, cursor_at = %s WHERE adapter = %s",
                          (page.cursor, now, adapter))
        return counts

    def _load_incoming(self, optouts: list[OptOut], table: str = "incoming") -> None:
        """COPY a page into page_rows, then fold it into `table`: the strongest observation of a key wins.

        The fold runs one statement per repeat of a key within the page (ON CONFLICT may touch a row
        once per statement), in page order, so its outcome is SQLite's row-by-row upsert's.
        """
        self._sql("TRUNCATE page_rows")
        with self._errors(), self.raw.cursor() as cur, cur.copy(
                f"COPY page_rows (ord, {_OPTOUT_COLUMNS}) FROM STDIN") as copy:
            for number, o in enumerate(optouts):
                copy.write_row((number, o.address, o.scope, o.reason, o.origin,
                                o.occurred_at and canonical_time(o.occurred_at), _page_details(o.details)))
        repeats = self._sql("SELECT COALESCE(max(n), 0) FROM (SELECT count(*) AS n FROM page_rows"
                            " GROUP BY address, scope) c").fetchone()[0]
        for turn in range(1, repeats + 1):
            self._sql(
                f"INSERT INTO {table} (ord, {_OPTOUT_COLUMNS}) SELECT ord, {_OPTOUT_COLUMNS} FROM (SELECT *,"
                " row_number() OVER (PARTITION BY address, scope ORDER BY ord) AS turn FROM page_rows) p"
                " WHERE p.turn = %s ON CONFLICT (address, scope) DO UPDATE SET reason = excluded.reason,"
                " origin = excluded.origin, occurred_at = excluded.occurred_at, details = excluded.details"
                f" WHERE {_stronger_sql('excluded', table)}", (turn,))

    _stage = Store._stage
    _drop_lifted = Store._drop_lifted

    def _record_stronger(self, now: str, table: str, source_sql: str, extra_where: str = "",
                         select_params: tuple = (), update_params: tuple = ()) -> int:
        """Raise stored reasons/origins that rows of `table` (alias n) bind more strongly; log each change.

        `source_sql` and `extra_where` use `%s` placeholders (Store._record_stronger's meaning).
        """
        condition = f"{_stronger_sql('n', 's')} {extra_where}"
        with self._errors():
            changed = pg_events.append_selected(
                self.raw,
                f"SELECT %s, 'changed', n.address, n.scope, n.reason, n.origin, {source_sql}, NULL, NULL,"
                " n.occurred_at, NULL, NULL, 'was ' || s.reason || ' by ' || s.origin, n.details"
                f" FROM {table} n JOIN suppressions s ON s.address = n.address AND s.scope = n.scope"
                f" WHERE {condition}", (now, *select_params)).count
        if changed:
            self._sql(
                "UPDATE suppressions SET reason = n.reason, origin = n.origin,"
                f" details = COALESCE(n.details, suppressions.details) FROM {table} n"
                " WHERE n.address = suppressions.address AND n.scope = suppressions.scope"
                f" AND {_stronger_sql('n', 'suppressions')} {extra_where}", update_params)
        return changed

    def staged_optouts(self, adapter: str, limit: int | None = None) -> list[OptOut]:
        """The new opt-outs from this adapter that wait in staging, in the order they were staged."""
        return [OptOut(address, scope, reason, origin, occurred_at, _details_from(details))
                for address, scope, reason, origin, occurred_at, details in self._sql(
                    f"SELECT {_OPTOUT_COLUMNS} FROM staged WHERE adapter = %s ORDER BY row_order LIMIT %s",
                    (adapter, limit))]

    def promote(self, adapter: str, *, legal_basis: str | None = None,
                explanation: str | None = None) -> int:
        """Turn an adapter's staged opt-outs into suppressions, one 'suppressed' event each."""
        now = utc_now()
        with self.transaction():
            self._drop_lifted("staged")
            # Staged rows that another source suppressed meanwhile may still strengthen it.
            self._record_stronger(now, "staged", "n.adapter", "AND n.adapter = %s", (adapter,), (adapter,))
            added = self.suppress_selected(
                "SELECT %s::text, 'suppressed', st.address, st.scope, st.reason, st.origin, st.adapter,"
                " st.occurred_at, %s::text, %s::text, st.details FROM staged st WHERE st.adapter = %s AND NOT EXISTS"
                " (SELECT 1 FROM suppressions s WHERE s.address = st.address AND s.scope = st.scope)"
                " ORDER BY st.row_order",
                (now, legal_basis, explanation, adapter))
            self._sql("DELETE FROM staged WHERE adapter = %s", (adapter,))
        return added

    def suppress_selected(self, select_sql: str, params: Iterable = ()) -> int:
        """Add a 'suppressed' event and a suppression for each row a SELECT gives; how many.

        As Store.suppress_selected, with `%s` placeholders: the SELECT yields (recorded_at, kind,
        address, scope, reason, origin, source, occurred_at, legal_basis, explanation, details) for
        pairs not yet suppressed, in the order their seqs are to follow. Call it inside a transaction.
        """
        with self._errors():
            appended = pg_events.append_selected(
                self.raw,
                "SELECT x.recorded_at, x.kind, x.address, x.scope, x.reason, x.origin, x.source, NULL, NULL,"
                " x.occurred_at, x.legal_basis, x.explanation, NULL, x.details"
                f" FROM ({select_sql}) AS x ({_SUPPRESSED_COLUMNS})", params)
        if appended.count:
            self._sql(
                "INSERT INTO suppressions (address, scope, reason, origin, source, occurred_at,"
                " recorded_at, details, seq)"
                " SELECT address, scope, reason, origin, source, occurred_at, recorded_at, details, seq"
                " FROM events WHERE seq BETWEEN %s AND %s AND kind = 'suppressed'",
                (appended.first, appended.last))
        return appended.count

    # -- reconcile ----------------------------------------------------------------

    def begin_source_set(self) -> None:
        """Empty the temp table that holds a source's full set during a reconcile."""
        with self.transaction():
            self._ensure_temp_tables()
            self._sql("DELETE FROM source_set")

    def add_to_source_set(self, optouts: list[OptOut]) -> None:
        """Add a page of a source's full read to the reconcile temp table: COPY, then folded (one transaction)."""
        with self.transaction():
            self._ensure_temp_tables()
            self._load_incoming([o for o in optouts if not _holds_nul(o)], "source_set")

    def stage_from_source_set(self, adapter: str) -> IngestCounts:
        """Stage what the full read holds and the store lacks; record stronger reasons it shows.

        As Store.stage_from_source_set; staged by (address, scope), the order SQLite reads its
        source_set in (its primary key).
        """
        now = utc_now()
        counts = IngestCounts()
        with self.transaction():
            self._ensure_temp_tables()
            self._ensure_checkpoint(adapter)
            # Autovacuum never analyzes a temp table: without statistics the planner guesses its size,
            # and the join below took 3.4 s for 200,000 rows (0.27 s analyzed).
            self._sql("ANALYZE source_set")
            not_echo = f"AND NOT {_echo_sql('n', '%s::text', POSTGRESQL)}"
            counts.changed = self._record_stronger(now, "source_set", "%s::text", not_echo, (adapter, adapter),
                                                   (adapter,))
            resubscribes.end_releases(self, "source_set", adapter, now)
            # Store._stage runs through _Connection: `?` placeholders here.
            counts.staged = self._stage(
                "FROM source_set i WHERE NOT EXISTS"
                " (SELECT 1 FROM suppressions s WHERE s.address = i.address AND s.scope = i.scope)"
                " AND NOT EXISTS (SELECT 1 FROM lifts l WHERE l.address = i.address AND l.scope = i.scope"
                " AND (i.occurred_at IS NULL OR i.occurred_at <= l.lifted_at))"
                f" AND NOT {_echo_sql('i', '?::text', POSTGRESQL)} ORDER BY i.address, i.scope",
                (adapter, now, adapter))
        return counts

    def begin_merge_missing(self) -> None:
        """Empty source_set and the temp table of seqs a merge diff (state/merge_diff.py) found missing."""
        self.begin_source_set()
        with self.transaction():
            self._sql("CREATE TEMP TABLE IF NOT EXISTS merge_missing (seq bigint PRIMARY KEY)")
            self._sql("DELETE FROM merge_missing")

    def add_merge_missing(self, seqs: list[int]) -> None:
        """Record seqs of suppressions a merge diff found missing at a sink (one transaction)."""
        with self.transaction():
            self._sql("INSERT INTO merge_missing SELECT unnest(%s::bigint[]) ON CONFLICT DO NOTHING", (list(seqs),))

    def _sink_scopes(self, scopes: set[str]) -> None:
        """Fill the temp table sink_scopes with the scopes a sink represents (missing_at_source)."""
        with self.transaction():
            self._sql("DROP TABLE IF EXISTS pg_temp.sink_scopes")
            # COLLATE "C": compared with the store's scopes, which are "C".
            self._sql('CREATE TEMP TABLE sink_scopes (scope text COLLATE "C" PRIMARY KEY)')
            self._sql("INSERT INTO sink_scopes SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING", (sorted(scopes),))

    # -- reads for people --------------------------------------------------------

    def iter_suppressions(self, *, reasons: list[str] | None = None, scope: str | None = None,
                          source: str | None = None, since: str | None = None,
                          until: str | None = None, count: bool = False) -> Iterator[tuple]:
        """As Store.iter_suppressions; the rows stream through a server-side cursor (export reads millions)."""
        sql, params = self._suppressions_sql(reasons, scope, source, since, until, count)
        return self.conn.execute(sql, params) if count else self._streamed(sql, params)

    # -- push -------------------------------------------------------------------

    def mark_inflight(self, adapter: str, seqs: list[int]) -> set[int]:
        """Record, committed, that these events are about to be sent to a sink; the seqs marked already."""
        with self.transaction():
            earlier = {row[0] for row in self._sql(
                "SELECT seq FROM inflight WHERE adapter = %s AND seq = ANY(%s::bigint[])", (adapter, list(seqs)))}
            # An earlier mark keeps its time (DO NOTHING): it is the same send, repeated.
            self._sql("INSERT INTO inflight (adapter, seq, marked_at) SELECT %s, s, %s FROM unnest(%s::bigint[]) s"
                      " ON CONFLICT DO NOTHING", (adapter, utc_now(), list(seqs)))
        return earlier

    def clear_inflight(self, adapter: str, seqs: list[int]) -> None:
        """Drop the marks of a send the process saw fail as a whole (nothing to record)."""
        with self.transaction():
            self._sql("DELETE FROM inflight WHERE adapter = %s AND seq = ANY(%s::bigint[])", (adapter, list(seqs)))

    def record_push(self, adapter: str, outcomes: list[PushOutcome], watermark: int | None,
                    resent: set[int] | frozenset[int] = frozenset()) -> None:
        """Record per-item outcomes of one push batch and move the watermark, in one transaction."""
        now = utc_now()
        events, resolved, failures = _push_rows(adapter, outcomes, resent, now)
        with self.transaction():
            self._ensure_checkpoint(adapter)
            self._append_events(PUSH_EVENT_COLUMNS, events)
            if failures:
                self._many(
                    "INSERT INTO failures (adapter, kind, address, scope, ref_seq, message, first_at, last_at)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (adapter, ref_seq) WHERE ref_seq IS NOT NULL"
                    " DO UPDATE SET kind = excluded.kind, message = excluded.message, last_at = excluded.last_at,"
                    " attempts = failures.attempts + 1, resolved_at = NULL, dismissed_reason = NULL", failures)
            if resolved and self._sql(
                    "SELECT 1 FROM failures WHERE adapter = %s AND ref_seq IS NOT NULL AND resolved_at IS NULL"
                    " LIMIT 1", (adapter,)).fetchone():
                self._many("UPDATE failures SET resolved_at = %s WHERE adapter = %s AND ref_seq = %s"
                           " AND resolved_at IS NULL", resolved)
            if outcomes:
                self._sql("DELETE FROM inflight WHERE adapter = %s AND seq = ANY(%s::bigint[])",
                          (adapter, [item.seq for item in outcomes]))
            if watermark is not None:
                self._sql("UPDATE checkpoints SET applied_seq = GREATEST(applied_seq, %s) WHERE adapter = %s",
                          (watermark, adapter))

    # -- Store's own methods, whose SQL is the same on both backends ---------------

    __enter__ = Store.__enter__
    __exit__ = Store.__exit__
    store_id = Store.store_id
    rolled_back = Store.rolled_back
    checkpoint = Store.checkpoint
    set_checkpoint = Store.set_checkpoint
    staged_count = Store.staged_count
    pause = Store.pause
    unpause = Store.unpause
    pending_events = Store.pending_events
    record_applied = Store.record_applied
    pending_summary = Store.pending_summary
    record_run = Store.record_run
    last_run = Store.last_run
    failures = Store.failures
    dismiss_failures = Store.dismiss_failures
    _failures_by_id = Store._failures_by_id
    failure_count = Store.failure_count
    adapter_memory = Store.adapter_memory
    save_adapter_memory = Store.save_adapter_memory
    _suppressions_sql = Store._suppressions_sql
    suppression_keys = Store.suppression_keys
    missing_at_source = Store.missing_at_source
    suppression = Store.suppression
    count_suppressions = Store.count_suppressions
    events_for = Store.events_for
    events_after = Store.events_after
    last_event_seq = Store.last_event_seq
